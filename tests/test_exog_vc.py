"""statsmodels' variance components as arrays, ``MixedLM(endog, exog, groups, exog_vc={name: {group: matrix}})``:
the same fits as ``vc_formula`` and lme4 formulas, statsmodels' own fits (tests/data/make_exog_vc_reference.py),
an independent dense likelihood, nlme's varIdent model where the two coincide, and errors that say what to pass."""

import copy
import json
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import _program_cache
from jaxlmm.errors import DataError, MissingDataError

from dense import dense_terms_loglik

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "exog_vc_reference.json").read_text())
SESSIONS = pd.read_csv(DATA / "sessions_5.csv")
NAMES = ("t1", "t2", "t3", "t4")


@pytest.fixture(autouse=True)
def _quick_programs(monkeypatch):
    """Every fit here runs its shape bucket's quick program (a third fit of a shape would compile
    the optimised one, seconds for nothing here)."""
    monkeypatch.setattr(_program_cache, "_uses", {})


def sessions_design(d=SESSIONS):
    """y and the fixed effects 1 + x + session (treatment dummies, t1 the reference)."""
    X = np.column_stack([np.ones(len(d)), d.x] + [(d.session == s).astype(float) for s in NAMES[1:]])
    return d.y.to_numpy(), X


def session_components(groups, left_out, d=SESSIONS):
    """statsmodels' heteroscedastic example: one component per session but ``left_out``; within a group,
    one column per row of the session, with a 1 in that row (each row its own random effect)."""
    vc = {}
    for s in NAMES:
        if s == left_out:
            continue
        vc[s] = {}
        for g in np.unique(groups):
            in_g = np.flatnonzero(groups == g)
            rows = np.flatnonzero(d.session.to_numpy()[in_g] == s)
            M = np.zeros((len(in_g), len(rows)))
            M[rows, np.arange(len(rows))] = 1.0
            vc[s][g] = M
    return vc


def by_group(values, groups):
    """{group: the rows of ``values`` in that group} (statsmodels' per-group matrices)."""
    values = np.asarray(values, float).reshape(len(groups), -1)
    return {g: values[groups == g] for g in np.unique(groups)}


def statsmodels_dense_loglik(r, y, X, groups, exog_vc, reml):
    """The (RE)ML log-likelihood of statsmodels' model written out: V = σ² I + Σ_vc τ²_vc M_g M_gᵀ on the
    rows of each group g, at jaxlmm's estimates (`tests/dense.py`, one term per component)."""
    terms = []
    codes = pd.factorize(pd.Series(groups), sort=True)[0]
    for name, per_group in exog_vc.items():
        width = max(np.shape(M)[1] for M in per_group.values())
        Z = np.zeros((len(y), width))
        for g, M in per_group.items():
            Z[np.flatnonzero(groups == g), : np.shape(M)[1]] = M
        terms.append((codes, Z, r.vcomp[f"Var({name})"] * np.eye(width)))
    return dense_terms_loglik(y, X, terms, r.scale, reml)[0]


# ---- several groups: components nested in them ---------------------------------------------------
@pytest.mark.parametrize("reml", [True, False])
def test_nested_components_equal_vc_formula_and_lme4(reml):
    pastes = jaxlmm.datasets.load("pastes")
    g = pastes.batch.to_numpy()
    casks = pd.get_dummies(pastes.cask).to_numpy(float)
    vc = {"cask": {b: casks[g == b] for b in np.unique(g)}}
    y, X = pastes.strength, np.ones((len(g), 1))
    ours = jaxlmm.MixedLM(y, X, g, exog_vc=vc).fit(reml=reml)
    theirs = jaxlmm.MixedLM.from_formula("strength ~ 1", pastes, groups="batch", vc_formula={"cask": "0 + C(cask)"}).fit(
        reml=reml)
    assert ours.llf == pytest.approx(theirs.llf, abs=1e-8)
    assert list(ours.vcomp.index) == list(theirs.vcomp.index) == ["Var(cask)", "Residual"]
    np.testing.assert_allclose(ours.vcomp.values, theirs.vcomp.values, rtol=1e-6)
    assert ours.model.k_vc == 1
    # with the group's own random intercept: lme4's (1 | batch) + (1 | batch:cask)
    with_batch = jaxlmm.MixedLM(y, X, g, np.ones((len(g), 1)), exog_vc=vc).fit(reml=reml)
    lme4 = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)", pastes).fit(reml=reml)
    assert with_batch.llf == pytest.approx(lme4.llf, abs=1e-8)
    np.testing.assert_allclose(with_batch.fe_params.values, lme4.fe_params.values, rtol=1e-8)


def test_statsmodels_docstring_example_independent_coefficients_equal_double_bar():
    """statsmodels' docstring: one component per column of exog_re gives independent random coefficients,
    lme4's ``(Days || Subject)`` (matrices with many non-zeros per column)."""
    df = jaxlmm.datasets.load("sleepstudy")
    g = df.Subject.to_numpy()
    vc = {"Intercept": by_group(np.ones(len(g)), g), "Days": by_group(df.Days, g)}
    ours = jaxlmm.MixedLM(df.Reaction, np.column_stack([np.ones(len(g)), df.Days]), g, exog_vc=vc).fit()
    lme4 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days || Subject)", df).fit()
    assert ours.llf == pytest.approx(lme4.llf, abs=1e-8)
    np.testing.assert_allclose(ours.vcomp[["Var(Intercept)", "Var(Days)"]].values,
                               lme4.vcomp[["Var(Intercept)", "Var(Days)"]].values, rtol=1e-6)


@pytest.mark.parametrize("reml", [True, False])
def test_general_nested_matrices_equal_a_dense_likelihood(reml):
    """Any matrix, columns differing among groups, all-zero columns and rows: statsmodels' likelihood."""
    rng = np.random.default_rng(13)
    sizes = [9, 11, 10, 12, 8, 10, 11, 9]
    groups = np.repeat(np.arange(len(sizes)), sizes)
    n = len(groups)
    X = np.column_stack([np.ones(n), rng.standard_normal(n)])
    vc = {"a": {}, "b": {}}
    for k, size in enumerate(sizes):
        A = rng.standard_normal((size, 2 + k % 3))
        A[0] = 0.0  # a row without an effect of "a"
        A[:, -1] *= k % 2  # an all-zero column in half the groups
        vc["a"][k] = A
        vc["b"][k] = (rng.random((size, 2)) < 0.5) * rng.uniform(0.5, 2.0, (size, 2))
    b = np.concatenate([vc["a"][k] @ rng.normal(0, 1.5, vc["a"][k].shape[1]) for k in range(len(sizes))])
    y = X @ [1.0, 0.5] + b + rng.standard_normal(n)
    r = jaxlmm.MixedLM(y, X, groups, exog_vc=vc).fit(reml=reml, warn=False)
    assert r.llf == pytest.approx(statsmodels_dense_loglik(r, y, X, groups, vc, reml), abs=1e-8)


# ---- statsmodels' heteroscedastic example: one group, one component per session ----------------
@pytest.mark.parametrize("left_out", ["t1", "t3"])
@pytest.mark.parametrize("reml", [True, False])
def test_heteroscedastic_one_group_matches_statsmodels(left_out, reml):
    y, X = sessions_design()
    ones = np.ones(len(y), dtype=int)
    vc = session_components(ones, left_out)
    m = jaxlmm.MixedLM(y, X, ones, exog_vc=vc)
    r = m.fit(reml=reml, warn=False)
    ref = REFERENCE[f"hetero_{left_out}out"]["reml" if reml else "ml"]["best"]
    assert r.llf >= ref["llf"] - 1e-6  # statsmodels' best optimiser, or a higher likelihood
    assert r.llf == pytest.approx(ref["llf"], abs=1e-6)
    np.testing.assert_allclose(r.fe_params.values, ref["fe_params"], rtol=1e-5, atol=1e-5)
    assert list(r.vcomp.index) == sorted(f"Var({s})" for s in vc) + ["Residual"]
    assert m.crossed_factors == tuple((s, 15) for s in sorted(vc)) and r.random_effects["t2"].shape == (15, 1)
    # rows without an effect of a component are exact: statsmodels' likelihood written out
    assert r.llf == pytest.approx(statsmodels_dense_loglik(r, y, X, ones, vc, reml), abs=1e-8)


@pytest.mark.parametrize("left_out", ["t1", "t3"])
def test_subject_intercept_nested_or_crossed_matches_statsmodels(left_out):
    """A random intercept per subject besides the session components: nested in subject (statsmodels'
    groups=subject, which it fits too) or, with one group, a 'subject' component crossed with them."""
    y, X = sessions_design()
    subject, ones = SESSIONS.subject.to_numpy(), np.ones(len(y), dtype=int)
    nested = jaxlmm.MixedLM(y, X, subject, np.ones((len(y), 1)), exog_vc=session_components(subject, left_out))
    indicators = (subject[:, None] == np.unique(subject)[None, :]).astype(float)
    crossed = jaxlmm.MixedLM(y, X, ones, exog_vc={"subject": {1: indicators}, **session_components(ones, left_out)})
    for reml in (True, False):
        a, b = nested.fit(reml=reml, warn=False), crossed.fit(reml=reml, warn=False)
        ref = REFERENCE[f"subject_hetero_{left_out}out"]["reml" if reml else "ml"]["best"]
        assert a.llf >= ref["llf"] - 1e-6
        assert a.llf == pytest.approx(ref["llf"], abs=1e-6)
        assert b.llf == pytest.approx(a.llf, abs=1e-8)
        np.testing.assert_allclose(b.vcomp["Var(subject)"], a.vcomp["Var(z1)"], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("reml", [True, False])
def test_components_equal_varident_when_the_smallest_variance_is_left_out(reml):
    """Session s's residual variance σ² + τ²_s (components, the session left out: σ²) against nlme's
    varIdent σ² exp(δ_s): the same model where every τ²_s > 0, i.e. when the left-out session has the
    smallest variance (t3 here). Leaving out t1 (not the smallest) puts τ²_t3 on its bound 0: a
    lower likelihood than varIdent's."""
    y, X = sessions_design()
    subject = SESSIONS.subject.to_numpy()
    varident = jaxlmm.MixedLM.from_formula("y ~ x + session + (1 | subject)", SESSIONS,
                                           resid_formula="~ session").fit(reml=reml)
    per_session = varident.resid_variance.groupby(SESSIONS.session).first()
    for left_out in ("t3", "t1"):
        r = jaxlmm.MixedLM(y, X, subject, np.ones((len(y), 1)),
                           exog_vc=session_components(subject, left_out)).fit(reml=reml, warn=False)
        if left_out == "t3":
            assert r.llf == pytest.approx(varident.llf, abs=1e-8)
            variances = {s: r.scale + (0.0 if s == "t3" else r.vcomp[f"Var({s})"]) for s in NAMES}
            np.testing.assert_allclose(list(variances.values()), per_session[list(NAMES)].values, rtol=1e-5)
            np.testing.assert_allclose(r.vcomp["Var(z1)"], varident.vcomp["Var(Intercept)"], rtol=1e-5)
        else:
            assert r.vcomp["Var(t3)"] < 1e-8 < r.vcomp["Var(t2)"]
            assert r.llf < varident.llf - 0.5


def test_missing_values_in_a_component_raise_or_drop_the_rows():
    y, X = sessions_design()
    subject, intercept = SESSIONS.subject.to_numpy(), np.ones((len(y), 1))
    vc = session_components(subject, "t1")
    vc["t2"]["s02"][4, 1] = np.nan  # row 4 of subject s02: data row 16
    with pytest.raises(MissingDataError, match=r"exog_vc\['t2'\].*missing='drop'"):
        jaxlmm.MixedLM(y, X, subject, intercept, exog_vc=vc)
    dropped = jaxlmm.MixedLM(y, X, subject, intercept, exog_vc=vc, missing="drop")
    keep = np.arange(len(y)) != 16
    subset = jaxlmm.MixedLM(y[keep], X[keep], subject[keep], intercept[keep],
                            exog_vc=session_components(subject[keep], "t1", SESSIONS[keep]))
    assert dropped.n_dropped == 1 and dropped.nobs == 59
    assert dropped.fit(warn=False).llf == pytest.approx(subset.fit(warn=False).llf, abs=1e-8)


def test_vcspec_like_structure_equals_the_dict():
    y, X = sessions_design()
    subject = SESSIONS.subject.to_numpy()
    vc = session_components(subject, "t1")
    labels = sorted(np.unique(subject))
    spec = types.SimpleNamespace(names=list(vc), colnames=[[[]] * len(labels)] * len(vc),
                                 mats=[[vc[s][g] for g in labels] for s in vc])
    intercept = np.ones((len(y), 1))
    a = jaxlmm.MixedLM(y, X, subject, intercept, exog_vc=vc).fit(warn=False)
    b = jaxlmm.MixedLM(y, X, subject, intercept, exog_vc=spec).fit(warn=False)
    assert a.llf == b.llf


# ---- bad input ----------------------------------------------------------------------------------------
def test_bad_exog_vc_says_what_to_pass_and_nothing_is_mutated():
    y, X = sessions_design()
    subject, ones = SESSIONS.subject.to_numpy(), np.ones(len(y), dtype=int)
    vc = session_components(subject, "t1")
    before = copy.deepcopy(vc)
    args = (y.copy(), X.copy(), subject.copy())

    def fails(exog_vc, match, groups=subject, **kw):
        with pytest.raises(DataError, match=match):
            jaxlmm.MixedLM(y, X, groups, exog_vc=exog_vc, **kw)

    fails(np.ones((len(y), 2)), r"exog_vc must be a dict \{vc_name: \{group_label: matrix\}\}")
    fails({"t2": np.ones((len(y), 2))}, r"exog_vc\['t2'\] is a ndarray, not a dict \{group_label: matrix\}")
    fails({"t2": {i: m for i, m in enumerate(vc["t2"].values())}}, r"not in groups: 0, 1, .*Key the dict by the labels")
    fails({"t2": {g: m for g, m in vc["t2"].items() if g != "s03"}}, r"lacks groups 's03'.*np.zeros\(\(n_g, 0\)\)")
    fails({"t2": {**vc["t2"], "s02": vc["t2"]["s02"][:-1]}}, r"exog_vc\['t2'\]\['s02'\] has shape \(11, 3\), but group "
          r"'s02' has 12 rows")
    fails({"t2": {g: np.zeros_like(m) for g, m in vc["t2"].items()}}, r"exog_vc\['t2'\] is all zeros")
    fails({"t2": {g: np.full(m.shape, "a") for g, m in vc["t2"].items()}}, r"is not numeric")
    two_per_row = {"both": {1: np.ones((len(y), 2))}}
    fails(two_per_row, r"2 non-zero entries in row 0.*at most one non-zero.*several groups", groups=ones)
    fails(session_components(ones, "t1"), r"one group for all rows, exog_re's effects", groups=ones,
          exog_re=np.ones((len(y), 1)))
    for s in vc:
        for g in vc[s]:
            np.testing.assert_array_equal(vc[s][g], before[s][g])
    for a, b in zip(args, (y, X, subject)):
        np.testing.assert_array_equal(a, b)


def test_exog_vc_models_run_through_batches_bootstrap_and_profiles():
    """A model given by arrays with nested components behaves as any other: fit_many, bootstrap, profiles."""
    d = jaxlmm.datasets.load("pastes")
    groups = d.batch.to_numpy()
    vc = {"cask": {b: pd.get_dummies(d[d.batch == b].cask).to_numpy(float) for b in np.unique(groups)}}
    m = jaxlmm.MixedLM(d.strength, np.ones((len(d), 1)), groups, exog_vc=vc)
    r = m.fit(warn=False)
    batch = m.fit_many(np.column_stack([d.strength, 2 * d.strength]), progress=False)
    assert batch.llf.values[0] == pytest.approx(r.llf, abs=1e-7)
    np.testing.assert_allclose(batch.vcomp.values[1], 4 * r.vcomp.values, rtol=1e-5)
    boot = r.bootstrap(n=32, seed=1, progress=False)
    assert boot.replicates.shape == (32 - boot.n_failed, len(r.params))
    ci = r.conf_int(method="profile")
    assert (ci["lower"] < ci["upper"]).all()
    assert ci.loc["sigma", "lower"] < np.sqrt(r.scale) < ci.loc["sigma", "upper"]
