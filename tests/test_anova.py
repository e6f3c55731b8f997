"""ANOVA tables (types 3/2/1, Satterthwaite and Kenward–Roger) and Kenward–Roger t tests against
lmerTest and pbkrtest (tests/data/r/anova_ref.R); hypotheses and bad input."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import _kenward_roger
from jaxlmm._anova import doolittle, hypotheses

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "anova_reference.json").read_text())
DESIGNS = {
    "nested": ("y ~ supplier * method + (1 | batch) + (1 | batch:cask)", lambda: pd.read_csv(DATA / "anova_nested.csv")),
    "dietox": ("Weight ~ Time * Evit + (Time | Pig)", lambda: jaxlmm.datasets.load("dietox")),
    "rm": ("y ~ group * cond + time + (1 | subj) + (1 | subj:cond)", lambda: pd.read_csv(DATA / "anova_rm.csv")),
    "orthodont": ("distance ~ age * Sex + (age | Subject)", lambda: jaxlmm.datasets.load("orthodont")),
    "psycholing": ("rt ~ c + (1 + c | subj) + (1 | item)", lambda: jaxlmm.datasets.load("psycholing")),
    "penicillin": ("diameter ~ 1 + (1 | plate) + (1 | sample)", lambda: jaxlmm.datasets.load("penicillin")),
}
ANOVA_DESIGNS = ["nested", "dietox", "rm", "orthodont"]
DDF = {"satterthwaite": "satterthwaite", "kenward-roger": "kenward_roger"}


@pytest.fixture(scope="module")
def fits():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.SingularFitWarning)  # psycholing: correlation +1, as in lme4
        for key, (formula, load) in DESIGNS.items():
            out[key] = jaxlmm.MixedLM.from_formula(formula, load()).fit()
    return out


def test_fits_match_lmer(fits):
    for key, r in fits.items():
        entry = REFERENCE[key]
        assert r.llf == pytest.approx(entry["loglik"], abs=1e-6), key
        np.testing.assert_allclose(r.fe_params.values, entry["beta"], rtol=1e-6, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("ddf", list(DDF))
@pytest.mark.parametrize("type", [3, 2, 1])
@pytest.mark.parametrize("key", ANOVA_DESIGNS)
def test_anova_matches_lmertest(fits, key, type, ddf):
    entry = REFERENCE[key][f"type{type}_{DDF[ddf]}"]
    table = fits[key].anova(type=type, ddf=ddf)
    assert list(table.index) == entry["terms"]
    assert list(table.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    np.testing.assert_array_equal(table["NumDF"].values, entry["num_df"])
    for column, name in [("F value", "f"), ("DenDF", "den_df"), ("Sum Sq", "sum_sq"), ("Mean Sq", "mean_sq"),
                         ("Pr(>F)", "p")]:
        np.testing.assert_allclose(table[column].values, entry[name], rtol=1e-4, err_msg=f"{key} {column}")


@pytest.mark.parametrize("type", [3, 2, 1])
@pytest.mark.parametrize("key", ANOVA_DESIGNS)
def test_hypotheses_match_lmertest(fits, key, type):
    entry = REFERENCE[key][f"type{type}_satterthwaite"]
    mine = hypotheses(fits[key].model, type)
    for term, L in zip(entry["terms"], entry["hypotheses"].values()):
        np.testing.assert_allclose(mine[term], np.atleast_2d(np.asarray(L, float)), atol=1e-12, err_msg=term)


@pytest.mark.parametrize("key", list(DESIGNS))
def test_kenward_roger_matches_pbkrtest(fits, key):
    r, entry = fits[key], REFERENCE[key]
    p = len(r.fe_params)
    adj = np.asarray(entry["vcov_adj"], float).reshape(p, p)
    np.testing.assert_allclose(r.cov_fe_kenward_roger.values, adj, rtol=1e-5, atol=1e-6 * np.abs(adj).max())
    t = r.t_test(np.eye(p), ddf="kenward-roger")
    kr = entry["kenward_roger"]
    np.testing.assert_allclose(t["df"].values, kr["df"], rtol=1e-6)
    np.testing.assert_allclose(t["SE"].values, kr["se"], rtol=1e-6)
    np.testing.assert_allclose(t["t"].values, kr["t"], rtol=1e-5)
    np.testing.assert_allclose(t["p"].values, kr["p"], rtol=1e-4)
    summary = r.summary(ddf="kenward-roger")
    np.testing.assert_allclose(summary.fixed["df"].values, kr["df"], rtol=1e-6)


def test_kenward_roger_unadjusted_part_is_the_fit_covariance(fits):
    r = fits["dietox"]
    kr = r._kenward_roger
    np.testing.assert_allclose(kr.vcov, r.cov_fe.values, rtol=1e-9)


def test_kenward_roger_conf_int(fits):
    r = fits["orthodont"]  # balanced: Kenward–Roger's df is exactly 25 for every coefficient
    ci = r.conf_int(ddf="kenward-roger")
    half = 2.059538552753294 * r.cov_fe_kenward_roger.values.diagonal() ** 0.5  # qt(0.975, 25)
    np.testing.assert_allclose((ci["upper"] - ci["lower"]).values / 2, half, rtol=1e-8)


def test_type3_does_not_depend_on_the_coding(fits):
    data = pd.read_csv(DATA / "anova_rm.csv")
    base = fits["rm"].anova(type=3)
    other = jaxlmm.MixedLM.from_formula('y ~ C(group, Sum) * C(cond, contr.treatment("c3")) + time + (1 | subj) + '
                                        "(1 | subj:cond)", data).fit().anova(type=3)
    np.testing.assert_allclose(other[["F value", "DenDF"]].values, base[["F value", "DenDF"]].values, rtol=1e-6)


def test_masked_rows_are_left_out(fits):
    data = pd.read_csv(DATA / "anova_nested.csv")
    formula = DESIGNS["nested"][0]
    drop = np.zeros(len(data), bool)
    drop[[3, 10, 40]] = True
    model = jaxlmm.MixedLM.from_formula(formula, data)
    y = np.asarray(model.design.y).copy()
    y[drop] = np.nan
    masked = model.with_response(y).fit()
    subset = jaxlmm.MixedLM.from_formula(formula, data[~drop].reset_index(drop=True)).fit()
    np.testing.assert_allclose(masked.cov_fe_kenward_roger.values, subset.cov_fe_kenward_roger.values, rtol=1e-6)
    for ddf in DDF:
        np.testing.assert_allclose(masked.anova(type=1, ddf=ddf).values, subset.anova(type=1, ddf=ddf).values,
                                   rtol=1e-6)


def test_doolittle_is_the_unit_lower_factor():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((5, 5))
    A = A @ A.T + np.eye(5)
    L = doolittle(A)
    U = np.linalg.solve(L, A)
    np.testing.assert_allclose(np.tril(U, -1), 0, atol=1e-10)
    np.testing.assert_allclose(np.diag(L), 1)


def test_bad_input(fits):
    r = fits["orthodont"]
    with pytest.raises(jaxlmm.DataError, match=r"type must be 1, 2 or 3 \(or 'I', 'II', 'III'\), got 4"):
        r.anova(type=4)
    with pytest.raises(jaxlmm.DataError, match="type must be 1, 2 or 3"):
        r.anova(type="IV")
    with pytest.raises(jaxlmm.DataError, match="ddf must be 'satterthwaite' or 'kenward-roger', got 'kr'"):
        r.anova(ddf="kr")
    with pytest.raises(jaxlmm.DataError, match="ddf must be 'satterthwaite', 'kenward-roger' or 'wald'"):
        r.t_test("age = 0", ddf="kr")
    with pytest.raises(jaxlmm.DataError, match="ddf must be 'wald', 'satterthwaite' or 'kenward-roger'"):
        r.summary(ddf="kr")
    assert r.anova(type="III").equals(r.anova(type=3))
    ml = jaxlmm.MixedLM.from_formula(DESIGNS["orthodont"][0], jaxlmm.datasets.load("orthodont")).fit(reml=False)
    with pytest.raises(jaxlmm.DataError, match="needs a REML fit"):
        ml.anova(ddf="kenward-roger")
    assert ml.anova().shape == (3, 6)  # Satterthwaite works on ML fits, as in lmerTest


def test_kenward_roger_size_limit(fits, monkeypatch):
    fitted = fits["orthodont"]
    monkeypatch.setattr(_kenward_roger, "MAX_ROWS", 100)
    # one grouping factor: V's per-group blocks, so the dense limit does not apply
    blocked = jaxlmm.MixedLMResults(fitted.model, fitted._arrays, fitted.reml).t_test("age = 0", ddf="kenward-roger")
    monkeypatch.setattr(_kenward_roger, "GROUP_BLOCK_ENTRIES_MAX", 0)  # force the dense path
    r = jaxlmm.MixedLMResults(fitted.model, fitted._arrays, fitted.reml)  # nothing cached yet
    with pytest.raises(jaxlmm.DataError, match=r"limited to 100 observations. Use ddf='satterthwaite'"):
        r.t_test("age = 0", ddf="kenward-roger")
    monkeypatch.setattr(_kenward_roger, "MAX_ROWS", 6000)
    dense = jaxlmm.MixedLMResults(fitted.model, fitted._arrays, fitted.reml).t_test("age = 0", ddf="kenward-roger")
    pd.testing.assert_frame_equal(blocked, dense, rtol=1e-9)


@pytest.mark.parametrize("name", ["orthodont", "dietox"])
def test_per_group_blocks_equal_the_dense_computation(fits, name, monkeypatch):
    """Unbalanced groups (padded blocks) and weights: Φ_A, P and W equal the dense n × n computation."""
    design, varpar = fits[name].model.design, fits[name].vcomp.values
    blocked = _kenward_roger.kenward_roger(design, varpar)
    monkeypatch.setattr(_kenward_roger, "GROUP_BLOCK_ENTRIES_MAX", 0)
    dense = _kenward_roger.kenward_roger(design, varpar)
    for a, b in zip(blocked, dense):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.abs(b).max())


def test_kenward_roger_with_prior_weights_equals_scaled_rows():
    # Residual variance σ²/wᵢ is the model with rows (y, X, Z) scaled by √wᵢ and unit weights: V becomes
    # W^½ V W^½, which leaves every Kenward–Roger quantity unchanged.
    data = jaxlmm.datasets.load("orthodont")
    data["w"] = np.random.default_rng(3).uniform(0.5, 2.0, len(data))
    weighted = jaxlmm.MixedLM.from_formula("distance ~ age * Sex + (1 | Subject)", data, weights="w").fit()
    root = np.sqrt(data["w"].to_numpy())
    X = np.asarray(weighted.model.design.X) * root[:, None]
    scaled = jaxlmm.MixedLM(data["distance"].to_numpy() * root, pd.DataFrame(X, columns=weighted.model.exog_names),
                            data["Subject"], pd.DataFrame({"Intercept": root})).fit()
    np.testing.assert_allclose(scaled.fe_params.values, weighted.fe_params.values, rtol=1e-6)
    np.testing.assert_allclose(weighted.cov_fe_kenward_roger.values, scaled.cov_fe_kenward_roger.values, rtol=1e-5)
    np.testing.assert_allclose(weighted.kenward_roger_df(np.eye(4)), scaled.kenward_roger_df(np.eye(4)), rtol=1e-5)
