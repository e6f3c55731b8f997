"""Formula handling: bar splitting, and the fast numeric path equals formulaic."""

import numpy as np
import pandas as pd
import pytest
import formulaic

from jaxlmm._formula import NumericColumnsSpec, RandomTerm, parse_mixed_formula


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"y": rng.normal(size=8), "x": rng.normal(size=8), "k": np.arange(8), "s": list("abababab"), "b": [True, False] * 4}
    )


@pytest.mark.parametrize("expr", ["x", "0 + x", "1", "x - 1", "x + k", "1 + k + x", "k"])
def test_fast_path_equals_formulaic(expr, data):
    spec = NumericColumnsSpec.try_parse(expr, data)
    assert spec is not None
    ours = spec.get_model_matrix(data)
    theirs = formulaic.model_matrix(expr, data)
    assert list(ours.columns) == list(theirs.columns)
    np.testing.assert_array_equal(ours.to_numpy(), np.asarray(theirs, dtype=float))


@pytest.mark.parametrize("expr", ["s", "b", "C(k)", "np.log(k + 1)", "x:k", "x * k", "I(x ** 2)", "missing"])
def test_fast_path_declines_anything_else(expr, data):
    assert NumericColumnsSpec.try_parse(expr, data) is None


def test_bars_are_split_off():
    f = parse_mixed_formula("y ~ x + (1 | g) + C(s) + (0 + x || g)")
    assert f.response == "y"
    assert f.fixed == "x + C(s)"
    assert f.random == (RandomTerm("1", "g", True), RandomTerm("0 + x", "g", False))


def test_formula_without_fixed_terms_keeps_intercept():
    assert parse_mixed_formula("y ~ (1 | g)").fixed == "1"


def test_power_inside_I_is_a_power_not_xor():
    """R users write I(x^2); Python would read it as XOR and give a silently different model."""
    import jaxlmm

    rng = np.random.default_rng(4)
    df = pd.DataFrame({"day": np.tile(np.arange(6.0), 10), "g": np.repeat([f"g{i}" for i in range(10)], 6)})
    df["y"] = 1 + 0.3 * df["day"] - 0.1 * df["day"] ** 2 + rng.normal(0, 1, 10)[np.repeat(np.arange(10), 6)] + rng.normal(size=60)
    caret = jaxlmm.MixedLM.from_formula("y ~ day + I(day^2) + (1 | g)", df)
    stars = jaxlmm.MixedLM.from_formula("y ~ day + I(day**2) + (1 | g)", df)
    np.testing.assert_array_equal(np.asarray(caret.design.X), np.asarray(stars.design.X))
    np.testing.assert_array_equal(np.asarray(caret.design.X)[:, 2], df["day"].to_numpy() ** 2)
    sm = jaxlmm.MixedLM.from_formula("y ~ day", df, groups="g", re_formula="~I(day^2)")
    np.testing.assert_array_equal(np.asarray(sm.design.Z)[:, 1], df["day"].to_numpy() ** 2)
