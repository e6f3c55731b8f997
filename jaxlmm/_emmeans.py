"""Estimated marginal means (emmeans' reference grid) and their pairwise contrasts.

The reference grid holds every combination of the levels of the factors in the fixed effects, with
each numeric covariate at its mean over the fitted rows (emmeans' default ``cov.reduce = mean``) or
at a value given in ``at``. Its rows are encoded by the model's own fixed-effect spec, so
interactions, ``C(...)`` codings and transforms of covariates (``np.log(x)``, ``poly(x, 2)``) enter as
they did in fitting. The marginal mean of a level is Lβ̂ with L the average of the grid rows that have
that level (equal weights over the other factors, emmeans' ``weights = "equal"``). Standard errors and
degrees of freedom come from `MixedLMResults.t_test` on the rows of L, so every ``ddf`` it offers
is offered here.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from ._contrasts import adjust_pvalues, tukey_pvalues
from .errors import DataError, check_probability

if TYPE_CHECKING:
    from ._results import MixedLMResults

ADJUSTMENTS = ("tukey", "holm", "bonferroni", "fdr_bh", None)


@dataclass(frozen=True)
class ReferenceGrid:
    """emmeans' reference grid: ``frame`` (one row per combination of factor levels, the first
    factor varying fastest, covariates at their values) and ``X``, its rows encoded by the model."""

    factors: dict  # data column -> its levels, in the model's order
    covariates: dict  # numeric data column -> its value in the grid
    frame: pd.DataFrame
    X: np.ndarray


@dataclass(frozen=True)
class Marginal:
    """Rows of L, one per combination of the levels of ``names`` (the specs, then the by factors;
    the first varies fastest), and those levels."""

    L: np.ndarray
    levels: list  # one tuple of levels (specs, then by) per row
    names: list  # specs, then by
    n_specs: int


def _categories(spec, factor) -> list | None:
    """The levels of a categorical factor of formulaic's spec; None for a numeric one."""
    _, state = spec.encoder_state.get(str(factor), (None, None))
    categories = state.get("categories") if isinstance(state, dict) else None
    return None if categories is None else list(categories)


def _grid_variables(spec) -> tuple[dict, dict, list]:
    """(factors {column: levels}, aliases {formula spelling: column}, numeric columns) of a fixed spec."""
    data_columns = set(spec.required_variables)
    factors, aliases, numeric = {}, {}, []
    in_order = dict.fromkeys(f for term in spec.terms for f in term.factors)  # the formula's order
    for factor in in_order:
        columns = sorted(set(spec.factor_variables.get(factor, ())) & data_columns)
        levels = _categories(spec, factor)
        if levels is None:
            numeric += columns
        elif len(columns) != 1:
            raise DataError(
                f"emmeans cannot build a reference grid for the factor {str(factor)!r}: it is made from "
                f"{len(columns)} data columns ({', '.join(columns) or 'none'}); make it one column of the data."
            )
        else:
            factors.setdefault(columns[0], levels)
            aliases[str(factor)] = columns[0]
    return factors, aliases, [c for c in dict.fromkeys(numeric) if c not in factors]


def _covariate_value(results: "MixedLMResults", column: str, data) -> float:
    """The mean of a numeric covariate over the fitted rows: from ``data`` when given, else from its
    own column of X."""
    model = results.model
    if data is not None:
        if not isinstance(data, pd.DataFrame) or column not in data.columns:
            raise DataError(f"data must be the DataFrame the model was fitted to, with the column {column!r}.")
        try:
            values = pd.to_numeric(data.loc[model.row_index, column])
        except (KeyError, ValueError, TypeError):
            raise DataError(f"data must be the DataFrame the model was fitted to: its rows or its column {column!r} "
                            "do not match the fitted rows.") from None
        return float(values.mean())
    if column in model.exog_names and _categories(model.spec.fixed_spec, column) is None:
        d = model.design
        X = np.asarray(d.X)[np.asarray(d.mask) > 0]
        return float(X[:, model.exog_names.index(column)].mean())
    raise DataError(
        f"emmeans needs a value for the numeric covariate {column!r}, which enters the model only through a "
        f"transform or an interaction: pass data= (the data the model was fitted to; its mean over the fitted "
        f"rows is used, as emmeans does) or at={{{column!r}: value}}."
    )


def reference_grid(results: "MixedLMResults", at: dict | None = None, data: pd.DataFrame | None = None) -> ReferenceGrid:
    """emmeans' reference grid of a fit (see the module docstring); ``at`` fixes covariates to values
    and restricts factors to some of their levels."""
    model = results.model
    spec = model.spec.fixed_spec if model.spec is not None else None
    if spec is None:
        raise DataError("estimated marginal means need a model built with MixedLM.from_formula (the factors and "
                        "their levels come from the formula).")
    factors, _, numeric = _grid_variables(spec)
    at = {} if at is None else at
    if not isinstance(at, dict):
        raise DataError(f"at must be a dict {{column: value(s)}}, got {type(at).__name__}.")
    unknown = [k for k in at if k not in factors and k not in numeric]
    if unknown:
        raise DataError(f"at names {', '.join(map(repr, unknown))}, which the fixed effects do not use; "
                        f"the model's variables are: {', '.join(list(factors) + numeric)}.")
    for column, value in at.items():
        if column in factors:
            wanted = value if isinstance(value, (list, tuple, np.ndarray, pd.Index, pd.Series)) else [value]
            known = {str(level): level for level in factors[column]}
            bad = [v for v in wanted if str(v) not in known]
            if bad or not len(wanted):
                raise DataError(f"at[{column!r}] must name levels of {column!r} ({', '.join(map(str, factors[column]))}); "
                                f"got {list(wanted)!r}.")
            factors[column] = list(dict.fromkeys(known[str(v)] for v in wanted))
    covariates = {}
    for column in numeric:
        if column in at:
            value = at[column]
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
                raise DataError(f"at[{column!r}] must be one finite number (the covariate's value in the grid), "
                                f"got {value!r}.")
            covariates[column] = float(value)
        else:
            covariates[column] = _covariate_value(results, column, data)
    names = list(factors)
    combos = [c[::-1] for c in itertools.product(*[factors[n] for n in reversed(names)])]
    frame = pd.DataFrame(combos, columns=names) if names else pd.DataFrame(index=range(1))
    for column, value in covariates.items():
        frame[column] = value
    return ReferenceGrid(factors, covariates, frame, model.encode_fixed(frame))


def _factor_names(value, what: str, factors: dict, aliases: dict, numeric: list) -> list[str]:
    """The data columns named by ``specs``/``by`` (a name or a list of names)."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{what} must be a factor's name or a list of them, e.g. {next(iter(factors), 'group')!r}; "
                        f"got {value!r}.")
    allowed = ", ".join(map(repr, factors)) or "none"
    out = []
    for name in names:
        column = name if name in factors else aliases.get(name, aliases.get(name.replace('"', "'")))
        if column is not None:
            out.append(column)
        elif name in numeric:
            raise DataError(f"{what}: {name!r} is a numeric covariate, not a factor; marginal means are per level of a "
                            f"factor (the model's factors: {allowed}). To treat {name!r} as a factor, write "
                            f"C({name}) in the formula.")
        else:
            raise DataError(f"{what}: {name!r} is not a factor of the fixed effects; the model's factors are: {allowed}.")
    return out


def marginal_matrix(results: "MixedLMResults", specs, by=None, at: dict | None = None,
                    data: pd.DataFrame | None = None) -> Marginal:
    """L: the grid rows averaged per combination of the ``specs`` (and ``by``) levels."""
    grid = reference_grid(results, at, data)
    factors, aliases, numeric = _grid_variables(results.model.spec.fixed_spec)
    names = _factor_names(specs, "specs", factors, aliases, numeric)
    by_names = [] if by is None else _factor_names(by, "by", factors, aliases, numeric)
    keys = names + by_names
    if len(set(keys)) != len(keys):
        raise DataError(f"each factor may appear once in specs and by; got specs={specs!r}, by={by!r}.")
    cell = np.zeros(len(grid.frame), dtype=int)
    stride = 1
    for name in keys:
        levels = grid.factors[name]
        cell += stride * pd.Index(levels).get_indexer(grid.frame[name])
        stride *= len(levels)
    counts = np.bincount(cell, minlength=stride)
    L = np.zeros((stride, grid.X.shape[1]))
    np.add.at(L, cell, grid.X)
    levels = [c[::-1] for c in itertools.product(*[grid.factors[n] for n in reversed(keys)])]
    return Marginal(L / counts[:, None], levels, keys, len(names))


def _estimates(results: "MixedLMResults", L: np.ndarray, ddf: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Lβ̂, SE, df) of the rows of L, from `t_test` (so each ``ddf`` it offers works here)."""
    table = results.t_test(L, ddf=ddf)
    return table["estimate"].to_numpy(), table["SE"].to_numpy(), table["df"].to_numpy()


def _index(levels: list, names: list) -> pd.Index:
    if len(names) == 1:
        return pd.Index([lv[0] for lv in levels], name=names[0])
    return pd.MultiIndex.from_tuples(levels, names=names)


def emmeans(results: "MixedLMResults", specs, by=None, *, ddf: str = "satterthwaite", alpha: float = 0.05,
            at: dict | None = None, data: pd.DataFrame | None = None) -> pd.DataFrame:
    """Estimated marginal means (see `MixedLMResults.emmeans`)."""
    check_probability(alpha, "alpha")
    m = marginal_matrix(results, specs, by, at, data)
    estimate, se, df = _estimates(results, m.L, ddf)
    offset = getattr(results.model, "offset", None)
    if offset is not None:  # emmeans adds the offset at its mean over the fitted rows
        estimate = estimate + float(np.mean(offset))
    half = stdtrit(df, 1.0 - alpha / 2.0) * se
    return pd.DataFrame({"emmean": estimate, "SE": se, "df": df, "lower": estimate - half, "upper": estimate + half},
                        index=_index(m.levels, m.names))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _contrast_names(m: Marginal) -> list[str]:
    """Each row's levels of the specs, joined by spaces; a factor whose levels are all numbers is
    prefixed with its name (emmeans' "period1 - period2", not "1 - 2")."""
    prefix = [m.names[k] if all(_is_number(str(lv[k])) for lv in m.levels) else "" for k in range(m.n_specs)]
    return [" ".join(f"{pre}{level}" for pre, level in zip(prefix, lv[: m.n_specs])) for lv in m.levels]


def emmeans_pairwise(results: "MixedLMResults", specs, by=None, *, adjust: str | None = "tukey",
                     ddf: str = "satterthwaite", at: dict | None = None, data: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pairwise differences of estimated marginal means (see `MixedLMResults.emmeans_pairwise`)."""
    adjust = None if adjust == "none" else adjust
    if adjust not in ADJUSTMENTS:
        raise DataError(f"adjust must be one of {', '.join(map(repr, ADJUSTMENTS))}, got {adjust!r}.")
    m = marginal_matrix(results, specs, by, at, data)
    n_means = len(m.levels) // max(1, len({lv[m.n_specs:] for lv in m.levels}))
    if n_means < 2:
        raise DataError(f"specs {specs!r} have one level{' per by group' if by is not None else ''}: there is nothing "
                        "to compare.")
    names = _contrast_names(m)
    rows, labels, groups = [], [], []
    for start in range(0, len(m.levels), n_means):  # one family per by group
        for i, j in itertools.combinations(range(start, start + n_means), 2):
            rows.append(m.L[i] - m.L[j])
            labels.append(" - ".join(names[k] for k in (i, j)))
            groups.append(m.levels[i][m.n_specs:])
    table = results.t_test(np.asarray(rows), ddf=ddf)
    by_names = m.names[m.n_specs:]
    table.index = _index([(lab, *g) for lab, g in zip(labels, groups)], ["contrast", *by_names])
    if adjust is not None:
        stat = table["t" if "t" in table.columns else "z"].to_numpy()
        p = np.empty(len(table))
        size = n_means * (n_means - 1) // 2
        for start in range(0, len(table), size):
            part = slice(start, start + size)
            p[part] = (tukey_pvalues(stat[part], table["df"].to_numpy()[part], n_means) if adjust == "tukey"
                       else adjust_pvalues(table["p"].to_numpy()[part], adjust))
        table[f"p ({adjust})"] = p
    return table
