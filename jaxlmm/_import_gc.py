"""Importing jaxlmm with Python's cyclic garbage collector paused, then frozen (scripts only).

``import jaxlmm`` loads jax, jaxlib, pandas, formulaic and scipy: about 260,000 objects tracked by the
cyclic collector, which live as long as the process. Left alone, the collector runs about 400 times
during the import (3 of them full collections), walks those objects again in every later full
collection, and again in the collections of the interpreter's exit. So in a script
`jaxlmm/__init__.py` collects once (the garbage so far: milliseconds in a fresh process), pauses the
collector while its imports run, and at the end moves every object then alive into the collector's
permanent generation (`gc.freeze`), where no later collection visits it. Objects are still freed by
reference counting as usual.

Measured on 2 CPU cores (jaxlib 0.10.2; fresh processes, import plus first sleepstudy fit without
the persistent cache, alternated, 4 each): 2.69-3.73 s as Python leaves it, 2.53-2.96 s with the
collector only paused during the import, 1.92-2.55 s paused and frozen (`bench/latency.py`: 2.88 ->
2.48 s, and 1.91 -> 1.41 s with the cache warm). The gain is the exit (about 0.3 s) and fewer full
collections during the first fit.

What freezing costs: an object that was alive at the import and later becomes garbage inside a
reference cycle is never collected, and one alive in a cycle at exit is never finalised (a buffered
file it holds is not flushed). Objects created after the import are collected as usual. In a script
that imports jaxlmm first, the objects before the import are the interpreter's and libraries'. An
interactive session is different: IPython keeps earlier cells' outputs and the last traceback (its
frames sit in cycles with their locals), which it releases later; so jaxlmm does not freeze there
(IPython loaded, ``sys.ps1`` set, or ``python -i``), nor when ``JAXLMM_NO_GC_FREEZE=1``.
"""

from __future__ import annotations

import gc
import os
import sys


def freezes() -> bool:
    """Whether this import pauses and freezes the collector: not interactively, nor when opted out."""
    interactive = "IPython" in sys.modules or hasattr(sys, "ps1") or bool(sys.flags.interactive)
    return not interactive and not os.environ.get("JAXLMM_NO_GC_FREEZE")


def pause_collector() -> bool:
    """Collect once and pause the cyclic collector (where `freezes`); returns whether it was enabled."""
    enabled = gc.isenabled()
    if freezes():
        gc.collect()
        gc.disable()
    return enabled


def freeze_imports(was_enabled: bool) -> None:
    """Freeze the objects alive after the imports (where `freezes`) and restore the collector's state."""
    if freezes():
        gc.freeze()
    if was_enabled:
        gc.enable()
