"""The residual-variance formula (``resid_formula="~ session"``): its design matrix D and checks.

D is the model matrix of the formula without its intercept, which σ² already is: a factor gives
treatment-coded dummies (nlme's ``varIdent``: one variance ratio per level against the first), a
covariate x gives σ²ᵢ = σ² exp(δ x) (nlme's ``varExp`` with δ = 2t). See `_variance_model`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from . import _formula
from .errors import FormulaError, IdentifiabilityError


class ResidModel(NamedTuple):
    """The residual-variance model of a `MixedLM`: the formula, D's column names and formulaic's spec
    (to encode new data)."""

    formula: str
    names: tuple[str, ...]
    spec: object


def resid_expression(resid_formula: str) -> str:
    """The right-hand side of ``resid_formula`` (a leading ``~`` is optional)."""
    if not isinstance(resid_formula, str) or not resid_formula.strip().lstrip("~").strip():
        raise FormulaError(f"resid_formula must be a one-sided formula such as '~ session', got {resid_formula!r}.")
    text = resid_formula.strip()
    if "~" in text.lstrip("~"):
        raise FormulaError(f"resid_formula {resid_formula!r} must be one-sided ('~ session'): it has no response.")
    return _formula.translate_powers(text.lstrip("~").strip())


def resid_design(resid_formula: str, data: pd.DataFrame) -> tuple[np.ndarray, ResidModel]:
    """(D, model) for the rows of ``data``, checked: each level of a factor needs two observations,
    and D with an intercept must have full column rank (else δ is not identifiable).

    Examples:
        >>> import pandas as pd
        >>> from jaxlmm._resid_formula import resid_design
        >>> D, model = resid_design("~ s", pd.DataFrame({"s": ["a", "a", "b", "b", "c", "c"]}))
        >>> model.names, D[:, 0].tolist()
        (('s[T.b]', 's[T.c]'), [0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    """
    expr = resid_expression(resid_formula)
    mm = _formula.model_matrix(expr, data, "residual-variance matrix", resid_formula)
    names = [str(c) for c in mm.columns]
    full = np.asarray(mm, dtype=float)
    keep = [j for j, n in enumerate(names) if n != "Intercept"]
    D = full[:, keep]
    names = [names[j] for j in keep]
    if not names:
        raise FormulaError(f"resid_formula {resid_formula!r} has no terms: write e.g. '~ session' or '~ x'.")
    if not np.all(np.isfinite(D)):
        raise IdentifiabilityError(f"the residual-variance formula {resid_formula!r} gives NaN or inf values.")
    with_intercept = np.column_stack([np.ones(len(D)), D])
    if np.linalg.matrix_rank(with_intercept) < with_intercept.shape[1]:
        raise IdentifiabilityError(
            f"the residual-variance model {resid_formula!r} is not identifiable: its columns {names}, with the "
            "residual variance σ² itself, are collinear (a full set of dummies, or a constant covariate). Use "
            "treatment coding with one reference level ('~ session', not '~ 0 + session'), and drop constant terms."
        )
    _check_levels(D, names, resid_formula)
    return D, ResidModel(resid_formula, tuple(names), mm.model_spec)


def _check_levels(D: np.ndarray, names: list[str], resid_formula: str) -> None:
    """Every level of a factor (a 0/1 column, and the reference: rows where all dummies are 0) needs
    at least two observations for its variance to be estimable."""
    dummy = np.all((D == 0) | (D == 1), axis=0)
    if not dummy.any():
        return
    counts = {names[j]: int(D[:, j].sum()) for j in np.flatnonzero(dummy)}
    if dummy.all():
        counts["the reference level"] = int(np.sum(np.all(D == 0, axis=1)))
    for level, count in counts.items():
        if count < 2:
            raise IdentifiabilityError(
                f"residual-variance level {level} of {resid_formula!r} has {count} observation"
                f"{'' if count == 1 else 's'}: its variance cannot be estimated. Merge it with another level, or "
                "drop those rows."
            )
