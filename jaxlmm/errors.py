"""One exception hierarchy, rooted at `JaxlmmError`, and the warnings jaxlmm emits.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations

import numbers


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


class SingularFitWarning(UserWarning):
    """The fit is on the boundary: a random-effect variance is zero or a correlation is ±1."""


class ResourceLimitWarning(UserWarning):
    """jaxlmm released JAX's compiled programs to keep the process under an operating-system limit."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped before meeting its convergence criterion."""


def check_probability(value, name: str) -> None:
    """Raise `DataError` unless ``value`` is a number strictly between 0 and 1 (alpha, level)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value < 1.0:
        raise DataError(f"{name} must be a number between 0 and 1, got {value!r}.")
