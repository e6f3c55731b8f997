"""Likelihood-ratio tests between nested fits (lme4's ``anova(m0, m1)``)."""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import gammaincc

from .errors import DataError

if TYPE_CHECKING:
    from ._results import MixedLMResults


def chi2_sf(x: float, df: float) -> float:
    """Upper tail of the χ² distribution."""
    if df <= 0:
        return float(x <= 0)
    return float(gammaincc(df / 2.0, max(float(x), 0.0) / 2.0))


@dataclasses.dataclass(frozen=True)
class LRTestResult:
    """Result of `lrtest`: the χ² statistic, its degrees of freedom and p-values, and a comparison table.

    ``pvalue_mixture`` is given when the larger model adds random-effect variance parameters: the null
    value (a variance of zero) is on the boundary, where the plain χ² p-value is conservative; the
    50:50 mixture of χ²(df−1) and χ²(df) (Self & Liang; Stram & Lee) is the usual correction.
    """

    statistic: float
    df: int
    pvalue: float
    pvalue_mixture: float | None
    method: str
    refitted_ml: bool
    table: pd.DataFrame
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"Likelihood-ratio test ({self.method})", self.table.to_string(float_format=lambda v: f"{v:.4f}" if abs(v) >= 1e-4 else f"{v:.3g}")]
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    __repr__ = __str__


def _same_data(a: "MixedLMResults", b: "MixedLMResults") -> bool:
    da, db = a.model.design, b.model.design
    ya, yb = np.asarray(da.y), np.asarray(db.y)
    wa = np.ones_like(ya) if da.weights is None else np.asarray(da.weights)
    wb = np.ones_like(yb) if db.weights is None else np.asarray(db.weights)
    return (ya.shape == yb.shape and np.array_equal(np.asarray(da.mask), np.asarray(db.mask)) and np.allclose(ya, yb)
            and np.allclose(wa, wb))


def _terms(r: "MixedLMResults") -> list[str]:
    """A model's random effects as 'column | factor' (lme4's bars), sorted."""
    return sorted(f"{column} | {factor}" for factor, column in r.model.random_terms)


def lrtest(small: "MixedLMResults", large: "MixedLMResults") -> LRTestResult:
    """χ² likelihood-ratio test of ``small`` against the ``large`` model it is nested in.

    REML fits whose fixed effects differ are refitted by ML first (REML likelihoods of different
    fixed-effect structures are not comparable), as lme4's ``anova`` does, with a warning.

    Examples:
        >>> import jaxlmm, warnings
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> r0 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", df).fit(reml=False)
        >>> r1 = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).fit(reml=False)
        >>> t = jaxlmm.lrtest(r0, r1)
        >>> t.df, round(t.statistic, 2)
        (2, 42.14)
    """
    if not _same_data(small, large):
        raise DataError(
            "the two models were fitted to different data (different rows or response): a likelihood-ratio "
            "test needs the same observations. Fit both models to the same DataFrame (and the same missing= rows)."
        )
    fe_small, fe_large = list(small.model.exog_names), list(large.model.exog_names)
    k_small, k_large = small.df_modelwc, large.df_modelwc
    if k_small > k_large:
        small, large = large, small
        fe_small, fe_large = fe_large, fe_small
        k_small, k_large = k_large, k_small
    if k_small == k_large:
        raise DataError(
            "the two models have the same number of parameters, so neither is nested in the other; "
            "compare non-nested models with AIC/BIC instead."
        )
    if not set(fe_small) <= set(fe_large) or not small.model.random_terms <= large.model.random_terms:
        raise DataError(
            "the smaller model is not nested in the larger one: its fixed effects "
            f"{fe_small} / random effects {_terms(small)} are not a subset of "
            f"{fe_large} / {_terms(large)}. Compare non-nested models with AIC/BIC."
        )
    notes = []
    refitted = False
    if small.reml != large.reml:
        raise DataError("one fit is REML and the other ML: fit both with the same method.")
    if small.reml and set(fe_small) != set(fe_large):
        warnings.warn(
            "refitting both models by ML (instead of REML): REML likelihoods are not comparable when the "
            "fixed effects differ.",
            UserWarning,
            stacklevel=2,
        )
        small, large = small.model.fit(reml=False, warn=False), large.model.fit(reml=False, warn=False)
        refitted = True
    statistic = max(0.0, 2.0 * (large.llf - small.llf))
    df = int(k_large - k_small)
    pvalue = chi2_sf(statistic, df)
    adds_variance = large.model.design.n_theta > small.model.design.n_theta
    mixture = None
    if adds_variance:
        mixture = 0.5 * chi2_sf(statistic, df - 1) + 0.5 * pvalue
        notes.append(
            "the larger model adds random-effect variance parameters; under the null they are on the boundary "
            "(zero), where the plain χ² p-value is conservative. pvalue_mixture uses the 50:50 mixture of "
            f"χ²({df - 1}) and χ²({df})."
        )
    table = pd.DataFrame(
        {
            "npar": [k_small, k_large],
            "AIC": [small.aic, large.aic],
            "BIC": [small.bic, large.bic],
            "logLik": [small.llf, large.llf],
            "deviance": [small.deviance, large.deviance],
            "Chisq": [np.nan, statistic],
            "Df": [np.nan, df],
            "Pr(>Chisq)": [np.nan, pvalue],
        },
        index=["small", "large"],
    )
    if mixture is not None:
        table["Pr(mixture)"] = [np.nan, mixture]
    return LRTestResult(statistic, df, pvalue, mixture, "ML" if not small.reml else "REML", refitted, table, tuple(notes))
