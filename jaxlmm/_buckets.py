"""Shape buckets: pad a design's rows, groups and fixed-effect columns up to one of a few sizes, so
that models of similar size share one compiled program.

Sizes are 2ᵏ and 1.5 · 2ᵏ above a floor (at most 1.5× padding), with floors of 1,024 rows, 128
groups and 4 fixed-effect columns: every small model of one random-effects structure — sleepstudy,
Orthodont, dietox, with up to 4 fixed effects — runs the same program. Padded rows carry mask 0
and zeros in y, X and Z; padded groups have no rows; padded columns of X are zero. None changes
the fit: a padded group's block is ΛᵀZᵀZΛ + I = I, so its log-determinant is 0, its share of Ω is
0 and its conditional mode is 0; a zero column of X is left out of the fit (`design_stats`).

A crossed model's further terms are padded too, each to at least `LEVEL_FLOOR` levels: a padded
level has no rows, so its row and column of the dense block are those of I. Small crossed models
(Penicillin's size) then share one program, with L₂₁ held dense.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._crossed import DENSE_COUPLING_MAX_FLOPS, CrossedLayout, CrossedTerms, build_crossed_terms
from ._design import Design
from ._fit import FitArrays

ROW_FLOOR = 1024
GROUP_FLOOR = 128
FIXED_FLOOR = 4
STRUCTURE_MAX = 4  # random-effects columns padded to 2 or 4 (beyond: the model's own Λ)
LEVEL_FLOOR = 16  # levels of each further term of a crossed model


def bucket_size(n: int, floor: int) -> int:
    """The smallest bucket size ≥ ``n``: ``floor``, then 2ᵏ or 1.5 · 2ᵏ.

    Examples:
        >>> [bucket_size(n, 128) for n in (18, 129, 200, 300, 5000)]
        [128, 192, 256, 384, 6144]
    """
    if n <= floor:
        return floor
    power = 1 << (int(n) - 1).bit_length()  # the smallest 2ᵏ ≥ n
    return 3 * power // 4 if 3 * power // 4 >= n else power


def unstructured_template(q: int) -> tuple:
    """Λ's θ-index pattern of an unstructured q × q covariance: the lower triangle numbered column by
    column (lme4's order)."""
    idx = -np.ones((q, q), int)
    k = 0
    for c in range(q):
        for r in range(c, q):
            idx[r, c] = k
            k += 1
    return tuple(tuple(int(v) for v in row) for row in idx)


class Bucket(NamedTuple):
    """A design padded to its bucket: ``design`` (padded), ``free`` (per θ of the padded design's Λ
    template: whether the model has it; the others are held at 0), ``theta_map`` (the padded index
    of each of the model's θ)."""

    design: Design
    free: np.ndarray
    theta_map: np.ndarray


def to_bucket(design: Design) -> Bucket:
    """``design`` padded to its shape bucket (see the module docstring): rows, groups and
    fixed-effect columns; and, for one grouping factor with untied θ and up to `STRUCTURE_MAX`
    random effects, the random-effects columns and Λ: up to 2 or 4 columns, with an unstructured Λ
    template whose θ the model lacks are held at 0 — so `(1|g)`, `(x|g)` and `(x||g)` share one
    program. A crossed design keeps its Λ, with its further terms' levels padded (`pad_crossed`) when
    its L₂₁ is small enough to hold dense; larger crossed designs and designs with a residual-variance
    model are returned unchanged. `from_bucket` undoes it on a fit."""
    n_theta = design.n_theta
    unchanged = Bucket(design, np.ones(n_theta, bool), np.arange(n_theta))
    if design.resid_design is not None:
        return unchanged
    (n, p), m = design.X.shape, design.n_groups
    n_pad, m_pad, p_pad = bucket_size(n, ROW_FLOOR) - n, bucket_size(m, GROUP_FLOOR), bucket_size(p, FIXED_FLOOR) - p
    crossed = None
    if design.crossed is not None:
        crossed = pad_crossed(design, n + n_pad, m_pad)
        if crossed is None:
            return unchanged
    idx = design.lambda_index_array
    q = idx.shape[0]
    used = idx[idx >= 0]
    lambda_index, theta_map, Z = design.lambda_index, np.arange(n_theta), np.asarray(design.Z)
    if design.crossed is None and q <= STRUCTURE_MAX and len(np.unique(used)) == len(used):
        size = 2 if q <= 2 else STRUCTURE_MAX
        lambda_index = unstructured_template(size)
        template = np.asarray(lambda_index)
        rows, cols = np.nonzero(idx >= 0)
        theta_map = np.empty(n_theta, int)
        theta_map[idx[rows, cols]] = template[rows, cols]
        Z = np.concatenate([Z, np.zeros((n, size - q), Z.dtype)], axis=1)
    free = np.zeros(int(np.max(np.asarray(lambda_index))) + 1, bool)
    free[theta_map] = True

    def pad_rows(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((n_pad,) + a.shape[1:], a.dtype)])

    X = np.asarray(design.X)
    padded = Design(
        y=pad_rows(design.y),
        X=pad_rows(np.concatenate([X, np.zeros((n, p_pad), X.dtype)], axis=1)),
        Z=pad_rows(Z),
        group=pad_rows(design.group),
        mask=pad_rows(design.mask),
        n_groups=m_pad,
        lambda_index=lambda_index,
        crossed=crossed,
        weights=None if design.weights is None else np.concatenate(
            [np.asarray(design.weights), np.ones(n_pad, np.asarray(design.weights).dtype)]),
    )
    return Bucket(padded, free, theta_map)


def from_bucket(fit: FitArrays, bucket: Bucket, design: Design) -> FitArrays:
    """A fit of ``bucket.design`` (NumPy arrays) cut back to ``design``: its groups, fixed effects,
    random effects and θ."""
    if bucket.design is design:  # not padded (large crossed designs, residual-variance models)
        return fit
    m, p, q = design.n_groups, design.X.shape[1], design.Z.shape[1]
    if design.crossed is not None:  # the further terms' own levels, in the design's block order
        own = own_blocks(design.crossed.layout, bucket.design.crossed.layout)
        fit = fit._replace(ranef_other=fit.ranef_other[own], ranef_other_cov=fit.ranef_other_cov[own])
    size = design.lambda_index_array.shape[0]  # Λ's size: q, or all terms of a crossed model
    k = bucket.theta_map
    varpar = np.append(k, fit.varpar.shape[0] - 1)  # the model's θ, then σ²
    fit = fit._replace(
        theta=fit.theta[k], cov_re=fit.cov_re[:size, :size], varpar=fit.varpar[varpar],
        theta_at_bound=fit.theta_at_bound[k], ranef=fit.ranef[:m, :q], ranef_cov=fit.ranef_cov[:m, :q, :q],
        beta=fit.beta[:p], vcov_beta=fit.vcov_beta[:p, :p],
    )
    if fit.information is not None:
        fit = fit._replace(information=fit.information[np.ix_(varpar, varpar)],
                           varpar_jac=fit.varpar_jac[np.ix_(varpar, varpar)],
                           vcov_beta_jac=fit.vcov_beta_jac[varpar][:, :p, :p])
    return fit


def rebuild_crossed(design: Design, n_groups: int, counts: list[int], dense_coupling: bool | None) -> CrossedTerms:
    """``design``'s crossed terms rebuilt with ``n_groups`` leading levels and ``counts`` levels per
    further term (padded levels have no rows), their dense block factored densely (its clusters
    differ between designs); ``dense_coupling``: as `build_crossed_terms`'."""
    terms = design.crossed
    own = terms.layout
    block, Zc = np.asarray(terms.block), np.asarray(terms.Z)
    codes = [block[:, k] - own.offsets[k] for k in range(block.shape[1])]
    Zs = [Zc[:, k, :size] for k, (_, size) in enumerate(own.columns)]
    return build_crossed_terms(np.asarray(design.group), n_groups, codes, counts, Zs, list(own.columns),
                               own.lead_width, dense_coupling=dense_coupling, clusters=False)


def own_blocks(own: CrossedLayout, padded: CrossedLayout) -> np.ndarray:
    """Positions, in a padded layout, of a design's own blocks (term by term)."""
    return np.concatenate([start + np.arange(count) for start, count in zip(padded.offsets, own.level_counts)])


def pad_crossed(design: Design, n_rows: int, n_groups: int) -> CrossedTerms | None:
    """``design``'s crossed terms padded to ``n_rows`` rows, ``n_groups`` leading levels and a bucket
    of levels per further term, with L₂₁ held dense (`CrossedLayout.dense_coupling`), so that the
    shapes depend on the bucket only; None when that dense L₂₁ would be large (see
    `choose_dense_coupling`): such a design keeps its own shape."""
    own = design.crossed.layout
    counts = [bucket_size(c, LEVEL_FLOOR) for c in own.level_counts]
    padded = CrossedLayout(tuple(counts), own.columns, n_groups, own.lead_width)
    if n_groups * own.lead_width * padded.dense_size**2 > DENSE_COUPLING_MAX_FLOPS:
        return None
    terms = rebuild_crossed(design, n_groups, counts, dense_coupling=True)
    extra = n_rows - terms.Z.shape[0]

    def pad(a):
        a = np.asarray(a)
        return np.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1))

    unused = np.zeros(1, np.int32)  # a dense L₂₁ reads no entries or pairs: one placeholder each
    return CrossedTerms(Z=pad(terms.Z), block=pad(terms.block), row_entry=np.zeros((n_rows, terms.block.shape[1]), np.int32),
                        entry_group=unused, entry_block=unused, pair_first=unused[:0], pair_second=unused[:0],
                        layout=terms.layout)
