"""More crossed and partially crossed models against lme4 (`tests/data/r/lme4_crossed.R`): ScotsSec
(mlmRev), Pixel (nlme: a slope on Dog crossed with Side, and Side:Dog), sleepstudy with a crossed day
factor, and InstEval (73,421 rows, 2,972 × 1,128 × 14 levels)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "lme4_crossed.json").read_text())


def _data(key: str) -> pd.DataFrame:
    if key.startswith("scotssec"):
        data = pd.read_csv(DATA / "scotssec.csv.gz", dtype={"primary": str, "second": str})
        return data.assign(sex=pd.Categorical(data["sex"], categories=["M", "F"]))  # R's level order
    if key.startswith("pixel"):
        return pd.read_csv(DATA / "pixel.csv.gz", dtype={"Dog": str, "Side": str})
    if key.startswith("sleep"):
        return jaxlmm.datasets.load("sleepstudy").assign(Dayf=lambda d: d["Days"].astype(str))
    return pd.read_csv(DATA / "insteval.csv.gz", dtype={"s": str, "d": str, "dept": str, "service": str})


def _check(r, entry):
    assert r.converged and r.nobs == entry["nobs"]
    assert r.llf >= entry["loglik"] - 1e-6  # lme4's optimum or higher
    assert r.llf - entry["loglik"] < 1e-4
    for name, value in entry["fixef"].items():
        ours = {"(Intercept)": "Intercept", "I(day^2)": "I(day ** 2)", "service1": "service[T.1]"}.get(name, name)
        ours = ours.replace("sexF", "sex[T.F]").replace("sexM", "sex[T.M]")
        assert r.fe_params[ours] == pytest.approx(value, rel=1e-4, abs=1e-6), name
        assert r.bse_fe[ours] == pytest.approx(entry["se"][name], rel=1e-3), name
    for row in entry["varcorr"]:
        if row["grp"] != "Residual" and row.get("var2") is None and row["var1"] == "(Intercept)" and \
                f"Var({row['grp']})" in r.vcomp.index:
            assert r.vcomp[f"Var({row['grp']})"] == pytest.approx(row["vcov"], rel=1e-3, abs=1e-4)
    assert r.scale == pytest.approx(entry["sigma2"], rel=1e-4)


@pytest.mark.parametrize("key", [k for k in sorted(REFERENCE) if not k.startswith("insteval")])
def test_matches_lme4(key):
    entry = REFERENCE[key]
    formula = entry["formula"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.errors.SingularFitWarning)
        r = jaxlmm.MixedLM.from_formula(formula, _data(key)).fit(reml=entry["reml"])
    _check(r, entry)


def test_insteval_matches_lme4():
    """The classic crossed benchmark: REML, with a dense block of 1,142 levels beside the 2,972 students."""
    entry = REFERENCE["insteval_reml"]
    r = jaxlmm.MixedLM.from_formula(entry["formula"], _data("insteval")).fit()
    _check(r, entry)
    np.testing.assert_allclose(r.theta, entry["theta"], rtol=1e-4)
    re = r.random_effects
    assert [len(re[f]) for f in ("s", "d", "dept")] == [2972, 1128, 14]


def test_satterthwaite_df_match_lmertest():
    """lmerTest's Satterthwaite denominator df on a crossed model (ScotsSec, REML)."""
    entry = REFERENCE["scotssec_reml"]
    r = jaxlmm.MixedLM.from_formula(entry["formula"], _data("scotssec")).fit()
    df = r.satterthwaite_df(np.eye(len(r.fe_params)))
    expected = [entry["satterthwaite_df"][k] for k in ("(Intercept)", "verbal", "sexF", "verbal:sexF")]
    np.testing.assert_allclose(df, expected, rtol=2e-3)
