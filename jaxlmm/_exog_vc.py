"""statsmodels' array spelling of variance components: ``MixedLM(endog, exog, groups, exog_vc=...)``.

``exog_vc[name][g]`` is an (n_g × k) matrix for group g, its rows g's rows in data order; its k
columns are independent random effects that share one variance, ``Var(name)``. (statsmodels'
``VCSpec``, with ``names`` and ``mats[k][i]`` for the i-th group in sorted order, is read as the
same dict.) Each component is read here into its non-zero entries (row, column, value), then held
as one of jaxlmm's random-effect terms:

* several groups: a variance component nested in the group (a tied block, as ``vc_formula``). The
  columns of g's matrix that have a non-zero are g's columns ``name[0]``, ``name[1]``, … of Z,
  padded with zeros to the widest group; any matrix is allowed. An all-zero column is an effect
  without data, which changes no likelihood, and is dropped.
* one group for all rows (statsmodels' way of writing crossed effects): a crossed factor whose
  levels are the matrix's columns (the columns with a non-zero). A row then has at most one
  non-zero, its level's Z value; a row without one has no effect of the component and is held at
  a level with Z = 0, which adds nothing to any cross-product, so the likelihood is exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError

_FORMAT = ("exog_vc must be a dict {vc_name: {group_label: matrix}} (statsmodels' format): for each group, an "
           "(n_g × k) matrix whose rows are the group's rows in data order and whose k columns are random effects "
           "with one shared variance per vc_name")


@dataclasses.dataclass(frozen=True)
class Component:
    """One variance component as its non-zero entries: ``row`` (over all rows of the data), ``col``
    (the column in its group's matrix) and ``value``; ``labels``: the column labels of the one
    group's matrix (DataFrame columns, else 0, 1, …), used as a crossed factor's levels."""

    name: str
    row: np.ndarray
    col: np.ndarray
    value: np.ndarray
    labels: tuple

    def take(self, keep: np.ndarray) -> "Component":
        """The component on the rows where ``keep`` is true, renumbered from 0."""
        new_row = np.cumsum(keep) - 1
        kept = keep[self.row]
        return dataclasses.replace(self, row=new_row[self.row[kept]], col=self.col[kept], value=self.value[kept])


def read_exog_vc(exog_vc: Any, groups: np.ndarray) -> tuple[Component, ...]:
    """Check ``exog_vc`` against the rows' group labels ``groups`` and read its components (dict
    order). Nothing passed is changed.

    Examples:
        >>> import numpy as np
        >>> vc = {"cask": {"a": np.eye(2), "b": np.array([[0.0], [2.0]])}}
        >>> (cask,) = read_exog_vc(vc, np.array(["a", "b", "a", "b"]))
        >>> cask.row.tolist(), cask.col.tolist(), cask.value.tolist()
        ([0, 2, 3], [0, 1, 0], [1.0, 1.0, 2.0])
    """
    codes, uniques = pd.factorize(pd.Series(groups), sort=True)  # a missing label is -1: its rows are in no group
    uniques = list(uniques)
    exog_vc = _as_dict(exog_vc, uniques)
    order = np.argsort(codes, kind="stable")
    order = order[codes[order] >= 0]
    rows_of = dict(zip(uniques, np.split(order, np.cumsum(np.bincount(codes[order], minlength=len(uniques)))[:-1])))
    out, seen = [], set()
    for key, per_group in exog_vc.items():
        name = str(key)
        if name in seen:
            raise DataError(f"exog_vc has two components named {name!r}; give each component its own name.")
        seen.add(name)
        if not isinstance(per_group, dict):
            raise DataError(f"exog_vc[{key!r}] is a {type(per_group).__name__}, not a dict {{group_label: matrix}}. "
                            f"{_FORMAT}.")
        _check_group_labels(name, per_group, rows_of)
        out.append(_read_component(name, per_group, rows_of))
    return tuple(out)


def _read_component(name: str, per_group: dict, rows_of: dict) -> Component:
    rows, cols, values = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    labels = ()
    for label, matrix in per_group.items():
        where = rows_of[label]
        M, labels = _as_matrix(matrix, name, label, len(where))
        r, c = np.nonzero(M)  # NaN counts as a non-zero: its row is dropped or refused later
        rows.append(where[r])
        cols.append(c)
        values.append(M[r, c])
    return Component(name, np.concatenate(rows), np.concatenate(cols), np.concatenate(values),
                     labels if len(rows_of) == 1 else ())


def _as_dict(exog_vc: Any, uniques: list) -> dict:
    if all(hasattr(exog_vc, a) for a in ("names", "mats")) and not isinstance(exog_vc, dict):  # statsmodels' VCSpec
        order = sorted(uniques)
        mats = list(exog_vc.mats)
        if len(mats) != len(exog_vc.names) or any(len(m) != len(order) for m in mats):
            raise DataError(f"the VCSpec has {len(exog_vc.names)} names and mats of lengths {[len(m) for m in mats]}: "
                            f"it needs one list per name, with one matrix per group ({len(order)} groups, sorted).")
        return {name: dict(zip(order, m)) for name, m in zip(exog_vc.names, mats)}
    if not isinstance(exog_vc, dict):
        raise DataError(f"exog_vc is a {type(exog_vc).__name__}. {_FORMAT}, e.g. exog_vc={{'cask': {{g: Z_g for g "
                        "in groups}}}}. (Per-row columns of the whole data set are exog_re's format.)")
    return exog_vc


def _check_group_labels(name: str, per_group: dict, rows_of: dict) -> None:
    uniques = list(rows_of)
    unknown = [k for k in per_group if k not in rows_of]
    missing = [u for u in uniques if u not in per_group]
    if not unknown and not missing:
        return
    shown = lambda xs: ", ".join(repr(x) for x in xs[:5]) + (", …" if len(xs) > 5 else "")  # noqa: E731
    problem = []
    if unknown:
        problem.append(f"has labels that are not in groups: {shown(unknown)}")
    if missing:
        problem.append(f"lacks groups {shown(missing)}")
    raise DataError(
        f"exog_vc[{name!r}] {' and '.join(problem)} (groups has {len(uniques)} labels: {shown(uniques)}). Key the dict "
        "by the labels of groups (same values and types, e.g. 1 and '1' differ), one matrix per group; a group "
        "without this component takes a matrix with no columns, np.zeros((n_g, 0))."
    )


def _as_matrix(matrix: Any, name: str, label: Any, n_rows: int) -> tuple[np.ndarray, tuple]:
    columns = tuple(matrix.columns) if isinstance(matrix, pd.DataFrame) else None
    try:
        M = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"exog_vc[{name!r}][{label!r}] is not numeric: pass a matrix of numbers.") from None
    if M.ndim == 1:
        M = M[:, None]
    if M.ndim != 2 or M.shape[0] != n_rows:
        raise DataError(f"exog_vc[{name!r}][{label!r}] has shape {M.shape}, but group {label!r} has {n_rows} rows: "
                        f"pass an ({n_rows} × k) matrix, one row per row of the group in data order.")
    return M, columns if columns is not None else tuple(range(M.shape[1]))


def bad_rows(components: tuple[Component, ...], n: int) -> tuple[np.ndarray, list[str]]:
    """Rows with NaN or inf in a component's matrix, and the names of the components that have them."""
    bad, names = np.zeros(n, bool), []
    for comp in components:
        nonfinite = ~np.isfinite(comp.value)
        if nonfinite.any():
            bad[comp.row[nonfinite]] = True
            names.append(f"exog_vc[{comp.name!r}]")
    return bad, names


def nested_columns(components: tuple[Component, ...], group: np.ndarray, m: int):
    """Several groups: the components' columns of Z (each group's columns with a non-zero, numbered
    0, 1, … within the group), their names ``name[j]``, and per component (name, its column names)."""
    n = len(group)
    Zs, names, tied = [], [], []
    for comp in components:
        K = int(comp.col.max(initial=0)) + 1
        key = group[comp.row] * K + comp.col  # (group, column) of each entry
        used = np.unique(key)
        width_of = np.bincount(used // K, minlength=m)  # columns with a non-zero, per group
        start = np.concatenate([[0], np.cumsum(width_of)[:-1]])
        j = np.searchsorted(used, key) - start[group[comp.row]]  # the column's position within its group
        width = int(width_of.max(initial=0))
        if width == 0:
            raise DataError(f"exog_vc[{comp.name!r}] is all zeros: the component has no effect on any row, and its "
                            "variance cannot be estimated. Drop it from exog_vc.")
        Z = np.zeros((n, width))
        Z[comp.row, j] = comp.value
        cols = tuple(f"{comp.name}[{k}]" for k in range(width))
        Zs.append(Z)
        names += cols
        tied.append((comp.name, cols))
    return np.concatenate(Zs, axis=1), names, tied


@dataclasses.dataclass(frozen=True)
class Factor:
    """One group for all rows: a component as a crossed factor. ``codes`` (n,) each row's level
    (any level for a row without an effect, whose ``values`` entry is 0) and ``values`` (n,) its Z value."""

    name: str
    levels: pd.Index
    codes: np.ndarray
    values: np.ndarray


def crossed_factors(components: tuple[Component, ...], n: int) -> list[Factor]:
    """One group for all rows: each component as a crossed factor, most levels first (the leading
    factor, as lme4 orders them). A row with several non-zeros in one component is an error."""
    out = []
    for comp in components:
        counts = np.bincount(comp.row, minlength=n)
        if (counts > 1).any():
            row = int(np.flatnonzero(counts > 1)[0])
            raise DataError(
                f"exog_vc[{comp.name!r}] has {int(counts[row])} non-zero entries in row {row} (and in "
                f"{int((counts > 1).sum()) - 1} more rows). With one group for all rows, jaxlmm holds a variance "
                "component as a crossed factor: each row may have at most one non-zero entry (its level's column). "
                "Split the component so that each row has one non-zero per component, or pass groups= with several "
                "groups so that it is nested in them (any matrix is allowed there)."
            )
        used = np.unique(comp.col)
        if len(used) < 2:
            raise DataError(f"exog_vc[{comp.name!r}] has {len(used)} column{'s' * (len(used) == 0)} with a non-zero "
                            "entry: a variance component needs at least 2 random effects (columns with a non-zero) "
                            "to estimate their variance. Drop it, or give it more columns.")
        codes, values = np.zeros(n, np.int64), np.zeros(n)
        codes[comp.row] = np.searchsorted(used, comp.col)
        values[comp.row] = comp.value
        out.append(Factor(comp.name, pd.Index([comp.labels[c] for c in used]), codes, values))
    out.sort(key=lambda f: -len(f.levels))
    lead = out[0]  # its rows without an effect spread over its levels (Z = 0 anywhere), so that no level
    none = np.flatnonzero(lead.values == 0)  # meets every level of the others: L₂₁'s sparse pattern stays O(n)
    lead.codes[none] = np.arange(len(none)) % len(lead.levels)
    return out
