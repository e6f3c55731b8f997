"""Bad input: every mistake a user can make gives a jaxlmm error that names the problem and the fix.

Each test asserts the exception class (from `jaxlmm.errors`) and, with ``match``, that the message
names the offending column / term and says what to do. Cases where jaxlmm does not (yet) give a
clear error are marked ``xfail(strict=True)`` with the desired behaviour written out.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import MixedLM
from jaxlmm.errors import (
    DataError,
    FormulaError,
    IdentifiabilityError,
    JaxlmmError,
    MissingDataError,
)

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture
def sleep() -> pd.DataFrame:
    """A fresh copy of sleepstudy for each test (tests edit it)."""
    return jaxlmm.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit():
    """REML fit of the standard sleepstudy model (shared by the predict tests)."""
    df = jaxlmm.datasets.load("sleepstudy")
    return MixedLM.from_formula(FORMULA, df).fit()


def _arrays(df: pd.DataFrame):
    y = np.array(df["Reaction"], dtype=float)  # writable copies (pandas 3 hands out read-only views)
    X = np.column_stack([np.ones(len(df)), df["Days"].to_numpy(dtype=float)])
    g = np.array(df["Subject"], dtype=object)
    return y, X, g


def test_errors_share_one_base_class():
    for cls in (FormulaError, DataError, MissingDataError, IdentifiabilityError):
        assert issubclass(cls, JaxlmmError)
        assert issubclass(cls, ValueError)
    assert issubclass(MissingDataError, DataError)


# ---- columns --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "formula, missing, close",
    [
        ("Reaction ~ Dayz + (Days | Subject)", "Dayz", "Days"),  # fixed part
        ("Reactoin ~ Days + (Days | Subject)", "Reactoin", "Reaction"),  # response
        ("Reaction ~ Days + (Dys | Subject)", "Dys", "Days"),  # random part
        ("Reaction ~ Days + (Days | Subjct)", "Subjct", "Subject"),  # grouping factor
    ],
)
def test_missing_column_is_named_with_close_match(sleep, formula, missing, close):
    with pytest.raises(DataError, match=rf"column '{missing}'.*not in the data.*Did you mean '{close}'\?"):
        MixedLM.from_formula(formula, sleep)


def test_missing_groups_column_statsmodels_style(sleep):
    with pytest.raises(DataError, match=r"column 'Subjec'.*not in the data.*Did you mean 'Subject'\?"):
        MixedLM.from_formula("Reaction ~ Days", sleep, groups="Subjec")


def test_data_must_be_a_dataframe(sleep):
    with pytest.raises(DataError, match=r"pandas DataFrame, got dict"):
        MixedLM.from_formula(FORMULA, sleep.to_dict())


# ---- NaN / inf ------------------------------------------------------------------------------------
def test_nan_in_used_column_raises_and_suggests_drop(sleep):
    sleep["Days"] = sleep["Days"].astype(float)
    sleep.loc[3, "Days"] = np.nan
    with pytest.raises(MissingDataError, match=r"(?s)'Days' \(1 rows\).*missing='drop'"):
        MixedLM.from_formula(FORMULA, sleep)


def test_inf_in_used_column_raises(sleep):
    sleep.loc[[5, 9], "Reaction"] = [np.inf, -np.inf]
    with pytest.raises(MissingDataError, match=r"(?s)NaN or inf.*'Reaction' \(2 rows\).*missing='drop'"):
        MixedLM.from_formula(FORMULA, sleep)


def test_nan_in_grouping_column_raises(sleep):
    sleep["Subject"] = sleep["Subject"].astype(object)
    sleep.loc[7, "Subject"] = None
    with pytest.raises(MissingDataError, match=r"(?s)'Subject' \(1 rows\).*missing='drop'"):
        MixedLM.from_formula(FORMULA, sleep)


def test_nan_in_used_categorical_column_raises():
    df = jaxlmm.datasets.load("orthodont")
    df["Sex"] = df["Sex"].astype(object)
    df.loc[[0, 40], "Sex"] = np.nan
    with pytest.raises(MissingDataError, match=r"(?s)'Sex' \(2 rows\).*missing='drop'"):
        MixedLM.from_formula("distance ~ age + Sex + (1 | Subject)", df)


def test_missing_drop_drops_exactly_the_bad_rows(sleep):
    bad = [3, 50, 100]
    sleep["unused"] = 1.0
    sleep.loc[7, "unused"] = np.nan  # not used by the model: must not be dropped
    clean = sleep.drop(index=bad).reset_index(drop=True)
    sleep.loc[3, "Reaction"] = np.nan
    sleep.loc[50, "Reaction"] = np.inf
    sleep["Days"] = sleep["Days"].astype(float)
    sleep.loc[100, "Days"] = np.nan

    m = MixedLM.from_formula(FORMULA, sleep, missing="drop")
    assert m.n_dropped == len(bad)
    r = m.fit()
    assert r.nobs == 180 - len(bad)
    ref = MixedLM.from_formula(FORMULA, clean).fit()
    assert ref.nobs == r.nobs
    np.testing.assert_allclose(r.llf, ref.llf, rtol=1e-8)
    np.testing.assert_allclose(r.fe_params.values, ref.fe_params.values, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(m.design.y), clean["Reaction"].to_numpy(), rtol=0)


def test_nan_in_unused_column_does_not_raise():
    df = jaxlmm.datasets.load("dietox")
    assert df["Feed"].isna().any()  # the premise: 'Feed' has NaN, the model does not use it
    for missing in ("raise", "drop"):
        m = MixedLM.from_formula("Weight ~ Time + (1 | Pig)", df, missing=missing)
        assert m.nobs == len(df)
        assert m.n_dropped == 0
        assert np.isfinite(np.asarray(m.design.X)).all() and np.isfinite(np.asarray(m.design.y)).all()


def test_missing_option_is_validated_in_array_front_end(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"missing must be 'raise' or 'drop', got 'nope'"):
        MixedLM(y, X, g, missing="nope")


def test_missing_option_is_validated_in_formula_front_end(sleep):
    with pytest.raises(DataError, match=r"missing must be 'raise' or 'drop', got 'nope'"):
        MixedLM.from_formula(FORMULA, sleep, missing="nope")


def test_non_finite_values_from_a_transform_raise(sleep):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy's divide-by-zero RuntimeWarning, jaxlmm's fit warnings
        with pytest.raises(MissingDataError, match=r"(?s)np\.log\(Days\).*missing='drop'"):
            MixedLM.from_formula("Reaction ~ np.log(Days) + (1 | Subject)", sleep).fit()


def test_non_finite_transformed_response_raises(sleep):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(MissingDataError, match=r"(?s)np\.log\(Reaction - 250\).*missing='drop'"):
            MixedLM.from_formula("np.log(Reaction - 250) ~ Days + (1 | Subject)", sleep).fit()


# ---- response and groups --------------------------------------------------------------------------
@pytest.mark.parametrize("convert", [lambda s: s.astype(str), lambda s: s > 250], ids=["str", "bool"])
def test_non_numeric_response(sleep, convert):
    sleep["Reaction"] = convert(sleep["Reaction"])
    with pytest.raises(DataError, match=r"response 'Reaction' is not numeric.*convert it"):
        MixedLM.from_formula(FORMULA, sleep)


def test_constant_response(sleep):
    sleep["Reaction"] = 1.0
    with pytest.raises(DataError, match=r"response 'Reaction' is constant"):
        MixedLM.from_formula(FORMULA, sleep)


def test_fewer_than_two_groups(sleep):
    sleep["Subject"] = "only"
    with pytest.raises(DataError, match=r"1 level; a mixed model needs at least 2 groups.*ordinary regression"):
        MixedLM.from_formula(FORMULA, sleep)


def test_fewer_than_two_groups_names_the_grouping_column(sleep):
    sleep["Subject"] = "only"
    with pytest.raises(DataError, match=r"'Subject'"):
        MixedLM.from_formula(FORMULA, sleep)


# ---- identifiability ------------------------------------------------------------------------------
def test_collinear_fixed_effects_name_both_columns(sleep):
    sleep["x2"] = 2 * sleep["Days"]
    with pytest.raises(IdentifiabilityError, match=r"collinear: column 'x2' is a linear combination of 'Days'.*Remove one"):
        MixedLM.from_formula("Reaction ~ Days + x2 + (1 | Subject)", sleep)


def test_all_zero_fixed_effect_column(sleep):
    sleep["z"] = 0.0
    with pytest.raises(IdentifiabilityError, match=r"column 'z' is all zeros.*Remove"):
        MixedLM.from_formula("Reaction ~ Days + z + (1 | Subject)", sleep)


def test_collinear_random_effects(sleep):
    sleep["x2"] = 2 * sleep["Days"]
    with pytest.raises(IdentifiabilityError, match=r"random-effect columns are collinear: column 'x2'.*'Days'.*Remove"):
        MixedLM.from_formula("Reaction ~ Days + (Days + x2 | Subject)", sleep)


def test_more_random_effects_than_data_can_identify(sleep):
    few = sleep.groupby("Subject").head(2)  # 18 groups × 2 random effects = 36 = nobs
    with pytest.raises(IdentifiabilityError, match=r"\(36\).*36 in the 18 groups.*fewer random effects"):
        MixedLM.from_formula(FORMULA, few)


def test_more_fixed_effects_than_observations(sleep):
    with pytest.raises(IdentifiabilityError, match=r"180 observations cannot identify 180 fixed effects; use fewer terms"):
        MixedLM.from_formula("Reaction ~ C(Days) * Subject + (1 | Subject)", sleep)


def test_same_random_effect_in_two_terms(sleep):
    with pytest.raises(IdentifiabilityError, match=r"'Days'.*more than one term for 'Subject'"):
        MixedLM.from_formula("Reaction ~ Days + (Days | Subject) + (0 + Days | Subject)", sleep)


# ---- formula syntax -------------------------------------------------------------------------------
def _caret_position(message: str, formula: str) -> int:
    lines = message.splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip() == formula)
    return lines[i + 1].index("^") - lines[i].index(formula)


def test_unclosed_parenthesis_points_at_it(sleep):
    formula = "Reaction ~ Days + (Days | Subject"
    with pytest.raises(FormulaError, match=r"(?s)unclosed '\('.*add the matching '\)'") as info:
        MixedLM.from_formula(formula, sleep)
    assert _caret_position(str(info.value), formula) == formula.index("(")


def test_unmatched_closing_parenthesis_points_at_it(sleep):
    formula = "Reaction ~ Days) + (Days | Subject)"
    pos = formula.index(")")
    with pytest.raises(FormulaError, match=rf"(?s)unmatched '\)' at position {pos}.*remove it") as info:
        MixedLM.from_formula(formula, sleep)
    assert _caret_position(str(info.value), formula) == pos


def test_misplaced_operator(sleep):
    with pytest.raises(FormulaError, match=r"cannot parse 'Reaction ~ Days \*'.*Operator `\*`.*misplaced"):
        MixedLM.from_formula("Reaction ~ Days * + (1 | Subject)", sleep)


@pytest.mark.parametrize("formula", ["Reaction + (1 | Subject)", "Reaction ~ Days ~ x + (1 | Subject)"])
def test_formula_needs_exactly_one_tilde(sleep, formula):
    with pytest.raises(FormulaError, match=r"needs exactly one '~'"):
        MixedLM.from_formula(formula, sleep)


def test_formula_must_be_a_string(sleep):
    with pytest.raises(FormulaError, match=r"formula must be a string.*got int"):
        MixedLM.from_formula(3, sleep)


def test_unknown_function(sleep):
    with pytest.raises(FormulaError, match=r"foo\(Days\).*'foo' is not defined"):
        MixedLM.from_formula("Reaction ~ foo(Days) + (Days | Subject)", sleep)


def test_no_random_effects_term(sleep):
    with pytest.raises(FormulaError, match=r"'Reaction ~ Days' has no random effects: add a term such as '\(1 \| group\)', or pass groups="):
        MixedLM.from_formula("Reaction ~ Days", sleep)


def test_bar_term_with_empty_group(sleep):
    with pytest.raises(FormulaError, match=r"'\(Days \| \)'.*needs one grouping factor after '\|'"):
        MixedLM.from_formula("Reaction ~ Days + (Days | )", sleep)


def test_bar_term_with_empty_expression(sleep):
    with pytest.raises(FormulaError, match=r"'\( \| Subject\)'.*nothing before '\|'.*'\(1 \| Subject\)'"):
        MixedLM.from_formula("Reaction ~ Days + ( | Subject)", sleep)


def test_re_formula_needs_groups(sleep):
    with pytest.raises(FormulaError, match=r"re_formula needs groups="):
        MixedLM.from_formula("Reaction ~ Days", sleep, re_formula="~Days")


def test_bars_and_groups_together(sleep):
    with pytest.raises(FormulaError, match=r"random-effect bars and groups= was given too"):
        MixedLM.from_formula(FORMULA, sleep, groups="Subject")


def test_crossed_factor_with_too_few_levels_for_its_slopes(sleep):
    two_days = sleep[sleep["Days"] < 2]
    with pytest.raises(IdentifiabilityError, match=r"'Days' have 2 random effects per level .* only 2 levels"):
        MixedLM.from_formula("Reaction ~ Days + (1 | Subject) + (1 + Days | Days)", two_days)


def test_nested_factor_with_one_row_per_level_is_not_identifiable(sleep):
    with pytest.raises(IdentifiabilityError, match="not larger than the number of random effects"):
        MixedLM.from_formula("Reaction ~ Days + (1 | Subject/Days)", sleep)


# ---- the user's data is never mutated -------------------------------------------------------------
def test_dataframe_not_mutated(sleep):
    sleep["Sex"] = np.where(sleep["Subject"].astype(int) % 2 == 0, "a", "b")
    before = sleep.copy()
    m = MixedLM.from_formula("Reaction ~ Days + Sex + (Days | Subject)", sleep)
    r = m.fit()
    r.predict(sleep)
    r.summary()
    pd.testing.assert_frame_equal(sleep, before)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # predicting rows with NaN/inf
def test_dataframe_not_mutated_with_missing_drop(sleep):
    sleep["Days"] = sleep["Days"].astype(float)
    sleep.loc[[1, 20], "Reaction"] = np.nan
    sleep.loc[33, "Days"] = np.inf
    sleep.index = sleep.index * 3 + 7  # a non-default index must survive too
    before = sleep.copy()
    m = MixedLM.from_formula(FORMULA, sleep, missing="drop")
    r = m.fit()
    pred = r.predict(sleep)
    pd.testing.assert_frame_equal(sleep, before)
    assert pred.index.equals(sleep.index)
    assert r.nobs == len(sleep) - 3


# ---- predict --------------------------------------------------------------------------------------
def test_predict_with_missing_column(sleep_fit):
    with pytest.raises(DataError, match=r"cannot encode the new data.*[`']Days[`']"):
        sleep_fit.predict(pd.DataFrame({"Dys": [1.0], "Subject": ["308"]}))


def test_predict_with_missing_group_column(sleep_fit):
    with pytest.raises(DataError, match=r"column 'Subject'.*not in the data"):
        sleep_fit.predict(pd.DataFrame({"Days": [1.0]}))


# ---- array front end ------------------------------------------------------------------------------
def test_array_exog_wrong_rows(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"exog must be a 2-D array with one row per observation \(180\), got shape \(179, 2\)"):
        MixedLM(y, X[:-1], g)


def test_array_exog_re_wrong_rows(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"exog_re must be a 2-D array with one row per observation \(180\), got shape \(5, 2\)"):
        MixedLM(y, X, g, exog_re=X[:5])


def test_array_exog_3d(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"exog must be a 2-D array.*got shape \(180, 2, 1\)"):
        MixedLM(y, X[:, :, None], g)


def test_array_groups_wrong_length(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"groups has 179 entries but endog has 180: pass one group label per row"):
        MixedLM(y, X, g[:-1])


def test_array_endog_two_dimensional(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"endog must be one-dimensional.*got shape \(180, 2\)"):
        MixedLM(np.column_stack([y, y]), X, g)


def test_array_nan_in_endog(sleep):
    y, X, g = _arrays(sleep)
    y[4] = np.nan
    with pytest.raises(MissingDataError, match=r"1 rows have NaN or inf in endog.*missing='drop'"):
        MixedLM(y, X, g)
    assert MixedLM(y, X, g, missing="drop").nobs == 179


def test_array_inf_in_exog_names_the_column(sleep):
    y, X, g = _arrays(sleep)
    X = pd.DataFrame(X, columns=["const", "Days"])
    X.loc[4, "Days"] = np.inf
    with pytest.raises(MissingDataError, match=r"NaN or inf in Days.*missing='drop'"):
        MixedLM(y, X, g)


def test_array_nan_in_groups(sleep):
    y, X, g = _arrays(sleep)
    g = g.astype(object)
    g[3] = None
    with pytest.raises(MissingDataError, match=r"NaN or inf in groups.*missing='drop'"):
        MixedLM(y, X, g)


def test_array_non_numeric_endog(sleep):
    _, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"endog \(yy\) is not numeric; convert it to float"):
        MixedLM(pd.Series(["a"] * 180, name="yy"), X, g)


def test_array_non_numeric_exog_dataframe(sleep):
    y, _, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"exog has non-numeric columns \['a'\].*MixedLM.from_formula"):
        MixedLM(y, pd.DataFrame({"a": ["x"] * 180}), g)


def test_array_collinear_exog(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(IdentifiabilityError, match=r"column 'x3' is a linear combination of 'x2'"):
        MixedLM(y, np.column_stack([X, 2 * X[:, 1]]), g)


def test_array_single_group(sleep):
    y, X, _ = _arrays(sleep)
    with pytest.raises(DataError, match=r"at least 2 groups"):
        MixedLM(y, X, np.zeros(180))


def test_array_non_numeric_exog_ndarray(sleep):
    y, _, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"exog.*not numeric|exog.*non-numeric"):
        MixedLM(y, np.array([["a"]] * 180), g)


def test_array_two_dimensional_groups(sleep):
    y, X, g = _arrays(sleep)
    with pytest.raises(DataError, match=r"groups.*one-dimensional|groups.*one group label per row"):
        MixedLM(y, X, np.column_stack([g, g]))


def test_error_messages_have_no_terminal_escape_codes(sleep):
    with pytest.raises(FormulaError) as info:
        MixedLM.from_formula("Reaction ~ Days * + (1 | Subject)", sleep)
    assert not re.search(r"\x1b\[", str(info.value))


# ---- silent wrong answers, now clear errors --------------------------------------------------------
def test_predict_with_an_unseen_fixed_effect_level_names_column_and_level():
    df = jaxlmm.datasets.load("dietox")
    r = MixedLM.from_formula("Weight ~ Time + C(Evit) + (1 | Pig)", df).fit()
    new = df.head(3).copy()
    new["Evit"] = ["Evit000", "Evit999", "Evit100"]
    with pytest.raises(DataError, match=r"'Evit'.*'Evit999'.*Drop those rows"):
        r.predict(new)
    with pytest.raises(DataError, match="Evit999"):
        r.predict(new, include_re=False)
    ok = r.predict(df.head(3))  # fitted levels still predict
    assert np.all(np.isfinite(ok.to_numpy()))


def test_population_prediction_does_not_need_the_grouping_column(sleep_fit):
    r = sleep_fit
    new = pd.DataFrame({"Days": [0.0, 5.0]})
    pred = r.predict(new, include_re=False)
    np.testing.assert_allclose(pred.to_numpy(), r.fe_params["Intercept"] + r.fe_params["Days"] * new["Days"].to_numpy())
    with pytest.raises(DataError, match="Subject"):
        r.predict(new)  # with random effects the grouping column is needed


@pytest.mark.parametrize("bad", ["ML", "REML", 1, 0.0, None])
def test_reml_must_be_a_bool(sleep, bad):
    m = MixedLM.from_formula(FORMULA, sleep)
    with pytest.raises(DataError, match="reml must be True or False.*reml=False by ML"):
        m.fit(reml=bad)
    with pytest.raises(DataError, match="reml must be True or False"):
        m.fit_many(np.asarray(m.design.y)[:, None], reml=bad)


@pytest.mark.parametrize("bad", [0, -1e-6, "1e-6", float("nan")])
def test_gtol_must_be_positive(sleep, bad):
    with pytest.raises(DataError, match="gtol must be a positive number"):
        MixedLM.from_formula(FORMULA, sleep).fit(gtol=bad)


def test_random_intercept_absorbed_by_fixed_effects_warns():
    rng = np.random.default_rng(8)
    rows = [{"classroom": f"c{c}", "edu": e, "score": rng.normal(c + e)} for c in range(4) for e in (0.0, 1.0) for _ in range(5)]
    df = pd.DataFrame(rows)
    with pytest.warns(jaxlmm.IdentifiabilityWarning, match="'classroom'.*absorbed by the fixed effects"):
        MixedLM.from_formula("score ~ edu * classroom + (1 | classroom)", df)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxlmm.IdentifiabilityWarning)
        MixedLM.from_formula("score ~ edu + (1 | classroom)", df)  # identifiable: no warning
