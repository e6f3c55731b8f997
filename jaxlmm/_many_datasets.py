"""Many data sets at once (`fit_datasets`): the same formula on each, padded to shape buckets and
fitted by the batch engine of `_batch`."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
import pandas as pd

from ._batch import (
    DatasetResults,
    _fit_designs,
    _run_across_processes,
    _safe_batch_size,
    _shard,
    check_results_on,
    keeps_results,
    local_devices,
    quick_batch,
)
from ._config import float64
from ._program_cache import OPTIMISE_AFTER, count_use
from ._buckets import own_blocks, rebuild_crossed
from ._crossed import CrossedLayout, CrossedTerms, crossed_bytes
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
    weights: str | None = None,
    offset: str | None = None,
    resid_formula: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    gtol: float = 1e-6,
    mesh=None,
    results_on="all",
) -> DatasetResults | None:
    """Fit the same formula to many data sets at once (vmapped, padded to shape buckets).

    Data sets may differ in rows, numbers of groups and group sizes. Returns a `DatasetResults`:
    tables with one row per data set, and ``rl[i]`` the full results of data set i — the same fit
    as ``MixedLM.from_formula(formula, datasets[i]).fit()``. ``weights`` and ``offset`` name columns
    of every data set, and ``resid_formula`` models the residual variance (as in `MixedLM.from_formula`). ``mesh`` and several processes: as in
    `MixedLM.fit_many`; ``results_on`` too.

    Examples:
        >>> import jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> halves = [df[df.Days < 5], df[df.Days >= 5]]
        >>> rl = jaxlmm.fit_datasets("Reaction ~ Days + (1 | Subject)", halves, progress=False)
        >>> rl.fe_params.shape, bool(rl.converged.all())
        ((2, 2), True)
    """
    check_results_on(results_on)
    reml = check_reml(reml)
    gtol = check_positive(gtol, "gtol")
    release_if_needed()
    if isinstance(datasets, pd.DataFrame) or not len(datasets):
        raise DataError("datasets must be a non-empty list of DataFrames.")
    models = [
        MixedLM.from_formula(formula, d, groups=groups, re_formula=re_formula, missing=missing, weights=weights,
                             offset=offset, resid_formula=resid_formula)
        for d in datasets
    ]
    first = models[0]
    for i, m in enumerate(models):
        if [f for f, _ in m.crossed_factors] != [f for f, _ in first.crossed_factors]:
            raise DataError(
                f"data set {i} orders its crossed factors by levels as {[f for f, _ in m.crossed_factors]} but data set 0 "
                f"as {[f for f, _ in first.crossed_factors]} (the factor with most levels leads): fit_datasets needs the "
                "same order in every data set. Fit those data sets separately."
            )
    for i, m in enumerate(models):
        if (m.exog_names != first.exog_names or m.exog_re_names != first.exog_re_names
                or m.resid_param_names != first.resid_param_names):
            raise DataError(
                f"data set {i} encodes to different columns ({m.exog_names} / {m.exog_re_names}) than data set 0 "
                f"({first.exog_names} / {first.exog_re_names}), e.g. a factor with other levels. Make the "
                "categorical levels the same in every data set (pd.Categorical with fixed categories)."
            )
    k = len(models)
    devices = local_devices(mesh)
    buckets: dict[tuple, list[int]] = {}
    for i, m in enumerate(models):
        key = (_bucket(m.nobs, 16), _bucket(m.ngroups, 2)) + _crossed_bucket(m.design)
        buckets.setdefault(key, []).append(i)

    results: list = [None] * k
    for key, members in buckets.items():
        n_rows, n_groups = key[:2]
        stacked = [_padded_arrays(models[i].design, n_rows) for i in members]
        crossed = _padded_crossed([models[i].design for i in members], key) if first.factor_terms else None
        inputs = [np.stack([s[j] for s in stacked]) for j in range(7)]
        if crossed:
            inputs += [np.stack([c[j] for c, _ in crossed]) for j in range(7)]
        weighted, resid = weights is not None, resid_formula is not None
        layout = crossed[0][1] if crossed else None
        template = first.design
        q, p = len(first.exog_re_names), len(first.exog_names)
        extra = 0 if layout is None else crossed_bytes(layout, inputs[-4].shape[1], inputs[-1].shape[1])
        size = _safe_batch_size(n_rows, batch_size, q, p, len(members), extra)

        quick = quick_batch(len(members), n_rows)
        program = _fit_designs[quick and count_use(("fit_datasets", key, len(members))) < OPTIMISE_AFTER]

        def run(chunk, t0, max_iter, exact_steps, n_groups=n_groups, layout=layout, program=program,
                weighted=weighted, resid=resid):
            with float64():
                arrays = _shard(list(chunk) + [t0], devices)
                y, X, Z, g, mask, w, D, tb = arrays[:7] + arrays[-1:]
                terms = None if layout is None else CrossedTerms(*arrays[7:14], layout=layout)
                design = Design(y, X, Z, g, mask, n_groups, template.lambda_index, terms, w if weighted else None,
                                D if resid else None)
                return program(design, tb, bool(reml), float(gtol), np.int32(max_iter),
                               exact_steps=np.int32(exact_steps))

        theta0 = np.tile(template.theta_start, (len(members), 1))
        with float64():
            out = _run_across_processes(run, inputs, theta0, size, progress, f"fitting {len(members)} data sets",
                                        len(devices))
        for j, i in enumerate(members):
            results[i] = jax.tree.map(lambda a: a[j], out)
            if layout is not None:  # the other terms' modes back in the data set's own block order
                own = own_blocks(models[i].design.crossed.layout, layout)
                results[i] = results[i]._replace(ranef_other=results[i].ranef_other[own],
                                                 ranef_other_cov=results[i].ranef_other_cov[own])

    def pad_first_axis(a, length):
        return np.pad(a, [(0, length - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    fields = []
    for f in FitArrays._fields:
        values = [getattr(r, f) for r in results]
        if values[0] is None:  # one grouping factor: no other terms
            fields.append(None)
        elif f in ("ranef", "ranef_cov", "ranef_other", "ranef_other_cov"):
            longest = max(v.shape[0] for v in values)
            fields.append(np.stack([pad_first_axis(v, longest) for v in values]))
        else:
            fields.append(np.stack(values))
    names = pd.Index(range(k))
    if not keeps_results(results_on):
        return None
    result = DatasetResults(models, names, FitArrays(*fields), reml)
    result._warn()
    return result


def _padded_arrays(design: Design, n_rows: int) -> list[np.ndarray]:
    n = int(np.asarray(design.y).shape[0])
    extra = n_rows - n

    def pad(a, value=0):
        a = np.asarray(a)
        return np.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1), constant_values=value)

    weights = np.ones(n) if design.weights is None else design.weights
    D = np.zeros((n, 0)) if design.resid_design is None else design.resid_design
    return [pad(design.y), pad(design.X), pad(design.Z), pad(design.group), pad(design.mask), pad(weights, 1.0),
            pad(D)]


def _crossed_bucket(design: Design) -> tuple:
    """The crossed part of a data set's shape bucket: the levels of each other term."""
    if design.crossed is None:
        return ()
    return tuple(_bucket(c, 2) for c in design.crossed.layout.level_counts)


def _padded_crossed(designs: list[Design], key: tuple) -> list[tuple[list[np.ndarray], CrossedLayout]]:
    """Each data set's `CrossedTerms` rebuilt for the bucket's padded layout (levels padded per
    term; entries and pairs padded, to a common bucket, with an entry that no row touches): per data
    set, the arrays and that layout."""
    n_rows, n_groups = key[:2]
    counts = list(key[2:])
    rebuilt = [rebuild_crossed(d, n_groups, counts, None) for d in designs]
    if len({t.layout.dense_coupling for t in rebuilt}) > 1:  # one layout for the bucket: the pairs serve all
        rebuilt = [rebuild_crossed(d, n_groups, counts, False) for d in designs]
    n_entries = _bucket(max(t.entry_group.shape[0] for t in rebuilt) + 1, 16)
    n_pairs = _bucket(max(t.pair_first.shape[0] for t in rebuilt) + 1, 16)

    def pad(a, length, value=0):
        a = np.asarray(a)
        return np.pad(a, [(0, length - a.shape[0])] + [(0, 0)] * (a.ndim - 1), constant_values=value)

    return [([pad(t.Z, n_rows), pad(t.block, n_rows), pad(t.row_entry, n_rows), pad(t.entry_group, n_entries),
              pad(t.entry_block, n_entries), pad(t.pair_first, n_pairs, n_entries - 1),
              pad(t.pair_second, n_pairs, n_entries - 1)], t.layout) for t in rebuilt]
