"""Derivatives of the pure fit (`jaxlmm.fit_arrays`) with respect to its data, checked independently.

* forward (`jax.jvp`) and reverse (`jax.vjp`) derivatives of β̂, σ̂² and the random-effects
  covariance with respect to ``y``, ``X`` and the observation weights ``mask``, against central
  finite differences of full refits in a few random directions (sleepstudy, dietox);
* the implicit-function-theorem derivative of θ̂ against differentiating an unrolled,
  fixed-iteration Newton solve written here from the deviance kernel (dyestuff);
* jit ∘ vmap ∘ grad (per-response gradients) against a loop;
* a singular optimum (Dyestuff2, random-intercept variance 0): finite derivatives equal to those of
  the model without the random effect (ordinary least squares).

All in float64. Compilation dominates the runtime, so the number of distinct compiled functions is
kept small: one jitted jvp and one jitted vjp of all outputs serve every sleepstudy check, and one
jitted Jacobian serves both dyestuff-shaped data sets (dyestuff and Dyestuff2 have the same shape).

Finite differences: central, D(h) = (f(x + h v) − f(x − h v)) / 2h, Richardson-extrapolated
((4 D(h/2) − D(h)) / 3), with v scaled to the data (each entry of v is ~ one standard deviation of
the perturbed array) and h = 1e-4, i.e. a relative perturbation of ~1e-4 of the data's spread.
Tolerance: 2e-6, elementwise, relative to the largest entry of the same block of outputs (β̂, σ̂²,
cov_re); observed ≤ 3e-8 on sleepstudy. On dietox the reference itself is the limit: the optimiser
stops when the Newton decrement reaches the rounding level of the deviance, which there leaves
|∇θ| ≈ 1e-4 and θ̂ accurate to ~1e-6 relative, so differences of refits carry ~1e-5 relative error
in the smallest cov_re entries (observed ≤ 1.5e-6 of the block's largest entry; allowed 1e-5).
Against a Newton-polished optimum (|∇θ| ≈ 1e-11) the library's implicit derivative of θ̂ there is
accurate to ~1e-6 relative, closer than the refit differences.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import MixedLM
from jaxlmm._kernels import profiled_deviance, sufficient_stats

DATA = Path(__file__).parent / "data"
SLEEP = "Reaction ~ Days + (Days | Subject)"
DIETOX = "Weight ~ Time + (Time | Pig)"
DYE = "Yield ~ 1 + (1 | Batch)"

H = 1e-4  # finite-difference step, in units of the (data-scaled) direction
RTOL = 2e-6  # finite differences vs autodiff, relative to the largest entry of each output block
# dietox's refits stop with |∇θ| ≈ 1e-4 (θ̂ to ~1e-6 relative), so its finite-difference reference is
# only good to ~1.5e-6 of the block's largest entry (measured); allow 1e-5 there
RTOL_DIETOX = 1e-5


@pytest.fixture(autouse=True)
def _x64():
    with jaxlmm.float64():
        yield


def _design(formula, df):
    return MixedLM.from_formula(formula, df).design


@pytest.fixture(scope="module")
def sleep_design():
    return _design(SLEEP, jaxlmm.datasets.load("sleepstudy"))


# ---- helpers: one output vector, one jitted jvp and one jitted vjp per design shape ---------------
def _outputs(design, y, X, mask):
    """[β̂ (p), σ̂² (1), cov_re (q·q)] of the REML fit with the given arrays."""
    fit = jaxlmm.fit_arrays(design.replace(y=y, X=X, mask=mask))
    return jnp.concatenate([fit.beta, fit.sigma2[None], fit.cov_re.ravel()])


def _blocks(design):
    """Index slices of the output vector: β, σ², cov_re."""
    p, q = design.X.shape[1], design.Z.shape[1]
    return {"beta": slice(0, p), "sigma2": slice(p, p + 1), "cov_re": slice(p + 1, p + 1 + q * q)}


@jax.jit
def _jvp(design, y, X, mask, ty, tX, tmask):
    return jax.jvp(lambda y, X, m: _outputs(design, y, X, m), (y, X, mask), (ty, tX, tmask))


@jax.jit
def _vjp(design, y, X, mask, u):
    out, pullback = jax.vjp(lambda y, X, m: _outputs(design, y, X, m), y, X, mask)
    return out, pullback(u)


def _arrays(design):
    return jnp.asarray(design.y), jnp.asarray(design.X), jnp.asarray(design.mask)


def _central_difference(design, ty, tX, tmask, h=H):
    """Richardson-extrapolated central difference of full refits: (4 D(h/2) − D(h)) / 3, error O(h⁴)
    (plain D(h) has O(h²) ≈ 1e-5 relative error for β̂ along directions that move X's intercept column)."""
    y, X, mask = _arrays(design)

    def D(h):
        plus = _outputs(design, y + h * ty, X + h * tX, mask + h * tmask)
        minus = _outputs(design, y - h * ty, X - h * tX, mask - h * tmask)
        return np.asarray((plus - minus) / (2 * h))

    return (4 * D(h / 2) - D(h)) / 3


def _random_direction(design, rng, x_columns=None):
    """A direction in (y, X) with entries ~ each array's standard deviation (constant columns: 1)."""
    y, X = np.asarray(design.y), np.asarray(design.X)
    ty = rng.standard_normal(y.shape) * y.std()
    scale = np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    tX = rng.standard_normal(X.shape) * scale
    if x_columns is not None:
        tX = tX * np.isin(np.arange(X.shape[1]), x_columns)
    return ty, tX


def _assert_blocks_close(design, actual, expected, rtol=RTOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    for name, s in _blocks(design).items():
        scale = np.max(np.abs(expected[s]))
        np.testing.assert_allclose(actual[s], expected[s], rtol=0, atol=rtol * scale, err_msg=name)


# ---- forward and reverse mode vs finite differences ------------------------------------------------
@pytest.mark.parametrize(
    "seed, x_columns",
    [(0, []), (1, [1]), (2, [0, 1])],
    ids=["y", "y+X_slope", "y+X_all"],
)
def test_jvp_and_vjp_match_finite_differences(sleep_design, seed, x_columns):
    d = sleep_design
    rng = np.random.default_rng(seed)
    ty, tX = _random_direction(d, rng, x_columns)
    tmask = np.zeros(d.y.shape)
    y, X, mask = _arrays(d)
    fd = _central_difference(d, ty, tX, tmask)

    # forward mode: J v
    out, jv = _jvp(d, y, X, mask, ty, tX, tmask)
    assert np.all(np.isfinite(np.asarray(jv)))
    _assert_blocks_close(d, jv, fd)
    assert np.max(np.abs(np.asarray(jv))) > 1.0  # a non-trivial direction

    # reverse mode: uᵀ J v = <vjp(u), v>, for a random cotangent u on every output
    u = rng.standard_normal(out.shape)
    _, (gy, gX, gmask) = _vjp(d, y, X, mask, u)
    lhs = float(jnp.vdot(gy, ty) + jnp.vdot(gX, tX) + jnp.vdot(gmask, tmask))
    rhs = float(u @ fd)
    assert lhs == pytest.approx(rhs, rel=RTOL, abs=RTOL * float(np.abs(u) @ np.abs(fd)))
    # and each block's cotangent separately: β alone, σ² alone, cov_re alone
    for name, s in _blocks(d).items():
        u_block = np.zeros(out.shape)
        u_block[s] = u[s]
        _, (gy, gX, _) = _vjp(d, y, X, mask, u_block)
        lhs = float(jnp.vdot(gy, ty) + jnp.vdot(gX, tX))
        rhs = float(u_block @ fd)
        assert lhs == pytest.approx(rhs, rel=RTOL, abs=RTOL * float(np.abs(u_block) @ np.abs(fd))), name


def test_forward_and_reverse_jacobians_agree(sleep_design):
    """Full Jacobian of the outputs w.r.t. y: reverse (one vjp per output) = forward (jvp per basis
    direction, on a subset of rows) to rounding."""
    d = sleep_design
    y, X, mask = _arrays(d)
    n_out = sum(s.stop - s.start for s in _blocks(d).values())
    rev = np.stack([np.asarray(_vjp(d, y, X, mask, jnp.eye(n_out)[k])[1][0]) for k in range(n_out)])
    rows = [0, 17, 95, 179]
    for i in rows:
        e = np.zeros(d.y.shape)
        e[i] = 1.0
        _, fwd = _jvp(d, y, X, mask, e, np.zeros(d.X.shape), np.zeros(d.y.shape))
        np.testing.assert_allclose(np.asarray(fwd), rev[:, i], rtol=1e-9, atol=1e-12 * np.abs(rev).max())
    # β̂ is equivariant in y: d β̂ / d y applied to X's columns is the identity
    # (adding X c to y adds c to β̂ and leaves θ̂, σ̂² unchanged)
    p = d.X.shape[1]
    np.testing.assert_allclose(rev[:p] @ np.asarray(d.X), np.eye(p), atol=1e-10)
    np.testing.assert_allclose(rev[p:] @ np.asarray(d.X), 0.0, atol=1e-8 * np.abs(rev[p:]).max())


def test_jaxlmm_jit_equals_jax_jit(sleep_design):
    """`jaxlmm.jit` (jaxlmm's compile options on the caller's program) computes the same gradient as
    ``jax.jit``, quick or not, called directly or as a decorator with ``jax.jit``'s arguments."""
    d = sleep_design

    def slope(y):
        return jaxlmm.fit_arrays(d.replace(y=y)).beta[1]

    with jaxlmm.float64():
        expected = np.asarray(jax.jit(jax.grad(slope))(d.y))
        quick = np.asarray(jaxlmm.jit(jax.grad(slope))(d.y))
        classic = np.asarray(jaxlmm.jit(quick=False)(jax.grad(slope))(d.y))
        scaled = jaxlmm.jit(lambda y, k: k * jax.grad(slope)(y), static_argnums=1)(d.y, 2)
    np.testing.assert_allclose(quick, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(classic, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(scaled), 2 * expected, rtol=1e-9, atol=1e-12)


def test_derivative_with_respect_to_observation_weight(sleep_design):
    """∂(outputs)/∂wᵢ for one observation's weight (mask entry), forward and reverse, vs refits with
    wᵢ = 1 ± h."""
    d = sleep_design
    y, X, mask = _arrays(d)
    i = 37
    tmask = np.zeros(d.y.shape)
    tmask[i] = 1.0
    zeros_y, zeros_X = np.zeros(d.y.shape), np.zeros(d.X.shape)
    fd = _central_difference(d, zeros_y, zeros_X, tmask)
    _, jv = _jvp(d, y, X, mask, zeros_y, zeros_X, tmask)
    _assert_blocks_close(d, jv, fd)
    _, (_, _, gmask) = _vjp(d, y, X, mask, jnp.eye(jv.shape[0])[1])  # d slope / d w, all observations
    assert float(gmask[i]) == pytest.approx(float(jv[1]), rel=1e-9)
    assert abs(float(jv[1])) > 1e-3


def test_dietox_derivatives_match_finite_differences():
    d = _design(DIETOX, jaxlmm.datasets.load("dietox"))
    rng = np.random.default_rng(11)
    ty, tX = _random_direction(d, rng, [1])
    tmask = np.zeros(d.y.shape)
    y, X, mask = _arrays(d)
    fit = jaxlmm.fit_arrays(d)
    assert bool(fit.converged) and not bool(np.any(fit.theta_at_bound))
    fd = _central_difference(d, ty, tX, tmask)
    _, jv = _jvp(d, y, X, mask, ty, tX, tmask)
    _assert_blocks_close(d, jv, fd, rtol=RTOL_DIETOX)


# ---- jit ∘ vmap ∘ grad ----------------------------------------------------------------------------
def test_vmap_of_grad_over_responses_equals_loop(sleep_design):
    d = sleep_design
    rng = np.random.default_rng(3)
    Ys = np.asarray(d.y)[None, :] + rng.standard_normal((3, d.y.shape[0])) * 20.0

    # the slope's variance, cov_re[1, 1] (output 6): unlike β̂ on this balanced design (see
    # test_balanced_design_slope_derivative_is_ols), its gradient changes with y
    per_response = jax.jit(jax.vmap(jax.grad(lambda y: jaxlmm.fit_arrays(d.replace(y=y)).cov_re[1, 1])))
    batched = np.asarray(per_response(Ys))
    assert batched.shape == Ys.shape and np.all(np.isfinite(batched))

    _, X, mask = _arrays(d)
    e_slope_var = jnp.zeros(7).at[6].set(1.0)
    for k in range(Ys.shape[0]):
        out, (gy, _, _) = _vjp(d, jnp.asarray(Ys[k]), X, mask, e_slope_var)
        np.testing.assert_allclose(batched[k], np.asarray(gy), rtol=1e-8, atol=1e-10 * np.abs(gy).max())
    # the responses differ, so do their gradients (the vmap did not broadcast one answer)
    assert np.max(np.abs(batched[0] - batched[1])) > 1e-3 * np.max(np.abs(batched[0]))


def test_balanced_design_slope_derivative_is_ols(sleep_design):
    """sleepstudy is balanced (every subject: days 0–9) and X's columns lie in each subject's Z, so
    GLS = OLS for every θ: d β̂ / d y is the OLS operator (XᵀX)⁻¹Xᵀ whatever y is — including θ̂'s
    contribution, which must vanish."""
    d = sleep_design
    X = np.asarray(d.X)
    ols = np.linalg.solve(X.T @ X, X.T)
    y, Xj, mask = _arrays(d)
    y_other = y + np.random.default_rng(4).standard_normal(y.shape) * 20.0
    for yy in (y, y_other):
        for k in range(2):
            _, (gy, _, _) = _vjp(d, yy, Xj, mask, jnp.zeros(7).at[k].set(1.0))
            np.testing.assert_allclose(np.asarray(gy), ols[k], rtol=0, atol=1e-10 * np.abs(ols[k]).max())


# ---- implicit derivative vs an unrolled Newton solve -------------------------------------------------
NEWTON_ITERATIONS = 30


def _unrolled_theta(design, y):
    """θ̂ by a fixed number of plain Newton steps θ ← θ − H⁻¹ g on the REML profiled deviance, written
    independently of the library's optimiser; differentiating it differentiates through every step."""
    X, Z, group, mask = (jnp.asarray(a) for a in (design.X, design.Z, design.group, design.mask))
    # subtract the least-squares fit (an exact reparameterisation: the deviance depends on y − Xβ only)
    y = y - X @ jnp.linalg.lstsq(X, y)[0]
    stats = sufficient_stats(y, X, Z, group, mask, design.n_groups)
    lambda_index = jnp.asarray(design.lambda_index_array)

    def f(theta):
        return profiled_deviance(theta, stats, lambda_index, True)

    def step(_, theta):
        return theta - jnp.linalg.solve(jax.hessian(f)(theta), jax.grad(f)(theta))

    theta0 = jnp.ones(design.n_theta, y.dtype)
    return jax.lax.fori_loop(0, NEWTON_ITERATIONS, step, theta0)


@jax.jit
def _dye_jacobian(design, y):
    """(θ̂, β̂₀, σ̂²) and their Jacobian w.r.t. y, for a (1 | group) model — reverse mode."""

    def f(y):
        fit = jaxlmm.fit_arrays(design.replace(y=y))
        return jnp.stack([fit.theta[0], fit.beta[0], fit.sigma2]), fit.theta_at_bound[0]

    jac, at_bound = jax.jacrev(f, has_aux=True)(y)
    return f(y)[0], jac, at_bound


def test_implicit_derivative_equals_unrolled_newton():
    d = _design(DYE, jaxlmm.datasets.load("dyestuff"))
    y = jnp.asarray(d.y)
    values, jac, at_bound = _dye_jacobian(d, y)
    assert not bool(at_bound) and float(values[0]) > 0.1

    # reverse mode through 30 Newton steps (one compilation: θ̂ itself comes back as the aux output)
    def theta_unrolled(y):
        theta = _unrolled_theta(d, y)[0]
        return theta, theta

    jac_unrolled, theta_value = jax.jit(jax.jacrev(theta_unrolled, has_aux=True))(y)
    jac_unrolled = np.asarray(jac_unrolled)
    np.testing.assert_allclose(float(theta_value), float(values[0]), rtol=1e-8)

    # d θ̂ / d y, all 30 rows: the library's implicit derivative = the unrolled solve's derivative
    np.testing.assert_allclose(np.asarray(jac[0]), jac_unrolled, rtol=0, atol=1e-8 * np.abs(jac_unrolled).max())
    # ... and so in a random direction
    v = np.random.default_rng(5).standard_normal(y.shape)
    assert float(jac[0] @ v) == pytest.approx(float(jac_unrolled @ v), rel=1e-7, abs=1e-9 * np.abs(jac_unrolled).sum())
    assert np.max(np.abs(jac_unrolled)) > 1e-4  # θ̂ really depends on y


# ---- a singular optimum ----------------------------------------------------------------------------
def test_singular_fit_derivatives_are_finite_and_equal_ols():
    """Dyestuff2: the between-batch variance is estimated as exactly 0. There θ̂ is held at the boundary,
    so the fit is ordinary least squares and its derivatives are OLS's: d β̂/d y = (XᵀX)⁻¹Xᵀ (here 1/n
    for every row), d θ̂/d y = 0 and, by REML, d σ̂²/d y = 2 (y − X β̂) / (n − p)."""
    df = pd.read_csv(DATA / "dyestuff2.csv")
    d = _design(DYE, df)
    y, X = np.asarray(d.y), np.asarray(d.X)
    n, p = X.shape
    fit = jaxlmm.fit_arrays(d)
    assert bool(fit.theta_at_bound[0]) and float(fit.theta[0]) == 0.0

    values, jac, at_bound = _dye_jacobian(d, jnp.asarray(y))
    jac = np.asarray(jac)
    assert bool(at_bound)
    assert np.all(np.isfinite(jac))
    ols_beta = np.linalg.solve(X.T @ X, X.T @ y)
    resid = y - X @ ols_beta
    np.testing.assert_allclose(float(values[1]), ols_beta[0], rtol=1e-12)
    np.testing.assert_allclose(float(values[2]), resid @ resid / (n - p), rtol=1e-10)
    np.testing.assert_array_equal(jac[0], 0.0)
    np.testing.assert_allclose(jac[1], np.linalg.solve(X.T @ X, X.T)[0], rtol=1e-10)
    np.testing.assert_allclose(jac[2], 2 * resid / (n - p), rtol=1e-8, atol=1e-12)

    # small perturbations keep the optimum on the boundary, so refits agree with the derivative too
    v = np.random.default_rng(9).standard_normal(n) * y.std()
    h = H
    plus = jaxlmm.fit_arrays(d.replace(y=y + h * v))
    minus = jaxlmm.fit_arrays(d.replace(y=y - h * v))
    assert bool(plus.theta_at_bound[0]) and bool(minus.theta_at_bound[0])
    fd_beta = (float(plus.beta[0]) - float(minus.beta[0])) / (2 * h)
    fd_sigma2 = (float(plus.sigma2) - float(minus.sigma2)) / (2 * h)
    assert jac[1] @ v == pytest.approx(fd_beta, rel=1e-8)
    assert jac[2] @ v == pytest.approx(fd_sigma2, rel=1e-6)
