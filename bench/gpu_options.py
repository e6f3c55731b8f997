"""Which XLA options should jaxlmm's programs get on a GPU? (Prepared, not run yet: the session that
wrote it had no device time left.) On a GPU every program gets XLA's defaults today
(`_compile_options`), and a first sleepstudy fit took 8.2 s on an H200, 7.2 s of it compilation.

Each variant runs in a fresh process without the persistent cache: import, first sleepstudy fit,
first summary, the median warm fit, and `fit_many` on 4,096 responses (first and second call).
About 25 s a variant on an H200. Run on the GPU machine from the repository root:

    python3 bench/gpu_options.py        # writes $OUT/gpu_options.json (or /tmp/gpu_options.json)
"""
import json
import os
import subprocess
import sys
CHILD = r'''
import json, sys, time
T0 = time.perf_counter()
import numpy as np, jax
import jaxlmm
from jaxlmm import _compile_options
opts = json.loads(sys.argv[1])
_compile_options._compile_options = lambda kind, backend: tuple(opts.items())
out = {"import": time.perf_counter() - T0}
sleep = jaxlmm.datasets.load("sleepstudy")
m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", sleep)
t = time.perf_counter(); r = m.fit(); out["first_fit"] = time.perf_counter() - t; out["llf"] = r.llf
t = time.perf_counter(); r.summary(); out["summary"] = time.perf_counter() - t
w = []
for _ in range(15):
    t = time.perf_counter(); m.fit(); w.append(time.perf_counter() - t)
out["warm_fit_median"] = float(np.median(w[3:]))
rng = np.random.default_rng(0)
Y = np.asarray(r.fittedvalues)[:, None] + rng.normal(0.0, np.sqrt(r.scale), (len(sleep), 4096))
t = time.perf_counter(); m.fit_many(Y, progress=False).llf.to_numpy(); out["many_first"] = time.perf_counter() - t
t = time.perf_counter(); ll = m.fit_many(Y, progress=False).llf.to_numpy(); out["many_second"] = time.perf_counter() - t
out["many_llf_sum"] = float(np.sum(ll))
print("@@" + json.dumps(out), flush=True)
'''
LOOP_PASSES = "while-loop-invariant-code-motion,simplify-while-loops"
VARIANTS = {
    "defaults": {},
    "O0": {"xla_backend_optimization_level": 0},
    "autotune0": {"xla_gpu_autotune_level": 0},
    "O0+autotune0+loops": {"xla_backend_optimization_level": 0, "xla_gpu_autotune_level": 0,
                           "xla_disable_hlo_passes": LOOP_PASSES},
}


def run_variant(options: dict) -> dict:
    """One fresh process with ``options`` as every quick program's XLA options (no persistent cache)."""
    env = dict(os.environ, JAXLMM_NO_CACHE="1")
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(options)], capture_output=True,
                               text=True, timeout=50, env=env, cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    found = [line for line in child.stdout.splitlines() if line.startswith("@@")]
    return json.loads(found[0][2:]) if found else {"error": child.stderr[-600:]}


results = {}
for name, options in VARIANTS.items():
    results[name] = run_variant(options)
    print(name, json.dumps(results[name]), flush=True)
with open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_options.json"), "w") as out:
    json.dump(results, out, indent=1)
