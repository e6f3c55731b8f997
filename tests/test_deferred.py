"""Deferred inference: a large crossed model's optimised fit leaves the exact Hessian at θ̂ and the
conditional covariances to the results layer (`_fit.defers`, `_single_fit`); what the results then
compute, by the quick program first and the optimised one after, equals what a complete fit reports."""

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import _program_cache, _single_fit
from jaxlmm._fit import defers


def _crossed_frame(seed: int = 5) -> pd.DataFrame:
    """40 subjects × 36 items with a slope on subjects: the items' block (36 rows) is deferred."""
    rng = np.random.default_rng(seed)
    n = 900
    subj, item = rng.integers(0, 40, n), rng.integers(0, 36, n)
    x = rng.normal(size=n)
    y = (2 + 0.4 * x + rng.normal(0, 0.8, 40)[subj] + rng.normal(0, 0.3, 40)[subj] * x
         + rng.normal(0, 0.6, 36)[item] + rng.normal(0, 1.0, n))
    return pd.DataFrame({"y": y, "x": x, "subj": [f"s{i}" for i in subj], "item": [f"i{i}" for i in item]})


@pytest.fixture(scope="module")
def model():
    m = jaxlmm.MixedLM.from_formula("y ~ x + (1 + x | subj) + (1 | item)", _crossed_frame())
    assert defers(m.design)
    return m


def _condvar(r) -> dict:
    return {k: np.array([v.values for v in per_level.values()]) for k, per_level in r.random_effects_cov.items()}


def test_a_deferred_fit_reports_what_the_complete_fit_does(model, monkeypatch):
    monkeypatch.setattr(_program_cache, "_uses", {})
    complete = model.fit()  # the bucket's quick program: inference and covariances inside the fit
    model.fit()
    deferred = model.fit()  # the shape's optimised program: both left to the results layer
    assert complete._arrays.information is not None and complete._arrays.ranef_cov is not None
    assert deferred._arrays.information is None and deferred._arrays.deferred and not complete._arrays.deferred
    assert deferred.llf == pytest.approx(complete.llf, abs=1e-8)
    np.testing.assert_allclose(deferred.cov_vcomp, complete.cov_vcomp, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(deferred.bse_re, complete.bse_re, rtol=1e-6)
    satterthwaite = [r.t_test(np.eye(2), ddf="satterthwaite")["df"].to_numpy() for r in (deferred, complete)]
    np.testing.assert_allclose(*satterthwaite, rtol=1e-6)
    got, want = _condvar(deferred), _condvar(complete)
    assert list(got) == list(want) == ["subj", "item"]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-7, atol=1e-12, err_msg=k)
    for k, frame in complete.random_effects.items():
        np.testing.assert_allclose(deferred.random_effects[k], frame, rtol=1e-6, atol=1e-9, err_msg=k)
    assert str(deferred.summary()) == str(complete.summary())


def test_the_quick_and_optimised_tiers_of_deferred_inference_agree(model, monkeypatch):
    monkeypatch.setattr(_program_cache, "_uses", {})
    r = model.fit()
    args = (model.design, r._arrays.theta, r._arrays.sigma2)
    with jaxlmm.float64():
        inference = [_single_fit.deferred_inference(*args, True) for _ in range(_program_cache.OPTIMISE_AFTER + 1)]
        covariances = [_single_fit.deferred_covariances(*args) for _ in range(_program_cache.OPTIMISE_AFTER + 1)]
    assert _single_fit._optimised_inference._cache_size() >= 1
    for quick, optimised in zip(inference[0], inference[-1]):
        np.testing.assert_allclose(optimised, quick, rtol=1e-8, atol=1e-12 * np.abs(quick).max())
    for quick, optimised in zip(covariances[0], covariances[-1]):
        np.testing.assert_allclose(optimised, quick, rtol=1e-8, atol=1e-14)
    # the quick tier is the complete fit's inference
    for got, want in zip(inference[0], (r._arrays.information, r._arrays.varpar_jac, r._arrays.vcov_beta_jac)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-10 * np.abs(want).max())


def test_a_large_design_fits_the_same_in_its_first_and_optimised_programs(monkeypatch):
    """A dense block of 256+ rows skips the quick program: its first fits run its own program compiled
    with the "classic" options, later ones XLA's defaults; the fits agree."""
    from jaxlmm._fit import LARGE_DENSE_SIZE

    rng = np.random.default_rng(12)
    n = 2900  # a shape no other test fits
    df = pd.DataFrame({"subj": rng.integers(0, 420, n).astype(str), "item": rng.integers(0, 280, n).astype(str),
                       "x": rng.normal(size=n)})
    df["y"] = (1 + 0.5 * df.x + rng.normal(0, 1.0, 420)[df.subj.astype(int)]
               + rng.normal(0, 0.7, 280)[df.item.astype(int)] + rng.normal(0, 1.2, n))
    m = jaxlmm.MixedLM.from_formula("y ~ x + (1 | subj) + (1 | item)", df)
    assert m.design.crossed.layout.dense_size >= LARGE_DENSE_SIZE and not _single_fit.quick_pays(m.design)
    monkeypatch.setattr(_program_cache, "_uses", {})
    first_programs = _single_fit._classic[1]._cache_size()
    fits = [m.fit() for _ in range(_program_cache.OPTIMISE_AFTER + 1)]
    assert _single_fit._classic[1]._cache_size() == first_programs + 1
    assert _single_fit._optimised[1]._cache_size() >= 1
    first, optimised = fits[0], fits[-1]
    assert optimised.llf == pytest.approx(first.llf, abs=1e-9)
    np.testing.assert_allclose(optimised.theta, first.theta, rtol=1e-7)
    np.testing.assert_allclose(optimised.fe_params, first.fe_params, rtol=1e-9)
    np.testing.assert_allclose(optimised.bse_re, first.bse_re, rtol=1e-7)
