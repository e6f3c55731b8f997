"""One fit as `MixedLM.fit` runs it: tiered compilation.

The first fits of a design shape run the quickly compiled program of its shape bucket
(`_buckets.to_bucket`, `_fit.fit_quick`): about a second to compile on 2 CPU cores, shared by every
model of the bucket, a few milliseconds a fit. A shape fitted more than `OPTIMISE_AFTER` times is
being refitted in a loop (simulations, a warm benchmark, a hand-written bootstrap): it then gets its
own program, unpadded and compiled with XLA's optimisations (a few seconds once, then a sleepstudy
fit with its inference in well under a millisecond: the warm speed of `fit_arrays`). Both programs
compute the same fit (`tests/test_buckets.py`).
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ._buckets import from_bucket, to_bucket
from ._crossed import dense_rows
from ._design import Design
from ._fit import LARGE_DENSE_SIZE, FitArrays, fit_design, fit_quick, large_lapack_calls
from ._lapack_threads import one_lapack_thread
from ._program_cache import OPTIMISE_AFTER, count_use, shape_key

_optimised = jax.jit(partial(fit_design, inference=True), static_argnums=(2, 3))

# Designs whose fit runs long enough that the optimised program repays its compilation at once: a
# crossed model's dense block of LARGE_DENSE_SIZE rows or more, factored densely (InstEval: the quick
# program fits it 3× slower, 10.5 against 3.2 s, for about 2 s less compilation), or very many rows.
# A dense block split into clusters (`_clusters`) is cheap per evaluation: STAR's first fit takes
# 6.5 s with the quick program against 10.1 s with the optimised one (then 2.0 against 0.75 s a fit).
QUICK_ROWS_MAX = 200_000


def quick_pays(design: Design) -> bool:
    """Whether the quick program suits ``design``'s first fits (compilation outweighs the fit)."""
    return dense_rows(design.crossed) < LARGE_DENSE_SIZE and int(np.shape(design.y)[0]) <= QUICK_ROWS_MAX


def fit_single(design: Design, reml: bool, gtol: float = 1e-6) -> FitArrays:
    """Fit ``design`` with its inference (NumPy arrays): the bucket's quick program for the first
    `OPTIMISE_AFTER` fits of this shape, then the shape's own optimised program (at once for a
    design whose fit outweighs compilation, `quick_pays`)."""
    if not quick_pays(design) or count_use(shape_key("fit_single", design, float(gtol))) >= OPTIMISE_AFTER:
        with one_lapack_thread(large_lapack_calls(design)):
            return jax.tree.map(np.asarray, _optimised(design, np.float64(bool(reml)), float(gtol), 200))
    bucket = to_bucket(design)
    arrays = fit_quick(bucket.design, bool(reml), bucket.free, float(gtol))
    return from_bucket(jax.tree.map(np.asarray, arrays), bucket, design)
