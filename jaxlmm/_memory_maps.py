"""Keep a long session under Linux's limit on memory mappings per process.

Every compiled XLA:CPU program holds memory mappings (about 1,000 for one new model shape with its
summary), and the kernel allows ``vm.max_map_count`` per process (65,530 by default). Past it, XLA
crashes (a segfault or abort while compiling or loading a program). A notebook or a test suite
that compiles dozens of model shapes reaches that.

After each compilation (and each load from the persistent cache) a listener counts the lines of
``/proc/self/maps``; above ``LIMIT_FRACTION`` of the limit it marks the process. jaxlmm's entry
points (`MixedLM.fit`, `fit_many`, `fit_datasets`, profiles, bootstrap) call `release_if_needed`
before they run: if marked, it clears JAX's caches (``jax.clear_caches()``), which unmaps the
programs, with a `ResourceLimitWarning`. Later fits of the same shapes compile again, or load from
the persistent cache. Nothing happens where ``/proc`` is not available.
"""

from __future__ import annotations

import gc
import threading
import warnings

import jax
from jax import monitoring

from .errors import ResourceLimitWarning

MAPS_PATH = "/proc/self/maps"
LIMIT_PATH = "/proc/sys/vm/max_map_count"
LIMIT_FRACTION = 0.6
_WATCHED_EVENTS = ("/jax/core/compile/backend_compile_duration", "/jax/compilation_cache/cache_retrieval_time_sec")

_lock = threading.Lock()
_state = {"installed": False, "near_limit": False}


def map_count() -> int | None:
    """Memory mappings this process holds now (None where ``/proc`` is not available)."""
    try:
        with open(MAPS_PATH, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return None


def map_limit() -> int | None:
    """The kernel's limit on memory mappings per process (``vm.max_map_count``), or None."""
    try:
        with open(LIMIT_PATH) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def near_limit() -> bool:
    """Whether this process holds more than ``LIMIT_FRACTION`` of the allowed memory mappings."""
    count, limit = map_count(), map_limit()
    return count is not None and limit is not None and count > LIMIT_FRACTION * limit


def _after_compile(event: str, duration: float, **kwargs) -> None:
    if event in _WATCHED_EVENTS and near_limit():
        _state["near_limit"] = True


def install() -> None:
    """Watch compilations (idempotent; done when jaxlmm is imported)."""
    with _lock:
        if not _state["installed"]:
            monitoring.register_event_duration_secs_listener(_after_compile)
            _state["installed"] = True


def release_if_needed() -> bool:
    """Clear JAX's caches, with a warning, if a compilation brought the process near the limit.

    Returns whether it did. Cheap when nothing is pending (a dictionary look-up).

    Examples:
        >>> from jaxlmm._memory_maps import release_if_needed
        >>> release_if_needed()
        False
    """
    if not _state["near_limit"]:
        return False
    with _lock:
        if not _state["near_limit"]:
            return False
        _state["near_limit"] = False
        count, limit = map_count(), map_limit()
        if count is None or limit is None or count <= LIMIT_FRACTION * limit:
            return False
        warnings.warn(
            f"This process holds {count:,} memory mappings, near the kernel's limit of {limit:,} "
            "(vm.max_map_count), mostly for compiled JAX programs; over it XLA crashes. jaxlmm cleared "
            "JAX's compiled-program caches (jax.clear_caches()): fits of shapes seen before compile "
            "again or load from the persistent cache. To avoid this, raise the limit (sysctl -w "
            "vm.max_map_count=262144) or call jax.clear_caches() yourself between groups of models.",
            ResourceLimitWarning,
            stacklevel=3,
        )
        jax.clear_caches()
        gc.collect()
        return True
