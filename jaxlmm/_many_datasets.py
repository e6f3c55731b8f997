"""Many data sets at once (`fit_datasets`): the same formula on each, padded to shape buckets and
fitted by the batch engine of `_batch`."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
import pandas as pd

from ._batch import DatasetResults, _fit_designs, _run_batched, _safe_batch_size, _shard
from ._config import float64
from ._design import Design
from ._fit import FitArrays
from ._memory_maps import release_if_needed
from ._model import MixedLM
from .errors import DataError, check_positive, check_reml


def _bucket(n: int, minimum: int) -> int:
    return max(minimum, 1 << (max(n, 1) - 1).bit_length())


def fit_datasets(
    formula: str,
    datasets: Sequence[pd.DataFrame],
    reml: bool = True,
    *,
    groups: str | None = None,
    re_formula: str | None = None,
    missing: str = "raise",
    batch_size: int | None = None,
    progress: bool = True,
    gtol: float = 1e-6,
) -> DatasetResults:
    """Fit the same formula to many data sets at once (vmapped, padded to shape buckets).

    Data sets may differ in rows, numbers of groups and group sizes. Returns a `DatasetResults`:
    tables with one row per data set, and ``rl[i]`` the full results of data set i — the same fit
    as ``MixedLM.from_formula(formula, datasets[i]).fit()``.

    Examples:
        >>> import jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> halves = [df[df.Days < 5], df[df.Days >= 5]]
        >>> rl = jaxlmm.fit_datasets("Reaction ~ Days + (1 | Subject)", halves, progress=False)
        >>> rl.fe_params.shape, bool(rl.converged.all())
        ((2, 2), True)
    """
    reml = check_reml(reml)
    gtol = check_positive(gtol, "gtol")
    release_if_needed()
    if isinstance(datasets, pd.DataFrame) or not len(datasets):
        raise DataError("datasets must be a non-empty list of DataFrames.")
    models = [
        MixedLM.from_formula(formula, d, groups=groups, re_formula=re_formula, missing=missing) for d in datasets
    ]
    first = models[0]
    if first.factor_terms:
        raise DataError(
            "fit_datasets does not batch models with crossed grouping factors yet: each data set's pattern of "
            "crossed levels has its own size. Fit them one by one (MixedLM.from_formula(...).fit()), or use "
            "fit_many for many responses on one design."
        )
    for i, m in enumerate(models):
        if m.exog_names != first.exog_names or m.exog_re_names != first.exog_re_names:
            raise DataError(
                f"data set {i} encodes to different columns ({m.exog_names} / {m.exog_re_names}) than data set 0 "
                f"({first.exog_names} / {first.exog_re_names}), e.g. a factor with other levels. Make the "
                "categorical levels the same in every data set (pd.Categorical with fixed categories)."
            )
    k = len(models)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(models):
        key = (_bucket(m.nobs, 16), _bucket(m.ngroups, 2))
        buckets.setdefault(key, []).append(i)

    results: list = [None] * k
    for (n_rows, n_groups), members in buckets.items():
        stacked = [_padded_arrays(models[i].design, n_rows) for i in members]
        inputs = [np.stack([s[j] for s in stacked]) for j in range(5)]
        template = first.design
        q, p = len(first.exog_re_names), len(first.exog_names)
        size = _safe_batch_size(n_rows, batch_size, q, p, len(members))

        def run(chunk, t0, max_iter, quasi_newton, n_groups=n_groups):
            with float64():
                y, X, Z, g, mask, tb = _shard(list(chunk) + [t0])
                design = Design(y, X, Z, g, mask, n_groups, template.lambda_index)
                return _fit_designs(design, tb, bool(reml), float(gtol), np.int32(max_iter), quasi_newton)

        theta0 = np.tile(template.theta_start, (len(members), 1))
        with float64():
            out = _run_batched(run, inputs, theta0, size, progress, f"fitting {len(members)} data sets")
        for j, i in enumerate(members):
            results[i] = jax.tree.map(lambda a: a[j], out)
    qmax = max(_bucket(m.ngroups, 2) for m in models)

    def pad_groups(a, axis_len):
        pad = [(0, qmax - axis_len)] + [(0, 0)] * (a.ndim - 1)
        return np.pad(a, pad)

    fields = []
    for f in FitArrays._fields:
        if getattr(results[0], f) is None:  # a crossed model's fields (not batched here)
            fields.append(None)
        elif f in ("ranef", "ranef_cov"):
            fields.append(np.stack([pad_groups(getattr(r, f), getattr(r, f).shape[0]) for r in results]))
        else:
            fields.append(np.stack([getattr(r, f) for r in results]))
    names = pd.Index(range(k))
    result = DatasetResults(models, names, FitArrays(*fields), reml)
    result._warn()
    return result


def _padded_arrays(design: Design, n_rows: int) -> list[np.ndarray]:
    n = int(np.asarray(design.y).shape[0])
    extra = n_rows - n

    def pad(a, value=0):
        a = np.asarray(a)
        return np.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1), constant_values=value)

    return [pad(design.y), pad(design.X), pad(design.Z), pad(design.group), pad(design.mask)]
