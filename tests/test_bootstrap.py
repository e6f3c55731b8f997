"""Parametric bootstrap: simulated from the fit, refitted with the batch engine."""

import numpy as np
import pytest

import jaxlmm


@pytest.fixture(scope="module")
def fit():
    return jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()


def test_bootstrap_intervals_and_standard_errors(fit):
    b = fit.bootstrap(n=400, seed=3, progress=False)
    assert b.replicates.shape == (400 - b.n_failed, 6) and b.n_failed == 0
    ci = b.conf_int()
    assert list(ci.index) == list(fit.params.index)
    assert np.all(ci["lower"] < fit.params) and np.all(fit.params < ci["upper"])
    # fixed-effect SEs: bootstrap ≈ Wald (sampling error of 400 replicates is ~4%)
    np.testing.assert_allclose(b.bse[fit.fe_params.index].values, fit.bse_fe.values, rtol=0.15)
    # the replicate means are close to the estimates the data were simulated from
    gap = np.abs(b.replicates[["Intercept", "Days"]].mean().values - fit.fe_params.values)
    assert np.all(gap < 4 * fit.bse_fe.values / np.sqrt(400))


def test_bootstrap_is_reproducible(fit):
    a = fit.bootstrap(n=8, seed=11, progress=False)
    b = fit.bootstrap(n=8, seed=11, progress=False)
    np.testing.assert_array_equal(a.replicates.values, b.replicates.values)


def test_bootstrap_needs_replicates(fit):
    with pytest.raises(jaxlmm.DataError, match="at least 2"):
        fit.bootstrap(n=1)
