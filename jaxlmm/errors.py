"""One exception hierarchy, rooted at `JaxlmmError`, and the warnings jaxlmm emits.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


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


class ConvergenceWarning(UserWarning):
    """The optimiser stopped before meeting its convergence criterion."""
