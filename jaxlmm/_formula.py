"""Formulas: split lme4 bar terms ``( … | g)`` / ``( … || g)`` off, let formulaic parse the rest.

`parse_mixed_formula` only splits strings; `encode` turns a parsed formula and a DataFrame into
matrices and a `ModelSpec` that re-encodes new data exactly as in fitting.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re

import formulaic
import numpy as np
import pandas as pd

from .errors import DataError, FormulaError

_ANSI = re.compile(r"\x1b\[[0-9;]*m|⧛|⧚")


@dataclasses.dataclass(frozen=True)
class RandomTerm:
    """One bar term: ``(expr | group)``; ``correlated=False`` for ``||``."""

    expr: str
    group: str
    correlated: bool = True


@dataclasses.dataclass(frozen=True)
class MixedFormula:
    response: str
    fixed: str
    random: tuple[RandomTerm, ...]


def _formulaic_message(err: Exception) -> str:
    return _ANSI.sub("", str(err)).strip()


def _split_top_level(text: str, sep: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _check_parentheses(formula: str) -> None:
    depth = 0
    for i, ch in enumerate(formula):
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            raise FormulaError(
                f"unmatched ')' at position {i} in formula:\n  {formula}\n  {' ' * i}^\nremove it or add the '(' it closes."
            )
    if depth > 0:
        i = formula.rfind("(")
        raise FormulaError(
            f"unclosed '(' in formula:\n  {formula}\n  {' ' * i}^\nadd the matching ')'."
        )


def _parse_bar(piece: str, formula: str) -> RandomTerm | None:
    inner = piece.strip()
    if not (inner.startswith("(") and inner.endswith(")")):
        return None
    body = inner[1:-1]
    if len(_split_top_level(body, "|")) == 1:
        return None
    correlated = "||" not in body
    expr, _, group = body.partition("||" if not correlated else "|")
    expr, group = expr.strip(), group.strip()
    if not group or "|" in group:
        raise FormulaError(f"random-effect term {inner!r} in {formula!r} needs one grouping factor after '|', as in '(Days | Subject)'.")
    if not expr:
        raise FormulaError(f"random-effect term {inner!r} in {formula!r} has nothing before '|': write '(1 | {group})' for a random intercept.")
    return RandomTerm(expr, group, correlated)


_I_CALL = re.compile(r"(?<![A-Za-z0-9_.])I\(")


def translate_powers(formula: str) -> str:
    """R's power inside ``I()``: ``I(x^2)`` becomes ``I(x**2)``.

    formulaic evaluates ``I()`` as Python, where ``^`` is bitwise XOR: ``I(day^2)`` would silently
    give day XOR 2. Outside ``I()``, ``^`` keeps its formula meaning (``(a + b)^2``: interactions).

    Examples:
        >>> translate_powers("y ~ I(day^2) + (a + b)^2")
        'y ~ I(day**2) + (a + b)^2'
    """
    out, i = [], 0
    for match in _I_CALL.finditer(formula):
        if match.start() < i:
            continue
        depth, j = 1, match.end()
        while j < len(formula) and depth:
            depth += {"(": 1, ")": -1}.get(formula[j], 0)
            j += 1
        out.append(formula[i : match.end()])
        out.append(formula[match.end() : j].replace("^", "**"))
        i = j
    out.append(formula[i:])
    return "".join(out)


def parse_mixed_formula(formula: str) -> MixedFormula:
    """Split ``"y ~ x + (x | g)"`` into response, fixed part and random terms.

    Examples:
        >>> parse_mixed_formula("Reaction ~ Days + (Days || Subject)").random
        (RandomTerm(expr='Days', group='Subject', correlated=False),)
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string such as 'y ~ x + (x | g)', got {type(formula).__name__}.")
    _check_parentheses(formula)
    formula = translate_powers(formula)
    sides = _split_top_level(formula, "~")
    if len(sides) != 2 or not sides[0].strip():
        raise FormulaError(f"formula {formula!r} needs exactly one '~' with the response on its left, as in 'y ~ x + (1 | g)'.")
    response, rhs = sides[0].strip(), sides[1]
    fixed_parts, random_terms = [], []
    for piece in _split_top_level(rhs, "+"):
        term = _parse_bar(piece, formula)
        if term is None:
            fixed_parts.append(piece.strip())
        else:
            random_terms.append(term)
    fixed_parts = [p for p in fixed_parts if p]
    fixed = " + ".join(fixed_parts) if fixed_parts else "1"
    if "|" in fixed:
        raise FormulaError(
            f"'|' outside a parenthesised random-effect term in {formula!r}: write random effects as '(expr | group)'."
        )
    return MixedFormula(response, fixed, tuple(random_terms))


@functools.lru_cache(maxsize=256)
def _required_variables(expr: str) -> frozenset:
    try:
        return frozenset(str(v) for v in formulaic.Formula(expr).required_variables)
    except Exception as err:  # formulaic's parser errors
        raise FormulaError(f"cannot parse {expr!r}: {_formulaic_message(err)}") from None


def required_columns(expressions: list[str], data: pd.DataFrame) -> list[str]:
    """Columns of ``data`` that the formula expressions use, in data order."""
    needed: set[str] = set()
    for expr in expressions:
        needed |= _required_variables(expr)
    return [c for c in data.columns if c in needed]


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z_0-9.]*$")


@dataclasses.dataclass(frozen=True)
class NumericColumnsSpec:
    """Encoder for expressions made only of numeric column names and 1/0/-1: ``[Intercept,] cols``.

    Produces exactly what formulaic produces for such expressions (same names, same order), without
    formulaic's per-call overhead (≈1 ms), which dominates fitting small data sets. Nothing is
    learned from the data, so new data is encoded the same way.
    """

    intercept: bool
    columns: tuple[str, ...]

    @classmethod
    def try_parse(cls, expr: str, data: pd.DataFrame) -> "NumericColumnsSpec | None":
        intercept, columns = True, []
        text = expr.strip()
        pieces = [p.strip() for p in _split_top_level(text, "+")]
        for piece in pieces:
            if piece == "1":
                continue
            if piece == "0":
                intercept = False
                continue
            if piece.endswith("- 1") or piece.endswith("-1"):
                intercept = False
                piece = piece.rsplit("-", 1)[0].strip()
                if not piece:
                    continue
            if not _IDENT.match(piece) or piece not in data.columns or piece in columns:
                return None
            kind = data[piece].dtype.kind
            if kind not in "fiu":
                return None
            columns.append(piece)
        return cls(intercept, tuple(columns))

    @property
    def names(self) -> list[str]:
        return (["Intercept"] if self.intercept else []) + list(self.columns)

    @property
    def term_indices(self) -> dict:
        return {name: [i] for i, name in enumerate(self.names)}

    def matrix(self, data: pd.DataFrame) -> np.ndarray:
        check_columns_exist(list(self.columns), data, " + ".join(self.names))
        values = [np.ones(len(data))] if self.intercept else []
        values += [data[c].to_numpy(dtype=float) for c in self.columns]
        return np.column_stack(values) if values else np.empty((len(data), 0))

    def get_model_matrix(self, data: pd.DataFrame, na_action: str = "ignore") -> pd.DataFrame:
        return pd.DataFrame(self.matrix(data), columns=self.names, index=data.index)


class _FastMatrix:
    """The result of a `NumericColumnsSpec` encoding, shaped like formulaic's ModelMatrix."""

    def __init__(self, spec: NumericColumnsSpec, data: pd.DataFrame):
        self.model_spec = spec
        self._matrix = spec.matrix(data)
        self.columns = spec.names
        self.shape = self._matrix.shape

    def __array__(self, dtype=None, copy=None):
        return self._matrix if dtype is None else self._matrix.astype(dtype)


def model_matrix(expr: str, data: pd.DataFrame, what: str, formula: str | None = None):
    """The model matrix of ``expr`` (no NA handling here: the caller has checked).

    Plain numeric columns take a fast path (`NumericColumnsSpec`); everything else goes to formulaic.
    """
    fast = NumericColumnsSpec.try_parse(expr, data)
    if fast is not None:
        return _FastMatrix(fast, data)
    try:
        return formulaic.model_matrix(expr, data, na_action="ignore")
    except Exception as err:
        msg = _formulaic_message(err)
        missing = re.search(r"`([^`]+)` is not present in the dataset", msg)
        if missing:
            check_columns_exist([missing.group(1)], data, formula or expr)
        raise FormulaError(f"cannot build the {what} from {expr!r}: {msg}") from None


def check_columns_exist(names: list[str], data: pd.DataFrame, formula: str) -> None:
    for name in names:
        if name not in data.columns:
            close = difflib.get_close_matches(name, [str(c) for c in data.columns], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"column {name!r} used in {formula!r} is not in the data.{hint} "
                f"Available columns: {', '.join(map(str, data.columns))}."
            )


def response_vector(expr: str, data: pd.DataFrame) -> np.ndarray:
    """Evaluate the response expression; it must give one numeric column."""
    if expr in data.columns:
        col = data[expr]
        if not (pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)):
            raise DataError(
                f"response {expr!r} is not numeric (dtype {col.dtype}); a linear mixed model needs a numeric "
                f"response: convert it, e.g. data[{expr!r}].astype(float), or pick another column."
            )
        return col.to_numpy(dtype=float)
    mm = model_matrix(f"0 + {expr}", data, "response")
    if mm.shape[1] != 1:
        raise DataError(f"response {expr!r} is not numeric: it encodes to {mm.shape[1]} columns. Use a numeric column.")
    return np.asarray(mm, dtype=float)[:, 0]
