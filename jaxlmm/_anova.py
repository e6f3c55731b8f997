"""Analysis-of-variance tables for the fixed effects, as lmerTest's ``anova(m, type=, ddf=)``.

Each term of the fixed-effects formula gets a hypothesis matrix L (one row per tested direction,
one column per fixed effect), built as lmerTest builds it:

* type 1 (sequential): the rows of Lᵀ of the Doolittle factorisation XᵀX = L U for the term's columns;
* type 2: a term that no other term contains is tested by its own coefficients; a contained term by
  the Doolittle rows after moving it and the terms containing it to the end of X;
* type 3: SAS's construction. The over-parameterised design (every term in full dummy coding) is
  expressed in a treatment-coded X, and each term's columns are made orthogonal to the terms that
  contain it. Here that is done symbolically: every column is a polynomial in level indicators
  I(F = l) (l not the reference) and numeric variables, so the result does not depend on the data,
  and a non-treatment coding (``C(x, Sum)``) is mapped back onto its own columns.

Term A *contains* term B when B's variables are a proper subset of A's and both have the same numeric
variables (lmerTest's rule: ``Evit`` is not contained in ``Time:Evit``).

The F statistic of L is lmerTest's ``contestMD``: with the eigen-decomposition L C Lᵀ = P D Pᵀ,
F = Σ_m (P_mᵀ L β̂)² / d_m / q over the q positive eigenvalues, and its denominator df combines the
Satterthwaite df ν_m of each direction: 2E/(E − q) with E = Σ ν_m/(ν_m − 2). With Kenward–Roger, L
goes to `kenward_roger_f`. Sum Sq = F·NumDF·σ̂² and Mean Sq = F·σ̂², as lmerTest reports them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import pandas as pd
from scipy.special import fdtrc

from ._kenward_roger import kenward_roger_f
from .errors import DataError

if TYPE_CHECKING:
    from ._model import MixedLM
    from ._results import MixedLMResults

ANOVA_TYPES = {1: 1, 2: 2, 3: 3, "1": 1, "2": 2, "3": 3, "I": 1, "II": 2, "III": 3}
DDF_METHODS = ("satterthwaite", "kenward-roger")
ANOVA_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
_EPS = float(np.sqrt(np.finfo(float).eps))


@dataclasses.dataclass(frozen=True)
class FixedTerm:
    """One term of the fixed-effects formula: its label, its columns of X, its variables (the
    formula's factors, e.g. ``Time``, ``C(Evit)``) and which of them are numeric."""

    label: str
    columns: tuple[int, ...]
    variables: frozenset
    numeric: frozenset


def check_anova_type(type) -> int:
    """1, 2 or 3 from ``type`` (also "I", "II", "III"), or `DataError` naming the allowed values."""
    key = type.strip().upper() if isinstance(type, str) else type
    if isinstance(key, bool) or key not in ANOVA_TYPES:
        raise DataError(f"type must be 1, 2 or 3 (or 'I', 'II', 'III'), got {type!r}.")
    return ANOVA_TYPES[key]


def check_ddf(ddf) -> str:
    """"satterthwaite" or "kenward-roger" (any case), or `DataError` naming the allowed values."""
    key = ddf.strip().lower() if isinstance(ddf, str) else ddf
    if key not in DDF_METHODS:
        raise DataError(f"ddf must be 'satterthwaite' or 'kenward-roger', got {ddf!r}.")
    return key


# ---- terms --------------------------------------------------------------------------------------
def fixed_terms(spec, names: Sequence[str]) -> tuple[list[FixedTerm], bool]:
    """The formula's terms (intercept excluded) and whether there is an intercept, from formulaic's
    model spec; without one (the array front end), each column is its own numeric term and a column
    named ``Intercept``/``const`` is the intercept."""
    names = list(names)
    if spec is None or not hasattr(spec, "structure"):
        intercept = [j for j, n in enumerate(names) if n in ("Intercept", "const", "(Intercept)")]
        terms = [FixedTerm(n, (j,), frozenset([n]), frozenset([n])) for j, n in enumerate(names) if j not in intercept]
        return terms, bool(intercept)
    state = getattr(spec, "encoder_state", {}) or {}
    terms, intercept = [], False
    for term, columns in spec.term_indices.items():
        variables = [f.expr for f in getattr(term, "factors", [])]
        if not variables or str(term) == "1":
            intercept = True
            continue
        numeric = [v for v in variables if not _is_categorical(state, v)]
        terms.append(FixedTerm(str(term), tuple(int(c) for c in columns), frozenset(variables), frozenset(numeric)))
    return terms, intercept


def _is_categorical(state: dict, expr: str) -> bool:
    kind = state.get(expr, (None,))[0]
    return getattr(kind, "value", kind) == "categorical"


def containment(terms: Sequence[FixedTerm]) -> dict[str, list[str]]:
    """For each term, the terms containing it (lmerTest's ``containment``), in formula order."""
    def contains(inner: FixedTerm, outer: FixedTerm) -> bool:
        return (inner.variables < outer.variables) and inner.numeric == outer.numeric

    return {t.label: [o.label for o in terms if contains(t, o)] for t in terms}


# ---- type 1 and 2 -------------------------------------------------------------------------------
def doolittle(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The unit lower-triangular L of the Doolittle factorisation x = L U (lmerTest's ``doolittle``:
    entries below ``eps`` set to 0, and a column whose pivot is below ``eps`` zeroed).

    Examples:
        >>> import numpy as np
        >>> doolittle(np.array([[4.0, 2.0], [2.0, 3.0]])).tolist()
        [[1.0, 0.0], [0.5, 1.0]]
    """
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    L, U = np.eye(n), np.zeros((n, n))
    for i in range(n):
        U[i] = x[i] - L[i, :i] @ U[:i]
        below = x[i + 1:, i] - L[i + 1:, :i] @ U[:i, i]
        L[i + 1:, i] = 0.0 if abs(U[i, i]) < eps else below / U[i, i]
    L[np.abs(L) < eps] = 0.0
    return L


def _sequential(XtX: np.ndarray) -> np.ndarray:
    return np.ones((1, 1)) if XtX.shape[0] == 1 else doolittle(XtX).T


def contrasts_type1(XtX: np.ndarray, terms: Sequence[FixedTerm]) -> dict[str, np.ndarray]:
    """Type 1 (sequential) hypothesis matrices, one per term, from XᵀX."""
    L = _sequential(XtX)
    return {t.label: L[list(t.columns)] for t in terms}


def contrasts_type2(XtX: np.ndarray, terms: Sequence[FixedTerm]) -> dict[str, np.ndarray]:
    """Type 2 hypothesis matrices (lmerTest's default type 2: the coefficients of a term no other term
    contains; Doolittle rows with the term and its containers last otherwise)."""
    p = XtX.shape[0]
    if p <= 1 or len(terms) <= 1:
        return contrasts_type1(XtX, terms)
    contained = containment(terms)
    columns = {t.label: list(t.columns) for t in terms}
    out = {}
    for t in terms:
        if not contained[t.label]:
            out[t.label] = np.eye(p)[list(t.columns)]
            continue
        last = list(dict.fromkeys(c for lab in [t.label, *contained[t.label]] for c in columns[lab]))
        order = [c for c in range(p) if c not in last] + last
        Lc = _sequential(XtX[np.ix_(order, order)])
        rows = [k for k, c in enumerate(order) if c in t.columns]
        out[t.label] = np.zeros((len(rows), p))
        out[t.label][:, order] = Lc[rows]
    return out


# ---- type 3 -------------------------------------------------------------------------------------
# A column of X as a polynomial: {monomial: coefficient}, a monomial being a frozenset of
# ("level", factor, level) indicators (never the reference level) and ("value", factor) numerics.
Polynomial = dict


def _product(polys: Sequence[Polynomial], scale: float = 1.0) -> Polynomial:
    out: Polynomial = {frozenset(): scale}
    for poly in polys:
        new: Polynomial = {}
        for (m1, c1), (m2, c2) in itertools.product(out.items(), poly.items()):
            new[m1 | m2] = new.get(m1 | m2, 0.0) + c1 * c2
        out = new
    return out


def _coded(factor: str, levels: list, coding: np.ndarray) -> Polynomial:
    """Σ_l coding_l I(factor = l) with I(factor = reference) = 1 − Σ_{l ≠ reference} I(factor = l)."""
    out: Polynomial = {frozenset(): float(coding[0])}
    for level, c in zip(levels[1:], coding[1:]):
        if c - coding[0] != 0:
            out[frozenset([("level", factor, level)])] = float(c - coding[0])
    return out


def _zapsmall(x: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits`` significant digits of the largest entry."""
    mx = np.max(np.abs(x)) if x.size else 0.0
    return np.round(x, max(0, digits - int(np.ceil(np.log10(mx)))) if mx > 0 else digits)


class _Coding:
    """The columns of a formulaic spec as polynomials: as coded (``X``), treatment-coded (``X_t``, with
    each column's cell) and in full dummy coding per term (``rdX``, lmerTest's ``get_rdX``)."""

    def __init__(self, spec, names: Sequence[str]):
        state = getattr(spec, "encoder_state", {}) or {}
        self.X: list[Polynomial] = []
        self.Xt: list[tuple[tuple, Polynomial]] = []
        self.rdX: list[tuple[tuple, Polynomial]] = []
        for k, structure in enumerate(spec.structure):
            variables = [f.expr for f in getattr(structure.term, "factors", [])]
            if str(structure.term) == "1":
                variables = []
            if not variables:
                self.rdX.append(((k,), {frozenset(): 1.0}))
            else:
                cells = itertools.product(*[self._levels(state, v) or [None] for v in variables])
                for cell in cells:
                    self.rdX.append(((k, *cell), _product([self._full(state, v, lev) for v, lev in zip(variables, cell)])))
            for scoped in structure.scoped_terms:
                factors = list(scoped.factors)
                scale = float(getattr(scoped, "scale", 1.0))
                coded = [self._columns(state, f.factor.expr, f.reduced, treatment=False) for f in factors]
                treat = [self._columns(state, f.factor.expr, f.reduced, treatment=True) for f in factors]
                for rev in itertools.product(*reversed(coded)):
                    self.X.append(_product([poly for _, poly in rev[::-1]], scale))
                for rev in itertools.product(*reversed(treat)):
                    combo = rev[::-1]
                    cell = dict(zip([f.factor.expr for f in factors], [lev for lev, _ in combo]))
                    key = (k, *[cell.get(v) for v in variables])
                    self.Xt.append((key, _product([poly for _, poly in combo], scale)))
        if len(self.X) != len(names) or len(self.Xt) != len(names):
            raise DataError(
                "type 3 hypotheses could not be built for this formula (a term with several columns per variable, "
                "such as a spline or a polynomial basis?); use anova(type=1) or anova(type=2), or t_test/wald_test."
            )

    @staticmethod
    def _levels(state: dict, expr: str) -> list | None:
        if not _is_categorical(state, expr):
            return None
        info = state[expr][1]
        contrasts = info.get("contrasts")
        return list(contrasts.levels if contrasts is not None else info["categories"])

    @classmethod
    def _full(cls, state: dict, expr: str, level) -> Polynomial:
        levels = cls._levels(state, expr)
        if levels is None:
            return {frozenset([("value", expr)]): 1.0}
        return _coded(expr, levels, (np.asarray(levels, dtype=object) == level).astype(float))

    @classmethod
    def _columns(cls, state: dict, expr: str, reduced: bool, treatment: bool) -> list[tuple]:
        """(cell level or None, polynomial) per column the factor contributes."""
        levels = cls._levels(state, expr)
        if levels is None:
            return [(None, {frozenset([("value", expr)]): 1.0})]
        if treatment:
            return [(lev, cls._full(state, expr, lev)) for lev in (levels[1:] if reduced else levels)]
        coding = np.asarray(state[expr][1]["contrasts"].contrasts.get_coding_matrix(levels, reduced_rank=reduced),
                            dtype=float)
        return [(None, _coded(expr, levels, coding[:, j])) for j in range(coding.shape[1])]

    @staticmethod
    def matrix(polys: Sequence[Polynomial], basis: dict) -> np.ndarray:
        out = np.zeros((len(basis), len(polys)))
        for j, poly in enumerate(polys):
            for mono, c in poly.items():
                out[basis[mono], j] += c
        return out


def contrasts_type3(spec, names: Sequence[str], terms: Sequence[FixedTerm], XtX: np.ndarray) -> dict[str, np.ndarray]:
    """Type 3 hypothesis matrices (lmerTest's ``get_contrasts_type3``), from formulaic's spec alone."""
    p = len(names)
    if p <= 1 or len(terms) <= 1 or spec is None or not hasattr(spec, "structure"):
        return contrasts_type1(XtX, terms)
    coding = _Coding(spec, names)
    polys = coding.X + [poly for _, poly in coding.Xt] + [poly for _, poly in coding.rdX]
    basis = {m: i for i, m in enumerate(dict.fromkeys(m for poly in polys for m in poly))}
    T_x = coding.matrix(coding.X, basis)
    T_t = coding.matrix([poly for _, poly in coding.Xt], basis)
    T_rd = coding.matrix([poly for _, poly in coding.rdX], basis)
    B = np.linalg.lstsq(T_t, np.concatenate([T_rd, T_x], axis=1), rcond=None)[0]
    if not np.allclose(T_t @ B, np.concatenate([T_rd, T_x], axis=1), atol=1e-8):
        raise DataError(
            "type 3 hypotheses need a formula whose terms are closed under marginality as R codes them (each "
            "interaction's lower-order terms are in the formula, or coded in full by it); use anova(type=2) or "
            "anova(type=1)."
        )
    L = _zapsmall(B[:, : T_rd.shape[1]].T)  # rdX columns in terms of X_t's
    to_orig = _zapsmall(B[:, T_rd.shape[1]:])  # X's columns in terms of X_t's
    contained = containment(terms)
    columns = {t.label: list(t.columns) for t in terms}
    order = sorted(terms, key=lambda t: -len(t.variables))  # highest order first; ties in formula order
    for t in order:
        if contained[t.label]:
            outer = [c for lab in contained[t.label] for c in columns[lab]]
            A, y = L[:, outer], L[:, columns[t.label]]
            L[:, columns[t.label]] = _zapsmall(y - A @ np.linalg.lstsq(A, y, rcond=None)[0])
    row_of = {cell: i for i, (cell, _) in enumerate(coding.rdX)}
    L = L[[row_of[cell] for cell, _ in coding.Xt]]
    out = {}
    for t in terms:
        Lt = L[:, columns[t.label]].T @ to_orig
        out[t.label] = Lt[np.abs(Lt).sum(axis=1) > 1e-8]
    return out


# ---- F tests ------------------------------------------------------------------------------------
def combined_ddf(nu: np.ndarray, tol: float = 1e-8) -> float:
    """lmerTest's ``get_Fstat_ddf``: the denominator df of an F from the df ν_m of its directions.

    Examples:
        >>> round(combined_ddf(np.array([10.0, 20.0])), 4)
        13.0769
    """
    nu = np.asarray(nu, dtype=float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(nu.mean())
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2.0)))
    return 2.0 * E / (E - nu.size)


def satterthwaite_f(L: np.ndarray, beta: np.ndarray, vcov: np.ndarray,
                    row_df: Callable[[np.ndarray], np.ndarray]) -> tuple[float, int, float]:
    """(F, NumDF, DenDF) of H₀: L β = 0 with Satterthwaite's df (lmerTest's ``contestMD``);
    ``row_df`` gives the Satterthwaite df of each row of a contrast matrix."""
    if L.shape[0] == 1:
        t2 = float((L[0] @ beta) ** 2 / (L[0] @ vcov @ L[0]))
        return t2, 1, float(row_df(L)[0])
    d, P = np.linalg.eigh(L @ vcov @ L.T)
    d, P = d[::-1], P[:, ::-1]
    q = int(np.sum(d > max(_EPS * d[0], 0.0)))
    if q == 0:
        return np.nan, 0, np.nan
    PtL = P[:, :q].T @ L
    F = float(np.sum((PtL @ beta) ** 2 / d[:q]) / q)
    return F, q, combined_ddf(row_df(PtL))


def f_table(rows: dict[str, tuple[float, int, float, float]], sigma2: float, heading: str) -> pd.DataFrame:
    """lmerTest's ANOVA table from {term: (F, NumDF, DenDF, F scaling)}: Mean Sq = F σ̂², Sum Sq =
    Mean Sq · NumDF (from the unscaled F), F value = scaling · F."""
    records = []
    for F, ndf, ddf, scale in rows.values():
        ms = F * sigma2
        value = F * scale
        records.append([ms * ndf, ms, ndf, ddf, value, float(fdtrc(ndf, ddf, value)) if ndf > 0 else np.nan])
    table = pd.DataFrame(records, index=list(rows), columns=ANOVA_COLUMNS)
    table["NumDF"] = table["NumDF"].astype(int)
    table.attrs["heading"] = heading
    return table


def hypotheses(model: "MixedLM", type: int) -> dict[str, np.ndarray]:
    """The hypothesis matrix of every fixed-effect term for an ANOVA of this ``type`` (1, 2 or 3).

    Examples:
        >>> import jaxlmm
        >>> m = jaxlmm.MixedLM.from_formula("distance ~ age * Sex + (1 | Subject)", jaxlmm.datasets.load("orthodont"))
        >>> {term: L.shape for term, L in hypotheses(m, 3).items()}
        {'age': (1, 4), 'Sex': (1, 4), 'age:Sex': (1, 4)}
    """
    spec = model.spec.fixed_spec if model.spec is not None else None
    names = list(model.exog_names)
    terms, _ = fixed_terms(spec, names)
    X = np.asarray(model.design.X, dtype=float)[np.asarray(model.design.mask) > 0]
    XtX = X.T @ X
    if type == 1:
        return contrasts_type1(XtX, terms)
    if type == 2:
        return contrasts_type2(XtX, terms)
    return contrasts_type3(spec, names, terms, XtX)


def anova_table(results: "MixedLMResults", type=3, ddf: str = "satterthwaite") -> pd.DataFrame:
    """lmerTest's ``anova(m, type=, ddf=)`` for a fit: one row per term (see `MixedLMResults.anova`)."""
    kind, method = check_anova_type(type), check_ddf(ddf)
    beta = results.fe_params.values
    if method == "kenward-roger":
        kr = results._kenward_roger
        rows = {term: kenward_roger_f(L, beta, kr) for term, L in hypotheses(results.model, kind).items()}
    else:
        vcov = results.cov_fe.values
        rows = {term: (*satterthwaite_f(L, beta, vcov, results.satterthwaite_df), 1.0)
                for term, L in hypotheses(results.model, kind).items()}
    name = {"satterthwaite": "Satterthwaite's", "kenward-roger": "Kenward-Roger's"}[method]
    return f_table(rows, results.scale, f"Type {'I' * kind} Analysis of Variance Table with "
                                        f"{name} method")
