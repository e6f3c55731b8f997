"""Profile likelihood and profile confidence intervals, against lme4 and independent evaluations.

Reference: tests/data/lme4_profile.json, made by tests/data/r/lme4_profile.R (lme4 1.1-31):
``confint(profile(m))`` at lme4's default grid (``delta_8``) and at an 8× finer grid
(``delta_64``, whose spline interpolation error is far smaller), and lme4's profile points.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize

import jaxlmm
from jaxlmm.errors import DataError
from tests.dense import dense_loglik

REFERENCE = json.loads((Path(__file__).parent / "data" / "lme4_profile.json").read_text())
CASES = {
    "sleepstudy_slope": ("Reaction ~ Days + (Days | Subject)", "sleepstudy"),
    "sleepstudy_uncorr": ("Reaction ~ Days + (Days || Subject)", "sleepstudy"),
    "dyestuff": ("Yield ~ 1 + (1 | Batch)", "dyestuff"),
    "dyestuff2_singular": ("Yield ~ 1 + (1 | Batch)", "dyestuff2"),
    "penicillin_crossed": ("diameter ~ 1 + (1 | plate) + (1 | sample)", "penicillin"),
}
DATA = Path(__file__).parent / "data"


def load(name):
    return pd.read_csv(DATA / "dyestuff2.csv") if name == "dyestuff2" else jaxlmm.datasets.load(name)
Z95 = 1.959963984540054


@pytest.fixture(scope="module")
def fits():
    return {case: jaxlmm.MixedLM.from_formula(f, load(d)).fit(warn=False) for case, (f, d) in CASES.items()}


@pytest.fixture(scope="module")
def intervals(fits):
    return {case: r.conf_int(method="profile") for case, r in fits.items()}


def test_sleepstudy_intervals_match_lme4_default_confint(intervals):
    ref = REFERENCE["sleepstudy_slope"]["delta_8"]
    ci = intervals["sleepstudy_slope"]
    np.testing.assert_allclose(ci["lower"].values, ref["lower"], atol=1e-3)
    np.testing.assert_allclose(ci["upper"].values, ref["upper"], atol=1e-3)


@pytest.mark.parametrize("case", list(CASES))
def test_intervals_match_lme4_fine_profile(intervals, case):
    ref = REFERENCE[case]["delta_64"]
    ci = intervals[case]
    assert len(ci) == len(ref["params"])
    np.testing.assert_allclose(ci["lower"].values, ref["lower"], rtol=2e-6, atol=2e-5)
    np.testing.assert_allclose(ci["upper"].values, ref["upper"], rtol=2e-6, atol=2e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_zeta_at_lme4_profile_points(fits, case):
    r = fits[case]
    lme4_names = REFERENCE[case]["delta_8"]["params"]
    for entry in REFERENCE[case]["points"]:
        name = r.profile_names[lme4_names.index(entry["param"])]
        values, zeta = np.asarray(entry["value"]), np.asarray(entry["zeta"])
        keep = (np.abs(zeta) < 3.5) & (values > 0 if name.startswith("SD") else True)
        ours = r.profile(name, values=values[keep]).set_index("value").loc[values[keep], "zeta"].values
        # Compare deviance increases ζ²: near the optimum ζ magnifies lme4's optimiser tolerance.
        # lme4's constrained refits can stop short (a higher deviance): never below, close to it.
        assert np.all(ours**2 <= zeta[keep] ** 2 + 1e-5), name
        np.testing.assert_allclose(ours**2, zeta[keep] ** 2, rtol=1e-4, atol=2e-4, err_msg=name)
        clear = np.abs(zeta[keep]) > 1e-3
        np.testing.assert_array_equal(np.sign(ours[clear]), np.sign(zeta[keep][clear]))


def test_end_points_sit_on_the_cut_off(fits, intervals):
    r, ci = fits["sleepstudy_slope"], intervals["sleepstudy_slope"]
    for name in r.profile_names:
        pr = r.profile(name, values=ci.loc[name].values)
        np.testing.assert_allclose(pr["zeta"].values, [-Z95, Z95], atol=1e-7)
        assert pr["converged"].all()


def test_profile_grid_peaks_at_ml_estimate(fits):
    r = fits["sleepstudy_slope"]
    ml = r.model.fit(reml=False)
    pr = r.profile("Days", n=9, level=0.95)
    best = pr.loc[pr["zeta"].abs().idxmin()]
    assert best["value"] == pytest.approx(ml.fe_params["Days"], rel=1e-12)
    assert best["ml_llf"] == pytest.approx(ml.llf, abs=1e-8)
    assert np.all(np.diff(pr["zeta"].values) > 0)  # increasing: one crossing per side
    np.testing.assert_allclose(pr["zeta"].iloc[[0, -1]].values, [-Z95, Z95], atol=1e-7)
    assert set(r.profile_names) <= set(pr.columns)


def test_fixed_effect_profile_equals_fit_with_offset(fits):
    """Holding Days at v is an ML fit of y − v·Days on the remaining columns: a different code path."""
    r = fits["sleepstudy_slope"]
    d = r.model.design
    y, X, Z, g = (np.asarray(a) for a in (d.y, d.X, d.Z, d.group))
    for v in (8.0, 12.5):
        direct = jaxlmm.MixedLM(y - v * X[:, 1], X[:, :1], g, exog_re=Z).fit(reml=False, warn=False)
        pr = r.profile("Days", values=[v])
        assert pr["ml_llf"].iloc[0] == pytest.approx(direct.llf, abs=1e-7)
        assert pr["Intercept"].iloc[0] == pytest.approx(direct.fe_params.iloc[0], abs=1e-6)


def test_variance_profile_against_dense_likelihood(fits):
    """At a profile point the reported parameters reproduce the deviance in an independent dense
    likelihood, and optimising the other parameters of that likelihood does not improve it."""
    r = fits["sleepstudy_slope"]
    d = r.model.design
    y, X, Z, g = (np.asarray(a) for a in (d.y, d.X, d.Z, d.group))
    pr = r.profile("SD(Days)", values=[4.5])
    row = pr.iloc[0]

    def loglik(free):
        sd0, cor, sigma = free
        sd = np.array([sd0, 4.5])
        cov = np.outer(sd, sd) * np.array([[1.0, cor], [cor, 1.0]])
        return dense_loglik(y, X, Z, g, cov, sigma**2, reml=False)

    start = np.array([row["SD(Intercept)"], row["Corr(Intercept,Days)"], row["sigma"]])
    assert loglik(start) == pytest.approx(row["ml_llf"], abs=1e-8)
    polished = minimize(lambda x: -loglik(x), start, method="Nelder-Mead",
                        options={"xatol": 1e-8, "fatol": 1e-10,
                                 "initial_simplex": np.vstack([start, start + np.diag([0.5, 0.02, 0.3])])})
    assert -polished.fun <= row["ml_llf"] + 1e-7


def test_envelope_slope_matches_finite_differences(fits):
    prof = fits["sleepstudy_slope"]._profiler
    for j in range(len(prof.names)):
        v = prof.estimate[j] + 0.7 * prof.scale[j]
        h = 1e-4 * prof.scale[j]
        ev = prof.evaluate(np.full(3, j), np.array([v - h, v, v + h]))
        fd = (ev["deviance"][2] - ev["deviance"][0]) / (2 * h)
        assert ev["slope"][1] == pytest.approx(fd, rel=1e-5, abs=1e-6), prof.names[j]


def test_reml_and_ml_fits_give_the_same_profile_intervals(fits, intervals):
    ml = fits["dyestuff"].model.fit(reml=False)
    pd.testing.assert_frame_equal(ml.conf_int(method="profile"), intervals["dyestuff"], rtol=1e-7)


def test_singular_fit_interval_reaches_zero(fits, intervals):
    """Dyestuff2's batch SD is estimated as 0: its interval starts at 0, and the other parameters'
    constrained refits must move the SD off 0 (where its gradient vanishes by symmetry)."""
    r, ci = fits["dyestuff2_singular"], intervals["dyestuff2_singular"]
    assert r.is_singular
    assert ci.loc["SD(Intercept)", "lower"] == 0.0
    lower_end = r.profile("Intercept", values=[ci.loc["Intercept", "lower"]])
    assert lower_end["SD(Intercept)"].iloc[0] > 0.1


def test_held_correlation_keeps_its_sign():
    """Holding Corr at −0.9 must not return the fit at +0.9 (an SD changing sign flips a correlation)."""
    r = jaxlmm.MixedLM.from_formula("distance ~ age*Sex + (age | Subject)", jaxlmm.datasets.load("orthodont")).fit()
    grid = np.array([-0.9, -0.5, 0.5, 0.9])
    pr = r.profile("Corr(Intercept,age)", values=grid)
    np.testing.assert_allclose(pr["Corr(Intercept,age)"].values, grid, atol=1e-9)
    # ML estimate −0.60: ζ(−0.9) < 0 < ζ(−0.5) < ζ(0.5) < ζ(0.9), and ζ(−0.9) is not −ζ(0.9).
    # (−0.913 at −0.9 was confirmed by a Nelder–Mead minimisation of the dense likelihood with
    # positive SDs; lme4's profile stops short there with "unexpected decrease in profile".)
    zeta = pr["zeta"].values
    assert zeta[0] < 0 < zeta[1] < zeta[2] < zeta[3]
    assert zeta[0] == pytest.approx(-0.9127, abs=1e-3) and zeta[3] == pytest.approx(0.6987, abs=1e-3)


def test_profile_of_all_parameters_and_plot(fits):
    import matplotlib

    matplotlib.use("Agg")
    r = fits["dyestuff"]
    pr = r.profile(n=5)
    assert list(pr["parameter"].unique()) == r.profile_names
    assert pr["converged"].all()
    fig = r.plot_profile(n=5)
    assert len(fig.axes) == len(r.profile_names)


def test_lme4_parameter_names_are_accepted(fits):
    r = fits["sleepstudy_slope"]
    ours = r.profile(["SD(Intercept)", "Corr(Intercept,Days)", "sigma", "Intercept"], n=3)
    lme4 = r.profile([".sig01", ".sig02", ".sigma", "(Intercept)"], n=3)
    pd.testing.assert_frame_equal(ours, lme4)
    with pytest.raises(DataError, match="not a parameter"):
        r.profile(".sig04")


def test_bad_profile_requests(fits):
    r = fits["sleepstudy_slope"]
    with pytest.raises(DataError, match="not a parameter of this model"):
        r.profile("Var(Days)")
    with pytest.raises(DataError, match="out of range"):
        r.profile(17)
    with pytest.raises(DataError, match=r"must lie in \[-1, 1\]"):
        r.profile("Corr(Intercept,Days)", values=[0.2, 1.5])
    with pytest.raises(DataError, match="finite"):
        r.profile("Days", values=[np.nan])
    with pytest.raises(DataError, match="1-D"):
        r.profile("Days", values=[[8.0, 9.0]])
    with pytest.raises(DataError, match="positive"):
        r.profile("sigma", values=[0.0, 20.0])
    with pytest.raises(DataError, match="integer of at least 2"):
        r.profile("Days", n=2.7)
    with pytest.raises(DataError, match="alpha"):
        r.conf_int(alpha="0.05", method="profile")
    with pytest.raises(DataError, match="alpha"):
        r.plot_profile("Days", alpha=2)
    with pytest.raises(DataError, match="level"):
        r.profile("Days", level=1.5)
    with pytest.raises(DataError, match="method must be"):
        r.conf_int(method="likelihood")


def test_variance_and_fixed_points_evaluated_together_equal_each_alone(fits):
    """`Profiler.evaluate` runs the variance and fixed-effect batches in two threads when a call has
    both: each row must get its own batch's solution, as when the batches are evaluated alone."""
    prof = fits["sleepstudy_slope"]._profiler
    which = np.array([len(prof.names) - 1, 0, prof.sigma_index, len(prof.names) - 2, 1])
    values = prof.estimate[which] + np.array([0.5, -0.4, 0.3, 0.6, 0.2]) * prof.scale[which]
    together = prof.evaluate(which, values)
    for rows in (which >= prof.n_var, which < prof.n_var):
        alone = prof.evaluate(which[rows], values[rows])
        for key in ("deviance", "slope", "params", "converged"):
            np.testing.assert_array_equal(together[key][rows], alone[key], err_msg=key)
