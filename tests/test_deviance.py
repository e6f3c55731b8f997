"""`jaxlmm.deviance`, the objective as a pure function of θ (lme4's devFunOnly)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import jaxlmm
from tests.dense import cov_from_theta, dense_loglik

CASES = [("sleepstudy", "Reaction ~ Days + (Days | Subject)"), ("pastes", "strength ~ 1 + (1 | batch/cask)")]


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("name, formula", CASES)
def test_deviance_at_the_fit_is_minus_twice_llf(name, formula, reml):
    m = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(name))
    r = m.fit(reml=reml)
    with jaxlmm.float64():
        dev = float(jaxlmm.deviance(m.design, jnp.asarray(r.theta), reml))
        grad = np.asarray(jax.grad(jaxlmm.deviance, argnums=1)(m.design, jnp.asarray(r.theta), reml))
    assert dev == pytest.approx(-2.0 * r.llf, abs=1e-8)
    assert np.abs(grad[r.theta != 0]).max() < 1e-4  # a minimum (away from boundary entries)


@pytest.mark.parametrize("reml", [True, False])
def test_deviance_elsewhere_matches_the_dense_likelihood(reml):
    """At a θ that is not the optimum: −2 × the dense log-likelihood maximised over σ²."""
    m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
    d = m.design
    theta = np.array([0.7, 0.1, 0.3])
    with jaxlmm.float64():
        dev = float(jaxlmm.deviance(d, jnp.asarray(theta), reml))

    def negative(log_s2):
        s2 = np.exp(log_s2)
        return -dense_loglik(d.y, d.X, d.Z, d.group, cov_from_theta(theta, d.lambda_index_array, s2), s2, reml)

    best = minimize_scalar(negative, bounds=(0.0, 12.0), method="bounded", options={"xatol": 1e-10})
    assert dev == pytest.approx(2.0 * best.fun, abs=1e-6)


def test_deviance_vmaps_and_jits_like_a_loop():
    m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
    thetas = np.array([[1.0, 0.0, 1.0], [0.9, 0.05, 0.2], [0.5, -0.1, 0.4]])
    with jaxlmm.float64():
        batched = np.asarray(jax.vmap(lambda t: jaxlmm.deviance(m.design, t))(jnp.asarray(thetas)))
        looped = np.array([float(jaxlmm.deviance(m.design, jnp.asarray(t))) for t in thetas])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
