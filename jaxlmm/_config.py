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
