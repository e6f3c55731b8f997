"""Numerical settings: float64 for every fit, and JAX's persistent compilation cache.

jaxlmm never turns on ``jax_enable_x64`` globally: each public entry point runs inside
``jax.enable_x64(True)`` (the `float64` context), so a user's own float32 JAX code is untouched.
Arrays jaxlmm returns are NumPy float64. Using the functional core (`fit_arrays`) inside your own
JAX code, wrap the call in ``with jaxlmm.float64():`` or set ``jax_enable_x64`` yourself; in
float32 the estimates lose about half their digits.

The persistent compilation cache makes the first fit in a new process fast after the first ever:
compiled programs are stored in ``$JAXLMM_CACHE_DIR`` (default ``~/.cache/jaxlmm/jax``). It is
enabled on import unless the user already configured a JAX cache directory or sets
``JAXLMM_NO_CACHE=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def float64():
    """Context manager under which JAX computes in float64 (``jax.enable_x64(True)``).

    Examples:
        >>> import jax.numpy as jnp, jaxlmm
        >>> with jaxlmm.float64():
        ...     jnp.ones(2).dtype.name
        'float64'
    """
    return jax.enable_x64(True)


def enable_compilation_cache() -> str | None:
    """Point JAX's persistent compilation cache at jaxlmm's cache folder unless configured already."""
    if os.environ.get("JAXLMM_NO_CACHE"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = Path(os.environ.get("JAXLMM_CACHE_DIR", Path.home() / ".cache" / "jaxlmm" / "jax"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)


def _ynn_fusions_off() -> dict:
    """The compiler option that turns XLA:CPU's YNN fusions off, where this jaxlib has them."""
    if os.environ.get("JAXLMM_YNN_FUSIONS") == "default":
        return {}
    major_minor = tuple(int(part) for part in jax.lib.__version__.split(".")[:2] if part.isdigit())
    return {"xla_cpu_experimental_ynn_fusion_type": ""} if major_minor >= (0, 10) else {}


# jaxlib 0.10's XLA:CPU hands dot products, reductions and elementwise work to YNNPACK ("YNN
# fusions"). In float64 these run slower than XLA's own loops: a reduction over STAR's 10,767 levels
# took 0.9 ms against about 0.05 ms. With them off, measured on 2 CPU cores, each program's two
# variants compiled and timed interleaved in one process (medians, warm fits): psycholing maximal
# 17.8 -> 9.1 ms, sleepstudy 0.47 -> 0.41 ms, STAR 186 -> 171 ms, InstEval 0.99 -> 0.97 s,
# Penicillin 1.15 -> 1.11 ms; the first calls 0.1-1.0 s shorter (InstEval 5.7 -> 5.3 s; the YNN variant
# ran first, so part of that is the order). Keeping only
# the dot fusions ran InstEval at 1.6 s. Every program of a single model carries this option; batched
# programs don't (below). ``JAXLMM_YNN_FUSIONS=default`` leaves XLA's choice. A caller's own
# ``jax.jit`` around `fit_arrays` gets XLA's defaults (`jit` below, or
# ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=`` for every program of the process).
YNN_FUSIONS_OFF = _ynn_fusions_off()

# XLA options for programs compiled with XLA's optimisations, apart from YNN (above).
DEFAULT_OPTIONS = dict(YNN_FUSIONS_OFF)

# XLA options for the programs of one interactive call (a single fit with its inference, a profile):
# LLVM at -O0, the classic elemental emitters instead of the fusion emitters, and two while-loop
# passes off. Measured on 2 CPU cores (jaxlib 0.10.2, sleepstudy): the Hessian program compiles in
# 0.31 s instead of 1.38 s, a whole fit in 1.3 s instead of 4.7 s, and runs 1.7-2.5x slower warm
# (0.66 -> 1.1 ms a fit) — milliseconds against seconds of compilation; the two passes cost a fit
# with its inference 0.13 s of 0.68 s of compilation and gain nothing measurable at run time.
# Batched fits (fit_many, fit_datasets, bootstrap) take these for small batches only (`_batch`): they
# run long enough for optimised code to pay off.
_QUICK = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 0,
    "xla_disable_hlo_passes": "while-loop-invariant-code-motion,simplify-while-loops",
}
QUICK_COMPILE_OPTIONS = {**_QUICK, **YNN_FUSIONS_OFF}

# XLA options for programs that gain from XLA's classic elemental emitters instead of its fusion
# emitters (LLVM at its default level): about half the compile time. Measured on 2 CPU cores (jaxlib
# 0.10.2), against XLA's defaults:
# * the first fits of a design too large for the quick options (`_single_fit.quick_pays`), deferred
#   fit programs: InstEval compiles in 2.3 s instead of 4.2 s and fits in 1.08 s instead of 0.92 s
#   (the quick options: 0.8 s and 2.6 s); STAR 2.3 against 4.2 s, and 170 against 155 ms. Refits of
#   such a shape get XLA's defaults (`_single_fit`).
# * batched fits past their quick tier (`_batch`), one chunk of `fit_many`'s first round, compile /
#   run: sleepstudy x 128, 2.1 s / 10.1 ms against 3.6 s / 13.4 ms; dietox x 64, 2.0 s / 18.8 ms
#   against 3.7 s / 20.2 ms; psycholing maximal x 32, 1.9 s / 187 ms against 3.3 s / 206 ms.
# * one-factor models' refits and `fit_arrays` on data (`_fit.classic_emitters_pay`), warm fits
#   interleaved in one process (medians of 400): sleepstudy 0.55-0.58 against 0.61-0.64 ms, dietox
#   0.96-1.68 against 1.10-1.89 ms, orthodont 1.24-1.49 against 1.59-1.99 ms, compiled in 1.5 s instead
#   of 3.0 s (sleepstudy); `y ~ x + (x | g)` on 10,000 and 30,000 rows (10 a group) 8.1 against 11.2 ms
#   and 20.3 against 30.3 ms. Crossed models keep XLA's defaults there: Penicillin 0.85-1.24 against
#   0.72-1.02 ms, Pastes 1.36 against 1.08 ms, psycholing maximal 8.6 against 8.3 ms; and so do
#   one-factor models of more than CLASSIC_ONE_FACTOR_ROWS_MAX rows: InstEval's `y ~ service + (1 | d)`
#   (73,421 rows) 4.27 against 3.83 ms.
_CLASSIC = {"xla_cpu_use_fusion_emitters": False}
CLASSIC_EMITTER_OPTIONS = {**_CLASSIC, **YNN_FUSIONS_OFF}

# Batched programs (fit_many, fit_datasets, bootstrap) keep XLA's YNN fusions: vmapped, their work
# comes in larger pieces, and with the fusions off fit_many ran no faster (4,000 sleepstudy
# responses, first / second call, fresh processes alternated: 2.81-3.24 / 0.95-1.18 s with them
# against 2.97-3.50 / 1.09-1.33 s without; 10,000: 3.96-4.54 / 0.77-0.86 against 4.30-4.75 /
# 0.64-0.89 s; 64 psycholing responses: the same within noise).
BATCH_QUICK_OPTIONS = _QUICK
BATCH_CLASSIC_OPTIONS = _CLASSIC
CLASSIC_ONE_FACTOR_ROWS_MAX = 50_000


def jit(fun=None, *, quick: bool = True, **jit_kwargs):
    """``jax.jit`` compiled with the XLA options of jaxlmm's own programs, for code that calls
    `fit_arrays` (a derivative through a fit, a simulation loop). Use it as the outermost transformation:
    JAX accepts compiler options on a top-level ``jit`` only.

    ``quick=True`` (`QUICK_COMPILE_OPTIONS`: LLVM at -O0, no fusion emitters) suits a notebook's first
    calls; ``quick=False`` (`CLASSIC_EMITTER_OPTIONS`) many calls. Measured on 2 CPU cores, the gradient of
    the Days slope with respect to all of ``y`` (`docs/differentiation.md`), trace and compile and first
    call / later calls: ``jax.jit`` 4.5 s / 0.68 ms; ``quick=False`` 2.3 s / 0.49 ms; ``quick=True``
    1.3 s / 1.1 ms (dietox: 5.0 s / 1.6 ms, 3.2 s / 1.1 ms, 1.6 s / 3.4 ms). Other keyword arguments
    go to ``jax.jit``; ``compiler_options`` given there are added to these.

    Examples:
        >>> import jax, jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> design = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).design
        >>> slope = lambda y: jaxlmm.fit_arrays(design.replace(y=y)).beta[1]
        >>> with jaxlmm.float64():
        ...     dslope_dy = jaxlmm.jit(jax.grad(slope))(design.y)
        >>> dslope_dy.shape
        (180,)
    """
    options = {**(QUICK_COMPILE_OPTIONS if quick else CLASSIC_EMITTER_OPTIONS), **jit_kwargs.pop("compiler_options", {})}
    if fun is None:
        return lambda f: jax.jit(f, compiler_options=options, **jit_kwargs)
    return jax.jit(fun, compiler_options=options, **jit_kwargs)
