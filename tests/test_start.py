"""The moment start (`_start.moment_start`): close to the variance components on a crossed design,
unchanged by padded rows and by the order of the rows, and the fits it starts reach lme4's optimum
(`test_crossed_lme4.py`)."""

import jax.numpy as jnp
import numpy as np
import pandas as pd

import jaxlmm
from jaxlmm._fit import _row_weights, precondition
from jaxlmm._start import THETA_FLOOR, moment_start


def _frame(seed=2, n=6000):
    rng = np.random.default_rng(seed)
    s, i = rng.integers(0, 300, n), rng.integers(0, 200, n)
    x = rng.normal(size=n)
    y = (1 + 0.5 * x + rng.normal(0, 1.0, 300)[s] + rng.normal(0, 0.5, 300)[s] * x + rng.normal(0, 0.7, 200)[i]
         + rng.normal(0, 1.0, n))
    return pd.DataFrame({"y": y, "x": x, "subj": [f"s{k}" for k in s], "item": [f"i{k}" for k in i]})


def _start(design):
    with jaxlmm.float64():
        pre = precondition(design.y, design.X, _row_weights(design))
        return np.asarray(moment_start(design, pre.y, _row_weights(design)))


def test_the_moment_start_is_near_the_simulated_components():
    design = jaxlmm.MixedLM.from_formula("y ~ x + (1 + x | subj) + (1 | item)", _frame()).design
    theta = _start(design)
    idx = design.lambda_index_array
    diag = [idx[d, d] for d in range(idx.shape[0])]  # subj intercept, subj slope, item intercept
    np.testing.assert_allclose(theta[diag], [1.0, 0.5, 0.7], rtol=0.25)
    off = np.setdiff1d(np.arange(design.n_theta), diag)
    assert np.all(theta[off] == 0.0) and np.all(theta[diag] >= THETA_FLOOR)


def test_the_moment_start_ignores_padded_rows_and_row_order():
    df = _frame(seed=4, n=2000)
    design = jaxlmm.MixedLM.from_formula("y ~ x + (1 | subj) + (1 | item)", df).design
    theta = _start(design)
    shuffled = df.sample(frac=1.0, random_state=1)
    np.testing.assert_allclose(_start(jaxlmm.MixedLM.from_formula("y ~ x + (1 | subj) + (1 | item)", shuffled).design),
                               theta, rtol=1e-10)
    masked = design.replace(mask=jnp.asarray(np.r_[np.ones(1990), np.zeros(10)]))
    subset = jaxlmm.MixedLM.from_formula("y ~ x + (1 | subj) + (1 | item)", df.iloc[:1990]).design
    np.testing.assert_allclose(_start(masked), _start(subset), rtol=1e-10)


def test_a_factor_without_variance_starts_at_the_floor():
    df = _frame(seed=6, n=3000)
    df["y"] = df.x + np.random.default_rng(0).normal(size=len(df))  # no random effects at all
    theta = _start(jaxlmm.MixedLM.from_formula("y ~ x + (1 | subj) + (1 | item)", df).design)
    assert np.all(theta <= 0.2) and np.all(theta >= THETA_FLOOR)
