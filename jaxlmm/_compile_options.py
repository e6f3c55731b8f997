"""XLA compiler options for jaxlmm's programs, and `jit`, which compiles a caller's program with them.

The options were measured on XLA:CPU (each set's comment says how). They are XLA debug options,
whose names change between jaxlib releases: a name this jaxlib's XLA does not know would make every
compilation fail ("No such compile option"), so on a jaxlib other than the one they were measured
with (`MEASURED_JAXLIB`) one tiny compilation per process checks the names first and unknown ones
are dropped (`accepted_options`). On another backend (a GPU) every program gets XLA's defaults:
nothing here was measured there. Programs are therefore built lazily (`jit_with`): the backend and
the options are settled at a program's first call, not at import.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache, update_wrapper
from typing import Callable

import jax
import jax.numpy as jnp

# The jaxlib release the option names below were measured with; others are checked (`accepted_options`).
MEASURED_JAXLIB = (0, 10)


def _ynn_fusions_off() -> dict:
    """The compiler option that turns XLA:CPU's YNN fusions off (``JAXLMM_YNN_FUSIONS=default``: XLA's choice)."""
    return {} if os.environ.get("JAXLMM_YNN_FUSIONS") == "default" else {"xla_cpu_experimental_ynn_fusion_type": ""}


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

# Batched programs (fit_many, fit_datasets, bootstrap) keep XLA's YNN fusions: vmapped, their work
# comes in larger pieces, and with the fusions off fit_many ran no faster (4,000 sleepstudy
# responses, first / second call, fresh processes alternated: 2.81-3.24 / 0.95-1.18 s with them
# against 2.97-3.50 / 1.09-1.33 s without; 10,000: 3.96-4.54 / 0.77-0.86 against 4.30-4.75 /
# 0.64-0.89 s; 64 psycholing responses: the same within noise).
CPU_OPTION_SETS = {
    "default": dict(YNN_FUSIONS_OFF),  # XLA's optimisations, apart from YNN (above)
    "quick": {**_QUICK, **YNN_FUSIONS_OFF},
    "classic": {**_CLASSIC, **YNN_FUSIONS_OFF},
    "batch_quick": dict(_QUICK),
    "batch_classic": dict(_CLASSIC),
}
CLASSIC_ONE_FACTOR_ROWS_MAX = 50_000

_UNKNOWN_OPTION = re.compile(r"No such compile option: '([^']+)'")


def accepted_options(options: dict) -> dict:
    """``options`` less the names this jaxlib's XLA rejects, found by compiling a one-operation program
    (about 30 ms on 2 CPU cores, then once more per rejected name).

    Examples:
        >>> from jaxlmm._compile_options import accepted_options
        >>> accepted_options({"xla_backend_optimization_level": 0, "xla_no_such_option_anywhere": True})
        {'xla_backend_optimization_level': 0}
    """
    kept = dict(options)
    while True:
        try:
            jax.jit(lambda x: x + 1, compiler_options=kept).lower(jnp.float32(0)).compile()
            return kept
        except Exception as error:  # XLA reports an unknown option as INVALID_ARGUMENT
            unknown = _UNKNOWN_OPTION.search(str(error))
            if unknown is None or unknown.group(1) not in kept:
                raise
            del kept[unknown.group(1)]


def _jaxlib_version() -> tuple:
    return tuple(int(part) for part in jax.lib.__version__.split(".")[:2] if part.isdigit())


@lru_cache(maxsize=None)
def _cpu_names_accepted() -> frozenset:
    every = {name: value for options in CPU_OPTION_SETS.values() for name, value in options.items()}
    if _jaxlib_version() == MEASURED_JAXLIB:
        return frozenset(every)
    return frozenset(accepted_options(every))


@lru_cache(maxsize=None)
def _compile_options(kind: str, backend: str) -> tuple:
    if backend != "cpu":
        return ()
    accepted = _cpu_names_accepted()
    return tuple((name, value) for name, value in CPU_OPTION_SETS[kind].items() if name in accepted)


def compile_options(kind: str) -> dict:
    """The XLA options of the programs of ``kind`` (a key of `CPU_OPTION_SETS`) on JAX's default backend."""
    return dict(_compile_options(kind, jax.default_backend()))


class jit_with:
    """``jax.jit(fun, compiler_options=compile_options(kind), **jit_kwargs)``, built at the first call
    (`compile_options` needs the backend, which importing jaxlmm must not start). Used as
    ``jit_with(fun, "quick", static_argnums=...)`` or as a decorator through `functools.partial`."""

    def __init__(self, fun: Callable, kind: str, **jit_kwargs):
        if kind not in CPU_OPTION_SETS:
            raise ValueError(f"unknown compile-option set {kind!r}; one of {sorted(CPU_OPTION_SETS)}")
        self._fun, self._kind, self._jit_kwargs, self._jitted = fun, kind, jit_kwargs, None
        update_wrapper(self, fun)

    def _program(self):
        if self._jitted is None:
            self._jitted = jax.jit(self._fun, compiler_options=compile_options(self._kind), **self._jit_kwargs)
        return self._jitted

    def __call__(self, *args, **kwargs):
        return self._program()(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._program().lower(*args, **kwargs)

    def _cache_size(self) -> int:
        return self._program()._cache_size()


def jit(fun=None, *, quick: bool = True, **jit_kwargs):
    """``jax.jit`` compiled with the XLA options of jaxlmm's own programs, for code that calls
    `fit_arrays` (a derivative through a fit, a simulation loop). Use it as the outermost transformation:
    JAX accepts compiler options on a top-level ``jit`` only.

    ``quick=True`` (the ``"quick"`` set of `CPU_OPTION_SETS`: LLVM at -O0, no fusion emitters) suits a notebook's first
    calls; ``quick=False`` (the ``"classic"`` set) many calls. Measured on 2 CPU cores, the gradient of
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
    options = {**compile_options("quick" if quick else "classic"), **jit_kwargs.pop("compiler_options", {})}
    if fun is None:
        return lambda f: jax.jit(f, compiler_options=options, **jit_kwargs)
    return jax.jit(fun, compiler_options=options, **jit_kwargs)
