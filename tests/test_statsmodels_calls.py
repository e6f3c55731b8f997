"""statsmodels users' first calls: what statsmodels accepts is accepted with its meaning, and what has
no meaning here gets a warning or an error that says what to write instead."""

import numpy as np
import pandas as pd
import pytest

import jaxlmm

sm = pytest.importorskip("statsmodels.formula.api")


@pytest.fixture(scope="module")
def dietox():
    return jaxlmm.datasets.load("dietox")


def test_groups_as_a_series_with_a_formula_equals_groups_by_name(dietox):
    before = dietox.copy()
    by_name = jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox, groups="Pig").fit()
    by_series = jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox, groups=dietox["Pig"]).fit()
    by_array = jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox, groups=dietox["Pig"].to_numpy()).fit()
    pd.testing.assert_frame_equal(dietox, before)  # the caller's frame is not changed
    for r in (by_series, by_array):
        assert r.llf == pytest.approx(by_name.llf, abs=1e-9)
        np.testing.assert_allclose(r.fe_params, by_name.fe_params, rtol=1e-10)
    with pytest.raises(jaxlmm.DataError, match="one label per row"):
        jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox, groups=dietox["Pig"].iloc[:10])


def test_statsmodels_attributes_match_statsmodels(dietox):
    ours = jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox, groups="Pig", re_formula="~Time").fit()
    theirs = sm.mixedlm("Weight ~ Time", dietox, groups=dietox["Pig"], re_formula="~Time").fit(reml=True)
    assert (ours.k_fe, ours.k_re, ours.k_vc, ours.df_resid) == (theirs.k_fe, theirs.k_re, theirs.k_vc, theirs.df_resid)
    assert ours.model.exog_names == theirs.model.exog_names
    assert ours.llf >= theirs.llf - 1e-6


def test_variance_components_count_as_statsmodels_k_vc():
    pastes = jaxlmm.datasets.load("pastes")
    ours = jaxlmm.MixedLM.from_formula("strength ~ 1", pastes, groups="batch", vc_formula={"cask": "0 + C(cask)"})
    theirs = sm.mixedlm("strength ~ 1", pastes, groups="batch", vc_formula={"cask": "0 + C(cask)"}).fit()
    assert ours.k_vc == theirs.k_vc == 1


def test_fit_options_without_meaning_warn_and_free_points_to_the_formula(dietox):
    m = jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox, groups="Pig", re_formula="~Time")
    plain = m.fit()
    with pytest.warns(jaxlmm.IgnoredOptionWarning, match="method"):
        r = m.fit(method="lbfgs", maxiter=50)
    assert r.llf == pytest.approx(plain.llf, abs=1e-9)  # the same fit (the tiers may run different programs)
    with pytest.raises(jaxlmm.DataError, match=r"\(x \|\| g\)"):
        m.fit(free=object())
    with pytest.raises(jaxlmm.DataError, match="unknown options"):
        m.fit(tolerance=1e-3)


def test_pairwise_takes_the_term_as_the_formula_wrote_it(dietox):
    r = jaxlmm.MixedLM.from_formula('Weight ~ Time + C(Evit, Treatment("Evit000")) + (1 | Pig)', dietox).fit()
    double = r.pairwise('C(Evit, Treatment("Evit000"))')
    single = r.pairwise("C(Evit, Treatment('Evit000'))")
    pd.testing.assert_frame_equal(double, single)
    assert list(double.index) == ["Evit100 - Evit000", "Evit200 - Evit000", "Evit200 - Evit100"]


def test_a_model_without_random_effects_points_to_ols(dietox):
    with pytest.raises(jaxlmm.FormulaError, match="ordinary least-squares.*ols"):
        jaxlmm.MixedLM.from_formula("Weight ~ Time", dietox)
