"""Shape buckets: pad a design's rows and groups up to one of a few sizes, so that models of
similar size share one compiled program.

Sizes are 2ᵏ and 1.5 · 2ᵏ above a floor (at most 1.5× padding), with floors of 1,024 rows and 128
groups: every small model of one random-effects structure and fixed-effects width — sleepstudy,
Orthodont, dietox — runs the same program. Padded rows carry mask 0 and zeros in y, X and Z;
padded groups have no rows. Both contribute exactly nothing: a padded group's block is
ΛᵀZᵀZΛ + I = I, so its log-determinant is 0, its share of Ω is 0 and its conditional mode is 0.
"""

from __future__ import annotations

import numpy as np

from ._design import Design

ROW_FLOOR = 1024
GROUP_FLOOR = 128


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
    """``design`` with rows and groups padded to their bucket sizes (one grouping factor only;
    crossed designs are returned unchanged)."""
    if design.crossed is not None:
        return design
    n, m = design.y.shape[0], design.n_groups
    n_pad, m_pad = bucket_size(n, ROW_FLOOR) - n, bucket_size(m, GROUP_FLOOR)

    def rows(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((n_pad,) + a.shape[1:], a.dtype)])

    return Design(
        y=rows(design.y),
        X=rows(design.X),
        Z=rows(design.Z),
        group=rows(design.group),
        mask=rows(design.mask),
        n_groups=m_pad,
        lambda_index=design.lambda_index,
    )
