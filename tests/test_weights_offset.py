"""Prior weights and offsets against lme4 (tests/data/r/issue13_resid_ref.R), and their properties."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.errors import DataError

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "resid_variance_reference.json").read_text())
SLEEP = pd.read_csv(DATA / "sleepstudy_wo.csv", dtype={"Subject": str})
FORMULA = "Reaction ~ Days + (Days | Subject)"


def _fit(kind: str, reml: bool, formula: str = FORMULA):
    kw = {"weights": dict(weights="w"), "offset": dict(offset="o"), "weights_offset": dict(weights="w", offset="o")}[kind]
    return jaxlmm.MixedLM.from_formula(formula, SLEEP, **kw).fit(reml=reml)


@pytest.mark.parametrize("kind", ["weights", "offset", "weights_offset"])
@pytest.mark.parametrize("reml", [True, False])
def test_matches_lme4(kind, reml):
    ref = REFERENCE[f"lme4_sleepstudy_{kind}_{'reml' if reml else 'ml'}"]
    r = _fit(kind, reml)
    assert r.llf >= ref["loglik"] - 1e-6
    assert r.llf == pytest.approx(ref["loglik"], abs=1e-6)
    np.testing.assert_allclose(r.fe_params.values, list(ref["fixef"].values()), rtol=1e-6)
    np.testing.assert_allclose(r.theta, ref["theta"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.sqrt(r.scale), ref["sigma"], rtol=1e-5)
    np.testing.assert_allclose(r.cov_fe.values, ref["vcov"]["values"], rtol=1e-4)
    np.testing.assert_allclose(r.fittedvalues.values[:6], ref["fitted_1_6"], rtol=1e-6)
    np.testing.assert_allclose(r.resid.values[:6], ref["resid_response_1_6"], rtol=1e-4, atol=1e-4)


def test_intercept_model_with_weights_matches_lme4():
    ref = REFERENCE["lme4_sleepstudy_int_weights_reml"]
    r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", SLEEP, weights="w").fit()
    assert r.llf == pytest.approx(ref["loglik"], abs=1e-6)
    np.testing.assert_allclose(r.fe_params.values, list(ref["fixef"].values()), rtol=1e-6)


def test_predict_adds_the_offset_of_new_rows():
    """As lme4 with ``+ offset(o)`` in the formula (lme4 drops an ``offset=`` argument's offset from
    ``predict(newdata)``; jaxlmm adds it either way)."""
    ref = REFERENCE["lme4_sleepstudy_weights_offset_reml"]["offset_in_predict"]["formula_offset_predict"]
    r = _fit("weights_offset", True)
    new = pd.DataFrame({"Days": [0, 5], "Subject": ["308", "new"], "o": [1.0, 2.0]})
    np.testing.assert_allclose(r.predict(new).values, ref["conditional"], rtol=1e-6)
    np.testing.assert_allclose(r.predict(new, include_re=False).values, ref["population"], rtol=1e-6)
    np.testing.assert_allclose(r.predict(new.drop(columns="o"), offset=[1.0, 2.0]).values, ref["conditional"], rtol=1e-6)
    with pytest.raises(DataError, match="offset column 'o'"):
        r.predict(new.drop(columns="o"))


def test_weights_equal_scaled_rows_minus_log_weights():
    """lme4's definition: the weighted model is the model of √w·y, √w·X, √w·Z, with −Σ log w added
    to the deviance (the Jacobian of the scaling)."""
    m = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, weights="w")
    r = m.fit(reml=False)
    s = np.sqrt(SLEEP["w"].to_numpy())
    X = np.column_stack([np.ones(len(SLEEP)), SLEEP["Days"]])
    scaled = jaxlmm.MixedLM(SLEEP["Reaction"] * s, X * s[:, None], SLEEP["Subject"], X * s[:, None]).fit(reml=False)
    assert r.llf == pytest.approx(scaled.llf + 0.5 * np.log(SLEEP["w"]).sum(), abs=1e-7)
    np.testing.assert_allclose(r.fe_params.values, scaled.fe_params.values, rtol=1e-7)


def test_offset_equals_shifted_response_and_arrays_equal_columns():
    a = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, offset="o").fit()
    shifted = SLEEP.assign(Reaction=SLEEP.Reaction - SLEEP.o)
    b = jaxlmm.MixedLM.from_formula(FORMULA, shifted).fit()
    assert a.llf == pytest.approx(b.llf, abs=1e-9)
    np.testing.assert_allclose(a.fittedvalues.values, b.fittedvalues.values + SLEEP.o.values, rtol=1e-10)
    c = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, offset=SLEEP["o"].to_numpy(), weights=SLEEP["w"].to_numpy()).fit()
    d = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, offset="o", weights="w").fit()
    assert c.llf == pytest.approx(d.llf, abs=1e-10)


def test_unit_weights_change_nothing():
    a = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP).fit()
    b = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, weights=np.ones(len(SLEEP))).fit()
    assert a.llf == pytest.approx(b.llf, abs=1e-9)
    np.testing.assert_allclose(a.params.values, b.params.values, rtol=1e-7)


def test_fit_many_and_bootstrap_carry_weights_and_offset():
    m = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, weights="w", offset="o")
    r = m.fit()
    batch = m.fit_many(np.column_stack([SLEEP.Reaction, SLEEP.Reaction]), progress=False)
    np.testing.assert_allclose(batch.llf.values, r.llf, atol=1e-6)
    np.testing.assert_allclose(batch.fe_params.values[0], r.fe_params.values, rtol=1e-6)
    boot = r.bootstrap(n=200, seed=3, progress=False)
    # the replicates centre on the estimates: the offset and the weights were simulated as fitted
    center = boot.replicates.median()
    assert abs(center["Days"] - r.fe_params["Days"]) < 0.3 * r.bse_fe["Days"]
    assert center["Residual"] == pytest.approx(r.scale, rel=0.15)


def test_lrtest_refuses_different_weights():
    a = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", SLEEP, weights="w").fit(reml=False)
    b = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP).fit(reml=False)
    with pytest.raises(DataError):
        jaxlmm.lrtest(a, b)


@pytest.mark.parametrize("bad, match", [
    (dict(weights=np.r_[0.0, np.ones(179)]), "weights must be positive"),
    (dict(weights=np.r_[-1.0, np.ones(179)]), "weights must be positive"),
    (dict(weights=np.r_[np.nan, np.ones(179)]), "weights are NaN"),
    (dict(offset=np.r_[np.nan, np.ones(179)]), "offset is NaN"),
    (dict(weights="nope"), "not a column"),
    (dict(weights=np.ones(5)), "one value per row"),
    (dict(offset="Subject"), "not numeric"),
])
def test_bad_weights_and_offsets(bad, match):
    before = SLEEP.copy()
    with pytest.raises(DataError, match=match):
        jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, **bad)
    pd.testing.assert_frame_equal(SLEEP, before)


def test_nan_weights_dropped_with_missing_drop():
    w = SLEEP["w"].to_numpy().copy()
    w[0] = np.nan
    m = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP, weights=w, missing="drop")
    assert m.nobs == len(SLEEP) - 1
    ref = jaxlmm.MixedLM.from_formula(FORMULA, SLEEP.iloc[1:], weights="w").fit()
    assert m.fit().llf == pytest.approx(ref.llf, abs=1e-9)


def test_fit_datasets_carries_weights_and_offset():
    halves = [SLEEP[SLEEP.Days < 6], SLEEP[SLEEP.Days >= 3]]
    rl = jaxlmm.fit_datasets(FORMULA, halves, weights="w", offset="o", progress=False)
    for i, d in enumerate(halves):
        alone = jaxlmm.MixedLM.from_formula(FORMULA, d, weights="w", offset="o").fit()
        assert rl.llf.values[i] == pytest.approx(alone.llf, abs=1e-6)
        np.testing.assert_allclose(rl.fe_params.values[i], alone.fe_params.values, rtol=1e-6)


CROSSED_REFERENCE = json.loads((DATA / "resid_crossed_reference.json").read_text())


@pytest.mark.parametrize("name, formula, kw, reml", [
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", dict(weights="w", offset="o"), True),
    ("pastes", "strength ~ 1 + (1 | batch/cask)", dict(weights="w"), False),
])
def test_weights_and_offset_on_crossed_and_nested_factors_match_lme4(name, formula, kw, reml):
    data = jaxlmm.datasets.load(name)
    i = np.arange(1, len(data) + 1)
    data["w"], data["o"] = 1 + (i % 3) / 2, (i % 4) / 10
    r = jaxlmm.MixedLM.from_formula(formula, data, **kw).fit(reml=reml)
    ref = CROSSED_REFERENCE[f"{name}_{'weights_offset_reml' if 'offset' in kw else 'weights_ml'}"]
    assert r.llf >= ref["loglik"] - 1e-6
    assert r.llf == pytest.approx(ref["loglik"], abs=1e-6)
    np.testing.assert_allclose(r.fe_params.values, np.atleast_1d(ref["fixef"]), rtol=1e-6)
