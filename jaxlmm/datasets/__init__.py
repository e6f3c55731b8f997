"""Bundled example data sets (CSV files exported from R).

``sleepstudy``, ``dyestuff``, ``penicillin``, ``pastes`` (lme4), ``dietox`` (geepack),
``orthodont`` (nlme), ``sitka`` (MASS), ``psycholing`` (a simulated subjects × items experiment: 56
subjects, 32 items, a ±0.5 condition ``c``, reaction times ``rt``, 8% of trials missing).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from ..errors import DataError

_FILES = ("sleepstudy", "dietox", "dyestuff", "orthodont", "pastes", "penicillin", "sitka", "psycholing")
# Columns that are labels although they look numeric.
_LABELS = {"sleepstudy": ["Subject"], "dietox": ["Pig", "Litter"], "sitka": ["tree"]}


def names() -> list[str]:
    """Names of the bundled data sets."""
    return list(_FILES)


def load(name: str) -> pd.DataFrame:
    """Load a bundled data set as a new DataFrame; grouping columns are strings.

    Examples:
        >>> import jaxlmm
        >>> jaxlmm.datasets.load("sleepstudy").shape
        (180, 3)
    """
    key = str(name).lower()
    if key not in _FILES:
        raise DataError(f"no bundled data set {name!r}; available: {', '.join(_FILES)}.")
    with resources.files(__package__).joinpath("data", f"{key}.csv").open("r") as fh:
        df = pd.read_csv(fh, dtype={c: str for c in _LABELS.get(key, [])})
    return df
