"""The pure fit: `Design` in, `FitArrays` out. `MixedLM.fit` is built on this function."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _linalg
from ._compile_options import CLASSIC_ONE_FACTOR_ROWS_MAX, jit_with
from ._crossed import CrossedStats, crossed_stats, dense_rows
from ._design import Design
from ._kernels import (
    PenalisedSolution,
    conditional_modes,
    deviance_at_scale,
    reduced_gram,
    penalised_solution,
    profiled_deviance,
    relative_factor,
    residual_dof,
    sufficient_stats,
)
from ._lapack_threads import one_lapack_thread
from ._memory_maps import release_if_needed
from ._optimize import FORWARD_HESSIAN_MAX, minimize_newton
from ._program_cache import call_quick
from ._start import moment_start
from ._variance_model import VarianceObjective, VarianceRows, variance_stats


class FitArrays(NamedTuple):
    """Everything estimated by one fit, as arrays (a pytree).

    theta: relative covariance factor parameters; beta: fixed effects; sigma2: residual variance;
    cov_re: random-effects covariance (q × q, data scale); llf: REML or ML log-likelihood;
    vcov_beta: covariance of β̂ given the variance parameters (as lme4's ``vcov``);
    varpar: variance parameters on the data scale (one per θ, then σ²); ranef / ranef_cov: conditional modes and covariances
    per group; converged, grad_norm, iterations, theta_at_bound: the optimiser's report.
    """

    theta: jax.Array
    beta: jax.Array
    sigma2: jax.Array
    cov_re: jax.Array
    llf: jax.Array
    vcov_beta: jax.Array
    varpar: jax.Array
    ranef: jax.Array
    ranef_cov: jax.Array | None  # None: left to the results layer (`fit_design`'s ``deferred``)
    converged: jax.Array
    grad_norm: jax.Array
    iterations: jax.Array
    theta_at_bound: jax.Array
    ranef_other: jax.Array | None = None  # crossed models: the other terms' modes (blocks, width)
    ranef_other_cov: jax.Array | None = None  # and their conditional covariances (blocks, width, width)
    # Inference, computed with the fit when asked for (`fit_design(..., inference=True)`):
    information: jax.Array | None = None  # observed information in (θ, σ²) (its inverse: their covariance)
    varpar_jac: jax.Array | None = None  # derivative of varpar in (θ, σ²) (for the delta method)
    vcov_beta_jac: jax.Array | None = None  # (k + 1, p, p): derivative of vcov_beta in (θ, σ²)

    @property
    def deferred(self) -> bool:
        """Whether the fit left its inference and conditional covariances to the results layer
        (`fit_design`'s ``deferred``)."""
        return self.ranef_cov is None


def _varpar(theta, sigma2, lambda_index, rows, cols):
    lam = relative_factor(theta, lambda_index)
    cov = sigma2 * lam @ lam.T
    return jnp.concatenate([cov[rows, cols], sigma2[None]])


def canonical_signs(theta: jax.Array, lambda_index) -> jax.Array:
    """±1 per θ: −1 for the entries of each column of Λ whose diagonal is negative. Flipping a column
    leaves Λ Λᵀ unchanged, and θ · signs has Λ's diagonal — the relative standard deviations —
    non-negative, as lme4 reports θ."""
    idx = np.asarray(lambda_index)
    diag = np.diagonal(idx)
    sign = jnp.ones_like(theta)
    for j in range(idx.shape[0]):
        if diag[j] < 0:
            continue
        col = np.unique(idx[j:, j][idx[j:, j] >= 0])
        s = jnp.where(theta[diag[j]] < 0, -1.0, 1.0)
        sign = sign.at[col].set(s)
    return sign


class _Objective(NamedTuple):
    """The profiled deviance as a hashable callable f(θ, data) (a static argument of `_argmin`), with
    data = (stats, reml, free): REML as an array (1.0: REML, 0.0: ML), so one program serves both;
    ``free`` (None, or bool per θ) holds the other θ at 0 — the deviance does not see them, so their
    gradient and Hessian rows are 0 and Newton leaves them where they start (a shape bucket's Λ
    template, `_buckets.to_bucket`). ``forward_hessian``: as `minimize_newton`'s (None: its default)."""

    lambda_index: tuple  # nested tuple, as `Design.lambda_index`
    forward_hessian: bool | None = None
    first_step: float | None = None  # `minimize_newton`'s

    def __call__(self, theta, data):
        stats, reml, free = data
        if free is not None:
            theta = jnp.where(free, theta, 0.0)
        return profiled_deviance(theta, stats, jnp.asarray(self.lambda_index), reml)


def boundary_score(lambda_index: tuple, n_theta: int):
    """`minimize_newton`'s ``probe_score`` for θ of Λ's pattern ``lambda_index`` (and ``n_theta``
    entries in all, the others scored ∞): a diagonal entry's share of its row's squared norm, Λᵢᵢ² /
    ‖Λᵢ.‖², the fraction of the i-th effect's variance left once the effects before it are known. The
    lowest is the effect nearest to a combination of the others: a rank-deficient covariance (lme4's
    singular fit) lies that way. Ties (rows holding only their diagonal) go to the smallest |θ|."""
    idx = np.asarray(lambda_index, int).reshape(len(lambda_index), -1)
    members = -np.ones((n_theta, idx.shape[1]), int)
    for i in range(idx.shape[0]):
        t = idx[i, i]
        if 0 <= t < n_theta and members[t, 0] < 0:
            row = idx[i][idx[i] >= 0]
            members[t, : row.size] = row
    diagonal = jnp.asarray(members[:, 0] >= 0)
    members = jnp.asarray(members)

    def score(theta):
        row_norm = jnp.sum(jnp.where(members >= 0, theta[jnp.maximum(members, 0)] ** 2, 0.0), axis=1)
        return jnp.where(diagonal, theta**2 / jnp.maximum(row_norm, 1e-300) + 1e-9 * theta**2, jnp.inf)

    return score


@partial(jax.custom_jvp, nondiff_argnums=(0, 3, 4, 6, 7, 8))
def _argmin(objective, stats, theta0, snappable: tuple, gtol: float, max_iter, quasi_newton: bool, exact_final: bool,
            exact_start: bool, exact_steps):
    opt = minimize_newton(lambda t: objective(t, stats), theta0, jnp.asarray(snappable), gtol=gtol, max_iter=max_iter,
                          quasi_newton=quasi_newton, forward_hessian=objective.forward_hessian,
                          exact_final=exact_final, exact_start=exact_start, first_step=objective.first_step,
                          exact_steps=exact_steps, probe_score=boundary_score(objective.lambda_index, theta0.shape[0]))
    report = jnp.stack([opt.projected_grad_norm, opt.iterations.astype(theta0.dtype), opt.converged.astype(theta0.dtype)])
    return opt.x, report, opt.hess


@_argmin.defjvp
def _argmin_jvp(objective, snappable, gtol, quasi_newton, exact_final, exact_start, primals, tangents):
    stats, theta0, max_iter, exact_steps = primals
    stats_dot = tangents[0]
    theta, report, hess_at_end = _argmin(objective, stats, theta0, snappable, gtol, max_iter, quasi_newton, exact_final,
                                         exact_start, exact_steps)
    held = jnp.asarray(snappable) & (theta == 0)
    grad_theta = jax.grad(objective)
    # Exact Newton ends with the exact Hessian at θ̂ (the loop's last accepted evaluation): reusing
    # it keeps a second Hessian program out of every derivative (compile time); BFGS's is approximate
    # unless the loop ended with an exact evaluation (``exact_final``).
    hess = jax.jacfwd(grad_theta)(theta, stats) if quasi_newton and not exact_final else hess_at_end
    _, grad_dot = jax.jvp(lambda s: grad_theta(theta, s), (stats,), (stats_dot,))
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
    system = jnp.where(held[:, None] | held[None, :], eye, hess)
    theta_dot = _linalg.solve(system, -jnp.where(held, 0.0, grad_dot))
    return (theta, report, hess_at_end), (theta_dot, jnp.zeros_like(report), jnp.zeros_like(hess_at_end))


def solve_theta(objective, stats, theta0: jax.Array, snappable, gtol: float, max_iter=200, quasi_newton: bool = False,
                exact_final: bool = False, exact_start: bool = True, exact_steps=1):
    """θ̂ = argmin_θ objective(θ, stats), differentiable with respect to ``stats`` by the implicit
    function theorem.

    Forward: the Newton loop (never differentiated). Derivatives: at the optimum ∇f(θ̂; s) = 0, so
    dθ̂ = −H⁻¹ ∂(∇f)/∂s · ds with the exact Hessian H (a `custom_jvp`; reverse mode follows by
    transposition) — under jit and vmap. Entries snapped to exactly zero (a variance on the
    boundary) are held: their derivative is 0, and the others' are those of the fit restricted to
    the boundary (rather than NaN from a singular Hessian).

    Returns θ̂, the optimiser's report (projected gradient norm, iterations, converged) and its last
    Hessian (exact unless ``quasi_newton`` without ``exact_final``, see `minimize_newton`, as for
    ``exact_start`` and ``exact_steps``; not differentiated).
    """
    snappable = tuple(bool(v) for v in np.asarray(snappable))
    theta, report, hess = _argmin(objective, stats, theta0, snappable, float(gtol), max_iter, bool(quasi_newton),
                                  bool(exact_final), bool(exact_start), exact_steps)
    report, hess = jax.lax.stop_gradient((report, hess))
    return theta, report[0], report[1].astype(jnp.int32), report[2] > 0.5, hess


FORWARD_OVER_REVERSE_MIN = 32


def exact_hessian(objective: "_Objective", theta: jax.Array, data) -> jax.Array:
    """The Hessian of ``objective`` in θ at ``theta``, by the mode its ``forward_hessian`` names
    (as `minimize_newton`'s: None, forward over forward up to `FORWARD_HESSIAN_MAX` θ)."""
    forward = objective.forward_hessian
    if forward is None:
        forward = theta.shape[0] <= FORWARD_HESSIAN_MAX
    inner = jax.jacfwd(objective) if forward else jax.grad(objective)
    return jax.jacfwd(inner)(theta, data)


def _forward_hessian(crossed) -> bool | None:
    """`minimize_newton`'s ``forward_hessian`` for a crossed model's terms or statistics (None: one
    factor). A small dense block, or a large one split into clusters (`_clusters`): False,
    forward-over-reverse, which takes its Hessian in about a quarter of the time of
    forward-over-forward there (psycholing maximal, 6 θ, a 64-row block: 2.6 against 9.5 ms; the fit
    160 -> 46 ms; STAR, clustered: 0.74 against 0.98 s a fit), for 0.4-1 s more compilation. A large
    block factored densely (at least `LARGE_DENSE_SIZE` rows, fitted by BFGS after one exact
    Hessian): the default, whose Hessian compiles in 1.5 s against 2.2 s on InstEval (it runs in 643
    against 500 ms since the blocked inverse of `_linalg`). A tiny block (Penicillin's 6 rows): the
    default too, which compiles 0.1-0.3 s faster for the same fit."""
    if crossed is None:
        return None
    if crossed.layout.dense_size >= FORWARD_OVER_REVERSE_MIN and dense_rows(crossed) < LARGE_DENSE_SIZE:
        return False
    return None


class _Estimates(NamedTuple):
    """What a fit reports at its θ̂ beyond θ̂ itself (`estimates_at`)."""

    sol: PenalisedSolution
    sigma2: jax.Array
    cov_re: jax.Array
    vcov_beta: jax.Array
    modes: tuple  # (ranef, ranef_cov, ranef_other, ranef_other_cov)


def estimates_at(theta: jax.Array, stats, lambda_index: jax.Array, reml, covariances: bool = True) -> _Estimates:
    """β̂, σ̂², the random-effects covariance, vcov(β̂) and the conditional modes at θ (``stats`` are
    those of the fitted model: for a residual-variance model, at its δ̂); ``covariances``: see
    `conditional_modes`."""
    sol = penalised_solution(theta, stats, lambda_index)
    sigma2 = sol.pwrss / residual_dof(stats, reml)
    lam = relative_factor(theta, lambda_index)
    A_inv = _linalg.cho_solve(sol.A_chol, jnp.eye(sol.A_chol.shape[0], dtype=theta.dtype))
    return _Estimates(sol, sigma2, sigma2 * lam @ lam.T, sigma2 * A_inv,
                      conditional_modes(theta, sol, lambda_index, sigma2, covariances))


def fit_stats(
    stats, lambda_index, theta0, snappable, rows, cols, reml, gtol: float = 1e-6, max_iter: int = 200,
    quasi_newton: bool = False, inference: bool = False, free: jax.Array | None = None, exact_final: bool = False,
    exact_start: bool = True, covariances: bool = True, first_step: float | None = None, exact_steps=1,
) -> FitArrays:
    """Fit from sufficient statistics (see `fit_arrays`; ``exact_final``, ``exact_start``,
    ``exact_steps``: see `minimize_newton`; ``covariances``: see `conditional_modes`).

    θ is optimised over all of Rᵏ — the deviance depends on Λ only through Λ Λᵀ, so no bounds are
    needed and a zero variance is an interior point, not a corner — then put in canonical form.
    ``inference=True`` fills the inference fields, with β in the (preconditioned) space of ``stats``.
    """
    lambda_index_np = np.asarray(lambda_index)
    lambda_index = jnp.asarray(lambda_index)
    objective = _Objective(tuple(map(tuple, lambda_index_np.tolist())),
                           _forward_hessian(stats if isinstance(stats, CrossedStats) else None), first_step)
    reml = jnp.asarray(reml, theta0.dtype)
    data = (stats, reml, free)
    theta_raw, grad_norm, iterations, converged, hess_raw = solve_theta(
        objective, data, theta0, snappable, gtol, max_iter, quasi_newton, exact_final, exact_start, exact_steps
    )
    if free is not None:
        theta_raw = jnp.where(free, theta_raw, 0.0)
    sign = canonical_signs(theta_raw, lambda_index_np)
    theta = theta_raw * sign
    est = estimates_at(theta, stats, lambda_index, reml, covariances)
    sigma2 = est.sigma2
    ranef, ranef_cov, ranef_other, ranef_other_cov = est.modes
    if inference:
        if quasi_newton and not exact_final:  # the last Hessian is a BFGS approximation: take the exact one
            hess = jax.hessian(objective)(theta, data)
        else:
            # The deviance is unchanged by canonical_signs' flips; its Hessian in θ flips with them.
            hess = sign[:, None] * hess_raw * sign[None, :]
        info, varpar_jac, vcov_jac = inference_arrays(hess, stats, theta, sigma2, lambda_index, rows, cols, reml)
    else:
        info = varpar_jac = vcov_jac = None

    return FitArrays(
        theta=theta,
        beta=est.sol.beta,
        sigma2=sigma2,
        cov_re=est.cov_re,
        llf=-0.5 * objective(theta, data),
        vcov_beta=est.vcov_beta,
        varpar=_varpar(theta, sigma2, lambda_index, rows, cols),
        ranef=ranef,
        ranef_cov=ranef_cov,
        converged=converged,
        grad_norm=grad_norm,
        iterations=iterations,
        theta_at_bound=jnp.asarray(snappable) & (theta == 0),
        ranef_other=ranef_other,
        ranef_other_cov=ranef_other_cov,
        information=info,
        varpar_jac=varpar_jac,
        vcov_beta_jac=vcov_jac,
    )


class Preconditioner(NamedTuple):
    """X = X̃ R with X̃ᵀWX̃ = I, and y = ỹ + X b₀ with b₀ the weighted least-squares fit."""

    R: jax.Array  # (p, p) upper triangular
    R_inv: jax.Array  # (p, p): maps β̃ back to β, β = b₀ + R⁻¹ β̃
    b0: jax.Array  # (p,)
    X: jax.Array  # X̃ = X R⁻¹
    y: jax.Array  # ỹ = y − X b₀
    absent: jax.Array  # (p,) 1.0 for an all-zero (weighted) column of X: a shape bucket's padding

    @property
    def logdet_gram(self) -> jax.Array:
        """log|XᵀWX| = 2 log|det R|: what the REML criterion in X̃ lacks against the one in X."""
        return 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(self.R))))


def precondition(y: jax.Array, X: jax.Array, mask: jax.Array) -> Preconditioner:
    """Orthonormalise X and remove the least-squares fit from y before forming cross-products.

    Both are exact reparameterisations: the profiled deviance depends on X only through its column
    space (the REML term changes by the constant 2 log|det R|, added back), and on y only through
    y − Xβ. They remove the cancellation that large, uncentred covariates cause in XᵀX, Xᵀy and
    yᵀy (e.g. time in days, 150–260), so the deviance and its derivatives keep their digits.
    """
    root_w = jnp.sqrt(mask)
    Xw = X * root_w[:, None]
    absent = (jnp.sum(Xw * Xw, axis=0) == 0).astype(X.dtype)
    R = _linalg.orthonormalize(Xw, absent)
    R_inv = _linalg.solve_upper_transposed(R.T, jnp.eye(R.shape[0], dtype=R.dtype))
    X_tilde = X @ R_inv
    b0 = R_inv @ (X_tilde.T @ (mask * y))
    return Preconditioner(R, R_inv, b0, X_tilde, y - X @ b0, absent)


def _row_weights(design: Design) -> jax.Array:
    """Each row's weight in the cross-products: the mask times the prior weights."""
    return design.mask if design.weights is None else design.mask * design.weights


def design_stats(design: Design):
    """Precondition the design and reduce it to sufficient statistics: (preconditioner, stats).

    An all-zero column of X (a shape bucket's padding) is left out: XᵀX gets 1 on its diagonal, so
    its coefficient is 0 with no effect on the rest, and it does not count in the REML degrees of
    freedom.
    """
    row_weights = _row_weights(design)
    pre = precondition(design.y, design.X, row_weights)
    stats = sufficient_stats(pre.y, pre.X, design.Z, design.group, design.mask, design.n_groups, design.weights)
    stats = stats._replace(XtX=stats.XtX + jnp.diag(pre.absent), n_fixed=pre.X.shape[1] - jnp.sum(pre.absent))
    if design.crossed is not None:
        stats = crossed_stats(stats, pre.y, pre.X, design.Z, design.group, row_weights, design.crossed)
    return pre, stats


def inference_arrays(hess: jax.Array, stats, theta: jax.Array, sigma2: jax.Array, lambda_index, rows, cols,
                     reml: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(information, varpar_jac, vcov_beta_jac) at θ̂ and σ̂², from ``hess``, the Hessian of the
    profiled deviance in θ: what standard errors of the variance parameters and Satterthwaite's
    degrees of freedom need (`FitArrays`; β in the space of ``stats``). The small inverse of the
    information is left to NumPy (the results layer): in the program, it was a tenth of its size.

    Both come from Ω = [[A, r], [rᵀ, ·]] (`reduced_gram`) and its derivative in θ, one forward-mode
    pass; with P = Ω_yy − rᵀA⁻¹r the pwrss and ν the residual degrees of freedom:

    * the observed information in (θ, σ²). With d(θ, σ²) = u(θ) + ν log σ² +
      P(θ)/σ² (−2 log-likelihood up to a constant) and σ̂² = P/ν, the profiled deviance has
      H = u'' + ν (P''/P − P'P'ᵀ/P²), so d's Hessian is [[H + ν P'P'ᵀ/P², −ν² P'/P²], [·, ν³/P²]];
      P' = dΩ_yy − 2 dr·β̂ + β̂ᵀ dA β̂. varpar_jac carries its inverse to the data scale (delta method).
    * vcov_beta_jac, the derivative of C(θ, σ²) = σ² A⁻¹: −σ² A⁻¹ dA A⁻¹ per θ, and A⁻¹ for σ².

    Tested against jax.hessian of the deviance at scale and jax.jacfwd of C.
    """
    lambda_index = jnp.asarray(lambda_index)
    p = stats.XtX.shape[0]
    eye = jnp.eye(theta.shape[0], dtype=theta.dtype)
    omega, d_omega = jax.vmap(lambda v: jax.jvp(lambda t: reduced_gram(t, stats, lambda_index)[1], (theta,), (v,)))(eye)
    omega = omega[0]
    A_chol = _linalg.cholesky(omega[:p, :p])
    A_inv = _linalg.cho_solve(A_chol, jnp.eye(p, dtype=theta.dtype))
    beta = A_inv @ omega[:p, p]
    P = omega[p, p] - omega[:p, p] @ beta
    dA = d_omega[:, :p, :p]
    dP = d_omega[:, p, p] - 2.0 * d_omega[:, p, :p] @ beta + jnp.einsum("i,kij,j->k", beta, dA, beta)
    dof = residual_dof(stats, reml)
    r = dP / P
    cross = -dof**2 * dP / P**2
    top = jnp.concatenate([hess + dof * jnp.outer(r, r), cross[:, None]], axis=1)
    bottom = jnp.concatenate([cross, (dof**3 / P**2)[None]])[None, :]
    info = 0.5 * jnp.concatenate([top, bottom], axis=0)
    params = jnp.concatenate([theta, sigma2[None]])
    jac = jax.jacfwd(lambda q: _varpar(q[:-1], q[-1], lambda_index, rows, cols))(params)
    vcov_jac = jnp.concatenate([-sigma2 * jnp.einsum("ij,kjl,lm->kim", A_inv, dA, A_inv), A_inv[None]], axis=0)
    return info, jac, vcov_jac


def _to_design_scale(fit: FitArrays, pre: Preconditioner, reml) -> FitArrays:
    """β and its covariance (and derivative) from the preconditioned space back to the design's X."""
    fit = fit._replace(
        beta=pre.b0 + pre.R_inv @ fit.beta,
        vcov_beta=pre.R_inv @ fit.vcov_beta @ pre.R_inv.T,
        llf=fit.llf - 0.5 * jnp.asarray(reml, pre.R.dtype) * pre.logdet_gram,
    )
    if fit.vcov_beta_jac is None:
        return fit
    return fit._replace(vcov_beta_jac=_vcov_jac_to_design_scale(fit.vcov_beta_jac, pre))


def _vcov_jac_to_design_scale(vcov_jac: jax.Array, pre: Preconditioner) -> jax.Array:
    return jnp.einsum("ij,qjk,lk->qil", pre.R_inv, vcov_jac, pre.R_inv)


def inference_of(design: Design, theta: jax.Array, sigma2: jax.Array, reml: bool = True,
                 delta: jax.Array | None = None, forward_hessian: bool | None = None):
    """`inference_arrays` of a fitted design (for fits made without ``inference=True``: the members
    of a batch, a ``deferred`` fit): (information, varpar_jac, vcov_beta_jac). A design with a
    residual variance model needs its fitted ``delta``. ``forward_hessian``: as `minimize_newton`'s
    (None: as the fit's, `_forward_hessian`). The results layer runs it through
    `_single_fit.deferred_inference`."""
    pre, stats = design_stats(design)
    if design.resid_design is not None:
        params = jnp.concatenate([theta, delta, jnp.reshape(sigma2, (1,))])
        info, varpar_jac, vcov_jac = _variance_inference(_variance_rows(design, pre), design, params, reml)
        return info, varpar_jac, _vcov_jac_to_design_scale(vcov_jac, pre)
    rows, cols = design.theta_positions
    lambda_index = jnp.asarray(design.lambda_index_array)
    if forward_hessian is None:
        forward_hessian = _forward_hessian(design.crossed)
    hess = exact_hessian(_Objective(design.lambda_index, forward_hessian), theta, (stats, reml, None))
    info, varpar_jac, vcov_jac = inference_arrays(hess, stats, theta, sigma2, lambda_index, rows, cols, reml)
    return info, varpar_jac, _vcov_jac_to_design_scale(vcov_jac, pre)


def conditional_covariances(design: Design, theta: jax.Array, sigma2: jax.Array):
    """(ranef_cov, ranef_other_cov) at a fitted θ̂ and σ̂²: the conditional covariances of the random
    effects that a ``deferred`` fit (`fit_design`) leaves out."""
    _, stats = design_stats(design)
    lambda_index = jnp.asarray(design.lambda_index_array)
    _, cov, _, cov_other = conditional_modes(theta, penalised_solution(theta, stats, lambda_index), lambda_index,
                                             sigma2)
    return cov, cov_other


# Crossed models whose dense block has at least LARGE_DENSE_SIZE rows and is factored densely (not
# split into clusters, `_clusters`), where each evaluation costs D × D factorisations: quick-program
# fits there are slow (`_single_fit.quick_pays`), and BFGS's first step from the moment start is
# `MOMENT_FIRST_STEP` of ‖θ₀‖ (see `fit_design`).
LARGE_DENSE_SIZE = 256
MOMENT_FIRST_STEP = 0.1


def term_theta_groups(design: Design) -> tuple[tuple[int, ...], ...]:
    """The θ indices of each random-effects term of a crossed design (the leading factor's first)."""
    idx = design.lambda_index_array
    spans = [(0, design.Z.shape[1])] + list(design.crossed.layout.columns)
    return tuple(tuple(int(v) for v in np.unique(idx[a: a + s, a: a + s]) if v >= 0) for a, s in spans)


def fit_design(
    design: Design, reml: bool = True, gtol: float = 1e-6, max_iter: int = 200, theta0: jax.Array | None = None,
    quasi_newton: bool = False, inference: bool = False, free: jax.Array | None = None, deferred: bool = False,
    exact_steps=1,
) -> FitArrays:
    """`fit_arrays` without the jit (for composing inside other transformed functions).

    ``quasi_newton=True`` uses BFGS Hessian updates after an exact start (see `minimize_newton`):
    cheaper iterations, the better choice for large vmapped batches; ``exact_steps`` (an int, or an
    array: one program for any value) exact Newton steps come first, so that a batch's later rounds
    run exact Newton in the same program (`_batch._run_batched`). ``inference=True`` also fills
    `FitArrays`' inference fields (`inference_arrays`), so that a summary compiles nothing more.
    ``free`` (bool per θ) holds the other θ at 0 (a shape bucket's template; not for differentiation).
    ``deferred=True`` (a crossed model, `defers`; not with ``inference``): no exact Hessian at θ̂ and no
    conditional covariances (``ranef_cov``, ``ranef_other_cov`` None): the results layer computes
    them when first asked (`inference_of`, `conditional_covariances`).
    """
    if deferred and inference:
        raise ValueError("fit_design: deferred=True leaves the inference to the results layer; pass inference=False.")
    if design.resid_design is not None:  # its statistics change with δ: only the preconditioner is fixed
        pre = precondition(design.y, design.X, _row_weights(design))
        return _to_design_scale(fit_variance_model(design, pre, reml, gtol, max_iter, theta0, inference), pre, reml)
    pre, stats = design_stats(design)
    rows, cols = design.theta_positions
    dtype = jnp.result_type(design.y)
    large_dense = dense_rows(design.crossed) >= LARGE_DENSE_SIZE
    # A dense block of FORWARD_OVER_REVERSE_MIN rows or more, factored densely or split into clusters:
    # an exact Hessian costs many gradients there, and BFGS from Λ = I (from a multiple of I, with an
    # exact Hessian at the end: `minimize_newton`'s ``exact_final``) takes more but much cheaper
    # iterations. Measured warm: psycholing maximal 38 -> 14 ms (20 iterations against 9), STAR 0.87
    # -> 0.28-0.34 s; Penicillin's and Pastes' tiny blocks stay with exact Newton (0.6-0.7 ms against
    # 0.6-1.2 ms). BFGS starts from the moment estimates of `_start` (iterations from Λ = I, then
    # from moments: STAR 12 -> 11, psycholing maximal 20 -> 15), with a first step of
    # MOMENT_FIRST_STEP × ‖θ₀‖ where the dense block is large, since the start is close there: InstEval
    # 9 value evaluations of a scaled start and 11 iterations -> 9 iterations (1.28 -> 0.96 s warm,
    # deferred), 400 × 300 crossed intercepts 9 -> 7, 500 × 200 crossed slopes 19 -> 8. Relative first
    # steps of 0.05/0.1/0.15/0.2: InstEval 10/9/8/8, the intercepts 9/7/5/7, the slopes 9/8/13/15
    # iterations; an absolute first step of 1 from moments: 12, 11 and 15.
    bfgs_pays = design.crossed is not None and design.crossed.layout.dense_size >= FORWARD_OVER_REVERSE_MIN
    if theta0 is None:  # BFGS from a multiple of I starts where moments put θ (`_start`)
        theta0 = moment_start(design, pre.y, _row_weights(design)) if bfgs_pays else jnp.asarray(design.theta_start, dtype)
        if free is not None:
            theta0 = jnp.where(free, theta0, 0.0)
    # A single fit by BFGS from a multiple of I, with an exact Hessian at the end from the same loop;
    # batches of such models start BFGS the same way (`minimize_newton`'s ``exact_start``).
    exact_final = (large_dense or bfgs_pays) and not quasi_newton and not deferred
    quasi_newton = quasi_newton or large_dense or bfgs_pays
    fit = fit_stats(
        stats,
        design.lambda_index_array,
        theta0,
        np.isfinite(design.theta_lower),
        rows,
        cols,
        reml,
        gtol,
        max_iter,
        quasi_newton,
        inference,
        free,
        exact_final,
        exact_start=not bfgs_pays,
        covariances=not deferred,
        first_step=MOMENT_FIRST_STEP if large_dense else None,
        exact_steps=exact_steps,
    )
    return _to_design_scale(fit, pre, reml)


def defers(design: Design) -> bool:
    """Whether a single fit of ``design`` leaves its exact Hessian and conditional covariances to the
    results layer (`fit_design`'s ``deferred``): a crossed model whose dense block has
    `FORWARD_OVER_REVERSE_MIN` rows or more, fitted by BFGS, where the Hessian at θ̂ costs several
    gradients and the conditional covariances a selected inverse of the block, both beyond what the
    estimates need (InstEval: a quarter of a fit, and of its compilation). lme4 and MixedModels.jl
    leave them to ``summary``/``condVar`` too."""
    return (design.crossed is not None and design.resid_design is None
            and design.crossed.layout.dense_size >= FORWARD_OVER_REVERSE_MIN)


def fit_variance_model(design: Design, pre: Preconditioner, reml, gtol: float, max_iter,
                       theta0: jax.Array | None = None, inference: bool = False) -> FitArrays:
    """Fit a design with a residual-variance model (`_variance_model`): θ and δ together by Newton
    on the profiled deviance, in the preconditioned space of ``pre`` (`_to_design_scale` maps back).

    ``varpar`` is (random-effect (co)variances, σ², δ): σ² is the residual variance where dᵢ = 0 (the
    reference level of a factor). The inference fields are in (θ, δ, σ²): the information is half the
    Hessian of the deviance at scale, and the derivative of σ² A⁻¹ is taken by forward mode.
    """
    dtype = jnp.result_type(design.y)
    k, kd = design.n_theta, design.n_delta
    rows = _variance_rows(design, pre)
    lambda_index_np = design.lambda_index_array
    lambda_index = jnp.asarray(lambda_index_np)
    objective = VarianceObjective(design.lambda_index, design.n_groups,
                                  _forward_hessian(design.crossed))
    reml = jnp.asarray(reml, dtype)
    data = (rows, reml, None)
    if theta0 is None:
        theta0 = jnp.asarray(design.theta_start, dtype)
    phi0 = jnp.concatenate([theta0[:k], jnp.zeros(kd, dtype)]) if theta0.shape[0] == k else theta0
    snappable = np.concatenate([np.isfinite(design.theta_lower), np.zeros(kd, bool)])
    phi, grad_norm, iterations, converged, _ = solve_theta(objective, data, phi0, snappable, gtol, max_iter)
    theta = phi[:k] * canonical_signs(phi[:k], lambda_index_np)
    delta = phi[k:]
    est = estimates_at(theta, variance_stats(rows, delta, design.n_groups), lambda_index, reml)
    ranef, ranef_cov, ranef_other, ranef_other_cov = est.modes
    params = jnp.concatenate([theta, delta, est.sigma2[None]])
    varpar = _variance_model_varpar(params, k, lambda_index, design.theta_positions)
    info = varpar_jac = vcov_jac = None
    if inference:
        info, varpar_jac, vcov_jac = _variance_inference(rows, design, params, reml)
    return FitArrays(
        theta=theta, beta=est.sol.beta, sigma2=est.sigma2, cov_re=est.cov_re,
        llf=-0.5 * objective(jnp.concatenate([theta, delta]), data), vcov_beta=est.vcov_beta,
        varpar=varpar, ranef=ranef, ranef_cov=ranef_cov, converged=converged, grad_norm=grad_norm,
        iterations=iterations, theta_at_bound=jnp.asarray(snappable[:k]) & (theta == 0), ranef_other=ranef_other,
        ranef_other_cov=ranef_other_cov, information=info, varpar_jac=varpar_jac, vcov_beta_jac=vcov_jac,
    )


def _variance_model_varpar(params, k: int, lambda_index, positions) -> jax.Array:
    """(random-effect (co)variances, σ², δ) from params = (θ, δ, σ²)."""
    rows, cols = positions
    return jnp.concatenate([_varpar(params[:k], params[-1], lambda_index, rows, cols), params[k:-1]])


def _variance_inference(rows: VarianceRows, design: Design, params: jax.Array, reml):
    """(information, varpar_jac, vcov_beta_jac) of a variance-model fit in params = (θ, δ, σ²),
    β in the space of ``rows`` (see `fit_variance_model`)."""
    k = design.n_theta
    lambda_index = jnp.asarray(design.lambda_index_array)
    eye = jnp.eye(design.X.shape[1], dtype=params.dtype)

    def deviance_of(q):
        return deviance_at_scale(q[:k], q[-1], variance_stats(rows, q[k:-1], design.n_groups), lambda_index, reml)

    def vcov_of(q):
        sol = penalised_solution(q[:k], variance_stats(rows, q[k:-1], design.n_groups), lambda_index)
        return q[-1] * _linalg.cho_solve(sol.A_chol, eye)

    info = 0.5 * jax.hessian(deviance_of)(params)
    varpar_jac = jax.jacfwd(lambda q: _variance_model_varpar(q, k, lambda_index, design.theta_positions))(params)
    return info, varpar_jac, jnp.moveaxis(jax.jacfwd(vcov_of)(params), -1, 0)


def _variance_rows(design: Design, pre: Preconditioner) -> VarianceRows:
    prior = jnp.ones_like(design.mask) if design.weights is None else design.weights
    return VarianceRows(pre.y, pre.X, design.Z, design.group, design.mask, prior, design.resid_design, pre.absent,
                        design.crossed)


_fit_design_jit = jax.jit(fit_design, static_argnums=(1, 2, 3))  # traced in a caller's program: no options
_fit_design_default = jit_with(fit_design, "default", static_argnums=(1, 2, 3))
# `fit_arrays` called on data, for designs `classic_emitters_pay` for: half the compile time, faster.
_fit_design_classic = jit_with(fit_design, "classic", static_argnums=(1, 2, 3))


def classic_emitters_pay(design: Design) -> bool:
    """Whether ``design``'s own programs run at least as fast compiled with the ``"classic"`` options:
    one grouping factor, no residual-variance model, up to `CLASSIC_ONE_FACTOR_ROWS_MAX` rows (see
    `_compile_options`)."""
    return (design.crossed is None and design.resid_design is None
            and int(np.shape(design.y)[0]) <= CLASSIC_ONE_FACTOR_ROWS_MAX)


def large_lapack_calls(design: Design) -> bool:
    """Whether a fit of ``design`` makes LAPACK calls large enough to run on one thread
    (`one_lapack_thread`): a crossed model's dense or clustered blocks. A one-factor model's calls, if
    any, are small, and the scope would cost about 25 µs of a 0.5 ms sleepstudy fit."""
    return design.crossed is not None


def fit_quick(design: Design, reml: bool, free: np.ndarray, gtol: float = 1e-6, max_iter: int = 200) -> FitArrays:
    """One fit with its inference, as `MixedLM.fit` runs it on a design padded to its shape bucket
    (``free``: see `fit_design`): compiled with quick options, kept on disk across processes
    (`_program_cache.call_quick`), and with REML as data (1.0 or 0.0), so that a REML fit and the ML
    refit behind a profile or a likelihood-ratio test share one program."""

    def run(design, reml_weight, free):
        fit = fit_design(design, reml_weight, gtol, max_iter, inference=True, free=free)
        return {name: value for name, value in fit._asdict().items() if value is not None}

    out = call_quick("fit_design", run, (design, np.float64(bool(reml)), np.asarray(free, bool)),
                     static=(float(gtol), int(max_iter)), lapack=large_lapack_calls(design))
    return FitArrays(**out)


def fit_arrays(design: Design, reml: bool = True, *, gtol: float = 1e-6, max_iter: int = 200) -> FitArrays:
    """Fit the LMM described by ``design`` by REML (default) or ML; a pure, jit-compiled function.

    Differentiable with respect to the design's arrays (``y``, ``X``, ``Z``, ``mask`` as observation
    weights) by the implicit function theorem, in forward and reverse mode, and composable with
    `jax.vmap`. Run it in float64 (``with jaxlmm.float64():``).

    Examples:
        >>> import jax, jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> design = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).design
        >>> with jaxlmm.float64():
        ...     fit = jaxlmm.fit_arrays(design)
        ...     slope_grad = jax.grad(lambda y: jaxlmm.fit_arrays(design.replace(y=y)).beta[1])(design.y)
        >>> round(float(fit.beta[1]), 4), slope_grad.shape
        (10.4673, (180,))
    """
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(design)):
        return _fit_design_jit(design, bool(reml), float(gtol), int(max_iter))  # traced: the caller's program
    # Called on data: near the memory-map limit, compiled programs are released first (a loop over
    # many shapes, or over ``max_iter``, compiles one program each: about 1,100 maps for a crossed
    # model, and LLVM aborted the process after a few dozen of them).
    release_if_needed()
    program = _fit_design_classic if classic_emitters_pay(design) else _fit_design_default
    with one_lapack_thread(large_lapack_calls(design)):
        return jax.block_until_ready(program(design, bool(reml), float(gtol), int(max_iter)))


@partial(jax.jit, static_argnames=("reml",))  # no compiler options: often nested in a caller's jit
def deviance(design: Design, theta: jax.Array, reml: bool = True) -> jax.Array:
    """The objective a fit minimises, as lme4's ``devFunOnly``: −2 × the REML (or ML) log-likelihood
    at relative covariance parameters ``theta``, with β and σ² profiled out. Pure, jit-compiled,
    differentiable in ``theta`` and in the design's arrays, and vmappable; ``−0.5 × deviance`` at
    the fitted θ is the fit's ``llf``. Run it in float64 (``with jaxlmm.float64():``).

    Examples:
        >>> import jax, numpy as np, jaxlmm
        >>> m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
        >>> r = m.fit()
        >>> with jaxlmm.float64():
        ...     dev = float(jaxlmm.deviance(m.design, r.theta))
        ...     slope = np.asarray(jax.grad(jaxlmm.deviance, argnums=1)(m.design, r.theta))
        >>> round(dev, 4), bool(np.abs(slope).max() < 1e-4)
        (1743.6283, True)
    """
    pre, stats = design_stats(design)
    lambda_index = jnp.asarray(design.lambda_index_array)
    if design.resid_design is not None:  # theta is (θ, δ)
        dev = VarianceObjective(design.lambda_index, design.n_groups)(jnp.asarray(theta),
                                                                     (_variance_rows(design, pre), reml, None))
    else:
        dev = profiled_deviance(jnp.asarray(theta), stats, lambda_index, reml)
    return dev + pre.logdet_gram if reml else dev
