"""Crossed random intercepts, ``(1 | plate) + (1 | sample)``: lme4's reference fits (Penicillin),
an independent dense likelihood, properties, prediction and errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from tests.dense import dense_loglik

REFERENCE = json.loads((Path(__file__).parent / "data" / "lme4_reference.json").read_text())
FORMULA = "diameter ~ 1 + (1 | plate) + (1 | sample)"


@pytest.fixture(scope="module")
def penicillin():
    return jaxlmm.datasets.load("penicillin")


@pytest.mark.parametrize("reml", [True, False])
def test_penicillin_matches_lme4(penicillin, reml):
    entry = REFERENCE["penicillin_crossed_reml" if reml else "penicillin_crossed_ml"]
    r = jaxlmm.MixedLM.from_formula(entry["formula"], penicillin).fit(reml=reml)
    assert r.converged and r.nobs == entry["nobs"]
    assert r.llf >= entry["loglik"] - 1e-9  # never below lme4
    assert r.llf == pytest.approx(entry["loglik"], abs=1e-6)
    assert r.fe_params["Intercept"] == pytest.approx(entry["fixef"]["(Intercept)"], rel=1e-8)
    assert r.bse_fe["Intercept"] == pytest.approx(entry["se"]["(Intercept)"], rel=1e-4)
    lme4_var = {row["grp"]: row["vcov"] for row in entry["varcorr"]}
    assert r.vcomp["Var(plate)"] == pytest.approx(lme4_var["plate"], rel=1e-4)
    assert r.vcomp["Var(sample)"] == pytest.approx(lme4_var["sample"], rel=1e-3)
    assert r.scale == pytest.approx(entry["sigma2"], rel=1e-5)
    np.testing.assert_allclose(r.theta, entry["theta"], rtol=1e-3)
    assert r.aic == pytest.approx(entry["AIC"], abs=1e-5)


@pytest.mark.parametrize("reml", [True, False])
def test_llf_equals_dense_likelihood(penicillin, reml):
    m = jaxlmm.MixedLM.from_formula(FORMULA, penicillin)
    r = m.fit(reml=reml)
    d = m.design
    dense = dense_loglik(d.y, d.X, d.Z, d.group, r.cov_re.values, r.scale, reml)
    assert r.llf == pytest.approx(dense, abs=1e-8)


def test_rows_permuted_and_levels_relabelled_change_nothing(penicillin):
    r = jaxlmm.MixedLM.from_formula(FORMULA, penicillin).fit()
    shuffled = penicillin.sample(frac=1.0, random_state=3).copy()
    shuffled["plate"] = "p_" + shuffled["plate"].astype(str).str[::-1]
    r2 = jaxlmm.MixedLM.from_formula(FORMULA, shuffled).fit()
    assert r2.llf == pytest.approx(r.llf, abs=1e-9)
    np.testing.assert_allclose(r2.vcomp.values, r.vcomp.values, rtol=1e-7)


def test_summary_and_prediction(penicillin):
    r = jaxlmm.MixedLM.from_formula(FORMULA, penicillin).fit()
    text = str(r.summary())
    assert "No. levels (plate):" in text and "No. levels (sample):" in text
    assert list(r.vcomp.index) == ["Var(plate)", "Var(sample)", "Residual"]
    np.testing.assert_allclose(r.predict(penicillin).values, r.fittedvalues.values, rtol=1e-12)
    new = penicillin.head(2).copy()
    new["plate"] = "unseen"
    effects = r.random_effects.iloc[0]
    sample_effect = effects[f"sample[{new['sample'].iloc[0]}]"]
    expected = r.fe_params["Intercept"] + sample_effect  # unseen plate: population level for plate
    assert r.predict(new).iloc[0] == pytest.approx(expected, rel=1e-12)


def test_profile_intervals_match_lme4(penicillin):
    ref = json.loads((Path(__file__).parent / "data" / "lme4_profile.json").read_text())["penicillin_crossed"]
    r = jaxlmm.MixedLM.from_formula(FORMULA, penicillin).fit()
    ci = r.conf_int(method="profile")
    np.testing.assert_allclose(ci["lower"].values, ref["delta_64"]["lower"], rtol=1e-5)
    np.testing.assert_allclose(ci["upper"].values, ref["delta_64"]["upper"], rtol=1e-5)


def test_crossed_errors(penicillin):
    with pytest.raises(jaxlmm.FormulaError, match="only random intercepts"):
        jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (0 + diameter | sample)", penicillin)
    one = penicillin.assign(sample="a")
    with pytest.raises(jaxlmm.DataError, match="fewer than 2 levels"):
        jaxlmm.MixedLM.from_formula(FORMULA, one)
    many = pd.DataFrame({"y": np.arange(1000.0) % 7, "a": np.arange(1000) % 300, "b": np.arange(1000) % 301})
    with pytest.raises(jaxlmm.FormulaError, match="up to 400 levels"):
        jaxlmm.MixedLM.from_formula("y ~ 1 + (1 | a) + (1 | b)", many)


def test_plots_show_one_panel_per_crossed_factor(penicillin):
    import matplotlib

    matplotlib.use("Agg")
    r = jaxlmm.MixedLM.from_formula(FORMULA, penicillin).fit()
    fig = r.plot_caterpillar()
    assert [ax.get_title() for ax in fig.axes] == ["plate", "sample"]
    assert sorted(t.get_text() for t in fig.axes[1].get_yticklabels()) == sorted(penicillin["sample"].unique())
    assert len(r.plot_qq_re().axes) == 2


def test_statsmodels_one_group_spelling_of_crossed_intercepts():
    """statsmodels writes crossed effects as variance components of one group holding every row."""
    df = jaxlmm.datasets.load("penicillin").assign(everything=1)
    vc = {"plate": "0 + C(plate)", "sample": "0 + C(sample)"}
    sm_style = jaxlmm.MixedLM.from_formula("diameter ~ 1", df, groups="everything", vc_formula=vc).fit()
    bars = jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", df).fit()
    assert sm_style.llf == pytest.approx(bars.llf, abs=1e-9)
    np.testing.assert_allclose(sm_style.vcomp.to_numpy(), bars.vcomp.to_numpy(), rtol=1e-7)
