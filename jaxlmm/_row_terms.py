"""Prior weights and offsets: per-row terms of the model given beside the formula, as in lme4's
``lmer(..., weights = w, offset = o)``.

A prior weight wᵢ makes row i's residual variance σ²/wᵢ; an offset oᵢ enters the linear predictor
with a fixed coefficient of 1 (the model is fitted to y − o). Both are given as a column name or as
one value per row of the data, and checked here, before any row is dropped, so that an error names
the argument the user passed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .errors import DataError

WEIGHTS_COLUMN = "__jaxlmm_weights__"
OFFSET_COLUMN = "__jaxlmm_offset__"


class RowTerms(NamedTuple):
    """Which reserved columns of the (copied) data hold the weights and the offset, and the offset's
    column name in the user's data (None when it was given as an array, or not at all)."""

    weights: str | None = None
    offset: str | None = None
    offset_name: str | None = None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.weights, self.offset) if c is not None]


def _row_values(value: Any, data: pd.DataFrame, what: str) -> tuple[np.ndarray, str | None]:
    """The values of ``what`` (a column name of ``data``, or one number per row) and the column name."""
    if isinstance(value, str):
        if value not in data.columns:
            raise DataError(f"{what}={value!r} is not a column of data; pass a column name or one value per row.")
        column = data[value]
        if not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            raise DataError(f"{what} column {value!r} is not numeric (dtype {column.dtype}); {what} must be numbers.")
        return column.to_numpy(dtype=float), value
    try:
        values = np.asarray(value.to_numpy() if isinstance(value, (pd.Series, pd.Index)) else value, dtype=float)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be numbers (a column name, or one number per row of data).") from None
    if values.ndim != 1 or values.shape[0] != len(data):
        raise DataError(f"{what} must have one value per row of data ({len(data)}), got shape {values.shape}.")
    return values, None


def _check_finite(values: np.ndarray, missing: str, what: str, verb: str) -> np.ndarray:
    """Which values are finite; NaN or inf is an error unless ``missing="drop"`` (the row is dropped)."""
    finite = np.isfinite(values)
    if missing == "raise" and not finite.all():
        rows = np.flatnonzero(~finite)
        raise DataError(f"{what} {verb} NaN or inf in {rows.size} rows (first: row {rows[0]}): pass missing='drop' "
                        f"to drop those rows, or fix the {what}.")
    return finite


def check_weights(values: np.ndarray, missing: str) -> None:
    """Prior weights must be finite and positive (NaN is allowed with ``missing="drop"``: the row is dropped)."""
    finite = _check_finite(values, missing, "weights", "are")
    bad = finite & (values <= 0)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise DataError(f"weights must be positive: {rows.size} rows have weight ≤ 0 (first: row {rows[0]}, weight "
                        f"{values[rows[0]]:g}). A row with no weight carries no information: drop it from the data.")


def check_offset(values: np.ndarray, missing: str) -> None:
    """An offset must be finite (NaN is allowed with ``missing="drop"``: the row is dropped)."""
    _check_finite(values, missing, "offset", "is")


def attach_row_terms(data: pd.DataFrame, weights: Any, offset: Any, missing: str) -> tuple[pd.DataFrame, RowTerms]:
    """A copy of ``data`` with the checked weights and offset in reserved columns (``data`` itself is
    returned when neither is given), and where they are.

    Examples:
        >>> import pandas as pd
        >>> from jaxlmm._row_terms import attach_row_terms
        >>> data, terms = attach_row_terms(pd.DataFrame({"y": [1.0, 2.0], "w": [1.0, 3.0]}), "w", None, "raise")
        >>> data[terms.weights].tolist(), terms.offset
        ([1.0, 3.0], None)
    """
    if weights is None and offset is None:
        return data, RowTerms()
    data = data.copy()
    weights_column = offset_column = offset_name = None
    if weights is not None:
        values, _ = _row_values(weights, data, "weights")
        check_weights(values, missing)
        data[WEIGHTS_COLUMN] = values
        weights_column = WEIGHTS_COLUMN
    if offset is not None:
        values, offset_name = _row_values(offset, data, "offset")
        check_offset(values, missing)
        data[OFFSET_COLUMN] = values
        offset_column = OFFSET_COLUMN
    return data, RowTerms(weights_column, offset_column, offset_name)


def row_arrays(data: pd.DataFrame, terms: RowTerms) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(weights, offset) of the rows of ``data`` as arrays, None for those not given."""
    weights = None if terms.weights is None else data[terms.weights].to_numpy(dtype=float)
    offset = None if terms.offset is None else data[terms.offset].to_numpy(dtype=float)
    return weights, offset


def new_offset(offset_name: str | None, has_offset: bool, data: pd.DataFrame, offset: Any) -> np.ndarray:
    """The offset of new data for a prediction: ``offset`` when given, else the offset column of
    ``data`` (when the model's offset was a column), else 0 for a model without an offset."""
    if offset is not None:
        values, _ = _row_values(offset, data, "offset")
        check_offset(values, "raise")
        return values
    if not has_offset:
        return np.zeros(len(data))
    if offset_name is None:
        raise DataError("the model was fitted with an offset given as an array: pass predict(newdata, offset=...) "
                        "with the offset of the new rows.")
    if offset_name not in data.columns:
        raise DataError(f"newdata lacks the offset column {offset_name!r}; add it, or pass predict(newdata, offset=...).")
    values = data[offset_name].to_numpy(dtype=float)
    check_offset(values, "raise")
    return values
