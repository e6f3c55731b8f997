"""Shape buckets and the fit's own inference: padding changes nothing, models of one bucket share
one compiled program, and the information taken from the optimiser's Hessian equals autodiff's."""

from functools import partial
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxlmm
from jaxlmm._buckets import FIXED_FLOOR, GROUP_FLOOR, LEVEL_FLOOR, ROW_FLOOR, bucket_size, from_bucket, to_bucket
import jax.numpy as jnp

from jaxlmm import _program_cache, _single_fit
from jaxlmm._fit import _varpar, design_stats, fit_arrays, fit_quick
from jaxlmm._kernels import deviance_at_scale, penalised_solution
from jaxlmm._results import inference_covariances

CASES = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", True),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", False),
    ("dietox", "Weight ~ Time + I(Time**2) + C(Evit) + (1 | Pig)", True),
]


def test_bucket_sizes_cover_and_stay_within_one_and_a_half():
    for n in list(range(1, 3000)) + [10**5 + 7, 3 * 2**20 + 1]:
        size = bucket_size(n, 128)
        assert size >= n and size >= 128
        assert n <= 128 or size <= 1.5 * n + 1


@pytest.mark.parametrize("name,formula,reml", CASES + [
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)", False),
    ("sleepstudy", "Reaction ~ Days + (Days || Subject)", True),
    ("orthodont", "distance ~ age + (age || Subject)", False),
])
def test_a_bucketed_fit_equals_the_unpadded_one(name, formula, reml):
    """Rows, groups and fixed-effect columns padded, and q ≤ 4 untied structures embedded in an
    unstructured Λ template with the missing θ held at 0: the same fit as `fit_arrays` unpadded."""
    design = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(name)).design
    bucket = to_bucket(design)
    padded = bucket.design
    assert padded.y.shape[0] == bucket_size(design.y.shape[0], ROW_FLOOR) > design.y.shape[0]
    assert padded.n_groups == bucket_size(design.n_groups, GROUP_FLOOR) > design.n_groups
    m, p = design.n_groups, design.X.shape[1]
    assert padded.X.shape[1] == bucket_size(p, FIXED_FLOOR) > p
    with jaxlmm.float64():
        a = jax.tree.map(np.asarray, fit_arrays(design, reml))
        b = jax.tree.map(np.asarray, fit_quick(padded, reml, bucket.free))
    assert np.all(b.ranef[m:] == 0.0) and np.all(b.beta[p:] == 0.0)
    assert np.all(b.theta[~bucket.free] == 0.0)
    b = from_bucket(b, bucket, design)
    for field in ("llf", "theta", "beta", "sigma2", "vcov_beta", "cov_re", "ranef", "ranef_cov", "varpar",
                  "theta_at_bound"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-6, atol=1e-8, err_msg=field)


@partial(jax.jit, static_argnums=3)
def _autodiff_inference(design, theta, sigma2, reml):
    """The oracle: jax.hessian of the (RE)ML deviance at scale in (θ, σ²), and jax.jacfwd of
    C(θ, σ²) = σ² R⁻¹ A(θ)⁻¹ R⁻ᵀ, the covariance of β̂."""
    pre, stats = design_stats(design)
    li = jnp.asarray(design.lambda_index_array)
    rows, cols = design.theta_positions
    params = jnp.concatenate([jnp.asarray(theta), jnp.asarray(sigma2)[None]])
    info = jax.hessian(lambda q: 0.5 * deviance_at_scale(q[:-1], q[-1], stats, li, reml))(params)
    params_cov = jnp.linalg.inv(info)
    jac = jax.jacfwd(lambda q: _varpar(q[:-1], q[-1], li, rows, cols))(params)
    def vcov(q):
        A = penalised_solution(q[:-1], stats, li).A_chol
        return q[-1] * pre.R_inv @ jnp.linalg.inv(A @ A.T) @ pre.R_inv.T

    return params_cov, jac @ params_cov @ jac.T, jnp.moveaxis(jax.jacfwd(vcov)(params), -1, 0)


@pytest.mark.parametrize("name,formula,reml", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)", True),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", False),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
])
def test_inference_of_a_fit_equals_autodiff(name, formula, reml):
    """A fit takes the information in (θ, σ²) from the optimiser's Hessian and Ω's forward derivative;
    `_single_fit.deferred_inference` (batch members, deferred fits) from jax.hessian of the profiled
    deviance: both must equal the oracle."""
    m = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(name))
    r = m.fit(reml=reml, warn=False)
    with jaxlmm.float64():
        expected = [np.asarray(v) for v in _autodiff_inference(m.design, r.theta, r.scale, reml)]
        fallback = inference_covariances(*_single_fit.deferred_inference(m.design, r.theta, np.asarray(r.scale), reml))
    for got, alt, want, label in zip(r._inference, fallback, expected, ("params_cov", "varpar_cov", "vcov_beta_jac")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8 * np.abs(want).max(), err_msg=label)
        np.testing.assert_allclose(alt, want, rtol=1e-5, atol=1e-8 * np.abs(want).max(), err_msg=label)


def test_inference_of_a_large_crossed_fit_equals_autodiff():
    """A dense block of at least 256 rows is fitted by BFGS by its optimised program, which leaves the
    exact Hessian at θ̂ to the results layer (`_fit.defers`): the information the summary uses must
    equal the autodiff oracle's."""
    import pandas as pd

    from jaxlmm._fit import LARGE_DENSE_SIZE

    rng = np.random.default_rng(11)
    n = 3000
    df = pd.DataFrame({"subj": rng.integers(0, 400, n).astype(str), "item": rng.integers(0, 300, n).astype(str),
                       "x": rng.normal(size=n)})
    u, v = rng.normal(0, 1.0, 400), rng.normal(0, 0.7, 300)
    df["y"] = 1 + 0.5 * df.x + u[df.subj.astype(int)] + v[df.item.astype(int)] + rng.normal(0, 1.2, n)
    m = jaxlmm.MixedLM.from_formula("y ~ x + (1 | subj) + (1 | item)", df)
    assert m.design.crossed.layout.dense_size >= LARGE_DENSE_SIZE and m.design.crossed.clusters is None
    r = m.fit()
    assert r.converged and r._arrays.information is None
    with jaxlmm.float64():
        expected = [np.asarray(v) for v in _autodiff_inference(m.design, r.theta, r.scale, True)]
    for got, want, label in zip(r._inference, expected, ("params_cov", "varpar_cov", "vcov_beta_jac")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8 * np.abs(want).max(), err_msg=label)


def test_models_of_one_bucket_share_one_compiled_program(monkeypatch):
    monkeypatch.setattr(_program_cache, "_uses", {})  # first fits of each shape: the bucket's program
    load = jaxlmm.datasets.load
    jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", load("sleepstudy")).fit()
    programs = len(_program_cache._loaded)
    r1 = jaxlmm.MixedLM.from_formula("distance ~ age + (age | Subject)", load("orthodont")).fit()
    r2 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", load("sleepstudy").iloc[7:]).fit(reml=False)
    r3 = jaxlmm.MixedLM.from_formula("Weight ~ Time + I(Time**2) + (Time | Pig)", load("dietox")).fit()
    r4 = jaxlmm.MixedLM.from_formula("Weight ~ Time + C(Evit) + (1 | Pig)", load("dietox")).fit()
    r5 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days || Subject)", load("sleepstudy")).fit()
    assert len(_program_cache._loaded) == programs
    assert all(r.converged for r in (r1, r2, r3, r4, r5)) and r2.nobs == 173 and len(r3.fe_params) == 3
    assert r4.cov_re.shape == (1, 1) and len(r5.vcomp) == 3


@pytest.mark.parametrize("name,formula,reml", [
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", True),
    ("psycholing", "rt ~ c + (1 + c | subj) + (1 + c | item)", False),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", True),
])
def test_a_bucketed_crossed_fit_equals_the_unpadded_one(name, formula, reml):
    """Rows, leading levels, fixed-effect columns and the further terms' levels padded (L₂₁ dense):
    the same fit, with the further terms' modes back in the design's own block order."""
    design = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(name)).design
    bucket = to_bucket(design)
    layout = bucket.design.crossed.layout
    own = design.crossed.layout.level_counts
    assert layout.dense_coupling and layout.level_counts == (bucket_size(own[0], LEVEL_FLOOR),)
    assert bucket.design.y.shape[0] == bucket_size(design.y.shape[0], ROW_FLOOR) > design.y.shape[0]
    assert layout.n_lead == bucket.design.n_groups == GROUP_FLOOR
    with jaxlmm.float64():
        a = jax.tree.map(np.asarray, fit_arrays(design, reml))
        b = from_bucket(jax.tree.map(np.asarray, fit_quick(bucket.design, reml, bucket.free)), bucket, design)
    for field in ("llf", "theta", "beta", "sigma2", "vcov_beta", "cov_re", "ranef", "ranef_cov", "ranef_other",
                  "ranef_other_cov", "varpar"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-6, atol=1e-8, err_msg=field)


def test_small_crossed_models_share_one_compiled_program(monkeypatch):
    monkeypatch.setattr(_program_cache, "_uses", {})
    load = jaxlmm.datasets.load
    jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", load("penicillin")).fit()
    programs = len(_program_cache._loaded)
    fewer = load("penicillin").query("plate != 'a' and sample != 'F'")
    r1 = jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", fewer).fit(reml=False)
    r2 = jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", load("penicillin").iloc[6:]).fit()
    # nested factors are terms like crossed ones: Pastes' casks within batches run the same program
    r3 = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch/cask)", load("pastes")).fit()
    assert len(_program_cache._loaded) == programs
    assert r1.converged and r2.converged and r1.nobs == 115 and r2.nobs == 138
    assert r3.converged and list(r3.random_effects) == ["batch:cask", "batch"]
    assert list(r1.random_effects) == ["plate", "sample"] and len(r1.random_effects["sample"]) == 5


def test_large_crossed_designs_pass_through_the_bucket_unchanged():
    """InstEval's dense L₂₁ would be 128 GFlop: it keeps its own shape (and its sparse L₂₁)."""
    import pandas as pd

    df = pd.read_csv(Path(__file__).parent / "data" / "insteval.csv.gz")
    for c in ("s", "d", "dept"):
        df[c] = df[c].astype(str)
    m = jaxlmm.MixedLM.from_formula("y ~ service + (1|s) + (1|d) + (1|dept)", df)
    assert not m.design.crossed.layout.dense_coupling
    assert to_bucket(m.design).design is m.design


def test_a_shape_fitted_again_and_again_gets_its_own_optimised_program_with_the_same_fit():
    model = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days || Subject)", jaxlmm.datasets.load("sleepstudy"))
    key = _program_cache.shape_key("fit_single", model.design, 1e-6)
    _program_cache._uses.pop(key, None)
    quick = [model.fit(reml=reml) for reml in (True, False)]  # the bucket's quick program
    compiled = _single_fit._classic[0]._cache_size()
    optimised = [model.fit(reml=reml) for reml in (True, False)]  # then the shape's own program
    assert _program_cache._uses[key] == 4 and _single_fit._classic[0]._cache_size() == compiled + 1
    for a, b in zip(quick, optimised):
        assert b.llf == pytest.approx(a.llf, abs=1e-9)
        np.testing.assert_allclose(b.fe_params, a.fe_params, rtol=1e-8)
        np.testing.assert_allclose(b.cov_vcomp, a.cov_vcomp, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(b.random_effects), np.asarray(a.random_effects), rtol=1e-6, atol=1e-9)
