"""Fits where lme4 reports problems: a singular fit (Dyestuff2) and a badly scaled random slope (Sitka).

References from `data/r/lme4_extra.R` (lme4 1.1-31 defaults).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from dense import cov_from_theta, dense_loglik

DATA = Path(__file__).parent / "data"
EXTRA = json.loads((DATA / "lme4_extra.json").read_text())


@pytest.mark.parametrize("reml", [True, False])
def test_dyestuff2_singular_fit_is_reached_and_reported(reml):
    entry = EXTRA["dyestuff2_reml" if reml else "dyestuff2_ml"]
    df = pd.read_csv(DATA / "dyestuff2.csv")
    with pytest.warns(jaxlmm.SingularFitWarning, match="variance of 'Intercept' is estimated as zero"):
        r = jaxlmm.MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", df).fit(reml=reml)
    assert r.converged and r.is_singular and entry["singular"]
    assert r.theta[0] == 0.0  # exactly on the boundary, as lme4
    assert r.llf == pytest.approx(entry["loglik"], abs=1e-8)
    assert r.fe_params.iloc[0] == pytest.approx(entry["fixef"]["(Intercept)"], rel=1e-10)
    assert r.bse_fe.iloc[0] == pytest.approx(entry["se"]["(Intercept)"], rel=1e-6)
    assert r.scale == pytest.approx(entry["sigma2"], rel=1e-8)
    # still usable: random effects are defined (all zero), predictions and summary work
    assert np.all(r.random_effects.values == 0.0)
    assert np.all(np.isfinite(r.fittedvalues))
    assert "boundary (singular) fit" in str(r.summary())


@pytest.mark.parametrize("reml", [True, False])
def test_sitka_random_slope_beats_lme4(reml):
    """lme4 stops with max|grad| 0.79 (REML) / 6.9 (ML) here; jaxlmm reaches a higher maximum."""
    entry = EXTRA["sitka_slope_reml" if reml else "sitka_slope_ml"]
    df = jaxlmm.datasets.load("sitka")
    model = jaxlmm.MixedLM.from_formula("size ~ Time + (Time | tree)", df)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = model.fit(reml=reml)
    assert r.converged and r.grad_norm < 1e-4  # time in days (150–260): θ for the slope is ~0.01
    d = model.design
    ours = dense_loglik(d.y, d.X, d.Z, d.group, r.cov_re.values, r.scale, reml)
    theirs = dense_loglik(
        d.y, d.X, d.Z, d.group, cov_from_theta(entry["theta"], model.lambda_index, entry["sigma2"]), entry["sigma2"], reml
    )
    assert theirs == pytest.approx(entry["loglik"], abs=1e-6)
    assert r.llf == pytest.approx(ours, abs=1e-8)
    assert ours > theirs + 1.0


def test_sitka_random_intercept_matches_lme4():
    entry = EXTRA["sitka_int_reml"]
    r = jaxlmm.MixedLM.from_formula("size ~ Time + (1 | tree)", jaxlmm.datasets.load("sitka")).fit()
    assert r.llf == pytest.approx(entry["loglik"], abs=1e-7)
    np.testing.assert_allclose(r.fe_params.values, list(entry["fixef"].values()), rtol=1e-6)
    np.testing.assert_allclose(r.bse_fe.values, list(entry["se"].values()), rtol=1e-5)
