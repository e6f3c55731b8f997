"""Shape buckets and the fit's own inference: padding changes nothing, models of one bucket share
one compiled program, and the information taken from the optimiser's Hessian equals autodiff's."""

import jax
import numpy as np
import pytest

import jaxlmm
from jaxlmm._buckets import GROUP_FLOOR, ROW_FLOOR, bucket_size, pad_design
from jaxlmm._fit import fit_arrays, fit_with_inference, inference

CASES = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", True),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", False),
    ("dietox", "Weight ~ Time + C(Evit) + (1 | Pig)", True),
]


def test_bucket_sizes_cover_and_stay_within_one_and_a_half():
    for n in list(range(1, 3000)) + [10**5 + 7, 3 * 2**20 + 1]:
        size = bucket_size(n, 128)
        assert size >= n and size >= 128
        assert n <= 128 or size <= 1.5 * n + 1


@pytest.mark.parametrize("name,formula,reml", CASES)
def test_padded_design_fits_like_the_unpadded_one(name, formula, reml):
    design = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(name)).design
    padded = pad_design(design)
    assert padded.y.shape[0] == bucket_size(design.y.shape[0], ROW_FLOOR) > design.y.shape[0]
    assert padded.n_groups == bucket_size(design.n_groups, GROUP_FLOOR) > design.n_groups
    with jaxlmm.float64():
        a = jax.tree.map(np.asarray, fit_arrays(design, reml))
        b = jax.tree.map(np.asarray, fit_arrays(padded, reml))
    m = design.n_groups
    for field in ("llf", "theta", "beta", "sigma2", "vcov_beta", "cov_re"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-7, atol=1e-9, err_msg=field)
    np.testing.assert_allclose(b.ranef[:m], a.ranef, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(b.ranef_cov[:m], a.ranef_cov, rtol=1e-7, atol=1e-9)
    assert np.all(b.ranef[m:] == 0.0)


@pytest.mark.parametrize("name,formula,reml", CASES + [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", False),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
])
def test_inference_from_the_optimisers_hessian_equals_autodiff_information(name, formula, reml):
    """The fit derives the information in (θ, σ²) from the profiled Hessian and P' (Schur complement);
    `inference` takes jax.hessian of the deviance at scale: both must agree."""
    m = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(name))
    r = m.fit(reml=reml, warn=False)
    with jaxlmm.float64():
        expected = [np.asarray(v) for v in inference(m.design, r.theta, np.asarray(r.scale), reml)]
    for got, want, label in zip(r._inference, expected, ("params_cov", "varpar_cov", "vcov_beta_jac")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8 * np.abs(want).max(), err_msg=label)


def test_models_of_one_bucket_share_one_compiled_program():
    load = jaxlmm.datasets.load
    jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", load("sleepstudy")).fit()
    compiled = fit_with_inference._cache_size()
    r1 = jaxlmm.MixedLM.from_formula("distance ~ age + (age | Subject)", load("orthodont")).fit()
    r2 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", load("sleepstudy").iloc[7:]).fit()
    assert fit_with_inference._cache_size() == compiled
    assert r1.converged and r2.converged and r2.nobs == 173
