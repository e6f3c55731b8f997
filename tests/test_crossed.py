"""Crossed and partially crossed random-effects terms, with slopes: lme4's reference fits (Penicillin,
a subjects × items experiment), an independent dense likelihood and conditional modes, properties
(rows permuted, levels relabelled, terms reordered, nesting written two ways), prediction, errors,
derivatives and batches."""

import json
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm._crossed import build_crossed_terms
from jaxlmm._design import make_design
from tests.dense import dense_terms_loglik, dense_terms_modes

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "lme4_reference.json").read_text())
CROSSED_REFERENCE = json.loads((DATA / "crossed_reference.json").read_text())
FORMULA = "diameter ~ 1 + (1 | plate) + (1 | sample)"
THREE_TERMS = "y ~ x + (1 + x | a) + (1 + x | b) + (1 | c)"


@pytest.fixture(scope="module")
def penicillin():
    return jaxlmm.datasets.load("penicillin")


@pytest.fixture(scope="module")
def psycholing():
    return pd.read_csv(DATA / "psycholing.csv")


@pytest.fixture(scope="module")
def three_factors():
    """a (24 levels) × b (10) × c (5), partially crossed, with random slopes on a and b."""
    rng = np.random.default_rng(11)
    n = 360
    a, b, c = rng.integers(0, 24, n), rng.integers(0, 10, n), rng.integers(0, 5, n)
    x = rng.normal(size=n)
    y = (1.0 + 0.5 * x + rng.normal(size=24)[a] * 0.8 + rng.normal(size=24)[a] * 0.4 * x + rng.normal(size=10)[b]
         + 0.6 * rng.normal(size=10)[b] * x + 0.7 * rng.normal(size=5)[c] + rng.normal(size=n))
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{v}" for v in a], "b": [f"b{v}" for v in b], "c": [f"c{v}" for v in c]})


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


@pytest.mark.parametrize("key", sorted(CROSSED_REFERENCE))
def test_subjects_by_items_match_lme4(psycholing, key):
    """(1 + c | subj) + (1 + c | item), correlated and uncorrelated: lme4's optimum or higher."""
    entry = CROSSED_REFERENCE[key]
    with pytest.warns(jaxlmm.errors.SingularFitWarning):
        r = jaxlmm.MixedLM.from_formula(entry["formula"], psycholing).fit(reml=entry["reml"])
    assert r.converged and r.nobs == entry["nobs"]
    assert r.llf >= entry["loglik"] - 1e-7
    assert r.llf - entry["loglik"] < 1e-5
    for name, value in entry["fixef"].items():
        assert r.fe_params["Intercept" if name == "(Intercept)" else name] == pytest.approx(value, rel=1e-4)
        assert r.bse_fe["Intercept" if name == "(Intercept)" else name] == pytest.approx(entry["se"][name], rel=1e-3)
    variances = {(row["grp"].split(".")[0], row["var1"]): row["vcov"] for row in entry["varcorr"]
                 if row.get("var2") is None and row["grp"] != "Residual"}
    for (grp, var), value in variances.items():
        name = f"Var({grp})" if var == "(Intercept)" else f"Var({var}|{grp})"
        assert r.vcomp[name] == pytest.approx(value, rel=2e-3, abs=0.05)


@pytest.mark.parametrize("reml", [True, False])
def test_llf_and_modes_equal_dense_computation(three_factors, reml):
    m = jaxlmm.MixedLM.from_formula(THREE_TERMS, three_factors)
    r = m.fit(reml=reml)
    assert r.converged
    G = r.cov_re.values
    df = three_factors
    X = np.column_stack([np.ones(len(df)), df.x])
    terms = [(pd.factorize(df.a, sort=True)[0], X, G[:2, :2]), (pd.factorize(df.b, sort=True)[0], X, G[2:4, 2:4]),
             (pd.factorize(df.c, sort=True)[0], np.ones((len(df), 1)), G[4:, 4:])]
    ll, beta = dense_terms_loglik(df.y, X, terms, r.scale, reml)
    assert r.llf == pytest.approx(ll, abs=1e-8)
    np.testing.assert_allclose(r.fe_params.values, beta, rtol=1e-8)
    dense = dense_terms_modes(df.y, X, terms, r.scale, r.fe_params.values)
    covs = r.random_effects_cov
    for (factor, modes), (b, C) in zip(r.random_effects.items(), dense):
        np.testing.assert_allclose(modes.to_numpy(), b, atol=1e-7)
        mine = np.stack([covs[factor][lev].to_numpy() for lev in modes.index])
        np.testing.assert_allclose(mine, C, atol=1e-7)


def test_deviance_and_its_gradient_equal_dense_computation(three_factors):
    m = jaxlmm.MixedLM.from_formula(THREE_TERMS, three_factors)
    theta = np.array([0.8, 0.1, 0.3, 1.0, 0.2, 0.5, 0.7])
    df = three_factors
    X = np.column_stack([np.ones(len(df)), df.x])
    codes = [pd.factorize(df[f], sort=True)[0] for f in "abc"]

    def dense_deviance(t):
        """REML profiled deviance: V₀ = Z Λ Λᵀ Zᵀ + I; log|V₀| + log|XᵀV₀⁻¹X| + (n − p)(1 + log(2π rss / (n − p)))."""
        lam = np.zeros((5, 5))
        lam[np.tril_indices(2)] = t[[0, 1, 2]]
        lam[2:4, 2:4][np.tril_indices(2)] = t[[3, 4, 5]]
        lam[4, 4] = t[6]
        G = lam @ lam.T
        n, p = X.shape
        V0 = np.eye(n)
        for k, (Z, block) in enumerate([(X, G[:2, :2]), (X, G[2:4, 2:4]), (np.ones((n, 1)), G[4:, 4:])]):
            V0 = V0 + np.where(codes[k][:, None] == codes[k][None, :], Z @ block @ Z.T, 0.0)
        Vi = np.linalg.inv(V0)
        A = X.T @ Vi @ X
        resid = df.y.to_numpy() - X @ np.linalg.solve(A, X.T @ Vi @ df.y.to_numpy())
        dof = n - p
        return (np.linalg.slogdet(V0)[1] + np.linalg.slogdet(A)[1]
                + dof * (1 + np.log(2 * np.pi * (resid @ Vi @ resid) / dof)))

    with jaxlmm.float64():
        dev = float(jaxlmm.deviance(m.design, theta))
        grad = np.asarray(jax.grad(jaxlmm.deviance, argnums=1)(m.design, theta))
    assert dev == pytest.approx(dense_deviance(theta), abs=1e-6)
    eps = 1e-5
    fd = [(dense_deviance(theta + eps * e) - dense_deviance(theta - eps * e)) / (2 * eps) for e in np.eye(7)]
    np.testing.assert_allclose(grad, fd, rtol=1e-4, atol=1e-4)


def test_rows_permuted_levels_relabelled_and_terms_reordered_change_nothing(three_factors):
    r = jaxlmm.MixedLM.from_formula(THREE_TERMS, three_factors).fit()
    shuffled = three_factors.sample(frac=1.0, random_state=3).copy()
    shuffled["b"] = "level_" + shuffled["b"].str[::-1]
    r2 = jaxlmm.MixedLM.from_formula("y ~ x + (1 | c) + (1 + x | b) + (1 + x | a)", shuffled).fit()
    assert r2.llf == pytest.approx(r.llf, abs=1e-9)
    np.testing.assert_allclose(r2.vcomp.sort_index().values, r.vcomp.sort_index().values, rtol=1e-6)
    np.testing.assert_allclose(r2.fittedvalues.loc[three_factors.index].values, r.fittedvalues.values, rtol=1e-9)


def test_term_nested_in_the_leading_factor_equals_the_nested_model():
    """Pastes: the blocked factor with sample (30 levels) leading and batch (10) dense gives the
    nested model '(1 | batch/cask)' fitted by the per-batch path."""
    pastes = jaxlmm.datasets.load("pastes")
    nested = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch/cask)", pastes).fit()
    sample, n_sample = pd.factorize(pastes["batch"].astype(str) + ":" + pastes["cask"].astype(str), sort=True)
    batch, n_batch = pd.factorize(pastes["batch"], sort=True)
    n = len(pastes)
    ones = np.ones((n, 1))
    terms = build_crossed_terms(sample, len(n_sample), [batch], [len(n_batch)], [ones], [(1, 1)])
    design = make_design(pastes["strength"].to_numpy(), ones, ones, sample, len(n_sample), [[0, -1], [-1, 1]],
                         crossed=terms)
    with jaxlmm.float64():
        fit = jaxlmm.fit_arrays(design)
    assert float(fit.llf) == pytest.approx(nested.llf, abs=1e-8)
    np.testing.assert_allclose(sorted(np.asarray(fit.varpar)), sorted(nested.vcomp.values), rtol=1e-5)


def test_summary_prediction_and_random_effects(penicillin):
    r = jaxlmm.MixedLM.from_formula(FORMULA, penicillin).fit()
    text = str(r.summary())
    assert "No. levels (plate):" in text and "No. levels (sample):" in text
    assert list(r.vcomp.index) == ["Var(plate)", "Var(sample)", "Residual"]
    re = r.random_effects
    assert list(re) == ["plate", "sample"] and re["plate"].shape == (24, 1) and re["sample"].shape == (6, 1)
    np.testing.assert_allclose(r.predict(penicillin).values, r.fittedvalues.values, rtol=1e-12)
    new = penicillin.head(2).copy()
    new["plate"] = "unseen"
    expected = r.fe_params["Intercept"] + re["sample"].loc[str(new["sample"].iloc[0]), "Intercept"]
    assert r.predict(new).iloc[0] == pytest.approx(expected, rel=1e-12)  # unseen plate: population level
    assert r.predict(new, include_re=False).iloc[0] == pytest.approx(r.fe_params["Intercept"], rel=1e-12)


def test_profile_intervals_match_lme4(penicillin):
    ref = json.loads((DATA / "lme4_profile.json").read_text())["penicillin_crossed"]
    r = jaxlmm.MixedLM.from_formula(FORMULA, penicillin).fit()
    ci = r.conf_int(method="profile")
    np.testing.assert_allclose(ci["lower"].values, ref["delta_64"]["lower"], rtol=1e-5)
    np.testing.assert_allclose(ci["upper"].values, ref["delta_64"]["upper"], rtol=1e-5)


def test_crossed_errors(penicillin, three_factors):
    one = penicillin.assign(sample="a")
    with pytest.raises(jaxlmm.DataError, match="'sample' has 1 level"):
        jaxlmm.MixedLM.from_formula(FORMULA, one)
    few = three_factors.assign(c=np.where(three_factors.index % 2 == 0, "u", "v"))
    with pytest.raises(jaxlmm.IdentifiabilityError, match="'c' have 2 random effects per level .* only 2 levels"):
        jaxlmm.MixedLM.from_formula("y ~ x + (1 + x | a) + (1 + x | c)", few)
    twice = "y ~ x + (1 + x | a) + (1 + x | b) + (1 | b)"
    with pytest.raises(jaxlmm.IdentifiabilityError, match="more than one term for 'b'"):
        jaxlmm.MixedLM.from_formula(twice, three_factors)
    n = 24_000
    huge = pd.DataFrame({"y": np.sin(np.arange(n)), "a": np.arange(n) % 12_000, "b": (np.arange(n) * 7) % 11_000})
    with pytest.raises(jaxlmm.errors.ModelTooLargeError, match="'b'.*11,000 random effects.*GiB"):
        jaxlmm.MixedLM.from_formula("y ~ 1 + (1 | a) + (1 | b)", huge)


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


def test_gradient_of_a_crossed_fit_matches_finite_differences(three_factors):
    m = jaxlmm.MixedLM.from_formula(THREE_TERMS, three_factors)
    d = m.design
    with jaxlmm.float64():
        def slope(y):
            return jaxlmm.fit_arrays(d.replace(y=y)).beta[1]

        grad = np.asarray(jax.grad(slope)(d.y))
        direction = np.random.default_rng(0).normal(size=d.y.shape)
        eps = 1e-4
        fd = (float(slope(d.y + eps * direction)) - float(slope(d.y - eps * direction))) / (2 * eps)
    assert grad @ direction == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_fit_many_on_a_crossed_design_equals_single_fits(penicillin):
    m = jaxlmm.MixedLM.from_formula(FORMULA, penicillin)
    rng = np.random.default_rng(5)
    Y = penicillin["diameter"].to_numpy()[:, None] + rng.normal(scale=0.5, size=(len(penicillin), 3))
    batch = m.fit_many(Y, progress=False)
    for j in range(3):
        single = m.with_response(Y[:, j]).fit()
        assert float(batch.llf.iloc[j]) == pytest.approx(single.llf, abs=1e-7)


def test_sparse_and_dense_coupling_give_the_same_fit(three_factors, monkeypatch):
    """L₂₁L₂₁ᵀ by scatter-added pairs of non-zero blocks (large models) equals the dense product."""
    dense = jaxlmm.MixedLM.from_formula(THREE_TERMS, three_factors)
    assert dense.design.crossed.layout.dense_coupling
    monkeypatch.setattr("jaxlmm._crossed.DENSE_COUPLING_MAX_FLOPS", 0)
    monkeypatch.setattr("jaxlmm._crossed.choose_dense_coupling", lambda layout, n_pairs: False)
    sparse = jaxlmm.MixedLM.from_formula(THREE_TERMS, three_factors)
    assert not sparse.design.crossed.layout.dense_coupling and sparse.design.crossed.pair_first.size > 0
    r_dense, r_sparse = dense.fit(), sparse.fit()
    assert r_sparse.llf == pytest.approx(r_dense.llf, abs=1e-9)
    # both stop within gtol, by BFGS (this block has 32 rows or more): a near-zero covariance agrees to
    # 1e-6 of the largest variance, not of itself
    np.testing.assert_allclose(r_sparse.vcomp.values, r_dense.vcomp.values, rtol=1e-6,
                               atol=1e-6 * np.abs(r_dense.vcomp.values).max())
    for factor in r_dense.random_effects:
        modes = r_dense.random_effects[factor].values
        np.testing.assert_allclose(r_sparse.random_effects[factor].values, modes, atol=1e-6 * np.abs(modes).max())
        lev = r_dense.random_effects[factor].index[0]
        cov = r_dense.random_effects_cov[factor][lev].values
        np.testing.assert_allclose(r_sparse.random_effects_cov[factor][lev].values, cov, atol=1e-6 * np.abs(cov).max())


def test_fit_datasets_of_crossed_models_equals_separate_fits(three_factors):
    """Data sets of different sizes and levels, padded to shared shape buckets, fitted at once."""
    sets = [three_factors.sample(frac=f, random_state=i).reset_index(drop=True) for i, f in enumerate([1.0, 0.8, 0.6])]
    rl = jaxlmm.fit_datasets(THREE_TERMS, sets, progress=False)
    for i, data in enumerate(sets):
        single = jaxlmm.MixedLM.from_formula(THREE_TERMS, data).fit()
        assert float(rl.llf.iloc[i]) == pytest.approx(single.llf, abs=1e-7)
        member = rl[i]
        for factor, modes in single.random_effects.items():
            np.testing.assert_allclose(member.random_effects[factor].values, modes.values, atol=1e-4)
    flipped = sets[0].assign(c=sets[0]["a"], a=sets[0]["c"])  # now c has the most levels: another leading factor
    with pytest.raises(jaxlmm.DataError, match="orders its crossed factors"):
        jaxlmm.fit_datasets("y ~ x + (1 | a) + (1 | c)", [sets[0], flipped], progress=False)


def test_crossed_factor_absorbed_by_the_fixed_effects_warns(three_factors):
    with pytest.warns(jaxlmm.IdentifiabilityWarning, match="random effects of 'c' are absorbed by the fixed effects"):
        jaxlmm.MixedLM.from_formula("y ~ x + C(c) + (1 + x | a) + (1 | c)", three_factors)


def test_lrtest_bootstrap_and_satterthwaite_on_crossed_slopes(psycholing):
    small = jaxlmm.MixedLM.from_formula("rt ~ c + (1 | subj) + (1 | item)", psycholing).fit(reml=False)
    large = jaxlmm.MixedLM.from_formula("rt ~ c + (1 | subj) + (1 + c | item)", psycholing).fit(reml=False)
    test = jaxlmm.lrtest(small, large)
    assert test.df == 2 and test.statistic == pytest.approx(2 * (large.llf - small.llf), rel=1e-9)
    boot = large.bootstrap(n=16, seed=3, progress=False)
    assert np.isfinite(boot.conf_int().values).all() and boot.replicates.shape == (16, 7)  # 2 fixed effects, 4 variance parameters, residual
    df = large.satterthwaite_df(np.eye(2))
    assert np.all((df > 1) & (df < large.nobs))


def test_coupling_choice_and_its_memory_limit():
    """Dense L₂₁ when its product is small or the pairs would cost more; a coupling beyond memory is refused."""
    from jaxlmm._crossed import CrossedLayout, choose_dense_coupling

    small = CrossedLayout((32,), ((2, 2),), 56, 2)  # psycholing: 112 × 64
    assert choose_dense_coupling(small, n_pairs=30_000)
    insteval = CrossedLayout((1128, 14), ((1, 1), (2, 1)), 2972, 1)
    assert not choose_dense_coupling(insteval, n_pairs=1_800_000)
    crowded = CrossedLayout((2000,), ((1, 1),), 100, 1)  # every leading level meets every level
    assert choose_dense_coupling(crowded, n_pairs=100 * 2000 * 2001 // 2)
    huge = CrossedLayout((9000,), ((1, 1),), 2_000_000, 1)
    with pytest.raises(jaxlmm.ModelTooLargeError, match="coupling would need about .* GiB"):
        choose_dense_coupling(huge, n_pairs=2_000_000 * 4_000)
