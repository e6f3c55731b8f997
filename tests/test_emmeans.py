"""Estimated marginal means and their pairwise contrasts against R's emmeans (tests/data/r/emmeans_ref.R)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm._contrasts import tukey_pvalues
from jaxlmm._emmeans import marginal_matrix
from jaxlmm.errors import DataError

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "emmeans_reference.json").read_text())
FORMULAS = {
    "dietox": "Weight ~ Time + C(Evit) + C(Cu) + (1 | Pig)",
    "orthodont": "distance ~ age * Sex + (1 | Subject)",
    "twoway": "y ~ treat * C(period) + x + (1 | subject)",
    "orthodont_offset": "distance ~ Sex + (1 | Subject)",  # with offset="off"
}
DDF = {"satterthwaite": "satterthwaite", "kenward-roger": "kenward-roger", "asymptotic": "wald"}


def _load(case: str) -> pd.DataFrame:
    if case == "twoway":
        return pd.read_csv(DATA / "emmeans_twoway.csv")
    df = jaxlmm.datasets.load(case.removesuffix("_offset"))
    if case == "orthodont_offset":
        df["off"] = df["age"] / 2 + (df["Subject"] == "M01")
    return df


def _fit(case: str):
    offset = "off" if case.endswith("_offset") else None
    return jaxlmm.MixedLM.from_formula(FORMULAS[case], _load(case), offset=offset).fit()


@pytest.fixture(scope="module")
def fits():
    return {case: _fit(case) for case in FORMULAS}


def _kenward_roger_available(r) -> bool:
    try:
        r.t_test(np.eye(len(r.fe_params))[:1], ddf="kenward-roger")
    except DataError:
        return False
    return True


def _entries():
    for case, entry in REFERENCE.items():
        for k, res in enumerate(entry["results"]):
            by = f"|{res['by']}" if res["by"] else ""
            at = f"@{res['at']}" if res["at"] else ""
            yield pytest.param(case, k, id=f"{case}-{'*'.join(np.atleast_1d(res['specs']))}{by}{at}-{res['ddf']}")


def _call(r, res, adjust=None):
    specs = res["specs"] if isinstance(res["specs"], str) else list(res["specs"])
    kwargs = dict(by=res["by"] or None, ddf=DDF[res["ddf"]], at=res["at"] or None)
    if res["ddf"] == "kenward-roger" and not _kenward_roger_available(r):
        pytest.skip("ddf='kenward-roger' is not implemented yet")
    if adjust is None:
        return r.emmeans(specs, **kwargs)
    return r.emmeans_pairwise(specs, adjust=adjust, **kwargs)


def test_fits_match_lme4(fits):
    for case, r in fits.items():
        np.testing.assert_allclose(r.fe_params.values, REFERENCE[case]["beta"], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case, k", list(_entries()))
def test_emmeans_match_r(fits, case, k):
    res = REFERENCE[case]["results"][k]
    table = _call(fits[case], res)
    names = list(res["levels"])
    assert list(table.index.names) == names
    levels = table.index.to_frame().astype(str)
    for name in names:
        assert levels[name].tolist() == res["levels"][name]
    np.testing.assert_allclose(table["emmean"], res["emmean"], rtol=1e-6)
    np.testing.assert_allclose(table["SE"], res["SE"], rtol=1e-6)
    if res["ddf"] == "asymptotic":
        assert np.all(np.isinf(table["df"]))
    else:
        np.testing.assert_allclose(table["df"], res["df"], rtol=1e-4)
    np.testing.assert_allclose(table["lower"], res["lower"], rtol=1e-6)
    np.testing.assert_allclose(table["upper"], res["upper"], rtol=1e-6)


@pytest.mark.parametrize("adjust", ["tukey", "holm"])
@pytest.mark.parametrize("case, k", list(_entries()))
def test_pairs_match_r(fits, case, k, adjust):
    res = REFERENCE[case]["results"][k]
    ref = res[f"pairs_{adjust}"]
    table = _call(fits[case], res, adjust)
    assert table.index.get_level_values("contrast").tolist() == np.atleast_1d(ref["contrast"]).tolist()
    if res["by"]:
        assert table.index.get_level_values(res["by"]).astype(str).tolist() == ref["by"]
    np.testing.assert_allclose(table["estimate"], ref["estimate"], rtol=1e-6)
    np.testing.assert_allclose(table["SE"], ref["SE"], rtol=1e-6)
    stat = table["z"] if res["ddf"] == "asymptotic" else table["t"]
    np.testing.assert_allclose(stat, ref["ratio"], rtol=1e-6)
    if res["ddf"] != "asymptotic":
        np.testing.assert_allclose(table["df"], ref["df"], rtol=1e-4)
    np.testing.assert_allclose(table[f"p ({adjust})"], ref["p"], rtol=1e-5, atol=1e-12)


def test_tukey_pvalues_match_ptukey():
    # R: ptukey(sqrt(2) * c(3, 1), 4, c(7.5, Inf), lower.tail = FALSE)
    np.testing.assert_allclose(tukey_pvalues([3.0, -1.0], [7.5, np.inf], 4), [0.070407706075, 0.749388367113],
                               rtol=1e-7)


def test_formula_spelling_and_data(fits):
    r = fits["dietox"]
    by_column = r.emmeans("Evit")
    pd.testing.assert_frame_equal(r.emmeans("C(Evit)"), by_column)
    L = marginal_matrix(r, "Evit").L
    np.testing.assert_allclose(L @ r.fe_params.values, by_column["emmean"])
    np.testing.assert_allclose(L[:, r.model.exog_names.index("Time")], _load("dietox")["Time"].mean())
    # data= gives the same covariate mean as the model's own column of X
    pd.testing.assert_frame_equal(r.emmeans("Cu", data=_load("dietox")), r.emmeans("Cu"))
    wide = r.emmeans("Evit", alpha=0.01)
    assert np.all(wide["lower"] < by_column["lower"]) and np.all(wide["upper"] > by_column["upper"])


def test_transformed_covariate_needs_data():
    df = _load("orthodont")
    r = jaxlmm.MixedLM.from_formula("distance ~ np.log(age) * Sex + (1 | Subject)", df).fit()
    with pytest.raises(DataError, match=r"'age'.*data="):
        r.emmeans("Sex")
    table = r.emmeans("Sex", data=df)
    at = r.emmeans("Sex", at={"age": float(df["age"].mean())})
    pd.testing.assert_frame_equal(table, at)
    row = r.model.encode_fixed(pd.DataFrame({"age": [df["age"].mean()] * 2, "Sex": ["Female", "Male"]}))
    np.testing.assert_allclose(table["emmean"], row @ r.fe_params.values)


@pytest.mark.parametrize("call, message", [
    (lambda r: r.emmeans("Weight"), r"'Weight' is not a factor.*'Evit', 'Cu'"),
    (lambda r: r.emmeans("Pig"), r"'Pig' is not a factor.*'Evit', 'Cu'"),
    (lambda r: r.emmeans("Time"), r"'Time' is a numeric covariate.*'Evit', 'Cu'.*C\(Time\)"),
    (lambda r: r.emmeans(["Evit", "Evit"]), "appear once"),
    (lambda r: r.emmeans("Evit", by="Evit"), "appear once"),
    (lambda r: r.emmeans(3), "factor's name"),
    (lambda r: r.emmeans("Evit", alpha=5), "alpha"),
    (lambda r: r.emmeans("Evit", ddf="bogus"), "ddf"),
    (lambda r: r.emmeans("Evit", at={"Feed": 3}), r"'Feed'.*Evit, Cu, Time"),
    (lambda r: r.emmeans("Evit", at={"Cu": "Cu999"}), r"at\['Cu'\].*Cu000, Cu035, Cu175"),
    (lambda r: r.emmeans("Evit", at={"Time": "late"}), r"at\['Time'\].*number"),
    (lambda r: r.emmeans_pairwise("Evit", adjust="scheffe"), r"'tukey', 'holm', 'bonferroni', 'fdr_bh', None"),
    (lambda r: r.emmeans_pairwise("Evit", at={"Evit": "Evit000"}), "nothing to compare"),
])
def test_bad_input(fits, call, message):
    with pytest.raises(DataError, match=message):
        call(fits["dietox"])


def test_at_restricts_levels_and_none_adjust(fits):
    r = fits["dietox"]
    some = r.emmeans("Evit", at={"Cu": ["Cu000", "Cu175"]})
    full = r.emmeans("Evit", by="Cu")
    expected = full.xs("Cu000", level="Cu")["emmean"] / 2 + full.xs("Cu175", level="Cu")["emmean"] / 2
    np.testing.assert_allclose(some["emmean"], expected)
    plain = r.emmeans_pairwise("Evit", adjust=None)
    assert "p (None)" not in plain.columns and list(plain.columns) == ["estimate", "SE", "t", "df", "p"]
    pd.testing.assert_frame_equal(r.emmeans_pairwise("Evit", adjust="none"), plain)
