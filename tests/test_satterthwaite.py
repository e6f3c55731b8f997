"""Satterthwaite t tests against lmerTest; contrasts and multiplicity adjustment."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm._contrasts import adjust_pvalues

REFERENCE = json.loads((Path(__file__).parent / "data" / "lmertest_reference.json").read_text())
CASES = {
    "sleepstudy_slope": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "sleepstudy_int": ("Reaction ~ Days + (1 | Subject)", "sleepstudy"),
    "orthodont": ("distance ~ age*Sex + (age | Subject)", "orthodont"),
    "dietox_slope": ("Weight ~ Time + (Time | Pig)", "dietox"),
}


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_satterthwaite_matches_lmertest(case, reml):
    formula, data = CASES[case]
    entry = REFERENCE[f"{case}_{'reml' if reml else 'ml'}"]
    r = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(data)).fit(reml=reml)
    table = r.t_test(np.eye(len(r.fe_params)))
    np.testing.assert_allclose(table["df"].values, entry["df"], rtol=1e-3)
    np.testing.assert_allclose(table["p"].values, entry["p"], rtol=1e-3, atol=1e-300)
    np.testing.assert_allclose(table["t"].values, entry["t"], rtol=1e-4)
    summary = str(r.summary(ddf="satterthwaite"))
    assert "P>|t|" in summary and "df" in summary


@pytest.fixture(scope="module")
def sessions():
    rng = np.random.default_rng(4)
    subjects = np.repeat([f"p{i}" for i in range(5)], 5)
    session = np.tile([f"s{j}" for j in range(1, 6)], 5)
    effect = np.tile([0.0, 0.2, 0.1, 1.5, 0.3], 5)
    y = 10 + effect + np.repeat(rng.normal(0, 1, 5), 5) + rng.normal(0, 0.4, 25)
    return pd.DataFrame({"subject": subjects, "session": session, "y": y})


def test_string_and_matrix_contrasts_agree(sessions):
    r = jaxlmm.MixedLM.from_formula("y ~ C(session) + (1 | subject)", sessions).fit()
    names = list(r.fe_params.index)
    by_string = r.t_test("C(session)[T.s4] - C(session)[T.s2] = 0")
    L = np.zeros((1, len(names)))
    L[0, names.index("C(session)[T.s4]")] = 1
    L[0, names.index("C(session)[T.s2]")] = -1
    by_matrix = r.t_test(L)
    np.testing.assert_allclose(by_string.values, by_matrix.values)
    # balanced design: every pairwise difference has the same SE
    pw = r.pairwise("C(session)")
    assert len(pw) == 4 + 6
    np.testing.assert_allclose(pw["SE"].values, pw["SE"].values[0], rtol=1e-8)
    assert pw.loc["s4 - s1", "p (holm)"] < 0.05
    other = jaxlmm.MixedLM.from_formula('y ~ C(session, contr.treatment("s3")) + (1 | subject)', sessions).fit()
    assert "s1 - s3" in other.pairwise("C(session, contr.treatment('s3'))").index


def test_wald_test_joint(sessions):
    r = jaxlmm.MixedLM.from_formula("y ~ C(session) + (1 | subject)", sessions).fit()
    w = r.wald_test([n + " = 0" for n in r.fe_params.index if n.startswith("C(session)")])
    assert w["df"] == 4 and w["pvalue"] < 1e-3


def test_adjustments_match_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.001, 0.5])
    for method in ["holm", "bonferroni", "fdr_bh"]:
        np.testing.assert_allclose(adjust_pvalues(p, method), multipletests(p, method=method)[1])


def test_contrast_errors(sessions):
    r = jaxlmm.MixedLM.from_formula("y ~ C(session) + (1 | subject)", sessions).fit()
    with pytest.raises(jaxlmm.DataError, match="5 fixed effects"):
        r.t_test(np.ones((1, 3)))
    with pytest.raises(jaxlmm.DataError, match="cannot read the hypothesis"):
        r.t_test("Dayz = 0")
    with pytest.raises(jaxlmm.DataError, match="adjust must be"):
        r.t_test(np.eye(5), adjust="tukey")
