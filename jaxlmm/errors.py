"""One exception hierarchy, rooted at `JaxlmmError`, and the warnings jaxlmm emits.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

import numbers

import numpy as np


class JaxlmmError(Exception):
    """Base class of every error jaxlmm raises on purpose."""


class FormulaError(JaxlmmError, ValueError):
    """The formula cannot be parsed or evaluated (syntax, unknown names, unsupported terms)."""


class DataError(JaxlmmError, ValueError):
    """The data cannot be used as given (missing columns, NaN/inf, wrong types, too few groups)."""


class MissingDataError(DataError):
    """NaN or inf in a column the model uses."""


class IdentifiabilityError(JaxlmmError, ValueError):
    """The model cannot be estimated from these data (collinear effects, too many parameters)."""


class ModelTooLargeError(JaxlmmError, MemoryError):
    """The model's dense blocks would not fit in memory (the message names the terms and the limit)."""


class SingularFitWarning(UserWarning):
    """The fit is on the boundary: a random-effect variance is zero or a correlation is ±1."""


class IdentifiabilityWarning(UserWarning):
    """A part of the model cannot be estimated from these data (e.g. a random effect that the fixed
    effects already absorb); the fit runs, but that part's estimate means nothing."""


class ResourceLimitWarning(UserWarning):
    """jaxlmm released JAX's compiled programs to keep the process under an operating-system limit."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped before meeting its convergence criterion."""


class IgnoredOptionWarning(UserWarning):
    """An option of statsmodels' API that has no meaning in jaxlmm was given and is ignored."""


def check_probability(value, name: str) -> None:
    """Raise `DataError` unless ``value`` is a number strictly between 0 and 1 (alpha, level)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise DataError(f"{name} must be a number between 0 and 1, got {value!r}.")


def check_flag(value, name: str, hint: str = "") -> bool:
    """Return ``value`` as a bool, or raise `DataError` unless it is True or False (a string such
    as ``"ML"`` would otherwise count as true)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise DataError(f"{name} must be True or False, got {value!r}.{(' ' + hint) if hint else ''}")


def check_reml(value) -> bool:
    """`check_flag` for the ``reml`` argument of the fitting functions."""
    return check_flag(value, "reml", "reml=True fits by REML, reml=False by ML.")


def check_positive(value, name: str) -> float:
    """Return ``value`` as a float, or raise `DataError` unless it is a finite number above 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 < float(value) < float("inf")):
        raise DataError(f"{name} must be a positive number, got {value!r}.")
    return float(value)
