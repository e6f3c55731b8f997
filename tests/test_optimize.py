"""The Newton / quasi-Newton minimiser on its own: secant property, agreement of the two modes."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm._config import float64
from jaxlmm._fit import _Objective, design_stats
from jaxlmm._optimize import bfgs_update, minimize_newton


def test_bfgs_update_satisfies_the_secant_equation():
    with float64():
        H = jnp.array([[2.0, 0.3], [0.3, 1.0]])
        s, y = jnp.array([0.5, -0.2]), jnp.array([1.1, 0.4])
        H_new = bfgs_update(H, s, y)
        np.testing.assert_allclose(np.asarray(H_new @ s), np.asarray(y), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(H_new), np.asarray(H_new).T, atol=1e-14)
        assert np.all(np.linalg.eigvalsh(np.asarray(H_new)) > 0)
        # No positive curvature along the step: the approximation is kept.
        np.testing.assert_array_equal(np.asarray(bfgs_update(H, s, -y)), np.asarray(H))


def rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


@pytest.mark.parametrize("quasi_newton", [False, True])
def test_rosenbrock_minimum(quasi_newton):
    with float64():
        res = minimize_newton(rosenbrock, jnp.array([-1.2, 1.0, 0.8]), jnp.zeros(3, bool),
                              gtol=1e-9, quasi_newton=quasi_newton)
    assert bool(res.converged)
    np.testing.assert_allclose(np.asarray(res.x), 1.0, atol=1e-6)


@pytest.mark.parametrize("exact_start", [True, False])
def test_an_exact_final_evaluation_leaves_the_exact_hessian_at_the_minimum(exact_start):
    """``exact_final``: BFGS in one loop with the exact evaluations (one `lax.cond`), then an exact
    evaluation at the solution: the same minimum as the two loops, and the exact Hessian there —
    from an exact start or from a multiple of I."""
    with float64():
        x0, held = jnp.array([-1.2, 1.0, 0.8]), jnp.zeros(3, bool)
        two_loops = minimize_newton(rosenbrock, x0, held, gtol=1e-9, quasi_newton=True)
        one_loop = jax.jit(lambda x: minimize_newton(rosenbrock, x, held, gtol=1e-9, quasi_newton=True,
                                                     exact_final=True, exact_start=exact_start))(x0)
        exact = jax.hessian(rosenbrock)(one_loop.x)
    assert bool(one_loop.converged) and bool(two_loops.converged)
    np.testing.assert_allclose(np.asarray(one_loop.x), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(one_loop.hess), np.asarray(exact), rtol=1e-12)
    assert not np.allclose(np.asarray(two_loops.hess), np.asarray(jax.hessian(rosenbrock)(two_loops.x)), rtol=1e-3)


def test_quasi_newton_reaches_the_exact_newton_optimum_on_lmm_deviances():
    """Under vmap, over responses simulated from sleepstudy's fit: same deviance to rounding level."""
    df = jaxlmm.datasets.load("sleepstudy")
    model = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df)
    fit = model.fit()
    rng = np.random.default_rng(3)
    Y = np.asarray(model.design.y)[None, :] + rng.normal(0.0, 25.0, (16, model.nobs))
    objective = _Objective(tuple(map(tuple, model.design.lambda_index_array.tolist())))
    snappable = jnp.asarray(np.isfinite(model.design.theta_lower))
    with float64():
        stats = jax.vmap(lambda y: design_stats(model.design.replace(y=y))[1])(jnp.asarray(Y))

        def solve(s, quasi):
            return minimize_newton(lambda t: objective(t, (s, 1.0, None)), jnp.asarray(fit.theta), snappable,
                                   quasi_newton=quasi)

        exact = jax.jit(jax.vmap(lambda s: solve(s, False)))(stats)
        quasi = jax.jit(jax.vmap(lambda s: solve(s, True)))(stats)
    assert np.all(np.asarray(exact.converged)) and np.all(np.asarray(quasi.converged))
    np.testing.assert_allclose(np.asarray(quasi.fun), np.asarray(exact.fun), rtol=1e-13)
    np.testing.assert_allclose(np.asarray(quasi.x), np.asarray(exact.x), atol=1e-5)


def test_bfgs_from_an_indefinite_exact_start_converges():
    """Subjects × items (psycholing) from Λ = I, where the exact Hessian is indefinite: BFGS starts
    from its positive definite counterpart V|Λ|Vᵀ and reaches exact Newton's optimum (updating the
    indefinite matrix itself, it stalled at 200 iterations with a gradient of 1.4)."""
    df = pd.read_csv(Path(__file__).parent / "data" / "psycholing.csv")
    design = jaxlmm.MixedLM.from_formula("rt ~ c + (1 | subj) + (1 | item)", df).design
    objective = _Objective(design.lambda_index)
    with float64():
        stats = design_stats(design)[1]
        f = lambda t: objective(t, (stats, 0.0, None))  # noqa: E731
        theta0 = jnp.asarray(design.theta_start, jnp.float64)
        assert np.linalg.eigvalsh(np.asarray(jaxlmm.jit(jax.hessian(f))(theta0))).min() < 0
        snappable = jnp.ones(2, bool)
        exact = jaxlmm.jit(lambda t: minimize_newton(f, t, snappable))(theta0)
        quasi = jaxlmm.jit(lambda t: minimize_newton(f, t, snappable, quasi_newton=True))(theta0)
    assert bool(exact.converged) and bool(quasi.converged) and int(quasi.iterations) < 40
    assert float(quasi.fun) == pytest.approx(float(exact.fun), rel=1e-13)
    np.testing.assert_allclose(np.abs(np.asarray(quasi.x)), np.abs(np.asarray(exact.x)), rtol=1e-5)


@pytest.mark.parametrize("penalty, converges", [(1e-4, True), (1e4, False)])
def test_a_stall_at_the_rounding_floor_is_convergence_and_one_farther_out_is_not(penalty, converges):
    """f = 1 + 1000 (x − 1)² plus a penalty on any move from the start that autodiff does not see
    (as rounding error in f is invisible to the exact gradient): every Newton step is rejected until
    the trust region collapses. 1e-8 from the minimum (gradient 2e-5, above gtol; predicted decrease
    1e-13 of f) that is f's floor: converged. 1 from it (predicted decrease 1000): not converged."""
    start = 1.0 + (1e-8 if converges else 1.0)

    def f(x):
        moved = jax.lax.stop_gradient(jnp.sum(jnp.abs(x - start)))
        return 1.0 + 1e3 * jnp.sum((x - 1.0) ** 2) + penalty * moved

    with jaxlmm.float64():
        res = minimize_newton(f, jnp.array([start]), jnp.array([False]), gtol=1e-6)
    assert bool(res.converged) is converges
    assert float(jnp.max(jnp.abs(res.grad))) > 1e-6  # not by the gradient test


ORTHODONT_SLOPES = "distance ~ age + (age | Subject)"


def _orthodont_refit(name: str):
    """A response simulated from Orthodont's ``(age | Subject)`` fit (a parametric-bootstrap refit)."""
    return pd.read_csv(Path(__file__).parent / "data" / name)


def test_a_minimum_at_the_end_of_a_curved_valley_to_the_boundary_is_reached():
    """The slope's diagonal entry of Λ creeps towards 0 along a curved valley; Newton alone stopped
    at 200 iterations, unconverged, 3e-8 below the optimum. The boundary probe (`minimize_newton`'s
    ``probe_score``) reaches lme4's Nelder-Mead optimum (−217.8907564002; its default bobyqa stops
    at −217.8907593), on the boundary, singly and in a batch."""
    data = _orthodont_refit("orthodont_boundary_valley.csv")
    model = jaxlmm.MixedLM.from_formula(ORTHODONT_SLOPES, data)
    with pytest.warns(jaxlmm.errors.SingularFitWarning):
        fit = model.fit()
    assert fit.converged and fit.n_iter <= 30
    assert fit.theta[2] == 0.0
    assert fit.llf == pytest.approx(-217.8907564002, abs=1e-8)
    with pytest.warns(jaxlmm.errors.SingularFitWarning):
        batch = model.fit_many(np.column_stack([data["distance"], data["distance"] + 1.0]), progress=False)
    assert bool(np.all(batch.converged))
    np.testing.assert_allclose(np.asarray(batch.llf), fit.llf, atol=1e-8)


def test_the_boundary_probe_leaves_a_fit_with_an_interior_optimum_alone():
    """A refit whose Newton path passes near the boundary before reaching its optimum inside: a
    probe at iteration 12 while the fit was still making progress took it to a boundary point 0.19
    below lme4's optimum (−205.6729896815); probes wait for a crawl."""
    fit = jaxlmm.MixedLM.from_formula(ORTHODONT_SLOPES, _orthodont_refit("orthodont_interior_slow.csv")).fit()
    assert fit.converged and np.all(fit.theta != 0.0)
    assert fit.llf >= -205.6729896815 - 1e-8


@pytest.mark.parametrize("reml, lme4_llf", [(True, -221.3183429421), (False, -219.6058006339)])
def test_the_first_trust_radius_keeps_orthodonts_slopes_model_short(reml, lme4_llf):
    """From Λ = I, Orthodont's random slopes used to take 20 (REML) and 13 (ML) Newton iterations: the
    first steps overshot and the loop wandered round θᵢᵢ = 0 (`_optimize.FIRST_RADIUS`). lme4's values:
    `lmer(distance ~ age + (age | Subject), nlme::Orthodont)`, Nelder–Mead with maxfun = 1e5."""
    df = jaxlmm.datasets.load("orthodont")
    r = jaxlmm.MixedLM.from_formula("distance ~ age + (age | Subject)", df).fit(reml=reml)
    assert r.converged and r.n_iter <= 10
    assert r.llf >= lme4_llf - 1e-8
