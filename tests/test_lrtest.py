"""Likelihood-ratio tests, checked against lme4's anova() on sleepstudy (ML fits)."""

import warnings

import numpy as np
import pytest

import jaxlmm


@pytest.fixture(scope="module")
def sleep():
    return jaxlmm.datasets.load("sleepstudy")


def test_random_slope_lrt_matches_lme4_anova(sleep):
    # lme4: anova(lmer(Reaction ~ Days + (1|Subject), REML=FALSE), lmer(Reaction ~ Days + (Days|Subject), REML=FALSE))
    # Chisq 42.139, Df 2 (the logLiks are in tests/data/lme4_reference.json: -897.0393 and -875.9697)
    r0 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", sleep).fit(reml=False)
    r1 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", sleep).fit(reml=False)
    t = jaxlmm.lrtest(r0, r1)
    assert t.df == 2
    assert t.statistic == pytest.approx(2 * (-875.969672244495 + 897.039321502613), abs=1e-6)
    assert t.pvalue == pytest.approx(np.exp(-t.statistic / 2), rel=1e-10)  # χ²(2) tail is exp(-x/2)
    assert t.pvalue_mixture is not None and t.pvalue_mixture < t.pvalue
    assert "boundary" in str(t)
    # argument order and the method form give the same test
    assert r1.compare_lr_test(r0).statistic == pytest.approx(t.statistic)
    assert jaxlmm.lrtest(r1, r0).statistic == pytest.approx(t.statistic)


def test_reml_fits_with_different_fixed_effects_are_refitted_by_ml(sleep):
    r0 = jaxlmm.MixedLM.from_formula("Reaction ~ 1 + (1 | Subject)", sleep).fit()
    r1 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", sleep).fit()
    with pytest.warns(UserWarning, match="refitting both models by ML"):
        t = jaxlmm.lrtest(r0, r1)
    assert t.refitted_ml and t.method == "ML" and t.df == 1
    ml0 = r0.model.fit(reml=False)
    ml1 = r1.model.fit(reml=False)
    assert t.statistic == pytest.approx(2 * (ml1.llf - ml0.llf), rel=1e-10)
    assert t.pvalue_mixture is None


def test_models_on_different_data_are_refused(sleep):
    r0 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", sleep).fit(reml=False)
    r1 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", sleep.iloc[:170]).fit(reml=False)
    with pytest.raises(jaxlmm.DataError, match="different data"):
        jaxlmm.lrtest(r0, r1)


def test_non_nested_models_are_refused(sleep):
    sleep = sleep.assign(x=np.sin(np.arange(180.0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", sleep).fit(reml=False)
        b = jaxlmm.MixedLM.from_formula("Reaction ~ x + (1 | Subject)", sleep).fit(reml=False)
        c = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", sleep).fit(reml=False)
    with pytest.raises(jaxlmm.DataError, match="neither is nested"):
        jaxlmm.lrtest(a, b)
    with pytest.raises(jaxlmm.DataError, match="not nested"):
        jaxlmm.lrtest(b, c)
