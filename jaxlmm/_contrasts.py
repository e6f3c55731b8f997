"""Linear contrasts of the fixed effects: parsing, Wald/t tests, multiplicity adjustment."""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import betainc, ndtr

from .errors import DataError


def t_sf2(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p-value of Student's t (df may be inf: the normal)."""
    t, df = np.abs(np.asarray(t, float)), np.asarray(df, float)
    with np.errstate(all="ignore"):
        normal = 2.0 * np.asarray(ndtr(-t))
        student = np.asarray(betainc(df / 2.0, 0.5, df / (df + t * t)))
    return np.where(np.isfinite(df), student, normal)


def parse_contrasts(hypotheses, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(L, rhs, labels) from a matrix, one string ``"a - b = 0"``, or a list of strings."""
    names = list(names)
    if isinstance(hypotheses, str):
        hypotheses = [h for h in re.split(r"[;,]\s*(?![^\[]*\])", hypotheses) if h.strip()]
    if isinstance(hypotheses, (list, tuple)) and hypotheses and all(isinstance(h, str) for h in hypotheses):
        rows, rhs = [], []
        for h in hypotheses:
            row, value = _parse_one(h, names)
            rows.append(row)
            rhs.append(value)
        return np.asarray(rows), np.asarray(rhs), [h.strip() for h in hypotheses]
    L = np.atleast_2d(np.asarray(hypotheses, dtype=float))
    if L.ndim != 2 or L.shape[1] != len(names):
        raise DataError(
            f"contrast matrix has {L.shape[-1]} columns but the model has {len(names)} fixed effects "
            f"({', '.join(names)}): pass one column per fixed effect, or strings such as '{names[-1]} = 0'."
        )
    labels = [" + ".join(f"{c:g}*{n}" for c, n in zip(row, names) if c != 0) or "0" for row in L]
    return L, np.zeros(L.shape[0]), labels


def _parse_one(text: str, names: list[str]) -> tuple[np.ndarray, float]:
    lhs, _, rhs = text.partition("=")
    try:
        value = float(rhs) if rhs.strip() else 0.0
    except ValueError:
        raise DataError(f"the right-hand side of {text!r} must be a number, as in 'Days = 0'.") from None
    work = lhs
    row = np.zeros(len(names))
    for j in sorted(range(len(names)), key=lambda j: -len(names[j])):
        work = work.replace(names[j], f" @{j}@ ")
    tokens = re.findall(r"([+-]?)\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*?\s*)?@(\d+)@", work)
    leftover = re.sub(r"([+-]?)\s*(?:(\d+(?:\.\d*)?|\.\d+)\s*\*?\s*)?@(\d+)@", "", work).strip()
    if not tokens or leftover:
        raise DataError(
            f"cannot read the hypothesis {text!r}: write a linear combination of fixed-effect names, e.g. "
            f"'{names[-1]} = 0' or '{names[-1]} - {names[0]} = 0'. Names: {', '.join(names)}."
        )
    for sign, coef, j in tokens:
        row[int(j)] += (-1.0 if sign == "-" else 1.0) * (float(coef) if coef else 1.0)
    return row, value


def adjust_pvalues(p: np.ndarray, method: str | None) -> np.ndarray:
    """Holm, Bonferroni or Benjamini–Hochberg adjusted p-values."""
    p = np.asarray(p, float)
    m = p.size
    if method is None:
        return p
    if method == "bonferroni":
        return np.minimum(1.0, p * m)
    order = np.argsort(p)
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "fdr_bh":
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    else:
        raise DataError(f"adjust must be None, 'holm', 'bonferroni' or 'fdr_bh', got {method!r}.")
    out = np.empty(m)
    out[order] = np.minimum(1.0, adj)
    return out


def tukey_pvalues(t: np.ndarray, df: np.ndarray, n_means: int) -> np.ndarray:
    """Tukey's HSD p-values of pairwise differences among ``n_means`` means, as emmeans:
    P(Q > √2·|t|) for the studentized range Q of ``n_means`` means with ``df`` degrees of freedom
    (R's ``ptukey(√2·|t|, n_means, df, lower.tail = FALSE)``; df may be inf)."""
    from scipy.stats import studentized_range  # imported here: scipy.stats adds ~0.5 s to `import jaxlmm`

    t, df = np.abs(np.asarray(t, float)), np.asarray(df, float)
    q = np.sqrt(2.0) * t
    return np.clip(np.asarray(studentized_range.sf(q, n_means, df), float), 0.0, 1.0)


def contrast_table(estimate, se, df, labels, adjust) -> pd.DataFrame:
    stat = estimate / se
    p = t_sf2(stat, df)
    table = pd.DataFrame({"estimate": estimate, "SE": se, "t" if np.all(np.isfinite(df)) else "z": stat,
                          "df": df, "p": p}, index=labels)
    if adjust is not None:
        table[f"p ({adjust})"] = adjust_pvalues(p, adjust)
    return table
