"""Profile likelihood: the ML deviance with one parameter held fixed and all others re-optimised.

The parameters are lme4's: the standard deviations and correlations of the random effects and
the residual standard deviation σ (lme4's "sdcor" scale), then the fixed effects. As lme4's
``profile`` and ``confint``, the likelihood profiled is the ML likelihood, also for a REML fit
(which is refitted by ML first). For a parameter ψ_j held at v,

    ζ(v) = sign(v − ψ̂_j) · sqrt(D(v) − D̂),

with D(v) the minimum of the ML deviance over the other parameters; a 1 − α profile interval is
{v : |ζ(v)| ≤ z_{1−α/2}}. The constrained minimisations are Newton solves (`minimize_newton`),
run over every (parameter, value) pair of a call in one program. The end points are found by a safeguarded
Newton iteration on ζ, whose derivative comes free from the envelope theorem:
D'(v) = ∂deviance/∂ψ_j at the constrained optimum.

Variance parameters are re-optimised in an unconstrained form: standard deviations and σ as
exp(u) (positive, so a held correlation keeps its sign; a standard deviation whose optimum is 0 is
approached until the deviance no longer changes), correlations as tanh(u). Fixed effects are profiled in θ with β and σ² profiled out analytically:
holding cᵀβ̃ = t in the penalised least squares adds (cᵀβ̃̂ − t)² / (cᵀA⁻¹c) to the PWRSS.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _linalg
from ._compile_options import jit_with
from ._config import float64
from ._design import theta_on_diagonal, theta_positions
from ._fit import _variance_rows, _varpar, design_stats
from ._kernels import LOG_2PI, deviance_at_scale, penalised_solution, relative_factor, residual_dof
from ._lapack_threads import one_lapack_thread
from ._optimize import minimize_newton
from ._variance_model import VarianceRows, variance_stats
from .errors import ConvergenceWarning, DataError

SD, COR, SIGMA, DELTA = 0, 1, 2, 3
# Constrained refits of a boundary fit start a standard deviation at 0 this far from 0 (relative to
# σ): at exactly 0 the deviance's gradient in it vanishes by symmetry and Newton could not leave.
BOUNDARY_START = 1e-2


class PointSolution(NamedTuple):
    """One constrained minimisation: deviance, its derivative in the held value, all parameters
    at the constrained optimum (sdcor variance parameters then β), the optimiser's variables (for a
    warm start) and convergence."""

    deviance: jax.Array
    slope: jax.Array
    params: jax.Array
    start: jax.Array
    converged: jax.Array


def parameter_kinds(lambda_index: np.ndarray, n_delta: int = 0) -> np.ndarray:
    """SD or COR per θ (by its position in Λ), then SIGMA, then DELTA per residual-variance parameter."""
    kinds = np.append(np.where(theta_on_diagonal(lambda_index), SD, COR), SIGMA)
    return np.append(kinds, np.full(n_delta, DELTA)).astype(np.int32)


def stats_at(source, delta: jax.Array, n_groups: int):
    """The sufficient statistics at the residual-variance parameters δ: ``source`` itself for a model
    without a variance model, else `variance_stats` of its rows (`VarianceRows`)."""
    if isinstance(source, VarianceRows):
        return variance_stats(source, delta, n_groups)
    return source


def theta_to_sdcor(theta: jax.Array, sigma: jax.Array, lambda_index: np.ndarray) -> jax.Array:
    """(θ, σ) → ψ: for each θ the standard deviation or correlation it stands for, then σ."""
    idx = np.asarray(lambda_index)
    lam = relative_factor(theta, jnp.asarray(idx))
    cov = lam @ lam.T
    sd_rel = jnp.sqrt(jnp.diagonal(cov))
    out = []
    for r, c in zip(*theta_positions(idx)):
        if r == c:
            out.append(sigma * sd_rel[r])
        else:
            denom = sd_rel[r] * sd_rel[c]
            out.append(jnp.where(denom > 0, cov[r, c] / jnp.where(denom > 0, denom, 1.0), 0.0))
    return jnp.stack(out + [sigma])


def sdcor_to_theta(psi: jax.Array, lambda_index: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """ψ → (θ, σ): Λ = diag(sd/σ) · chol(C) with C the correlation matrix of the random effects."""
    idx = np.asarray(lambda_index)
    q = idx.shape[0]
    sigma = psi[-1]
    sd = psi[np.diagonal(idx)]
    corr = jnp.eye(q, dtype=psi.dtype)
    for r in range(q):
        for c in range(r):
            if idx[r, c] >= 0:
                corr = corr.at[r, c].set(psi[idx[r, c]]).at[c, r].set(psi[idx[r, c]])
    lam = (sd / sigma)[:, None] * _linalg.cholesky(corr)
    rows, cols = theta_positions(idx)
    return lam[rows, cols], sigma


def _nuisance(u: jax.Array, kinds: np.ndarray) -> jax.Array:
    kinds = jnp.asarray(kinds)
    return jnp.where(kinds == COR, jnp.tanh(u), jnp.where(kinds == DELTA, u, jnp.exp(u)))


def nuisance_start(psi: jax.Array, kinds: np.ndarray, sd_floor: jax.Array) -> jax.Array:
    """The unconstrained variables whose `_nuisance` image is ``psi``; standard deviations below
    ``sd_floor`` (a fit on the boundary) start at ``sd_floor``, off the boundary."""
    kinds = jnp.asarray(kinds)
    cor = jnp.arctanh(jnp.clip(psi, -1.0 + 1e-9, 1.0 - 1e-9))
    positive = jnp.where(kinds == SD, jnp.maximum(psi, sd_floor), psi)
    return jnp.where(kinds == COR, cor, jnp.where(kinds == DELTA, psi, jnp.log(jnp.maximum(positive, 1e-300))))


def ml_deviance_sdcor(psi: jax.Array, source, lambda_index: np.ndarray, n_groups: int = 0) -> jax.Array:
    """ML deviance (−2 log-likelihood, β profiled out) at the sdcor parameters ψ (then δ, if any)."""
    k = int(np.max(np.asarray(lambda_index))) + 1
    theta, sigma = sdcor_to_theta(psi[: k + 1], lambda_index)
    stats = stats_at(source, psi[k + 1:], n_groups)
    return deviance_at_scale(theta, sigma * sigma, stats, jnp.asarray(lambda_index), False)


def _beta(sol, pre_b0, pre_R_inv):
    return pre_b0 + pre_R_inv @ sol.beta


def _variance_point(source, pre_b0, pre_R_inv, which, value, u0, *, lambda_index: tuple, n_groups: int, gtol: float,
                    max_iter: int):
    """Hold variance parameter ``which`` at ``value``; minimise the ML deviance over the others."""
    idx = np.asarray(lambda_index)
    k = int(idx.max()) + 1
    kinds = parameter_kinds(idx, u0.shape[0] - k - 1)
    held = jnp.arange(kinds.shape[0]) == which

    def psi_of(u, v):
        return jnp.where(held, v, _nuisance(u, kinds))

    opt = minimize_newton(
        lambda u: ml_deviance_sdcor(psi_of(u, value), source, idx, n_groups),
        u0,
        jnp.zeros(u0.shape, bool),
        gtol=gtol,
        max_iter=max_iter,
    )
    u = jax.lax.stop_gradient(opt.x)
    slope = jax.grad(lambda v: ml_deviance_sdcor(psi_of(u, v), source, idx, n_groups))(value)
    psi = psi_of(u, value)
    theta, sigma = sdcor_to_theta(psi[: k + 1], idx)
    stats = stats_at(source, psi[k + 1:], n_groups)
    beta = _beta(penalised_solution(theta, stats, jnp.asarray(idx)), pre_b0, pre_R_inv)
    params = jnp.concatenate([theta_to_sdcor(theta, sigma, idx), psi[k + 1:], beta])
    return PointSolution(opt.fun, slope, params, u, opt.converged)


def _fixed_point(source, pre_b0, pre_R_inv, which, value, theta0, *, lambda_index: tuple, n_groups: int, gtol: float,
                 max_iter: int):
    """Hold β_which at ``value``; minimise the ML deviance over θ and δ (β's others and σ² profiled out)."""
    idx = np.asarray(lambda_index)
    li = jnp.asarray(idx)
    k = int(idx.max()) + 1
    c = pre_R_inv[which]  # β_which = b0_which + c · β̃

    def constrained(phi, v):
        theta, stats = phi[:k], stats_at(source, phi[k:], n_groups)
        n = residual_dof(stats, False)
        sol = penalised_solution(theta, stats, li)
        a_inv_c = _linalg.cho_solve(sol.A_chol, c)
        gap = c @ sol.beta - (v - pre_b0[which])
        pwrss = sol.pwrss + gap * gap / (c @ a_inv_c)
        return sol, a_inv_c, gap, pwrss, n, stats

    def deviance(phi, v):
        sol, _, _, pwrss, n, stats = constrained(phi, v)
        return sol.logdet_L + n * (1.0 + LOG_2PI + jnp.log(pwrss / n)) - stats.sum_log_weights

    snappable = jnp.asarray(np.concatenate([theta_on_diagonal(idx), np.zeros(theta0.shape[0] - k, bool)]))
    opt = minimize_newton(lambda t: deviance(t, value), theta0, snappable, gtol=gtol, max_iter=max_iter)
    phi = jax.lax.stop_gradient(opt.x)
    slope = jax.grad(deviance, argnums=1)(phi, value)
    sol, a_inv_c, gap, pwrss, n, _ = constrained(phi, value)
    beta_tilde = sol.beta - a_inv_c * gap / (c @ a_inv_c)
    beta = pre_b0 + pre_R_inv @ beta_tilde
    params = jnp.concatenate([theta_to_sdcor(phi[:k], jnp.sqrt(pwrss / n), idx), phi[k:], beta])
    return PointSolution(opt.fun, slope, params, phi, opt.converged)


@partial(jit_with, kind="quick", static_argnames=("lambda_index", "fixed", "n_groups", "gtol", "max_iter"))
def solve_points(stats, pre_b0, pre_R_inv, which, values, starts, *, lambda_index: tuple, fixed: bool,
                 n_groups: int = 0, gtol: float = 1e-8, max_iter: int = 100) -> PointSolution:
    """Constrained minimisations, one after another (`lax.map`) over (``which``, ``values``,
    ``starts``) rows. A `vmap` ran them at once, but tracing and compiling the vmapped Newton loop took
    0.9 s more on 2 CPU cores (first sleepstudy profile intervals 3.9 -> 2.75 s), for a run time of
    milliseconds either way."""
    point = _fixed_point if fixed else _variance_point
    one = partial(point, lambda_index=lambda_index, n_groups=n_groups, gtol=gtol, max_iter=max_iter)
    return jax.lax.map(lambda row: one(stats, pre_b0, pre_R_inv, *row), (which, values, starts))


@partial(jit_with, kind="quick", static_argnames=("lambda_index",))
def _ml_point(theta, sigma, delta, varpar_cov, *, lambda_index: tuple):
    """ψ̂ (then δ̂) at the ML fit, the standard errors of ψ̂ (the delta method from the covariance of
    the variance parameters `varpar`: (co)variances, σ², δ), and the optimiser's variables."""
    idx = np.asarray(lambda_index)
    psi = jnp.concatenate([theta_to_sdcor(theta, sigma, idx), delta])
    rows, cols = theta_positions(idx)
    k = len(rows)

    def sdcor_of_varpar(varpar):  # ψ as a function of (Var, Cov ..., σ², δ)
        var = {int(r): varpar[j] for j, (r, c) in enumerate(zip(rows, cols)) if r == c}
        out = [jnp.sqrt(var[int(r)]) if r == c else varpar[j] / jnp.sqrt(var[int(r)] * var[int(c)])
               for j, (r, c) in enumerate(zip(rows, cols))]
        return jnp.concatenate([jnp.stack(out + [jnp.sqrt(varpar[k])]), varpar[k + 1:]])

    varpar = jnp.concatenate([_varpar(theta, sigma**2, jnp.asarray(idx), rows, cols), delta])
    jac = jax.jacfwd(sdcor_of_varpar)(varpar)
    se = jnp.sqrt(jnp.abs(jnp.diagonal(jac @ varpar_cov @ jac.T)))
    return psi, se, nuisance_start(psi, parameter_kinds(idx, delta.shape[0]), BOUNDARY_START * sigma)


_design_stats = jit_with(design_stats, "quick")


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` with its first row repeated up to ``size`` rows (a batch padded to its bucket)."""
    return np.concatenate([a, np.repeat(a[:1], size - len(a), axis=0)])


def _bucket(n: int) -> int:
    """Pad batches to a power of two (at least 8) so that few shapes are compiled."""
    return max(8, 1 << (int(n) - 1).bit_length())


class Profiler:
    """Profiles of one model's ML likelihood: evaluation at given values, interval end points.

    Built from a fit (a REML fit is refitted by ML). ``names`` are the profiled parameters: the
    random effects' ``SD(...)``/``Corr(...)``, ``sigma``, then the fixed effects.
    """

    def __init__(self, results):
        model = results.model
        ml = results if not results.reml else model.fit(reml=False, warn=False)
        if not ml.converged:
            warnings.warn(f"the ML refit that profiles are based on did not converge (largest gradient "
                          f"{ml.grad_norm:.2g}); profiles and profile intervals may be off.", ConvergenceWarning,
                          stacklevel=4)
        self.ml = ml
        design = model.design
        self.lambda_index = tuple(map(tuple, design.lambda_index_array.tolist()))
        idx = design.lambda_index_array
        n_delta = design.n_delta
        self.n_groups = design.n_groups
        self.kinds = parameter_kinds(idx, n_delta)
        self.n_var = self.kinds.shape[0]
        self.sigma_index = self.n_var - 1 - n_delta
        with float64():
            pre, stats = _design_stats(design)
            # a residual-variance model's statistics change with δ: the profile reduces its rows
            self._stats = stats if design.resid_design is None else _variance_rows(design, pre)
            self._b0, self._R_inv = pre.b0, pre.R_inv
            theta_hat = jnp.asarray(ml.theta)
            delta_hat = np.asarray(ml.vcomp.to_numpy()[len(ml.vcomp) - n_delta:] if n_delta else np.zeros(0))
            psi_hat, se_var, u_hat = _ml_point(theta_hat, jnp.sqrt(ml.scale), jnp.asarray(delta_hat),
                                               ml.cov_vcomp.to_numpy(), lambda_index=self.lambda_index)
            psi_hat, se_var, self._u_hat = np.asarray(psi_hat), np.asarray(se_var), np.asarray(u_hat)
        self.estimate = np.concatenate([psi_hat, ml.fe_params.to_numpy()])
        self.base = -2.0 * ml.llf
        self._theta_hat = np.concatenate([
            np.where(theta_on_diagonal(idx), np.maximum(np.asarray(theta_hat), BOUNDARY_START), np.asarray(theta_hat)),
            delta_hat])
        var_names = []
        for name in model.varpar_names[: len(model.varpar_names) - 1 - n_delta]:
            kind = "SD" if name.startswith("Var(") else "Corr"
            var_names.append(kind + name[name.index("("):])
        self.names = var_names + ["sigma"] + list(model.resid_param_names) + list(model.exog_names)
        # Scale for first guesses of the end points: standard errors (a parameter on the boundary has
        # none: a tenth of its size is used).
        se_fe = ml.bse_fe.to_numpy()
        self.scale = np.concatenate([se_var, se_fe])
        bad = ~np.isfinite(self.scale) | (self.scale <= 0)
        self.scale[bad] = np.maximum(np.abs(self.estimate[bad]), 1.0) * 0.1
        self.lower = np.full(len(self.names), -np.inf)
        self.upper = np.full(len(self.names), np.inf)
        self.lower[: self.n_var][self.kinds == SD] = 0.0
        self.lower[: self.n_var][self.kinds == COR] = -1.0
        self.upper[: self.n_var][self.kinds == COR] = 1.0
        self.lower[self.sigma_index] = 0.0

    def index(self, param) -> int:
        """Position of a parameter given by name or position (clear error otherwise)."""
        if isinstance(param, (int, np.integer)) and not isinstance(param, bool):
            if 0 <= int(param) < len(self.names):
                return int(param)
            raise DataError(f"parameter position {param} is out of range: there are {len(self.names)} "
                            f"profiled parameters, {self.names}.")
        if isinstance(param, str) and param in self.names:
            return self.names.index(param)
        if isinstance(param, str):  # lme4's names: .sig01, .sig02, ..., .sigma, (Intercept)
            if param == ".sigma":
                return self.sigma_index
            if param.startswith(".sig") and param[4:].isdigit() and 1 <= int(param[4:]) <= self.sigma_index:
                return int(param[4:]) - 1
            if param == "(Intercept)" and "Intercept" in self.names[self.n_var:]:
                return self.n_var + self.names[self.n_var:].index("Intercept")
        raise DataError(f"cannot profile {param!r}: it is not a parameter of this model. Choose one of "
                        f"{self.names} (or its position).")

    def evaluate(self, which: np.ndarray, values: np.ndarray, starts: list | None = None) -> dict:
        """Constrained minima at (which[i], values[i]); ``starts`` warm-starts each (None: the ML fit)."""
        which = np.asarray(which, dtype=np.int32)
        values = np.asarray(values, dtype=float)
        n = len(which)
        out = {"deviance": np.full(n, np.nan), "slope": np.full(n, np.nan), "converged": np.zeros(n, bool),
               "params": np.full((n, len(self.names)), np.nan), "start": [None] * n}
        parts = []
        for fixed in (False, True):
            rows = np.flatnonzero((which >= self.n_var) == fixed)
            if rows.size == 0:
                continue
            default = self._theta_hat if fixed else self._u_hat
            start = np.stack([default if starts is None or starts[i] is None else starts[i] for i in rows])
            local = which[rows] - (self.n_var if fixed else 0)
            size = _bucket(rows.size)
            inputs = [_pad_rows(a, size) for a in (local, values[rows], start)]
            parts.append((rows, partial(self._solve, fixed, *inputs)))
        # The variance and fixed-effect programs run in two threads: the first compilation of one
        # (XLA releases the GIL) overlaps the tracing and compilation of the other.
        if len(parts) > 1:
            with ThreadPoolExecutor(len(parts)) as pool:
                solutions = [f.result() for f in [pool.submit(run) for _, run in parts]]
        else:
            solutions = [run() for _, run in parts]
        for (rows, _), sol in zip(parts, solutions):
            out["deviance"][rows] = sol.deviance[: rows.size]
            out["slope"][rows] = sol.slope[: rows.size]
            out["converged"][rows] = sol.converged[: rows.size]
            out["params"][rows] = sol.params[: rows.size]
            for i, r in enumerate(rows):
                out["start"][r] = sol.start[i]
        out["zeta"] = np.sign(values - self.estimate[which]) * np.sqrt(np.clip(out["deviance"] - self.base, 0.0, None))
        return out

    def _solve(self, fixed: bool, which: np.ndarray, values: np.ndarray, starts: np.ndarray) -> PointSolution:
        """`solve_points` on one padded batch (NumPy arrays); safe to call from a worker thread."""
        with float64(), one_lapack_thread():
            sol = solve_points(self._stats, self._b0, self._R_inv, jnp.asarray(which), jnp.asarray(values),
                               jnp.asarray(starts), lambda_index=self.lambda_index, fixed=fixed, n_groups=self.n_groups)
            return jax.tree_util.tree_map(np.asarray, sol)

    def end_points(self, which: np.ndarray, zeta: float, max_iter: int = 50, tol: float = 1e-9) -> tuple:
        """Values v with ζ(v) = −zeta and +zeta for each parameter in ``which``: (lower, upper, ok).

        A safeguarded Newton iteration on ζ (bracketed by bisection once a value beyond the end
        point is known). Where ζ never reaches the level before a bound (a standard deviation at 0,
        a correlation at ±1), the end point is the bound.
        """
        which = np.asarray(which, dtype=np.int32)
        m = len(which)
        side = np.concatenate([-np.ones(m), np.ones(m)])
        w = np.concatenate([which, which])
        target = side * zeta
        est = self.estimate[w]
        bound = np.where(side < 0, self.lower[w], self.upper[w])
        inner = est.copy()
        outer = np.full(2 * m, np.nan)
        v = np.clip(est + side * zeta * self.scale[w], self.lower[w], self.upper[w])
        v = np.where(v == est, est + side * 1e-3 * np.maximum(np.abs(est), 1.0), v)
        v = self._inside(v, w)
        done = np.zeros(2 * m, bool)
        result = np.full(2 * m, np.nan)
        ok = np.zeros(2 * m, bool)
        starts: list = [None] * (2 * m)
        for _ in range(max_iter):
            todo = np.flatnonzero(~done)
            if todo.size == 0:
                break
            ev = self.evaluate(w[todo], v[todo], [starts[i] for i in todo])
            for j, i in enumerate(todo):
                starts[i] = ev["start"][j]
            z = ev["zeta"]
            dz = ev["slope"] / (2.0 * np.maximum(np.abs(z), 1e-12))
            reached = side[todo] * z >= zeta
            inner[todo] = np.where(reached, inner[todo], v[todo])
            outer[todo] = np.where(reached, v[todo], outer[todo])
            close = np.abs(z - target[todo]) <= tol
            at_bound = ~reached & (v[todo] == self._inside(bound[todo], w[todo]))
            for j, i in enumerate(todo):
                if close[j] or at_bound[j] or not np.isfinite(z[j]):
                    done[i] = True
                    result[i] = bound[i] if at_bound[j] else v[i]
                    ok[i] = bool(np.isfinite(z[j]) and ev["converged"][j])
                    continue
                step = (target[i] - z[j]) / dz[j] if np.isfinite(dz[j]) and dz[j] > 0 else np.nan
                proposal = v[i] + step
                lo, hi = sorted((inner[i], outer[i])) if np.isfinite(outer[i]) else (None, None)
                if lo is not None:
                    if not (np.isfinite(proposal) and lo < proposal < hi):
                        proposal = 0.5 * (lo + hi)
                    if hi - lo <= 1e-12 * max(1.0, abs(v[i])):
                        done[i], result[i], ok[i] = True, v[i], bool(ev["converged"][j])
                        continue
                else:
                    if not np.isfinite(proposal) or side[i] * (proposal - v[i]) <= 0:
                        proposal = v[i] + side[i] * 2.0 * max(abs(v[i] - est[i]), 1e-6)
                    if side[i] * (proposal - bound[i]) > 0:
                        proposal = bound[i] if np.isfinite(bound[i]) else proposal
                        if self.kinds_of(w[i]) == SIGMA:
                            proposal = 0.5 * v[i]
                v[i] = self._inside(np.asarray([proposal]), w[i : i + 1])[0]
        return result[:m], result[m:], ok[:m] & ok[m:]

    def kinds_of(self, i: int) -> int:
        return int(self.kinds[i]) if i < self.n_var else -1

    def _inside(self, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Correlations at ±1 moved just inside (the Cholesky factor's derivative is infinite there)."""
        v = np.asarray(v, dtype=float).copy()
        kinds = np.array([self.kinds_of(i) for i in np.atleast_1d(w)])
        cor = kinds == COR
        v[cor] = np.clip(v[cor], -1.0 + 1e-10, 1.0 - 1e-10)
        return v
