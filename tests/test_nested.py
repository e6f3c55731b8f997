"""Variance components nested in the grouping factor (Pastes: casks within batches), against lme4."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from dense import dense_terms_loglik

REFERENCE = json.loads((Path(__file__).parent / "data" / "lme4_reference.json").read_text())
# (formula, options, name of the batch variance, name of the cask variance): the bars are one term per
# factor, named by factor as lme4's VarCorr; statsmodels' spelling keeps statsmodels' names.
FORMS = [
    ("strength ~ 1 + (1 | batch) + (1 | batch:cask)", {}, "Var(batch)", "Var(batch:cask)"),
    ("strength ~ 1 + (1 | batch/cask)", {}, "Var(batch)", "Var(batch:cask)"),
    ("strength ~ 1", {"groups": "batch", "re_formula": "1", "vc_formula": {"cask": "0 + C(cask)"}}, "Var(Intercept)",
     "Var(cask)"),
]


@pytest.mark.parametrize("reml", [True, False])
def test_variance_components_alone_fit_no_group_intercept(reml):
    """statsmodels' meaning: vc_formula without re_formula has no random intercept for the groups,
    so it is the model (1 | batch:cask) alone (one variance for the casks, none for the batches)."""
    df = jaxlmm.datasets.load("pastes")
    vc = jaxlmm.MixedLM.from_formula("strength ~ 1", df, groups="batch", vc_formula={"cask": "0 + C(cask)"}).fit(reml=reml)
    bar = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch:cask)", df).fit(reml=reml)
    assert "Var(Intercept)" not in vc.vcomp.index
    assert vc.llf == pytest.approx(bar.llf, abs=1e-8)
    assert vc.vcomp["Var(cask)"] == pytest.approx(bar.vcomp["Var(Intercept)"], rel=1e-6)
    assert vc.scale == pytest.approx(bar.scale, rel=1e-6)


@pytest.mark.parametrize("reml", [True, False])
@pytest.mark.parametrize("formula, kwargs, batch_name, cask_name", FORMS)
def test_pastes_matches_lme4(formula, kwargs, batch_name, cask_name, reml):
    entry = REFERENCE["pastes_nested_reml" if reml else "pastes_nested_ml"]
    r = jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load("pastes"), **kwargs).fit(reml=reml)
    assert r.converged
    assert r.llf >= entry["loglik"] - 1e-6
    assert r.llf == pytest.approx(entry["loglik"], abs=1e-6)
    lme4 = {v["grp"]: v["vcov"] for v in entry["varcorr"]}
    assert r.vcomp[batch_name] == pytest.approx(lme4["batch"], rel=1e-4)
    assert r.vcomp[cask_name] == pytest.approx(lme4["batch:cask"], rel=1e-4)
    assert r.scale == pytest.approx(lme4["Residual"], rel=1e-4)
    assert r.fe_params.iloc[0] == pytest.approx(entry["fixef"]["(Intercept)"], rel=1e-6)
    assert r.bse_fe.iloc[0] == pytest.approx(entry["se"]["(Intercept)"], rel=1e-4)
    assert cask_name in r.cov_params().index  # variance components are in cov_params
    assert "cask" in str(r.summary())


def _two_level_data(seed, n_outer, n_inner, n_x, sd_outer, sd_inner, outer, inner, unique_inner):
    """y = 1 + 0.5 x + (random intercept and slope of the outer factor) + (random intercept of the
    inner factor) + noise; inner labels repeat across outer levels unless ``unique_inner``."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_outer):
        b0, b1 = rng.normal(0, list(sd_outer))
        for h in range(n_inner):
            c = rng.normal(0, sd_inner)
            label = f"s{g}_{h}" if unique_inner else f"h{h}"
            for x in range(n_x):
                rows.append({outer: f"g{g}", inner: label, "x": float(x), "y": 1 + 0.5 * x + b0 + b1 * x + c + rng.normal()})
    return pd.DataFrame(rows)


def test_variance_component_with_correlated_random_slope():
    df = _two_level_data(3, 12, 3, 4, (2.0, 0.5), 1.5, "g", "h", unique_inner=False)
    m = jaxlmm.MixedLM.from_formula("y ~ x + (x | g) + (1 | g:h)", df)
    r = m.fit()
    assert r.converged and m.design.n_theta == 4
    G = r.cov_re.values
    X = np.column_stack([np.ones(len(df)), df.x])
    ll, _ = dense_terms_loglik(df.y.to_numpy(), X, [((df.g + ":" + df.h).to_numpy(), np.ones((len(df), 1)), G[:1, :1]),
                                                  (df.g.to_numpy(), X, G[1:, 1:])], r.scale, True)
    assert r.llf == pytest.approx(ll, abs=1e-8)
    # one term per factor, the one with most levels first (lme4's VarCorr order)
    assert list(r.vcomp.index) == ["Var(g:h)", "Var(g)", "Cov(g,x|g)", "Var(x|g)", "Residual"]



def test_factor_nested_by_its_labels_is_fitted_as_nested():
    """Inner levels labelled uniquely across groups (no 'g:' in the formula) are nested in the data:
    (x | school) + (1 | klass) is the model (x | school) + (1 | school:klass), not a crossed one (lme4 agrees)."""
    df = _two_level_data(11, 15, 4, 3, (1.5, 0.4), 1.0, "school", "klass", unique_inner=True)
    by_label = jaxlmm.MixedLM.from_formula("y ~ x + (x | school) + (1 | klass)", df).fit()
    explicit = jaxlmm.MixedLM.from_formula("y ~ x + (x | school) + (1 | school:klass)", df).fit()
    assert by_label.llf == pytest.approx(explicit.llf, abs=1e-8)
    assert by_label.vcomp["Var(klass)"] == pytest.approx(explicit.vcomp["Var(school:klass)"], rel=1e-6)
    reordered = jaxlmm.MixedLM.from_formula("y ~ x + (1 | klass) + (x | school)", df).fit()
    assert reordered.llf == pytest.approx(explicit.llf, abs=1e-8)


def test_components_counted_per_group_not_by_the_widest_group():
    """A nested component with 5 levels in one group and 1 in the others: 10 random effects for 18
    rows (not 3 groups × 6 columns = 18), so the model is identifiable; its likelihood equals the dense one."""
    rng = np.random.default_rng(4)
    rows = [("g1", c) for c in "abcde" for _ in range(2)] + [(g, "a") for g in ("g2", "g3") for _ in range(4)]
    data = pd.DataFrame(rows, columns=["g", "cask"])
    data["y"] = rng.normal(size=len(data)) + data.g.map({"g1": 0.0, "g2": 1.0, "g3": -1.0})
    r = jaxlmm.MixedLM.from_formula("y ~ 1 + (1 | g/cask)", data).fit(warn=False)
    variances = r.vcomp
    cask = (data.g + ":" + data.cask).to_numpy()
    ones = np.ones((len(data), 1))
    ll, _ = dense_terms_loglik(data.y.to_numpy(), ones, [(data.g.to_numpy(), ones, [[variances["Var(g)"]]]),
                                                          (cask, ones, [[variances["Var(g:cask)"]]])], r.scale, True)
    assert r.llf == pytest.approx(ll, abs=1e-8)


def test_fit_many_and_lrtest_on_nested_terms():
    """fit_many counts each factor's own random effects (30 casks + 10 batches < 60 rows, not 2 names
    × 30 levels): the model's own response gives its single fit, a response with missing rows gives the
    fit without them; lrtest sees (1 | batch:cask) nested in (1 | batch/cask)."""
    df = jaxlmm.datasets.load("pastes")
    m = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch/cask)", df)
    single = m.fit()
    y = df.strength.to_numpy()
    holed = y.copy()
    holed[[0, 7, 31]] = np.nan
    rb = m.fit_many(np.column_stack([y, holed]), progress=False)
    assert (rb.problems == "").all() and bool(rb.converged.all())
    assert float(rb.llf.iloc[0]) == pytest.approx(single.llf, abs=1e-7)
    dropped = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch/cask)", df.drop(index=[0, 7, 31])).fit()
    assert float(rb.llf.iloc[1]) == pytest.approx(dropped.llf, abs=1e-7)
    small = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch:cask)", df).fit()
    test = jaxlmm.lrtest(small, single)
    assert test.df == 1 and test.statistic == pytest.approx(2 * (single.llf - small.llf), abs=1e-9)
    other = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch)", df).fit()
    with pytest.raises(jaxlmm.DataError, match="not nested"):
        jaxlmm.lrtest(other, jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch:cask) + (1 | cask)", df).fit())
