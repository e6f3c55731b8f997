"""GPU benchmark: the same jobs on the accelerator JAX sees and on the CPU, for the ratio.

Run by ``bench/gpu.sh`` (see there). Each platform runs in its own child process
(``JAX_PLATFORMS=cpu`` for the CPU figures), so neither sees the other's compiled programs or memory.
Jobs (full sizes; ``--smoke`` shrinks every one to seconds on a CPU, for the test that keeps this
script from rotting):

1. ``fit_many`` on 100,000 responses simulated from sleepstudy's REML fit (target on one H100:
   >= 100,000 models/s warm); first call (compilation included) and a warm call.
2. A 1,000-groups x 10-rows design ``y ~ x + (x | g)``: one fit, and ``fit_many`` on 1,000 responses.
3. A gradient through a fit: ``jaxlmm.jit(jax.grad(lambda y: fit_arrays(design(y)).beta[1]))`` on
   sleepstudy, first and warm call.
4. InstEval (``tests/data/insteval.csv.gz``): ``y ~ service + (1 | d)`` and the crossed
   ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, first and warm fit.
5. On the accelerator only: job 1's warm ``fit_many`` with explicit chunk sizes (``batch_size``), to
   choose `_batch.ACCELERATOR_BATCH_MAX`.

Writes ``gpu.md`` and ``gpu.json`` to ``--out`` (default ``bench/results``) with the card's name.
Without an accelerator, a full run stops with a message; ``--smoke`` runs the CPU child alone.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
INSTEVAL = REPO_ROOT / "tests" / "data" / "insteval.csv.gz"

FULL = {"many": 100_000, "groups": 1_000, "group_responses": 1_000, "insteval_rows": None,
        "chunk_sweep": [2_048, 65_536]}
SMOKE = {"many": 300, "groups": 60, "group_responses": 40, "insteval_rows": 2_000, "chunk_sweep": []}

_CHILD = r"""
import json, sys, time, warnings
import numpy as np, pandas as pd, jax
warnings.simplefilter("ignore")
import jaxlmm

sizes = json.loads(sys.argv[1])
insteval = sys.argv[2]
out = {"platform": jax.default_backend(), "device": jax.devices()[0].device_kind, "n_devices": jax.device_count(),
       "jax": jax.__version__}


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    jax.block_until_ready(value)
    return time.perf_counter() - t0, value


rng = np.random.default_rng(0)
sleep = jaxlmm.datasets.load("sleepstudy")
m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", sleep)
r = m.fit()
k = sizes["many"]
Y = np.asarray(r.fittedvalues)[:, None] + rng.normal(0.0, np.sqrt(r.scale), (len(sleep), k))
first, _ = timed(lambda: m.fit_many(Y, progress=False).llf.to_numpy())
warm, llf = timed(lambda: m.fit_many(Y, progress=False).llf.to_numpy())
out["many"] = {"models": k, "first_s": first, "warm_s": warm, "models_per_s": k / warm,
               "llf_checksum": float(np.nansum(llf))}
print("@@PART@@" + json.dumps(out), flush=True)

g = sizes["groups"]
x = np.tile(np.arange(10.0), g)
group = np.repeat(np.arange(g), 10)
b = rng.normal(0.0, [3.0, 0.5], (g, 2))
y = 5.0 + 0.8 * x + b[group, 0] + b[group, 1] * x + rng.normal(0.0, 1.0, g * 10)
df = pd.DataFrame({"y": y, "x": x, "g": group.astype(str)})
mg = jaxlmm.MixedLM.from_formula("y ~ x + (x | g)", df)
t_fit, rg = timed(lambda: mg.fit())
k2 = sizes["group_responses"]
Y2 = np.asarray(rg.fittedvalues)[:, None] + rng.normal(0.0, 1.0, (len(df), k2))
first2, _ = timed(lambda: mg.fit_many(Y2, progress=False).llf.to_numpy())
warm2, _ = timed(lambda: mg.fit_many(Y2, progress=False).llf.to_numpy())
out["groups"] = {"groups": g, "first_fit_s": t_fit, "models": k2, "first_s": first2, "warm_s": warm2,
                 "models_per_s": k2 / warm2}
print("@@PART@@" + json.dumps(out), flush=True)

design = m.design
with jaxlmm.float64():
    slope_grad = jaxlmm.jit(jax.grad(lambda yy: jaxlmm.fit_arrays(design.replace(y=yy)).beta[1]))
    yy = jax.numpy.asarray(design.y)
    first3, _ = timed(lambda: slope_grad(yy))
    warm3 = min(timed(lambda: slope_grad(yy))[0] for _ in range(5))
out["grad"] = {"first_s": first3, "warm_s": warm3}
print("@@PART@@" + json.dumps(out), flush=True)

ie = pd.read_csv(insteval)
if sizes["insteval_rows"]:
    ie = ie.iloc[: sizes["insteval_rows"]]
fits = {}
for label, formula in [("(1|d)", "y ~ service + (1 | d)"), ("crossed", "y ~ service + (1 | s) + (1 | d) + (1 | dept)")]:
    model = jaxlmm.MixedLM.from_formula(formula, ie)
    first4, res = timed(lambda: model.fit().llf)
    warm4, res = timed(lambda: model.fit().llf)
    fits[label] = {"rows": len(ie), "first_s": first4, "warm_s": warm4, "llf": float(res)}
    out["insteval"] = fits
    print("@@PART@@" + json.dumps(out), flush=True)
if sizes["chunk_sweep"] and out["platform"] != "cpu":
    sweep = {}
    for size in sizes["chunk_sweep"]:  # the automatic chunk size is ACCELERATOR_BATCH_MAX
        first5, _ = timed(lambda: m.fit_many(Y, batch_size=size, progress=False).llf.to_numpy())
        warm5, _ = timed(lambda: m.fit_many(Y, batch_size=size, progress=False).llf.to_numpy())
        sweep[str(size)] = {"first_s": first5, "warm_s": warm5, "models_per_s": k / warm5}
        out["chunk_sweep"] = sweep
        print("@@PART@@" + json.dumps(out), flush=True)
print("@@RESULT@@" + json.dumps(out))
"""


def _text(stream) -> str:
    return stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")


def run_child(sizes: dict, platform: str | None, timeout: float, strict: bool) -> dict:
    """The child's results. A child that fails or runs past ``timeout`` gives the jobs it finished,
    with an ``error`` entry (``strict``: raise instead, as the smoke run must)."""
    env = dict(os.environ, JAXLMM_NO_CACHE="1")
    if platform:
        env["JAX_PLATFORMS"] = platform
    command = [sys.executable, "-c", _CHILD, json.dumps(sizes), str(INSTEVAL)]
    try:
        proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(REPO_ROOT), timeout=timeout)
        stdout, stderr, failure = proc.stdout, proc.stderr, f"rc={proc.returncode}"
    except subprocess.TimeoutExpired as expired:
        stdout, stderr, failure = _text(expired.stdout), _text(expired.stderr), f"stopped after {timeout:.0f} s"
    partial = None
    for line in stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
        if line.startswith("@@PART@@"):
            partial = json.loads(line[len("@@PART@@"):])
    message = f"benchmark child ({platform or 'default platform'}) failed, {failure}:\n{stderr[-3000:]}"
    if strict:
        raise RuntimeError(message)
    print(message, file=sys.stderr)
    return {**(partial or {"device": platform or "accelerator"}), "error": message[:400]}


def accelerator_present() -> bool:
    probe = "import jax; print(jax.default_backend())"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    return out.returncode == 0 and out.stdout.strip() not in ("", "cpu")


def table(results: dict) -> list[str]:
    runs = [(name, res) for name, res in results.items() if res is not None]
    head = "| job | " + " | ".join(f"{name}: {res['device']}" for name, res in runs) + " | ratio |"
    lines = [head, "|---|" + "---:|" * len(runs) + "---:|"]

    def value(res, get):
        try:
            return get(res)
        except (KeyError, TypeError):  # a job the child did not finish
            return None

    def row(label, get, better_low=True, fmt=",.3g"):
        values = [value(res, get) for _, res in runs]
        ratio = ""
        if fmt == ",.3g" and len(values) == 2 and values[0] and values[1]:
            ratio = f"{values[1] / values[0]:.1f}x" if better_low else f"{values[0] / values[1]:.1f}x"
        cells = " | ".join("not run" if v is None else format(v, fmt) for v in values)
        lines.append(f"| {label.replace('|', chr(92) + '|')} | {cells} | {ratio} |")

    def first(key):  # the sizes of a job, from the first run that has it
        return next((res[key] for _, res in runs if key in res), None)

    # runs are ordered (accelerator, cpu) when both exist: ratio = how many times faster the accelerator is
    if first("many"):
        row(f"fit_many {first('many')['models']:,} sleepstudy responses: models/s (warm)",
            lambda r: r["many"]["models_per_s"], False)
        row("  first call (s, compilation included)", lambda r: r["many"]["first_s"])
    if first("groups"):
        g = first("groups")
        row(f"{g['groups']:,} groups x 10 rows: first fit (s)", lambda r: r["groups"]["first_fit_s"])
        row(f"  fit_many {g['models']:,} responses: models/s (warm)", lambda r: r["groups"]["models_per_s"], False)
    if first("grad"):
        row("gradient through a sleepstudy fit: first call (s)", lambda r: r["grad"]["first_s"])
        row("  warm (s)", lambda r: r["grad"]["warm_s"])
    for label, fit in (first("insteval") or {}).items():
        row(f"InstEval {label}, {fit['rows']:,} rows: first fit (s)", lambda r, lb=label: r["insteval"][lb]["first_s"])
        row("  warm fit (s)", lambda r, lb=label: r["insteval"][lb]["warm_s"])
        row("  llf", lambda r, lb=label: r["insteval"][lb]["llf"], fmt=".6f")
    for size, fit in (first("chunk_sweep") or {}).items():
        row(f"fit_many {first('many')['models']:,} responses, chunks of {int(size):,}: models/s (warm)",
            lambda r, sz=size: r["chunk_sweep"][sz]["models_per_s"], False)
    for name, res in runs:
        if "error" in res:
            lines += ["", f"{name} child stopped early: `{res['error'].splitlines()[0]}`"]
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, CPU only: checks that the script runs")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds allowed per platform")
    args = ap.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    gpu = accelerator_present()
    if not gpu and not args.smoke:
        print("no accelerator visible to JAX (jax.default_backend() is 'cpu'): nothing to measure. "
              "Run with --smoke for the CPU check of this script.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = {"accelerator": run_child(sizes, None, args.timeout, args.smoke) if gpu else None,
               "cpu": run_child(sizes, "cpu", args.timeout, args.smoke)}
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
            "sizes": sizes, "cpu_count": os.cpu_count(), "total_s": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    title = "# jaxlmm on an accelerator" + (" (smoke run: tiny sizes, not a measurement)" if args.smoke else "")
    lines = [title, "", f"Date: {meta['date']}; total {meta['total_s']:.0f} s; persistent cache off; "
             f"CPU cores: {meta['cpu_count']}. Command: `bash bench/gpu.sh{' --smoke' if args.smoke else ''}`.", ""]
    versions = sorted({res["jax"] for res in results.values() if res and "jax" in res})
    if versions:
        lines += [f"JAX {', '.join(versions)}.", ""]
    lines += table(results)
    lines += ["", "Ratio: how many times faster the accelerator is than this machine's CPU (both columns from the "
              "same run)." if gpu else "No accelerator in this run: CPU figures only."]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
