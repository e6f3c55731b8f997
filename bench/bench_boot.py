"""Parametric bootstrap: jaxlmm's r.bootstrap (batched refits) against lme4's bootMer, in one run.

Run: python bench/bench_boot.py [--n 1000] [--r-n 200]
Writes bench/results/boot.md and bench/results/boot.json. lme4 is timed on --r-n replicates and
reported per replicate (bootMer is a serial loop, so its time is linear in the number of replicates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax

import jaxlmm

RESULTS = Path(__file__).parent / "results"
R_SCRIPT = """
suppressMessages(library(lme4))
d <- read.csv("{csv}"); d$Subject <- factor(d$Subject)
m <- lmer(Reaction ~ Days + (Days | Subject), d)
f <- function(x) c(fixef(x), sigma(x))
invisible(bootMer(m, f, nsim = 5, seed = 1))
t0 <- proc.time()[["elapsed"]]
b <- suppressMessages(suppressWarnings(bootMer(m, f, nsim = {n}, seed = 1)))
cat("seconds", proc.time()[["elapsed"]] - t0, "\\n")
"""


def time_lme4(n: int) -> float | None:
    if not shutil.which("Rscript"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "sleepstudy.csv")
        jaxlmm.datasets.load("sleepstudy").to_csv(csv, index=False)
        script = os.path.join(tmp, "boot.R")
        Path(script).write_text(R_SCRIPT.format(csv=csv, n=n))
        out = subprocess.run(["Rscript", script], capture_output=True, text=True, timeout=900)
        for line in out.stdout.splitlines():
            if line.startswith("seconds"):
                return float(line.split()[1])
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--r-n", type=int, default=200)
    args = parser.parse_args()
    r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
    t0 = time.perf_counter()
    r.bootstrap(n=args.n, seed=1, progress=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = r.bootstrap(n=args.n, seed=2, progress=False)
    warm = time.perf_counter() - t0
    lme4 = time_lme4(args.r_n)
    lme4_per = lme4 / args.r_n if lme4 else None
    ratio = (lme4_per * args.n) / warm if lme4_per else None
    rows = {
        "replicates": args.n,
        "jaxlmm_first_call_s": first,
        "jaxlmm_warm_s": warm,
        "jaxlmm_failed_replicates": b.n_failed,
        "lme4_bootMer_replicates_timed": args.r_n,
        "lme4_bootMer_s_per_replicate": lme4_per,
        "lme4_bootMer_s_for_same_n (extrapolated)": lme4_per * args.n if lme4_per else None,
        "speedup_warm": ratio,
        "speedup_first_call": (lme4_per * args.n) / first if lme4_per else None,
        "cpu": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "jax": jax.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "boot.json").write_text(json.dumps(rows, indent=2))
    lines = ["# Parametric bootstrap, sleepstudy (Days | Subject), REML", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows.items()]
    (RESULTS / "boot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
