"""Latency of a new model: fresh processes, jaxlmm against lme4 measured in the same run.

Run from the repository root (about 2-4 minutes on a 2-core machine):

    .venv/bin/python bench/latency.py              # all jobs, 3 repeats each
    .venv/bin/python bench/latency.py --repeats 1  # quicker
    .venv/bin/python bench/latency.py --jobs first,session --no-r

Jobs (each a fresh ``python`` process, and a fresh ``Rscript`` process for lme4):

* ``first``: import + load sleepstudy + first ``fit()`` of ``Reaction ~ Days + (Days|Subject)``,
  then the first ``summary()``. Without the persistent cache (``JAXLMM_NO_CACHE=1``) and with a
  warm one (a temporary cache folder filled by an earlier process). The process wall time is
  measured by this script, from spawn to exit, for both languages.
* ``session``: one process fits 8 different models, each followed by ``summary()`` (issue 12's
  list), without the cache.
* ``bucket``: after a first sleepstudy fit, the fit of a second model of the same shape bucket
  (orthodont ``distance ~ age + (age|Subject)``, and sleepstudy with 7 rows dropped); after a first
  Penicillin fit, a second crossed model of its bucket (Penicillin without plate a and sample F).
* ``many``: ``fit_many`` on 4,000 simulated sleepstudy responses, first and second call in one
  process, no cache; lme4: ``refit`` over 200 of the same responses, timed and scaled to 4,000
  (labelled as such).
* ``profile``: the first profile intervals (``conf_int(method="profile")``; lme4:
  ``confint(m, method = "profile")``) of Penicillin and sleepstudy, in a fresh process, no cache.

Results: ``bench/results/latency.md`` and ``latency.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

SESSION = [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (1 | Subject)"),
    ("sleepstudy", "Reaction ~ Days + (Days || Subject)"),
    ("dietox", "Weight ~ Time + (Time | Pig)"),
    ("dietox", "Weight ~ Time + C(Evit) + (1 | Pig)"),
    ("orthodont", "distance ~ age + (age | Subject)"),
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
    ("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
]

_PY_CHILD = r"""
import json, sys, time, warnings
t_start = time.perf_counter()
job = json.loads(sys.argv[1])
warnings.simplefilter("ignore")
import jaxlmm
t_import = time.perf_counter()
out = {"import_s": t_import - t_start}
load = jaxlmm.datasets.load
if job["job"] == "first":
    df = load("sleepstudy")
    t0 = time.perf_counter()
    r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).fit()
    t1 = time.perf_counter()
    str(r.summary())
    t2 = time.perf_counter()
    out.update(fit_s=t1 - t0, summary_s=t2 - t1, llf=r.llf)
elif job["job"] == "session":
    fits, sums = [], []
    for name, formula in job["models"]:
        df = load(name)
        t0 = time.perf_counter()
        r = jaxlmm.MixedLM.from_formula(formula, df).fit()
        t1 = time.perf_counter()
        str(r.summary())
        t2 = time.perf_counter()
        fits.append(t1 - t0)
        sums.append(t2 - t1)
    out.update(fit_times=fits, summary_times=sums)
elif job["job"] == "bucket":
    ss = load("sleepstudy")
    jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", ss).fit()
    second = {}
    for label, name, formula, drop in [("orthodont (age|Subject)", "orthodont", "distance ~ age + (age | Subject)", 0),
                                       ("sleepstudy minus 7 rows", "sleepstudy", "Reaction ~ Days + (Days | Subject)", 7)]:
        df = load(name).iloc[drop:]
        t0 = time.perf_counter()
        jaxlmm.MixedLM.from_formula(formula, df).fit()
        second[label] = time.perf_counter() - t0
    jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", load("penicillin")).fit()
    fewer = load("penicillin").query("plate != 'a' and sample != 'F'")
    t0 = time.perf_counter()
    jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)", fewer).fit()
    second["penicillin without plate a, sample F (crossed)"] = time.perf_counter() - t0
    out.update(second=second)
elif job["job"] == "many":
    import numpy as np
    df = load("sleepstudy")
    m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df)
    Y = np.loadtxt(job["responses"], delimiter=",")
    calls = []
    for _ in range(2):
        t0 = time.perf_counter()
        m.fit_many(Y, progress=False)
        calls.append(time.perf_counter() - t0)
    out.update(calls=calls, n_models=Y.shape[1])
elif job["job"] == "profile":
    times = {}
    for name, formula in [("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
                          ("sleepstudy", "Reaction ~ Days + (Days | Subject)")]:
        t0 = time.perf_counter()
        r = jaxlmm.MixedLM.from_formula(formula, load(name)).fit()
        t1 = time.perf_counter()
        r.conf_int(method="profile")
        times[name] = {"fit_s": t1 - t0, "profile_s": time.perf_counter() - t1}
    out.update(profile=times)
out["total_in_process_s"] = time.perf_counter() - t_start
print("@@RESULT@@" + json.dumps(out))
"""

_R_CHILD = r"""
t_start <- proc.time()[["elapsed"]]
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
job <- args[1]; datadir <- args[2]
load <- function(name) read.csv(file.path(datadir, paste0(name, ".csv")))
now <- function() proc.time()[["elapsed"]]
out <- list(import_s = now() - t_start)
if (job == "first") {
  df <- load("sleepstudy")
  t0 <- now(); m <- lmer(Reaction ~ Days + (Days | Subject), df); t1 <- now()
  invisible(capture.output(print(summary(m)))); t2 <- now()
  out$fit_s <- t1 - t0; out$summary_s <- t2 - t1; out$llf <- as.numeric(logLik(m))
} else if (job == "session") {
  models <- strsplit(args[3], ";;")[[1]]
  fits <- c(); sums <- c()
  for (spec in models) {
    parts <- strsplit(spec, "::")[[1]]
    df <- load(parts[1])
    for (col in intersect(c("Subject", "Pig", "Evit", "batch", "cask", "plate", "sample"), names(df))) df[[col]] <- factor(df[[col]])
    f <- gsub("C\\(Evit\\)", "Evit", parts[2])
    t0 <- now(); m <- suppressMessages(lmer(as.formula(f), df)); t1 <- now()
    invisible(capture.output(print(summary(m)))); t2 <- now()
    fits <- c(fits, t1 - t0); sums <- c(sums, t2 - t1)
  }
  out$fit_times <- fits; out$summary_times <- sums
} else if (job == "many") {
  df <- load("sleepstudy")
  Y <- as.matrix(read.csv(args[3], header = FALSE))
  m <- lmer(Reaction ~ Days + (Days | Subject), df)
  n <- 200
  t0 <- now(); for (i in seq_len(n)) suppressMessages(refit(m, Y[, i])); out$per_model_s <- (now() - t0) / n
} else if (job == "profile") {
  times <- list()
  for (spec in list(c("penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
                    c("sleepstudy", "Reaction ~ Days + (Days | Subject)"))) {
    t0 <- now(); m <- lmer(as.formula(spec[2]), load(spec[1])); t1 <- now()
    invisible(suppressMessages(confint(m, method = "profile")))
    times[[spec[1]]] <- list(fit_s = t1 - t0, profile_s = now() - t1)
  }
  out$profile <- times
}
out$total_in_process_s <- now() - t_start
cat("@@RESULT@@", jsonlite::toJSON(out, auto_unbox = TRUE, digits = NA), "\n", sep = "")
"""


def run_child(cmd: list[str], env: dict, timeout: float = 600) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(_common.REPO_ROOT), timeout=timeout)
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            out = json.loads(line[len("@@RESULT@@"):])
            out["process_wall_s"] = wall
            return out
    raise RuntimeError(f"child {cmd[:2]} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")


def py_job(job: dict, cache_dir: str | None) -> dict:
    return run_child([sys.executable, "-c", _PY_CHILD, json.dumps(job)], _common.child_env(cache_dir))


def r_job(job: str, datadir: Path, extra: list[str] | None = None) -> dict:
    return run_child(["Rscript", "-e", _R_CHILD, job, str(datadir)] + (extra or []), dict(os.environ))


def median_of(runs: list[dict], key) -> float:
    return statistics.median(key(r) for r in runs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", default="first,session,bucket,many,profile")
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--out", default=str(_common.BENCH_DIR / "results"))
    args = ap.parse_args(argv)
    jobs = args.jobs.split(",")
    have_r = not args.no_r and _common.shutil.which("Rscript") is not None
    datadir = _common.REPO_ROOT / "jaxlmm" / "datasets" / "data"
    results: dict = {"machine": _common.machine_info() if hasattr(_common, "machine_info") else {},
                     "loadavg_start": os.getloadavg()[0], "repeats": args.repeats}
    rows: list[tuple] = []

    def add(label: str, ours: float, theirs: float | None, target: str) -> None:
        ratio = ours / theirs if theirs else float("nan")
        rows.append((label, ours, theirs, ratio, target))
        print(f"{label:62s} jaxlmm {ours:7.3f} s   lme4 {theirs if theirs is not None else float('nan'):7.3f} s"
              f"   ratio {ratio:5.2f}   target {target}", flush=True)

    bytecode = _common.compile_jaxlmm_bytecode()
    with tempfile.TemporaryDirectory(prefix="jaxlmm-latency-") as tmp:
        cache = str(Path(tmp) / "cache")
        Path(cache).mkdir()
        if "first" in jobs:
            cold = [py_job({"job": "first"}, None) for _ in range(args.repeats)]
            py_job({"job": "first"}, cache)  # fills the cache
            warm = [py_job({"job": "first"}, cache) for _ in range(args.repeats)]
            rr = [r_job("first", datadir) for _ in range(args.repeats)] if have_r else []
            results["first"] = {"nocache": cold, "warmcache": warm, "lme4": rr}
            r_wall = median_of(rr, lambda r: r["process_wall_s"]) if rr else None
            r_fit_wall = median_of(rr, lambda r: r["process_wall_s"] - r["summary_s"]) if rr else None
            add("import + first sleepstudy fit, fresh process, no cache",
                median_of(cold, lambda r: r["process_wall_s"] - r["summary_s"]), r_fit_wall, "<= 1.5x")
            add("import + first sleepstudy fit, fresh process, warm cache",
                median_of(warm, lambda r: r["process_wall_s"] - r["summary_s"]), r_fit_wall, "<= 1.0x")
            add("  of which the first fit() (no cache)", median_of(cold, lambda r: r["fit_s"]),
                median_of(rr, lambda r: r["fit_s"]) if rr else None, "")
            add("first summary() after a fit, no cache", median_of(cold, lambda r: r["summary_s"]),
                median_of(rr, lambda r: r["summary_s"]) if rr else None, "<= 0.2 s")
            add("whole process: import, fit, summary (no cache)", median_of(cold, lambda r: r["process_wall_s"]),
                r_wall, "")
        if "session" in jobs:
            job = {"job": "session", "models": SESSION}
            runs = [py_job(job, None) for _ in range(args.repeats)]
            spec = ";;".join(f"{n}::{f}" for n, f in SESSION)
            rr = [r_job("session", datadir, [spec]) for _ in range(args.repeats)] if have_r else []
            results["session"] = {"jaxlmm": runs, "lme4": rr}
            add("8-model session (fit + summary each), whole process, no cache",
                median_of(runs, lambda r: r["process_wall_s"]),
                median_of(rr, lambda r: r["process_wall_s"]) if rr else None, "<= 2x")
            for i, (name, formula) in enumerate(SESSION):
                add(f"  {name} {formula}: fit + summary", median_of(runs, lambda r: r["fit_times"][i] + r["summary_times"][i]),
                    median_of(rr, lambda r: r["fit_times"][i] + r["summary_times"][i]) if rr else None, "")
        if "bucket" in jobs:
            runs = [py_job({"job": "bucket"}, None) for _ in range(args.repeats)]
            results["bucket"] = runs
            for label in runs[0]["second"]:
                add(f"second model of a bucket: {label}", median_of(runs, lambda r: r["second"][label]), None, "<= 0.02 s")
        if "many" in jobs:
            import numpy as np

            df = _common.read_source({"dataset": "sleepstudy"})
            rng = np.random.default_rng(0)
            Y = df["Reaction"].to_numpy()[:, None] + rng.normal(0.0, 30.0, (len(df), 4000))
            responses = Path(tmp) / "responses.csv"
            np.savetxt(responses, Y, delimiter=",")
            runs = [py_job({"job": "many", "responses": str(responses)}, None) for _ in range(args.repeats)]
            rr = [r_job("many", datadir, [str(responses)]) for _ in range(min(args.repeats, 1))] if have_r else []
            results["many"] = {"jaxlmm": runs, "lme4": rr}
            lme4_4000 = 4000 * median_of(rr, lambda r: r["per_model_s"]) if rr else None
            add("fit_many, 4,000 sleepstudy responses: first call (lme4: refit x 200, scaled)",
                median_of(runs, lambda r: r["calls"][0]), lme4_4000, "")
            add("fit_many, 4,000 sleepstudy responses: second call", median_of(runs, lambda r: r["calls"][1]),
                lme4_4000, "")
        if "profile" in jobs:
            runs = [py_job({"job": "profile"}, None) for _ in range(args.repeats)]
            rr = [r_job("profile", datadir) for _ in range(args.repeats)] if have_r else []
            results["profile"] = {"jaxlmm": runs, "lme4": rr}
            for name in ("penicillin", "sleepstudy"):
                add(f"first profile intervals, {name}, no cache", median_of(runs, lambda r: r["profile"][name]["profile_s"]),
                    median_of(rr, lambda r: r["profile"][name]["profile_s"]) if rr else None, "<= 3 s")
    results["loadavg_end"] = os.getloadavg()[0]
    results["table"] = rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(results, indent=1, default=str))
    lines = ["# Latency of a new model (fresh processes)", "",
             f"Machine: {os.cpu_count()} cores; load average {results['loadavg_start']:.2f} at start, "
             f"{results['loadavg_end']:.2f} at end. Medians of {args.repeats} fresh processes per figure; "
             "lme4 measured in the same run by `Rscript` (library load included in process figures). "
             + ("jaxlmm's modules were compiled to bytecode first, as `pip install` does (this environment sets "
                "`PYTHONDONTWRITEBYTECODE=1`, and an editable install would recompile them in every process)."
                if bytecode else "Compiling jaxlmm's modules to bytecode failed: each process compiled them."), "",
             "| what | jaxlmm (s) | lme4 (s) | ratio | target |", "|---|---:|---:|---:|---|"]
    for label, ours, theirs, ratio, target in rows:
        lines.append(f"| {label.strip()} | {ours:.3f} | {'' if theirs is None else f'{theirs:.3f}'} | "
                     f"{'' if theirs is None else f'{ratio:.2f}'} | {target} |")
    (out / "latency.md").write_text("\n".join(lines) + "\n")
    print(f"\nwrote {out / 'latency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
