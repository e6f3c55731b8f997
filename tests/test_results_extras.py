"""Correlation of fixed effects (as lme4 prints it) and conf_int methods."""

import json
from pathlib import Path

import numpy as np
import pytest

import jaxlmm

REFERENCE = json.loads((Path(__file__).parent / "data" / "lme4_reference.json").read_text())


def test_correlation_of_fixed_effects_matches_lme4():
    entry = REFERENCE["orthodont_ml"]
    r = jaxlmm.MixedLM.from_formula(entry["formula"], jaxlmm.datasets.load("orthodont")).fit(reml=False)
    vcov = np.asarray(entry["vcov"])
    sd = np.sqrt(np.diag(vcov))
    np.testing.assert_allclose(r.corr_fe.values, vcov / np.outer(sd, sd), atol=1e-5)
    assert "Correlation of Fixed Effects" in str(r.summary())


def test_conf_int_methods():
    r = jaxlmm.MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("dyestuff")).fit()
    wald = r.conf_int()
    assert list(wald.columns) == ["lower", "upper"] and len(wald) == 1
    boot = r.conf_int(method="boot", n_boot=50, seed=1)
    assert list(boot.index) == list(r.params.index)
    profile = r.conf_int(method="profile")
    assert list(profile.index) == ["SD(Intercept)", "sigma", "Intercept"]
    assert (profile["lower"] < profile["upper"]).all()
    with pytest.raises(jaxlmm.DataError, match="method must be"):
        r.conf_int(method="exact")


def test_residuals_are_indexed_like_the_data_rows():
    df = jaxlmm.datasets.load("sleepstudy").set_index(np.arange(1000, 1180))
    df.loc[1003, "Reaction"] = np.nan
    r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", df, missing="drop").fit()
    assert list(r.resid.index) == [i for i in df.index if i != 1003]
    assert r.fittedvalues.index.equals(r.resid.index)
    np.testing.assert_allclose((df.Reaction.drop(1003) - r.fittedvalues).values, r.resid.values)
