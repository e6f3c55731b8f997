"""No hang: the workload that froze jaxlib's batched LAPACK kernels finishes, and no compiled program
makes a batched LAPACK call (the only kind that waits on the thread pool; see `jaxlmm._linalg`).

The child process runs the recipe that hung 2 times out of 2 on a 2-core machine before `_linalg`
replaced LAPACK (a vmapped 128-model × 1,000-row batch, then three threads running profile
intervals, a crossed profile and `fit_many` at once), plus the other compiled programs (summary
with Satterthwaite df, bootstrap, a gradient through a fit), with the persistent cache off so that
every program is compiled, and XLA dumping each compiled module. The parent stops it if it stops
using CPU (a deadlock) or runs too long, then searches the dumps for batched LAPACK calls.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.hlo_checks import batched_lapack_calls, lapack_calls

CHILD = textwrap.dedent(
    r"""
    import threading, warnings
    import numpy as np, pandas as pd, jax, jax.numpy as jnp, jaxlmm
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    G, n = 100, 1000
    g = np.repeat(np.arange(G), 10); x = np.tile(np.arange(10.0), G)
    df = pd.DataFrame({"y": rng.normal(size=n), "x": x, "g": g.astype(str)})
    m = jaxlmm.MixedLM.from_formula("y ~ x + (x | g)", df)
    Y = (1 + 0.5 * x + rng.normal(0, 1, (128, G))[:, g] + rng.normal(0, 0.3, (128, G))[:, g] * x
         + rng.normal(0, 1, (128, n)))
    with jaxlmm.float64():
        beta = jax.jit(jax.vmap(lambda y: jaxlmm.fit_arrays(m.design.replace(y=y)).beta))(jnp.asarray(Y))
        assert np.all(np.isfinite(np.asarray(beta)))
    pen = jaxlmm.datasets.load("penicillin"); ss = jaxlmm.datasets.load("sleepstudy")
    errors = []

    def work(k):
        try:
            r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", ss).fit()
            r.conf_int(method="profile")
            if k == 0:
                r.summary(ddf="satterthwaite")
                r.bootstrap(n=16, progress=False)
                d = r.model.design
                with jaxlmm.float64():
                    jax.grad(lambda y: jaxlmm.fit_arrays(d.replace(y=y)).beta[1])(jnp.asarray(d.y))
            jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", pen).fit().profile()
            rb = m.fit_many(Y[: 32 + 16 * k].T, progress=False)
            assert bool(rb.converged.all())
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("errors:", errors)
    print("done" if not errors else "failed")
    """
)

STALL_SECONDS = 60
LIMIT_SECONDS = 400


def _cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the stall watchdog reads /proc")
def test_deadlock_recipe_finishes_without_lapack(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    dump = tmp_path / "xla_dump"
    env = dict(os.environ, JAXLMM_NO_CACHE="1", XLA_FLAGS=f"--xla_dump_to={dump} --xla_dump_hlo_as_text")
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, env=env)
        start, last, still = time.time(), None, 0.0
        while child.poll() is None:
            time.sleep(2)
            ticks = _cpu_ticks(child.pid)
            still = still + 2 if ticks is not None and ticks == last else 0.0
            last = ticks
            if still >= STALL_SECONDS or time.time() - start > LIMIT_SECONDS:
                child.kill()
                child.wait()
                pytest.fail(
                    f"the recipe hung: no CPU for {still:.0f} s after {time.time() - start:.0f} s\n{log.read_text()[-3000:]}"
                )
    text = log.read_text()
    assert child.returncode == 0 and "done" in text, text[-3000:]

    modules = list(dump.glob("*.txt"))
    assert len(modules) > 10, "XLA dumped no programs: the check below would be vacuous"
    texts = {path.name: path.read_text(errors="replace") for path in modules}
    # The crossed model's 30 x 30 factor does call LAPACK, one matrix a call: the search sees calls.
    assert any(lapack_calls(text) for text in texts.values())
    batched = {(name, call) for name, text in texts.items() for call in batched_lapack_calls(text)}
    assert not batched, sorted(batched)[:10]
