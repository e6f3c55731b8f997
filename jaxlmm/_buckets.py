"""Shape buckets: pad a design's rows, groups and fixed-effect columns up to one of a few sizes, so
that models of similar size share one compiled program.

Sizes are 2ᵏ and 1.5 · 2ᵏ above a floor (at most 1.5× padding), with floors of 1,024 rows, 128
groups and 4 fixed-effect columns: every small model of one random-effects structure — sleepstudy,
Orthodont, dietox, with up to 4 fixed effects — runs the same program. Padded rows carry mask 0
and zeros in y, X and Z; padded groups have no rows; padded columns of X are zero. None changes
the fit: a padded group's block is ΛᵀZᵀZΛ + I = I, so its log-determinant is 0, its share of Ω is
0 and its conditional mode is 0; a zero column of X is left out of the fit (`design_stats`).
"""

from __future__ import annotations

import numpy as np

from ._design import Design
from ._fit import FitArrays

ROW_FLOOR = 1024
GROUP_FLOOR = 128
FIXED_FLOOR = 4


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


def pad_design(design: Design) -> Design:
    """``design`` with rows, groups and fixed-effect columns padded to their bucket sizes (one
    grouping factor only; crossed designs are returned unchanged). `unpad_fit` undoes it on a fit."""
    if design.crossed is not None:
        return design
    (n, p), m = design.X.shape, design.n_groups
    n_pad, m_pad, p_pad = bucket_size(n, ROW_FLOOR) - n, bucket_size(m, GROUP_FLOOR), bucket_size(p, FIXED_FLOOR) - p

    def rows(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((n_pad,) + a.shape[1:], a.dtype)])

    X = np.asarray(design.X)
    return Design(
        y=rows(design.y),
        X=rows(np.concatenate([X, np.zeros((n, p_pad), X.dtype)], axis=1)),
        Z=rows(design.Z),
        group=rows(design.group),
        mask=rows(design.mask),
        n_groups=m_pad,
        lambda_index=design.lambda_index,
    )


def unpad_fit(fit: FitArrays, design: Design) -> FitArrays:
    """A fit of ``pad_design(design)`` cut back to ``design``'s groups and fixed effects."""
    m, p = design.n_groups, design.X.shape[1]
    fit = fit._replace(ranef=fit.ranef[:m], ranef_cov=fit.ranef_cov[:m], beta=fit.beta[:p],
                       vcov_beta=fit.vcov_beta[:p, :p])
    if fit.vcov_beta_jac is not None:
        fit = fit._replace(vcov_beta_jac=fit.vcov_beta_jac[:, :p, :p])
    return fit
