"""One LAPACK thread while jaxlmm's compiled programs run.

On CPU, jaxlib runs its LAPACK calls (Cholesky, triangular solves and inverses: the dense blocks of
crossed models) through SciPy's LAPACK, which in a pip install is a bundled OpenBLAS with its own
pool of threads, one per core. XLA already runs each program on its own pool of one thread per core,
so a LAPACK call inside a program wakes a second pool that competes for the same cores: OpenBLAS's
threads spin while they wait, and a call that should take 20 µs sometimes takes 3-7 ms.
Measured on 2 cores, warm fits in fresh processes (`bench/results/crossed.md` has the figures of the
release): STAR 590-625 ms with OpenBLAS's default of 2 threads against 450-500 ms with 1, InstEval
4.0 against 3.5 s, psycholing's maximal model 23.7 against 19.6-21.2 ms. One-factor models with up to
3 random effects per group call no LAPACK.

So `one_lapack_thread` sets that library to one thread while jaxlmm's programs run and restores the
user's setting afterwards (NumPy's own OpenBLAS is left alone). Single fits of one-factor models skip
it: their LAPACK calls (if any) are small enough for OpenBLAS to run on one thread anyway, and the
scope costs about 25 µs of a 0.5 ms sleepstudy fit. It does nothing when the user chose a
thread count (``OPENBLAS_NUM_THREADS``, ``GOTO_NUM_THREADS``, ``OMP_NUM_THREADS`` or
``MKL_NUM_THREADS`` set) or set ``JAXLMM_LAPACK_THREADS=default``. Scopes nest and may be entered
from several threads at once (`fit_many` runs chunks concurrently): the first entry limits, the last
exit restores.
"""

from __future__ import annotations

import ctypes
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

from threadpoolctl import ThreadpoolController

_USER_SETTINGS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_lock = threading.Lock()
_depth = 0
_saved: list[tuple["_Pool", int]] = []
_pools: list["_Pool"] | None = None


class _Pool(NamedTuple):
    """One OpenBLAS library's thread-count functions (called directly: threadpoolctl lets only the
    first Python thread that limits OpenBLAS change it later, and `fit_many` runs chunks on several)."""

    filepath: str
    get: Callable[[], int]
    set: Callable[[int], None]


def _enabled() -> bool:
    if os.environ.get("JAXLMM_LAPACK_THREADS", "").lower() == "default":
        return False
    return not any(os.environ.get(name) for name in _USER_SETTINGS)


def _openblas_pool(filepath: str) -> _Pool | None:
    library = ctypes.CDLL(filepath)  # already loaded: the same handle
    for prefix in ("", "scipy_"):
        for suffix in ("", "64_"):
            get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
            set_ = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.restype = ctypes.c_int, None
                set_.argtypes = [ctypes.c_int]
                return _Pool(filepath, get, set_)
    return None


def lapack_pools() -> list[_Pool]:
    """The OpenBLAS libraries loaded in this process other than NumPy's own: the one jaxlib's LAPACK
    calls go through (SciPy's), found once by threadpoolctl."""
    global _pools
    if _pools is None:
        found = [_openblas_pool(info["filepath"]) for info in ThreadpoolController().info()
                 if info["internal_api"] == "openblas" and f"{os.sep}numpy" not in info["filepath"]]
        _pools = [pool for pool in found if pool is not None]
    return _pools


@contextmanager
def one_lapack_thread(needed: bool = True) -> Iterator[None]:
    """Run the block with jaxlib's LAPACK on one thread (see the module docstring); callers block on
    the program's results inside it, since JAX dispatches asynchronously. ``needed=False``: leave the
    setting alone (a program whose LAPACK calls, if any, are small: a one-factor model's).

    Examples:
        >>> from jaxlmm._lapack_threads import one_lapack_thread
        >>> with one_lapack_thread():
        ...     pass
    """
    global _depth
    if not needed:
        yield
        return
    with _lock:
        if _depth == 0 and _enabled():
            for pool in lapack_pools():
                _saved.append((pool, pool.get()))
                pool.set(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _saved:
                    pool, threads = _saved.pop()
                    pool.set(threads)
