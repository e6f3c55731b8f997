"""Traced programs kept on disk beside JAX's persistent compilation cache, so that a new process skips
tracing as well as compiling.

JAX's persistent cache stores compiled executables, but its key is a hash of the lowered program:
every process still traces and lowers a fit (0.5 s of a 0.7 s warm-cache first fit on 2 CPU cores)
before it can look the executable up. Here the traced and lowered program is saved once with
`jax.export` (serialised StableHLO), under a key made of everything it depends on: the program's
name and static arguments, the argument shapes and dtypes and their pytree structure, the compile
options, the JAX version and a fingerprint of jaxlmm's own source files (so an edit of the code
invalidates every entry). A later process deserialises it, and the compiled executable comes from
JAX's persistent cache.

Used only where the persistent cache is on (``JAXLMM_NO_CACHE`` unset); any failure to read or
write falls back to tracing.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import jax
import jaxlib
import numpy as np

from ._compile_options import compile_options
from ._lapack_threads import one_lapack_thread

_loaded: dict[str, Callable] = {}

# Tiered compilation: a program shape used more than OPTIMISE_AFTER times is being run in a loop, and
# its callers switch from the quick program to one compiled with XLA's optimisations.
OPTIMISE_AFTER = 2
_uses: dict[tuple, int] = {}


def count_use(key: tuple) -> int:
    """How many times ``key`` (a program and the shapes it runs on) was used before; counts this use."""
    count = _uses.get(key, 0)
    _uses[key] = count + 1
    return count


def shape_key(name: str, tree, *static) -> tuple:
    """A hashable key of a pytree's structure and leaf shapes and dtypes, with ``name`` and static values."""
    leaves, treedef = jax.tree.flatten(tree)
    return (name, treedef, tuple((np.shape(a), a.dtype if isinstance(a, np.ndarray) else np.result_type(a))
                                 for a in leaves)) + tuple(static)


@lru_cache(maxsize=1)
def _source_fingerprint() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _folder() -> Path | None:
    base = jax.config.jax_compilation_cache_dir
    if os.environ.get("JAXLMM_NO_CACHE") or not base:
        return None
    return Path(base) / "jaxlmm-programs"


def _key(program: tuple) -> str:
    """The file name of a program (its `shape_key`) in this environment: versions, backend, x64 mode,
    jaxlmm's source and the compile options."""
    parts = [repr(program), jax.__version__, jaxlib.__version__, jax.default_backend(),
             str(jax.config.jax_enable_x64), _source_fingerprint(), repr(sorted(compile_options("quick").items()))]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def call_quick(name: str, fn: Callable, args: tuple, static: tuple = (), lapack: bool = True) -> dict:
    """``fn(*args)`` compiled with the ``"quick"`` options (`_compile_options`); ``fn`` returns a dict of arrays and its
    result depends on ``args`` (a pytree) and on ``static`` only. With the persistent cache on, the
    traced program is saved on first use and loaded by later processes (see the module docstring).
    ``lapack``: the program makes large LAPACK calls, run on one thread (`one_lapack_thread`; about
    25 µs a call, skipped for programs whose LAPACK calls are small enough for one thread anyway).
    """
    leaves, treedef = jax.tree.flatten(args)
    folder = _folder()
    key = _key(shape_key(name, args, *static))
    program = _loaded.get(key)
    if program is None:
        program = _load_or_export(folder, key, lambda *flat: fn(*jax.tree.unflatten(treedef, flat)), leaves)
        _loaded[key] = program
    with one_lapack_thread(lapack):
        return jax.block_until_ready(program(*leaves))


def _load_or_export(folder: Path | None, key: str, flat_fn: Callable, leaves: list) -> Callable:
    options = compile_options("quick")
    jitted = jax.jit(flat_fn, compiler_options=options)
    if folder is None:
        return jitted
    path = folder / f"{key}.exported"
    try:
        if path.exists():
            exported = jax.export.deserialize(bytearray(path.read_bytes()))
        else:
            exported = jax.export.export(jitted, disabled_checks=_unchecked_custom_calls())(*leaves)
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(exported.serialize())
            tmp.replace(path)
    except Exception:  # unreadable entry, serialisation unavailable: trace as usual
        return jitted
    return jax.jit(exported.call, compiler_options=options)


def _unchecked_custom_calls() -> list:
    """LAPACK calls jaxlmm makes that `jax.export` does not list as stable (the program is only ever
    loaded by the same jaxlib: its version is in the key)."""
    return [jax.export.DisabledSafetyCheck.custom_call(t) for t in ("lapack_dtrtri_ffi", "lapack_strtri_ffi")]
