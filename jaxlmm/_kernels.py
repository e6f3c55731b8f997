"""Pure numerical kernels: sufficient statistics, the profiled deviance, conditional modes.

Everything here takes arrays and returns arrays (no pandas, no classes). The model is

    y = X β + Z b + ε,   b_g ~ N(0, σ² Λ Λᵀ) independently per group g,   ε ~ N(0, σ² I),

with Λ the lower-triangular *relative covariance factor* built from θ. Each group is reduced once
to its sufficient statistics (Zᵀ Z, Zᵀ X, Zᵀ y per group; Xᵀ X, Xᵀ y, yᵀ y overall), so evaluating
the deviance costs nothing per row. For group g, with ``L_g L_gᵀ = Λᵀ Z_gᵀ Z_g Λ + I``:

    c_g  = L_g⁻¹ Λᵀ Z_gᵀ y          C_g = L_g⁻¹ Λᵀ Z_gᵀ X
    A    = Xᵀ X − Σ C_gᵀ C_g        r   = Xᵀ y − Σ C_gᵀ c_g        β̂ = A⁻¹ r
    pwrss = yᵀ y − Σ |c_g|² − rᵀ β̂                       (penalised weighted residual sum of squares)

    ML:    −2 ℓ = Σ log|L_g|² + n (1 + log(2π pwrss / n))
    REML:  −2 ℓ = Σ log|L_g|² + log|A| + (n − p)(1 + log(2π pwrss / (n − p)))

This is the same objective lme4 and MixedModels.jl minimise, written per group.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import _linalg
from ._crossed import CrossedStats, crossed_modes, crossed_reduction

LOG_2PI = math.log(2.0 * math.pi)


class SufficientStats(NamedTuple):
    """Per-group and pooled cross-products: everything the likelihood needs from the rows."""

    ZtZ: jax.Array  # (m, q, q)
    ZtX: jax.Array  # (m, q, p)
    Zty: jax.Array  # (m, q)
    XtX: jax.Array  # (p, p)
    Xty: jax.Array  # (p,)
    yty: jax.Array  # ()
    nobs: jax.Array  # () number of observations with weight (mask) 1
    n_fixed: jax.Array | int  # () fixed-effect columns in use (padding columns excluded; see design_stats)
    sum_log_weights: jax.Array | float = 0.0  # () Σ log wᵢ of the prior weights over the rows in use


class PenalisedSolution(NamedTuple):
    """The penalised least-squares solution at one θ."""

    beta: jax.Array  # (p,)
    pwrss: jax.Array  # ()
    logdet_L: jax.Array  # ()  Σ_g log|L_g|²
    logdet_A: jax.Array  # ()  log|A|
    A_chol: jax.Array  # (p, p) lower Cholesky factor of A
    L: jax.Array  # (m, q, q)
    cu: jax.Array  # (m, q)
    CX: jax.Array  # (m, q, p)
    crossed: CrossedStats | None = None  # a crossed model's statistics, for its conditional modes


def sufficient_stats(
    y: jax.Array, X: jax.Array, Z: jax.Array, group: jax.Array, mask: jax.Array, n_groups: int,
    weights: jax.Array | None = None,
) -> SufficientStats:
    """Reduce rows to per-group cross-products; rows with ``mask == 0`` contribute nothing.

    ``weights`` (None: all 1) are lme4's prior weights: row i's residual variance is σ²/wᵢ. They
    scale the cross-products; the observations are still counted by the mask, and −Σ log wᵢ enters
    the deviance (`profiled_deviance`), so the log-likelihood is that of the data as given.
    """
    w = mask.astype(y.dtype)
    nobs = jnp.sum(w)
    sum_log_weights = 0.0
    if weights is not None:
        sum_log_weights = jnp.sum(jnp.where(w > 0, jnp.log(jnp.where(w > 0, weights, 1.0)), 0.0))
        w = w * weights
    Zw = Z * w[:, None]
    n, q = Z.shape
    if n_groups < q:
        # Few groups with many columns (crossed factors held as one group): contract the rows
        # through a group indicator, O(n·m·q) memory, instead of n per-row q × q outer products
        # (O(n·q²): 14 GB for 20,000 rows and 300 levels).
        indicator = (group[:, None] == jnp.arange(n_groups)[None, :]).astype(y.dtype)
        ZtZ = jnp.einsum("ng,nq,nr->gqr", indicator, Zw, Z)
        ZtX = jnp.einsum("ng,nq,np->gqp", indicator, Zw, X)
    else:
        ZtZ = jax.ops.segment_sum(Zw[:, :, None] * Z[:, None, :], group, n_groups)
        ZtX = jax.ops.segment_sum(Zw[:, :, None] * X[:, None, :], group, n_groups)
    Zty = jax.ops.segment_sum(Zw * y[:, None], group, n_groups)
    Xw = X * w[:, None]
    return SufficientStats(
        ZtZ=ZtZ,
        ZtX=ZtX,
        Zty=Zty,
        XtX=Xw.T @ X,
        Xty=Xw.T @ y,
        yty=jnp.sum(w * y * y),
        nobs=nobs,
        n_fixed=X.shape[1],
        sum_log_weights=sum_log_weights,
    )


def relative_factor(theta: jax.Array, lambda_index: jax.Array) -> jax.Array:
    """Λ from θ: entry (i, j) is ``theta[lambda_index[i, j]]``, or 0 where the index is -1."""
    safe = jnp.where(lambda_index >= 0, lambda_index, 0)
    return jnp.where(lambda_index >= 0, theta[safe], 0.0)


def penalised_solution(theta: jax.Array, stats: SufficientStats, lambda_index: jax.Array) -> PenalisedSolution:
    """Solve the penalised least-squares problem at θ (β̂, pwrss, log-determinants, factors)."""
    if isinstance(stats, CrossedStats):
        return _crossed_solution(theta, stats, lambda_index)
    lam = relative_factor(theta, lambda_index)
    q = lam.shape[0]
    M = jnp.einsum("ji,gjk,kl->gil", lam, stats.ZtZ, lam) + jnp.eye(q, dtype=lam.dtype)
    L = _linalg.cholesky(M)
    cu = _linalg.solve_lower(L, jnp.einsum("ji,gj->gi", lam, stats.Zty))
    CX = _linalg.solve_lower(L, jnp.einsum("ji,gjp->gip", lam, stats.ZtX))
    A = stats.XtX - jnp.einsum("gqp,gqr->pr", CX, CX)
    r = stats.Xty - jnp.einsum("gqp,gq->p", CX, cu)
    A_chol = _linalg.cholesky(A)
    beta = _linalg.cho_solve(A_chol, r)
    pwrss = stats.yty - jnp.sum(cu * cu) - r @ beta
    return PenalisedSolution(
        beta, pwrss, _linalg.logdet_from_cholesky(L), _linalg.logdet_from_cholesky(A_chol), A_chol, L, cu, CX
    )


def reduced_gram(theta: jax.Array, stats, lambda_index: jax.Array):
    """(Σ log|L|², Ω) at θ: the log-determinant of the random-effects block of the factor, and
    Ω = [[XᵀX, Xᵀy], [yᵀX, yᵀy]] − Wᵀ W, the fixed-effects block left after eliminating the random effects.

    One augmented solve: with B_g = Λᵀ [Z_gᵀX, Z_gᵀy] and W_g = L_g⁻¹ B_g, Ω's Cholesky factor R has
    R[:p, :p] the factor of A and R[p, p]² = pwrss (the Schur complement of A). Crossed models
    (`CrossedStats`) add the dense block of the other terms (`_crossed.crossed_reduction`).
    """
    lam = relative_factor(theta, lambda_index)
    top = jnp.concatenate([stats.XtX, stats.Xty[:, None]], axis=1)
    bottom = jnp.concatenate([stats.Xty, stats.yty[None]])[None, :]
    gram = jnp.concatenate([top, bottom], axis=0)
    if isinstance(stats, CrossedStats):
        logdet_L, reduction = crossed_reduction(lam, stats)
        return logdet_L, gram - reduction
    q = lam.shape[0]
    M = jnp.einsum("ji,gjk,kl->gil", lam, stats.ZtZ, lam) + jnp.eye(q, dtype=lam.dtype)
    B = jnp.einsum("ji,gjc->gic", lam, jnp.concatenate([stats.ZtX, stats.Zty[:, :, None]], axis=2))
    L, W = _linalg.cholesky_and_solve_lower(M, B)
    return _linalg.logdet_from_cholesky(L), gram - jnp.einsum("gqc,gqd->cd", W, W)


def _crossed_solution(theta: jax.Array, stats: CrossedStats, lambda_index: jax.Array) -> PenalisedSolution:
    """β̂, pwrss and the log-determinants of a crossed model from Ω's factor; ``L``/``cu``/``CX``
    are left empty (`conditional_modes` recomputes the blocks from ``stats``)."""
    logdet_L, omega = reduced_gram(theta, stats, lambda_index)
    R = _linalg.cholesky(omega)
    p = stats.XtX.shape[0]
    A_chol = R[:p, :p]
    beta = _linalg.solve_upper_transposed(A_chol, R[p, :p])
    empty = jnp.zeros((0,), theta.dtype)
    return PenalisedSolution(beta, R[p, p] ** 2, logdet_L, _linalg.logdet_from_cholesky(A_chol), A_chol, empty, empty,
                             empty, stats)


def deviance_terms(theta: jax.Array, stats, lambda_index: jax.Array):
    """(Σ log|L|², log|A|, pwrss) at θ — the lean path used by the optimiser."""
    logdet_L, omega = reduced_gram(theta, stats, lambda_index)
    R = _linalg.cholesky(omega)
    p = stats.XtX.shape[0]
    diag = jnp.diagonal(R)
    return logdet_L, 2.0 * jnp.sum(jnp.log(diag[:p])), diag[p] ** 2


def residual_dof(stats: SufficientStats, reml) -> jax.Array:
    """n − p under REML, n under ML. ``reml`` is a bool, or an array (1.0: REML, 0.0: ML) so that one
    compiled program serves both."""
    p = stats.n_fixed
    if isinstance(reml, bool):
        return stats.nobs - p if reml else stats.nobs
    return stats.nobs - p * reml


def _add_reml_term(dev: jax.Array, logdet_A: jax.Array, reml) -> jax.Array:
    if isinstance(reml, bool):
        return dev + logdet_A if reml else dev
    return dev + reml * logdet_A


def profiled_deviance(theta: jax.Array, stats: SufficientStats, lambda_index: jax.Array, reml) -> jax.Array:
    """−2 × (REML or ML) log-likelihood with β and σ² profiled out: the objective minimised over θ
    (``reml`` as in `residual_dof`)."""
    logdet_L, logdet_A, pwrss = deviance_terms(theta, stats, lambda_index)
    dof = residual_dof(stats, reml)
    dev = logdet_L + dof * (1.0 + LOG_2PI + jnp.log(pwrss / dof)) - stats.sum_log_weights
    return _add_reml_term(dev, logdet_A, reml)


def deviance_at_scale(
    theta: jax.Array, sigma2: jax.Array, stats: SufficientStats, lambda_index: jax.Array, reml
) -> jax.Array:
    """−2 × log-likelihood at θ and a given σ² (β profiled): equals the profiled deviance at σ̂²."""
    logdet_L, logdet_A, pwrss = deviance_terms(theta, stats, lambda_index)
    dof = residual_dof(stats, reml)
    dev = logdet_L + dof * (LOG_2PI + jnp.log(sigma2)) + pwrss / sigma2 - stats.sum_log_weights
    return _add_reml_term(dev, logdet_A, reml)


def conditional_modes(theta: jax.Array, sol: PenalisedSolution, lambda_index: jax.Array, sigma2: jax.Array,
                      covariances: bool = True):
    """Random effects b̂_g = Λ L_g⁻ᵀ (c_g − C_g β̂) and their conditional covariances σ² Λ (L_g L_gᵀ)⁻¹ Λᵀ;
    crossed models also return the other terms' (blocks, width) modes and covariances (else None).
    ``covariances=False`` (crossed models): their covariances are None."""
    lam = relative_factor(theta, lambda_index)
    if sol.crossed is not None:
        return crossed_modes(lam, sol.crossed, sol.beta, sigma2, covariances)

    q = lam.shape[0]
    u = _linalg.solve_upper_transposed(sol.L, sol.cu - jnp.einsum("gqp,p->gq", sol.CX, sol.beta))
    eye = jnp.broadcast_to(jnp.eye(q, dtype=lam.dtype), sol.L.shape)
    L_inv = _linalg.solve_lower(sol.L, eye)
    S = jnp.einsum("ij,gkj->gik", lam, L_inv)  # Λ L⁻ᵀ
    return jnp.einsum("ij,gj->gi", lam, u), sigma2 * jnp.einsum("gik,gjk->gij", S, S), None, None
