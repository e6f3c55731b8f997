"""An independent, dense evaluation of the LMM log-likelihood (for tests only).

Builds the marginal covariance V = Z G Zᵀ + σ² I row by row in NumPy from the data-scale random-effects
covariance G and σ², and evaluates the (RE)ML log-likelihood with β̂ by generalised least squares.
Shares no code with jaxlmm's kernels.
"""

from __future__ import annotations

import numpy as np


def dense_loglik(y, X, Z, groups, cov_re, sigma2, reml: bool) -> float:
    """(RE)ML log-likelihood at (G = cov_re, σ²) with β profiled by GLS."""
    return dense_terms_loglik(y, X, [(groups, Z, cov_re)], sigma2, reml)[0]


def cov_from_theta(theta, lambda_index, sigma2):
    """Data-scale G = σ² Λ Λᵀ from lme4-style θ and the Λ pattern."""
    idx = np.asarray(lambda_index)
    lam = np.where(idx >= 0, np.atleast_1d(np.asarray(theta, float))[np.where(idx >= 0, idx, 0)], 0.0)
    return sigma2 * lam @ lam.T


def dense_terms_loglik(y, X, terms, sigma2, reml: bool) -> tuple[float, np.ndarray]:
    """(RE)ML log-likelihood of a model with several random-effect terms, each ``(codes, Z, G)``:
    level codes per row, the term's model columns (n × q) and its data-scale covariance (q × q).
    V = σ² I + Σ_terms [rows i, j of one level] Z_i G Z_jᵀ. Returns (loglik, β̂)."""
    y, X = np.asarray(y, float), np.asarray(X, float)
    n, p = X.shape
    V = sigma2 * np.eye(n)
    for codes, Z, G in terms:
        codes = np.asarray(codes)
        same = codes[:, None] == codes[None, :]
        V = V + np.where(same, np.asarray(Z, float) @ np.asarray(G) @ np.asarray(Z, float).T, 0.0)
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    ll = -0.5 * (np.linalg.slogdet(V)[1] + r @ Vi @ r + n * np.log(2 * np.pi))
    if reml:
        ll += -0.5 * np.linalg.slogdet(XtViX)[1] + 0.5 * p * np.log(2 * np.pi)
    return float(ll), beta


def dense_terms_modes(y, X, terms, sigma2, beta):
    """Conditional modes E[b | y] = G Zᵀ V⁻¹ (y − Xβ) and covariances Var(b | y, β) = G − G Zᵀ V⁻¹ Z G
    per term and level: a list (one per term) of (levels × q modes, levels × q × q covariances)."""
    y, X = np.asarray(y, float), np.asarray(X, float)
    n = len(y)
    full_Z, full_G, sizes = [], [], []
    for codes, Z, G in terms:
        codes, Z = np.asarray(codes), np.asarray(Z, float)
        m, q = codes.max() + 1, Z.shape[1]
        Zk = np.zeros((n, m * q))
        Zk[np.arange(n)[:, None], codes[:, None] * q + np.arange(q)[None, :]] = Z
        full_Z.append(Zk)
        full_G.append(np.kron(np.eye(m), np.asarray(G)))
        sizes.append((m, q))
    Zf = np.hstack(full_Z)
    Gf = np.zeros((Zf.shape[1],) * 2)
    start = 0
    for Gk in full_G:
        Gf[start: start + len(Gk), start: start + len(Gk)] = Gk
        start += len(Gk)
    V = sigma2 * np.eye(n) + Zf @ Gf @ Zf.T
    Vi = np.linalg.inv(V)
    b = Gf @ Zf.T @ Vi @ (y - X @ beta)
    C = Gf - Gf @ Zf.T @ Vi @ Zf @ Gf
    out, start = [], 0
    for m, q in sizes:
        bk = b[start: start + m * q].reshape(m, q)
        Ck = np.stack([C[start + i * q: start + (i + 1) * q, start + i * q: start + (i + 1) * q] for i in range(m)])
        out.append((bk, Ck))
        start += m * q
    return out
