"""Residual-variance models (resid_formula=): nlme's varIdent and varExp (tests/data/r/issue13_resid_ref.R),
an independent dense likelihood, and the library's other paths (fit_many, bootstrap, gradients)."""

import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm.errors import DataError, FormulaError, IdentifiabilityError

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "resid_variance_reference.json").read_text())
SESSIONS = {n: pd.read_csv(DATA / f"sessions_{n}.csv") for n in (5, 60)}
VAREXP = pd.read_csv(DATA / "varexp.csv")
FORMULA = "y ~ x + session + (1 | subject)"


def _check_against_nlme(r, ref, names):
    # the same optimum, or a higher likelihood
    assert r.llf >= ref["loglik_best"] - 1e-6
    assert r.llf == pytest.approx(ref["loglik_best"], abs=1e-6)
    np.testing.assert_allclose(r.fe_params.values, list(ref["fixef"].values()), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(r.scale, ref["reopt"]["sigma"] ** 2, rtol=2e-5)
    # the surface is flat near the optimum: parameters agree to about 1e-5 where the likelihoods agree to 1e-11
    np.testing.assert_allclose(r.vcomp[names].values, list(ref["delta_engineer"].values()), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(r.cov_re.values, ref["reopt"]["re_cov"], rtol=2e-5)
    np.testing.assert_allclose(r.cov_fe.values, ref["vcov"]["values"], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("n", [5, 60])
@pytest.mark.parametrize("reml", [True, False])
def test_varident_matches_nlme(n, reml):
    r = jaxlmm.MixedLM.from_formula(FORMULA, SESSIONS[n], resid_formula="~ session").fit(reml=reml)
    ref = REFERENCE[f"nlme_varident_sessions{n}_{'reml' if reml else 'ml'}"]
    _check_against_nlme(r, ref, [f"log σ² ratio: session[T.{s}]" for s in ("t2", "t3", "t4")])
    assert r.converged


def test_varident_with_random_slopes_matches_nlme():
    r = jaxlmm.MixedLM.from_formula("y ~ x + session + (1 + x | subject)", SESSIONS[60],
                                    resid_formula="~ session").fit()
    ref = REFERENCE["nlme_varident_slope_sessions60_reml"]
    assert r.llf >= ref["loglik_best"] - 1e-6
    assert r.llf == pytest.approx(ref["loglik_best"], abs=1e-6)


@pytest.mark.parametrize("reml", [True, False])
def test_varexp_matches_nlme(reml):
    r = jaxlmm.MixedLM.from_formula("y ~ x + (1 | subject)", VAREXP, resid_formula="~ x").fit(reml=reml)
    ref = REFERENCE[f"nlme_varexp_{'reml' if reml else 'ml'}"]
    _check_against_nlme(r, ref, ["log σ² ratio: x"])


def _dense_loglik(y, X, groups, tau2, row_var, reml):
    """Independent (RE)ML log-likelihood: V = τ² J_g + diag(row_var), β by GLS."""
    same = groups[:, None] == groups[None, :]
    V = tau2 * same + np.diag(row_var)
    Vi = np.linalg.inv(V)
    A = X.T @ Vi @ X
    beta = np.linalg.solve(A, X.T @ Vi @ y)
    r = y - X @ beta
    n, p = X.shape
    ll = -0.5 * (np.linalg.slogdet(V)[1] + r @ Vi @ r + n * np.log(2 * np.pi))
    if reml:
        ll += -0.5 * np.linalg.slogdet(A)[1] + 0.5 * p * np.log(2 * np.pi)
    return ll


@pytest.mark.parametrize("reml", [True, False])
def test_llf_equals_dense_likelihood_with_weights(reml):
    d = SESSIONS[5].assign(w=1.0 + (np.arange(60) % 4) / 3)
    m = jaxlmm.MixedLM.from_formula(FORMULA, d, resid_formula="~ session", weights="w")
    r = m.fit(reml=reml)
    X = np.asarray(m.design.X)
    ll = _dense_loglik(d.y.to_numpy(), X, d.subject.to_numpy(), r.cov_re.values[0, 0], r.resid_variance.to_numpy(), reml)
    assert r.llf == pytest.approx(ll, abs=1e-8)


def test_row_order_and_level_labels_change_nothing():
    d = SESSIONS[5]
    a = jaxlmm.MixedLM.from_formula(FORMULA, d, resid_formula="~ session").fit()
    perm = d.sample(frac=1.0, random_state=1)
    b = jaxlmm.MixedLM.from_formula(FORMULA, perm, resid_formula="~ session").fit()
    assert a.llf == pytest.approx(b.llf, abs=1e-8)
    np.testing.assert_allclose(a.params.values, b.params.values, rtol=1e-6, atol=1e-8)


def test_summary_inference_and_resid_variance():
    r = jaxlmm.MixedLM.from_formula(FORMULA, SESSIONS[60], resid_formula="~ session").fit()
    names = r.model.resid_param_names
    assert names == [f"log σ² ratio: session[T.{s}]" for s in ("t2", "t3", "t4")]
    assert list(r.cov_params().index[-3:]) == names
    assert np.all(np.isfinite(r.bse_re[names])) and np.all(r.bse_re[names] > 0)
    text = str(r.summary())
    assert "log σ² ratio: session[T.t2]" in text and "session[T.t4]" in text
    per_session = r.resid_variance.groupby(SESSIONS[60].session).first()
    np.testing.assert_allclose(per_session["t1"], r.scale)
    np.testing.assert_allclose(per_session["t3"], r.scale * np.exp(r.vcomp[names[1]]))
    # the Hessian-based standard errors agree with the delta method from the fit's own information
    df = r.t_test("session[T.t2] = 0")["df"].iloc[0]
    assert 50 < df < 720


def test_fit_many_bootstrap_and_ml_refit():
    d = SESSIONS[5]
    m = jaxlmm.MixedLM.from_formula(FORMULA, d, resid_formula="~ session")
    r = m.fit()
    batch = m.fit_many(np.column_stack([d.y, 3 * d.y]), progress=False)
    np.testing.assert_allclose(batch.llf.values[0], r.llf, atol=1e-7)
    np.testing.assert_allclose(batch[0].bse_re.values, r.bse_re.values, rtol=1e-5)
    # scaling y by 3 scales the variances by 9 and leaves the log ratios
    np.testing.assert_allclose(batch.vcomp.iloc[1].values[:2], 9 * r.vcomp.values[:2], rtol=1e-5)
    np.testing.assert_allclose(batch.vcomp.iloc[1].values[2:], r.vcomp.values[2:], atol=1e-5)
    boot = r.bootstrap(n=64, seed=2, progress=False)
    assert boot.replicates.shape[1] == len(r.params)
    plain = jaxlmm.MixedLM.from_formula(FORMULA, d).fit(reml=False)
    lr = jaxlmm.lrtest(plain, m.fit(reml=False))
    assert lr.table["Df"].iloc[1] == 3


def test_gradient_through_a_fit_with_a_variance_model():
    m = jaxlmm.MixedLM.from_formula(FORMULA, SESSIONS[5], resid_formula="~ session")
    with jaxlmm.float64():
        def slope(y):
            return jaxlmm.fit_arrays(m.design.replace(y=y), gtol=1e-10).beta[1]

        y0 = np.asarray(m.design.y)
        grad = np.asarray(jax.grad(slope)(y0))
        direction = np.random.default_rng(0).standard_normal(y0.shape)
        # a step large against the optimiser's tolerance, small enough for O(h²) error near 1e-5
        h = 1e-2
        fd = (float(slope(y0 + h * direction)) - float(slope(y0 - h * direction))) / (2 * h)
    assert grad @ direction == pytest.approx(fd, rel=5e-5)


@pytest.mark.parametrize("resid, error, match", [
    ("~ 0 + session", IdentifiabilityError, "not identifiable"),
    ("~ k", IdentifiabilityError, "not identifiable"),
    ("~ lonely", IdentifiabilityError, "has 1 observation"),
    ("~ nope", DataError, "nope"),
    ("session", None, None),
    ("y ~ session", FormulaError, "one-sided"),
])
def test_bad_variance_models(resid, error, match):
    d = SESSIONS[5].assign(k=1.0, lonely=["a"] + ["b"] * 59)
    before = d.copy()
    if error is None:  # the leading ~ is optional
        assert jaxlmm.MixedLM.from_formula(FORMULA, d, resid_formula=resid).design.n_delta == 3
        return
    with pytest.raises(error, match=match):
        jaxlmm.MixedLM.from_formula(FORMULA, d, resid_formula=resid)
    pd.testing.assert_frame_equal(d, before)


CROSSED_REFERENCE = json.loads((DATA / "resid_crossed_reference.json").read_text())


@pytest.mark.parametrize("name, formula", [
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
])
@pytest.mark.parametrize("reml", [True, False])
def test_varident_on_crossed_and_nested_factors_matches_nlme(name, formula, reml):
    """Every random-effects structure: crossed factors (nlme: pdBlocked over one group) and nested ones."""
    data = jaxlmm.datasets.load(name)
    data["half"] = np.where(np.arange(len(data)) % 2 == 0, "a", "b")
    r = jaxlmm.MixedLM.from_formula(formula, data, resid_formula="~ half").fit(reml=reml)
    ref = CROSSED_REFERENCE[f"{name}_{'reml' if reml else 'ml'}"]
    assert r.llf >= ref["loglik"] - 1e-6
    assert r.llf == pytest.approx(ref["loglik"], abs=1e-6)
    assert np.sqrt(r.scale) == pytest.approx(ref["sigma"], rel=1e-4)
    assert np.exp(r.vcomp["log σ² ratio: half[T.b]"] / 2) == pytest.approx(ref["ratio_b"], rel=1e-4)


def test_profile_of_a_variance_ratio_equals_constrained_fits():
    """The profile deviance at δ_t2 = v is the ML fit with δ_t2 held at v: prior weights exp(−v) on the
    t2 rows and a variance model for t3 and t4 only (an independent path through the fit)."""
    d = SESSIONS[5].assign(s3=(SESSIONS[5].session == "t3") * 1.0, s4=(SESSIONS[5].session == "t4") * 1.0)
    r = jaxlmm.MixedLM.from_formula(FORMULA, d, resid_formula="~ session").fit()
    name = "log σ² ratio: session[T.t2]"
    values = [0.8, 2.2]
    prof = r.profile(name, values=values)
    for v, dev in zip(values, prof.loc[prof["value"].isin(values), "ml_deviance"]):
        w = np.exp(-v * (d.session == "t2").to_numpy())
        held = jaxlmm.MixedLM.from_formula(FORMULA, d, weights=w, resid_formula="~ s3 + s4").fit(reml=False)
        assert dev == pytest.approx(-2 * held.llf, abs=1e-6)
    ci = r.conf_int(method="profile")
    lower, upper = ci.loc[name]
    assert lower < r.vcomp[name] < upper


def test_profile_intervals_with_prior_weights_match_lme4():
    """lme4's confint(method = "profile") of a weighted model: the variance parameters (lme4's
    fixed-effect intervals there come from a spline fit lme4 itself reports as bad)."""
    ref = json.loads((DATA / "weights_profile_reference.json").read_text())
    sleep = pd.read_csv(DATA / "sleepstudy_wo.csv", dtype={"Subject": str})
    r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", sleep, weights="w").fit(reml=False)
    assert r.llf == pytest.approx(ref["loglik"][0], abs=1e-6)
    ci = r.conf_int(method="profile")
    np.testing.assert_allclose(ci["lower"].values[:4], ref["lower"][:4], rtol=2e-4)
    np.testing.assert_allclose(ci["upper"].values[:4], ref["upper"][:4], rtol=2e-4)


def test_fit_datasets_with_a_variance_model_equals_separate_fits():
    d = SESSIONS[60]
    parts = [d[d.subject <= "s20"], d[d.subject > "s20"], d[d.subject > "s45"]]
    rl = jaxlmm.fit_datasets(FORMULA, parts, resid_formula="~ session", progress=False)
    for i, part in enumerate(parts):
        alone = jaxlmm.MixedLM.from_formula(FORMULA, part, resid_formula="~ session").fit()
        assert rl.llf.values[i] == pytest.approx(alone.llf, abs=1e-6)
        np.testing.assert_allclose(rl.vcomp.values[i], alone.vcomp.values, rtol=1e-5, atol=1e-7)
