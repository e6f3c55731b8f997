"""Importing jaxlmm pauses the cyclic collector, freezes what the import created, and restores its state."""

import os
import subprocess
import sys


def _run(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "JAXLMM_NO_GC_FREEZE"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


PROBE = "import gc; {before}; import jaxlmm; print(gc.isenabled(), gc.get_freeze_count() > 100_000)"


def test_import_freezes_and_reenables_the_collector():
    assert _run(PROBE.format(before="pass")) == "True True"


def test_a_disabled_collector_stays_disabled():
    assert _run(PROBE.format(before="gc.disable()")) == "False True"


def test_opt_out_leaves_the_collector_alone():
    assert _run(PROBE.format(before="pass"), JAXLMM_NO_GC_FREEZE="1") == "True False"


def test_garbage_from_before_the_import_is_collected_not_frozen():
    code = (
        "import gc, weakref\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.peer, b.peer = b, a\n"
        "probe = weakref.ref(a); del a, b\n"
        "gc.disable()\n"  # keep the cycle alive until jaxlmm's import
        "import jaxlmm\n"
        "print(probe() is None)\n"
    )
    assert _run(code) == "True"


def test_cycles_made_after_the_import_are_still_collected():
    code = (
        "import gc, weakref, jaxlmm\n"
        "class Node: pass\n"
        "refs = []\n"
        "for _ in range(3):\n"
        "    a, b = Node(), Node(); a.peer, b.peer = b, a; refs.append(weakref.ref(a)); del a, b\n"
        "gc.collect()\n"
        "print(all(r() is None for r in refs))\n"
    )
    assert _run(code) == "True"


def test_an_interactive_session_is_not_frozen():
    """IPython keeps earlier outputs and tracebacks and releases them later in cycles: not frozen."""
    assert _run(PROBE.format(before="import sys; sys.ps1 = '>>> '")) == "True False"
    assert _run(PROBE.format(before="import sys, types; sys.modules['IPython'] = types.ModuleType('IPython')")) == "True False"
