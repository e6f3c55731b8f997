"""An independent, dense evaluation of the LMM log-likelihood (for tests only).

Builds the marginal covariance V = Z G Zᵀ + σ² I row by row in NumPy from the data-scale random-effects
covariance G and σ², and evaluates the (RE)ML log-likelihood with β̂ by generalised least squares.
Shares no code with jaxlmm's kernels.
"""

from __future__ import annotations

import numpy as np


def dense_loglik(y, X, Z, groups, cov_re, sigma2, reml: bool) -> float:
    """(RE)ML log-likelihood at (G = cov_re, σ²) with β profiled by GLS."""
    y, X, Z = (np.asarray(a, float) for a in (y, X, Z))
    groups = np.asarray(groups)
    n, p = X.shape
    same = groups[:, None] == groups[None, :]
    V = np.where(same, Z @ np.asarray(cov_re) @ Z.T, 0.0) + sigma2 * np.eye(n)
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    ll = -0.5 * (np.linalg.slogdet(V)[1] + r @ Vi @ r + n * np.log(2 * np.pi))
    if reml:
        ll += -0.5 * np.linalg.slogdet(XtViX)[1] + 0.5 * p * np.log(2 * np.pi)
    return float(ll)


def cov_from_theta(theta, lambda_index, sigma2):
    """Data-scale G = σ² Λ Λᵀ from lme4-style θ and the Λ pattern."""
    idx = np.asarray(lambda_index)
    lam = np.where(idx >= 0, np.atleast_1d(np.asarray(theta, float))[np.where(idx >= 0, idx, 0)], 0.0)
    return sigma2 * lam @ lam.T
