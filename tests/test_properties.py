"""Properties every correct LMM fit has: invariances, front-end equivalences, padding, and the
kernel's derivatives and likelihood checked against independent computations (float64 throughout).

Model shapes are reused on purpose (each new shape compiles once): sleepstudy ``(Days | Subject)``,
orthodont ``age + Sex + (age | Subject)``, and dyestuff ``(1 | Batch)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import MixedLM
from jaxlmm._kernels import profiled_deviance, relative_factor, sufficient_stats

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep() -> pd.DataFrame:
    return jaxlmm.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_model(sleep) -> MixedLM:
    return MixedLM.from_formula(SLEEP, sleep)


@pytest.fixture(scope="module")
def sleep_fit(sleep_model):
    """The REML fit (ML is exercised through the kernel tests: each method compiles separately)."""
    return sleep_model.fit(reml=True)


# MixedLM.fit calls fit_arrays(design, reml, gtol=...): calling it the same way reuses that compilation.
GTOL = 1e-6


def _assert_same_fit(a, b, ranef_index=None, rtol=1e-6):
    """Same llf (1e-8), fixed effects, variance components and random effects (aligned by label)."""
    np.testing.assert_allclose(a.llf, b.llf, rtol=1e-8)
    np.testing.assert_allclose(a.fe_params.values, b.fe_params.values, rtol=rtol)
    np.testing.assert_allclose(a.scale, b.scale, rtol=rtol)
    np.testing.assert_allclose(a.cov_re.values, b.cov_re.values, rtol=rtol, atol=rtol * np.abs(a.cov_re.values).max())
    re_a = a.random_effects
    re_b = b.random_effects if ranef_index is None else b.random_effects.loc[ranef_index]
    np.testing.assert_allclose(re_a.values, re_b.values, rtol=rtol, atol=rtol * np.abs(re_a.values).max())


# ---- invariances ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
def test_row_permutation_changes_nothing(sleep, sleep_fit, seed):
    perm = np.random.default_rng(seed).permutation(len(sleep))
    shuffled = sleep.iloc[perm].reset_index(drop=True)
    r = MixedLM.from_formula(SLEEP, shuffled).fit(reml=sleep_fit.reml)
    assert list(r.fe_params.index) == list(sleep_fit.fe_params.index)
    _assert_same_fit(sleep_fit, r, ranef_index=sleep_fit.random_effects.index)
    # fitted values follow their rows
    np.testing.assert_allclose(r.fittedvalues.values, sleep_fit.fittedvalues.values[perm], rtol=1e-6)


def test_relabelling_groups_changes_nothing(sleep, sleep_fit):
    old = sorted(sleep["Subject"].unique())
    # new labels sort in the reverse order of the old ones, so the group codes are permuted too
    new = [f"subj_{chr(ord('z') - i)}" for i in range(len(old))]
    mapping = dict(zip(old, new))
    relabelled = sleep.assign(Subject=sleep["Subject"].map(mapping))
    r = MixedLM.from_formula(SLEEP, relabelled).fit(reml=sleep_fit.reml)
    assert set(r.random_effects.index) == set(new)
    _assert_same_fit(sleep_fit, r, ranef_index=[mapping[s] for s in sleep_fit.random_effects.index])


def test_integer_group_labels_equal_string_labels(sleep, sleep_fit):
    as_int = sleep.assign(Subject=sleep["Subject"].astype(int))
    r = MixedLM.from_formula(SLEEP, as_int).fit(reml=sleep_fit.reml)
    _assert_same_fit(sleep_fit, r, ranef_index=sleep_fit.random_effects.index.astype(int))


def test_array_api_equals_formula_api(sleep, sleep_fit):
    y = sleep["Reaction"].to_numpy(dtype=float)
    X = np.column_stack([np.ones(len(sleep)), sleep["Days"].to_numpy(dtype=float)])
    r = MixedLM(y, X, sleep["Subject"].to_numpy(), exog_re=X.copy()).fit(reml=sleep_fit.reml)
    assert r.nobs == sleep_fit.nobs and r.ngroups == sleep_fit.ngroups
    _assert_same_fit(sleep_fit, r, rtol=1e-10)
    np.testing.assert_allclose(r.bse_fe.values, sleep_fit.bse_fe.values, rtol=1e-8)
    assert list(r.random_effects.index) == list(sleep_fit.random_effects.index)


def test_statsmodels_style_equals_lme4_style(sleep, sleep_fit):
    r = MixedLM.from_formula("Reaction ~ Days", sleep, groups="Subject", re_formula="~Days").fit(reml=sleep_fit.reml)
    _assert_same_fit(sleep_fit, r, rtol=1e-10)


def test_reference_level_of_a_factor_changes_nothing():
    # REML is the demanding case: log|Xᵀ V⁻¹ X| is invariant only because the change of basis has |det| = 1
    df = jaxlmm.datasets.load("orthodont")
    a = MixedLM.from_formula("distance ~ age + Sex + (age | Subject)", df).fit()
    b = MixedLM.from_formula('distance ~ age + C(Sex, contr.treatment("Male")) + (age | Subject)', df).fit()
    assert a.fe_params.index[2] == "Sex[T.Male]" and b.fe_params.index[2].endswith("[T.Female]")
    np.testing.assert_allclose(a.llf, b.llf, rtol=1e-8)
    np.testing.assert_allclose(a.fe_params.iloc[2], -b.fe_params.iloc[2], rtol=1e-6)
    np.testing.assert_allclose(a.fe_params.iloc[1], b.fe_params.iloc[1], rtol=1e-6)
    np.testing.assert_allclose(a.fe_params.iloc[0] + a.fe_params.iloc[2], b.fe_params.iloc[0], rtol=1e-6)
    np.testing.assert_allclose(a.bse_fe.iloc[1:].values, b.bse_fe.iloc[1:].values, rtol=1e-6)
    np.testing.assert_allclose(a.scale, b.scale, rtol=1e-6)
    np.testing.assert_allclose(a.cov_re.values, b.cov_re.values, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.random_effects.values, b.random_effects.loc[a.random_effects.index].values, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.fittedvalues.values, b.fittedvalues.values, rtol=1e-8)


# ---- the functional core: jit, masks -------------------------------------------------------------
def test_jit_equals_no_jit():
    design = MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("dyestuff")).design
    with jaxlmm.float64():
        jitted = jaxlmm.fit_arrays(design, True, gtol=GTOL)
        with jax.disable_jit():
            eager = jaxlmm.fit_arrays(design, True, gtol=GTOL)
    np.testing.assert_allclose(float(eager.llf), float(jitted.llf), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(eager.beta), np.asarray(jitted.beta), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(eager.theta), np.asarray(jitted.theta), rtol=1e-7)
    np.testing.assert_allclose(float(eager.sigma2), float(jitted.sigma2), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(eager.ranef), np.asarray(jitted.ranef), rtol=1e-7, atol=1e-9)


def test_masked_rows_equal_dropped_rows(sleep, sleep_model):
    rng = np.random.default_rng(7)
    # mask 20 rows, at most a few per subject, so every group keeps observations
    drop = np.sort(rng.choice(len(sleep), size=20, replace=False))
    keep = np.setdiff1d(np.arange(len(sleep)), drop)
    mask = np.ones(len(sleep))
    mask[drop] = 0.0
    # garbage in the masked rows must not leak into the fit
    y_bad = np.asarray(sleep_model.design.y).copy()
    y_bad[drop] = 1e6
    dropped_model = MixedLM.from_formula(SLEEP, sleep.iloc[keep].reset_index(drop=True))
    assert dropped_model.ngroups == sleep_model.ngroups
    with jaxlmm.float64():
        d = sleep_model.design
        padded = jaxlmm.fit_arrays(d.replace(mask=jnp.asarray(mask), y=jnp.asarray(y_bad)), True, gtol=GTOL)
        unpadded = jaxlmm.fit_arrays(dropped_model.design, True, gtol=GTOL)
    np.testing.assert_allclose(float(padded.llf), float(unpadded.llf), rtol=1e-8)
    for name in ("beta", "theta", "sigma2", "cov_re", "vcov_beta", "ranef"):
        a, b = np.asarray(getattr(padded, name)), np.asarray(getattr(unpadded, name))
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max(), err_msg=name)


# ---- the kernel: derivatives and an independent dense likelihood --------------------------------
@pytest.fixture(scope="module")
def sleep_stats(sleep_model):
    d = sleep_model.design
    with jaxlmm.float64():
        stats = sufficient_stats(d.y, d.X, d.Z, d.group, d.mask, d.n_groups)
    return stats, jnp.asarray(d.lambda_index_array)


def _random_thetas(n: int, seed: int = 0) -> np.ndarray:
    """θ for (Days | Subject): Λ = [[θ0, 0], [θ1, θ2]], around the optimum (0.97, 0.015, 0.23)."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0.3, 2.0, n), rng.uniform(-0.5, 0.5, n), rng.uniform(0.05, 1.0, n)])


def _central_difference(f, x: np.ndarray, h: float) -> np.ndarray:
    cols = []
    for k in range(len(x)):
        e = np.zeros_like(x)
        e[k] = h
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h))
    return np.stack(cols, axis=-1)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_deviance_gradient_and_hessian_match_finite_differences(sleep_stats, reml):
    stats, lam_idx = sleep_stats

    def f(th):
        return profiled_deviance(th, stats, lam_idx, reml)

    # one compiled function for value, gradient and Hessian (one compilation instead of three)
    derivs = jax.jit(lambda th: (f(th), jax.grad(f)(th), jax.hessian(f)(th)))
    with jaxlmm.float64():
        for theta in _random_thetas(3, seed=1 + reml):
            _, g, H = (np.asarray(a) for a in derivs(jnp.asarray(theta)))
            g_fd = _central_difference(lambda t: derivs(jnp.asarray(t))[0], theta, 1e-5)
            np.testing.assert_allclose(g, g_fd, rtol=1e-6, atol=1e-6 * np.abs(g).max())
            np.testing.assert_allclose(H, H.T, rtol=1e-12, atol=1e-12 * np.abs(H).max())
            H_fd = _central_difference(lambda t: derivs(jnp.asarray(t))[1], theta, 1e-5)
            np.testing.assert_allclose(H, H_fd, rtol=1e-6, atol=1e-6 * np.abs(H).max())


def _dense_deviance(theta, y, X, Z, group, lam_idx, reml: bool) -> float:
    """−2 (RE)ML log-likelihood, β and σ² profiled by GLS, from V = σ² (Z Λ Λᵀ Zᵀ + I) built densely."""
    lam = np.where(lam_idx >= 0, np.asarray(theta)[np.maximum(lam_idx, 0)], 0.0)
    n, p = X.shape
    V0 = np.zeros((n, n))
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        Zg = Z[rows]
        V0[np.ix_(rows, rows)] = Zg @ lam @ lam.T @ Zg.T + np.eye(len(rows))
    Vi_X = np.linalg.solve(V0, X)
    Vi_y = np.linalg.solve(V0, y)
    XtViX = X.T @ Vi_X
    beta = np.linalg.solve(XtViX, X.T @ Vi_y)
    r = y - X @ beta
    rss = r @ np.linalg.solve(V0, r)
    _, logdet_V0 = np.linalg.slogdet(V0)
    dof = n - p if reml else n
    sigma2 = rss / dof
    dev = dof * np.log(2 * np.pi * sigma2) + logdet_V0 + rss / sigma2
    if reml:
        dev += np.linalg.slogdet(XtViX)[1]
    return float(dev)


@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
def test_kernel_likelihood_equals_dense_evaluation(sleep_model, sleep_stats, reml):
    stats, lam_idx = sleep_stats
    d = sleep_model.design
    y, X, Z, group = (np.asarray(a) for a in (d.y, d.X, d.Z, d.group))
    with jaxlmm.float64():
        dev = jax.jit(lambda th: profiled_deviance(th, stats, lam_idx, reml))
        for theta in _random_thetas(4, seed=10 + reml):
            kernel = float(dev(jnp.asarray(theta)))
            dense = _dense_deviance(theta, y, X, Z, group, np.asarray(lam_idx), reml)
            np.testing.assert_allclose(kernel, dense, rtol=1e-9)


def test_fitted_llf_equals_dense_evaluation_at_the_optimum(sleep_model, sleep_fit):
    d = sleep_model.design
    y, X, Z, group = (np.asarray(a) for a in (d.y, d.X, d.Z, d.group))
    dense = _dense_deviance(sleep_fit.theta, y, X, Z, group, d.lambda_index_array, sleep_fit.reml)
    np.testing.assert_allclose(-2 * sleep_fit.llf, dense, rtol=1e-9)
    # and Λ from θ reproduces cov_re / σ²
    with jaxlmm.float64():
        lam = np.asarray(relative_factor(jnp.asarray(sleep_fit.theta), jnp.asarray(d.lambda_index_array)))
    np.testing.assert_allclose(sleep_fit.scale * lam @ lam.T, sleep_fit.cov_re.values, rtol=1e-10, atol=1e-10)
