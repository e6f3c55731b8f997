"""One fit as `MixedLM.fit` runs it: tiered compilation.

The first fits of a design shape run the quickly compiled program of its shape bucket
(`_buckets.to_bucket`, `_fit.fit_quick`): about a second to compile on 2 CPU cores, shared by every
model of the bucket, a few milliseconds a fit. A shape fitted more than `OPTIMISE_AFTER` times is
being refitted in a loop (simulations, a warm benchmark, a hand-written bootstrap): it then gets its
own program, unpadded and compiled with XLA's optimisations (a few seconds once, then a sleepstudy
fit with its inference in well under a millisecond; a one-factor model's compiled with
the "classic" options, in half the time and faster). Both programs
compute the same fit (`tests/test_buckets.py`). A design whose fit outweighs the quick program's
compilation (`quick_pays`: InstEval) starts with its own program compiled with the "classic" options
instead, in half the time of XLA's defaults, for fits about 15% slower.

A crossed model with a dense block of 32+ rows (`_fit.defers`: InstEval, STAR, subjects × items with
slopes) fitted by its optimised program leaves the exact Hessian at θ̂ and the conditional
covariances of the random effects to the results layer, as lme4 and MixedModels.jl leave them to
``summary``/``condVar``: they cost a quarter of such a fit. The results layer computes them on first
use (`deferred_inference`, `deferred_covariances`), tiered the same way: a quick program for the first
`OPTIMISE_AFTER` calls of a shape, then an optimised one (InstEval's inference: 0.9 s to compile and
2.6 s to run, against 4.9 s and 1.0 s).
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ._buckets import from_bucket, to_bucket
from ._compile_options import jit_with
from ._crossed import dense_rows
from ._design import Design
from ._fit import (
    LARGE_DENSE_SIZE,
    FitArrays,
    classic_emitters_pay,
    conditional_covariances,
    defers,
    fit_design,
    fit_quick,
    inference_of,
    large_lapack_calls,
)
from ._lapack_threads import one_lapack_thread
from ._program_cache import OPTIMISE_AFTER, call_quick, count_use, shape_key


def _fit_program(deferred: bool, kind: str = "default"):
    """A shape's own fit program: with its inference, or ``deferred`` (`_fit.defers`)."""
    return jit_with(partial(fit_design, inference=not deferred, deferred=deferred), kind, static_argnums=(2, 3))


# (complete, deferred) programs: compiled with XLA's defaults; and with the "classic" options, for
# the first fits of a design the quick program would fit too slowly (`quick_pays`: InstEval compiles
# in 2.3 against 4.2 s, for fits about 15% slower) and for one-factor models' refits
# (`_fit.classic_emitters_pay`: half the compile time, and faster).
_optimised = (_fit_program(False), _fit_program(True))
_classic = (_fit_program(False, "classic"), _fit_program(True, "classic"))

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
    `OPTIMISE_AFTER` fits of this shape (the shape's own program with the "classic" options for a
    design whose fit outweighs compilation, `quick_pays`), then the shape's own optimised program. The
    programs of a large crossed model leave its inference and conditional covariances to the results
    layer (`_fit.defers`)."""
    refit = count_use(shape_key("fit_single", design, float(gtol))) >= OPTIMISE_AFTER
    if not quick_pays(design) or refit:
        program = (_classic if not refit or classic_emitters_pay(design) else _optimised)[defers(design)]
        with one_lapack_thread(large_lapack_calls(design)):
            return jax.tree.map(np.asarray, program(design, np.float64(bool(reml)), float(gtol), 200))
    bucket = to_bucket(design)
    arrays = fit_quick(bucket.design, bool(reml), bucket.free, float(gtol))
    return from_bucket(jax.tree.map(np.asarray, arrays), bucket, design)


INFERENCE_FIELDS = ("information", "varpar_jac", "vcov_beta_jac")


def _inference_dict(design: Design, theta, sigma2, delta, reml: bool) -> dict:
    """`_fit.inference_of` with the Hessian forward over reverse: where a fit takes it forward over
    forward (InstEval), for compile time inside the fit program, forward over reverse runs faster
    alone: 1.16 against 1.57 s with the quick options (the same compile time), 0.60 against
    0.74-0.91 s optimised (3.7 against 2.8 s to compile)."""
    return dict(zip(INFERENCE_FIELDS, inference_of(design, theta, sigma2, reml, delta, forward_hessian=False)))


def _covariances_dict(design: Design, theta, sigma2) -> dict:
    cov, other = conditional_covariances(design, theta, sigma2)
    return {"ranef_cov": cov, "ranef_other_cov": other}


_optimised_inference = jit_with(_inference_dict, "default", static_argnums=4)
_optimised_covariances = jit_with(_covariances_dict, "default")


def _tiered(name: str, fn, optimised, args: tuple, static: tuple, design: Design) -> dict:
    """``fn(*args, *static)`` by the quick program for the first `OPTIMISE_AFTER` calls of this shape,
    then by ``optimised`` (its jitted form); NumPy arrays."""
    lapack = large_lapack_calls(design)
    if count_use(shape_key(name, args, *static)) < OPTIMISE_AFTER:
        out = call_quick(name, lambda *a: fn(*a, *static), args, static=static, lapack=lapack)
    else:
        with one_lapack_thread(lapack):
            out = jax.block_until_ready(optimised(*args, *static))
    return {k: np.asarray(v) for k, v in out.items()}


def deferred_inference(design: Design, theta, sigma2, reml: bool,
                       delta=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(information, varpar_jac, vcov_beta_jac) of a fit made without them (`_fit.inference_of`: a
    ``deferred`` fit, a member of a batch; ``delta``: a residual variance model's), tiered."""
    out = _tiered("inference", _inference_dict, _optimised_inference, (design, theta, sigma2, delta), (bool(reml),),
                  design)
    return tuple(out[k] for k in INFERENCE_FIELDS)


def deferred_covariances(design: Design, theta, sigma2) -> tuple[np.ndarray, np.ndarray]:
    """(ranef_cov, ranef_other_cov) of a ``deferred`` fit (`_fit.conditional_covariances`), tiered."""
    out = _tiered("covariances", _covariances_dict, _optimised_covariances, (design, theta, sigma2), (), design)
    return out["ranef_cov"], out["ranef_other_cov"]
