"""Many models at once: each member of a batch is the same fit as fitting it alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep():
    return jaxlmm.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def model(sleep):
    return jaxlmm.MixedLM.from_formula(FORMULA, sleep)


def simulate(model, k, seed, cov_scale=1.0):
    """Responses from the fitted sleepstudy model (random effects scaled by cov_scale)."""
    r = model.fit(warn=False)
    d = model.design
    X, Z, g = np.asarray(d.X), np.asarray(d.Z), np.asarray(d.group)
    rng = np.random.default_rng(seed)
    L = np.linalg.cholesky(r.cov_re.values * cov_scale + 1e-12 * np.eye(2))
    b = rng.normal(size=(k, model.ngroups, 2)) @ L.T
    eps = rng.normal(size=(k, len(g))) * np.sqrt(r.scale)
    return (X @ r.fe_params.values + np.einsum("nq,knq->kn", Z, b[:, g]) + eps).T


def fit_alone(model, sleep, y, reml=True):
    keep = np.isfinite(y)
    d = model.design
    alone = jaxlmm.MixedLM(y[keep], np.asarray(d.X)[keep], sleep.Subject.values[keep], np.asarray(d.Z)[keep])
    return alone.fit(reml=reml, warn=False)


@pytest.fixture(scope="module")
def batch(model):
    Y = simulate(model, 14, seed=1)
    Y[:, 10] = simulate(model, 1, seed=2, cov_scale=0.0)[:, 0]  # no random effects: a boundary fit
    Y[:, 11] = Y[:, 11] * 1e-3 + 5.0  # badly scaled response
    Y[[3, 50, 51], 4] = np.nan  # missing values in one response only
    Y[:60, 12] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rb = model.fit_many(Y, progress=False)
    return Y, rb


@pytest.mark.parametrize("i", range(14))
def test_member_equals_fitting_it_alone(model, sleep, batch, i):
    Y, rb = batch
    alone = fit_alone(model, sleep, Y[:, i])
    assert rb.converged.iloc[i] and alone.converged
    assert rb.llf.iloc[i] == pytest.approx(alone.llf, abs=1e-8)
    np.testing.assert_allclose(rb.fe_params.iloc[i].values, alone.fe_params.values, rtol=1e-7)
    np.testing.assert_allclose(rb.bse_fe.iloc[i].values, alone.bse_fe.values, rtol=1e-6)
    np.testing.assert_allclose(rb.cov_re[i], alone.cov_re.values, rtol=1e-5, atol=1e-6 * alone.scale)
    assert rb.scale.iloc[i] == pytest.approx(alone.scale, rel=1e-6)
    assert rb.nobs.iloc[i] == alone.nobs


def test_batch_includes_a_boundary_fit(batch):
    _, rb = batch
    assert rb.is_singular.iloc[10]


def test_member_results_object(model, sleep, batch):
    Y, rb = batch
    r4 = rb[4]
    alone = fit_alone(model, sleep, Y[:, 4])
    assert r4.nobs == 177
    assert r4.llf == pytest.approx(alone.llf, abs=1e-8)
    np.testing.assert_allclose(r4.random_effects.values, alone.random_effects.values, rtol=1e-5, atol=1e-6)
    assert np.isnan(r4.resid.iloc[3]) and np.isfinite(r4.resid.iloc[4])
    assert "Mixed Linear Model" in str(r4.summary())


def test_tables(batch):
    _, rb = batch
    assert rb.fe_params.shape == (14, 2)
    assert list(rb.fe_params.columns) == ["Intercept", "Days"]
    tidy = rb.to_frame()
    assert len(tidy) == 28 and set(tidy.columns) >= {"response", "term", "estimate", "SE", "z", "p"}
    np.testing.assert_allclose(tidy.estimate.values, rb.fe_params.values.ravel())
    assert rb.cov_re.shape == (14, 2, 2)
    assert len(rb.cov_re_frame()) == 14 * 3
    ci = rb.conf_int()
    assert list(ci.columns) == ["lower", "upper"] and ci.index.names == ["response", "term"]
    name = rb.names[4]
    pd.testing.assert_frame_equal(ci.loc[name], rb[4].conf_int(), check_names=False, rtol=1e-10)


def test_ml_batch(model, sleep):
    Y = simulate(model, 3, seed=5)
    rb = model.fit_many(Y, reml=False, progress=False)
    for i in range(3):
        assert rb.llf.iloc[i] == pytest.approx(fit_alone(model, sleep, Y[:, i], reml=False).llf, abs=1e-8)


def test_dataframe_names_and_lookup(model):
    Y = pd.DataFrame(simulate(model, 3, seed=6), columns=["gene_a", "gene_b", "gene_c"])
    rb = model.fit_many(Y, progress=False)
    assert list(rb.names) == ["gene_a", "gene_b", "gene_c"]
    assert rb["gene_b"].llf == pytest.approx(rb.llf["gene_b"])


def test_unfittable_members_are_flagged_not_reported_as_fine(model, sleep):
    Y = np.column_stack([sleep.Reaction, np.full(180, 3.0), np.full(180, np.nan)])
    with pytest.warns(jaxlmm.ConvergenceWarning, match="2 of 3 fits did not converge"):
        rb = model.fit_many(Y, progress=False)
    assert rb.converged.tolist() == [True, False, False]
    assert rb.problems.tolist() == ["", "constant response", "no observations"]
    assert np.isnan(rb.llf.iloc[1]) and np.isnan(rb.fe_params.iloc[2]).all()


def test_chunking_changes_nothing(model):
    Y = simulate(model, 40, seed=7)
    a = model.fit_many(Y, progress=False)
    b = model.fit_many(Y, progress=False, batch_size=16)
    np.testing.assert_allclose(a.llf.values, b.llf.values, atol=1e-8)


def test_wrong_shape_is_a_clear_error(model):
    with pytest.raises(jaxlmm.DataError, match="one row per observation of the model \\(180 rows\\)"):
        model.fit_many(np.zeros((179, 2)))


def test_fit_datasets_equals_separate_fits(sleep):
    parts = [
        sleep[sleep.Subject.isin(sleep.Subject.unique()[:8])],
        sleep[sleep.Days < 6],
        sleep[sleep.Subject.isin(sleep.Subject.unique()[5:])],
        sleep,
    ]
    rl = jaxlmm.fit_datasets(FORMULA, parts, progress=False)
    assert len(rl) == 4
    for i, part in enumerate(parts):
        alone = jaxlmm.MixedLM.from_formula(FORMULA, part).fit(warn=False)
        assert rl.llf.iloc[i] == pytest.approx(alone.llf, abs=1e-8)
        np.testing.assert_allclose(rl.fe_params.iloc[i].values, alone.fe_params.values, rtol=1e-7)
        member = rl[i]
        assert member.ngroups == alone.ngroups
        np.testing.assert_allclose(member.random_effects.values, alone.random_effects.values, rtol=1e-5, atol=1e-6)


def test_sharded_over_two_devices_equals_one_device(model):
    Y = simulate(model, 6, seed=8)
    one = model.fit_many(Y, progress=False)
    code = (
        "import json, sys, numpy as np, jax, jaxlmm\n"
        "assert jax.device_count() == 2, jax.devices()\n"
        "Y = np.asarray(json.loads(sys.stdin.read()))\n"
        "m = jaxlmm.MixedLM.from_formula('Reaction ~ Days + (Days | Subject)', jaxlmm.datasets.load('sleepstudy'))\n"
        "rb = m.fit_many(Y, progress=False)\n"
        "mesh = jax.sharding.Mesh(np.asarray(jax.devices()[1:]), ('models',))\n"
        "one_device = m.fit_many(Y, progress=False, mesh=mesh)\n"
        "assert np.allclose(one_device.llf, rb.llf, atol=1e-8)\n"
        "print(json.dumps(rb.llf.tolist()))\n"
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(Y.tolist()), capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(json.loads(out.stdout.strip().splitlines()[-1]), one.llf.values, atol=1e-8)


def test_a_mesh_must_be_a_mesh_and_results_on_a_process(model):
    with pytest.raises(jaxlmm.DataError, match="jax.sharding.Mesh"):
        model.fit_many(simulate(model, 2, seed=1), progress=False, mesh="cpu")
    with pytest.raises(jaxlmm.DataError, match="results_on"):
        model.fit_many(simulate(model, 2, seed=1), progress=False, results_on=1)
    assert model.fit_many(simulate(model, 2, seed=1), progress=False, results_on=0) is not None


def test_a_batch_shape_called_again_and_again_switches_to_the_optimised_program(model, monkeypatch):
    from jaxlmm import _batch, _program_cache

    monkeypatch.setattr(_program_cache, "_uses", {})
    Y = simulate(model, 5, seed=4)
    before = {quick: _batch._fit_responses[quick]._cache_size() for quick in (False, True)}
    runs = [model.fit_many(Y, progress=False) for _ in range(3)]
    assert _batch._fit_responses[True]._cache_size() >= before[True]
    assert _batch._fit_responses[False]._cache_size() > before[False]  # the third call: optimised
    for r in runs[1:]:
        np.testing.assert_allclose(r.llf, runs[0].llf, atol=1e-8)
        np.testing.assert_allclose(r.fe_params, runs[0].fe_params, rtol=1e-8)


def test_a_warm_start_on_the_boundary_does_not_trap_the_other_chunks():
    """Responses simulated from a singular fit (psycholing maximal: a correlation of +1): most fits
    put a relative standard deviation exactly at 0, and so does the first chunk's median θ. Started
    there, the other chunks could not leave 0 (the deviance is even in it) and stopped below their
    maximum; every member must equal its own single fit."""
    df = pd.read_csv(Path(__file__).parent / "data" / "psycholing.csv")
    m = jaxlmm.MixedLM.from_formula("rt ~ c + (1 + c | subj) + (1 + c | item)", df)
    fit = m.fit(warn=False)
    rng = np.random.default_rng(0)
    Y = np.asarray(fit.fittedvalues)[:, None] + rng.normal(0.0, np.sqrt(fit.scale), (len(df), 48))
    rb = m.fit_many(Y, batch_size=16, progress=False)
    single = np.array([m.with_response(Y[:, j]).fit(warn=False).llf for j in range(Y.shape[1])])
    assert bool(rb.converged.all())
    np.testing.assert_allclose(rb.llf.values, single, atol=1e-6)


def test_members_left_after_the_first_round_continue_in_the_same_program(model, sleep, monkeypatch):
    """With a first-round cap of 2 iterations nearly every member continues in later rounds (the
    pooled members, padded to the chunk size): each still ends at its own single fit, and the batch
    compiles one program, not a second one for the later rounds."""
    from jaxlmm import _batch

    monkeypatch.setattr(_batch, "quasi_round_cap", lambda n_theta: 2)
    Y = simulate(model, 12, seed=11)
    sizes = {quick: _batch._fit_responses[quick]._cache_size() for quick in (False, True)}
    rb = model.fit_many(Y, progress=False, batch_size=8)
    compiled = sum(_batch._fit_responses[quick]._cache_size() - sizes[quick] for quick in (False, True))
    assert compiled <= 1
    assert bool(rb.converged.all()) and int(rb.n_iter.max()) > 2
    single = np.array([fit_alone(model, sleep, Y[:, j]).llf for j in range(Y.shape[1])])
    np.testing.assert_allclose(rb.llf.values, single, atol=1e-8)


def test_a_response_that_needs_many_newton_iterations_converges_in_a_batch(model, sleep):
    """A simulated sleepstudy response near the boundary (an intercept SD of about 0.006 σ): exact
    Newton took 113 iterations before the boundary probe (`minimize_newton`'s ``probe_score``), 37
    with it; BFGS stalls short of the gradient tolerance. In a batch it must converge to its single
    fit (the later rounds run exact Newton), among a full chunk of others."""
    hard = np.loadtxt(Path(__file__).parent / "data" / "sleepstudy_hard_response.csv")
    Y = np.column_stack([simulate(model, 127, seed=12), hard])
    rb = model.fit_many(Y, progress=False)
    assert bool(rb.converged.all()) and int(rb.n_iter.iloc[-1]) > 28  # past the first two rounds
    assert abs(rb.llf.iloc[-1] - fit_alone(model, sleep, hard).llf) < 1e-8


def test_levels_with_data_counts_each_responses_levels_that_have_rows():
    from jaxlmm._batch import _levels_with_data

    rng = np.random.default_rng(3)
    codes = rng.integers(0, 9, 40)  # level 9 never occurs, some others may not
    used = rng.random((40, 6)) > 0.6
    used[:, 0] = False  # a response with no rows
    used[:, 1] = codes == 4  # a response whose rows all sit in one level
    expected = [len(set(codes[used[:, j]])) for j in range(6)]
    assert _levels_with_data(codes, 10, used).tolist() == expected
