#!/usr/bin/env python
"""Crossed random-effects benchmark: jaxlmm against R's lme4 on four REML fits with crossed terms.

Run from the repository root:

    .venv/bin/python bench/bench_crossed.py            # full run (several minutes: InstEval dominates)
    .venv/bin/python bench/bench_crossed.py --quick    # fewer repeats
    .venv/bin/python bench/bench_crossed.py --models penicillin,psycholing_max --no-r

Models (all REML):

* ``insteval``: ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, 73,421 rows, read from
  ``../shared/reference/data/insteval.csv`` (``--insteval``); s, d, dept and service are categorical.
* ``star``: mlmRev's ``star``, ``math ~ gr + cltype + (1 | id) + (1 | tch) + (1 | sch)``, rows with a
  missing value in those columns dropped. Exported once from R to ``bench/.cache/star.csv``.
* ``psycholing_max``: ``rt ~ c + (1 + c | subj) + (1 + c | item)`` on ``tests/data/psycholing.csv``.
* ``penicillin``: ``diameter ~ 1 + (1 | plate) + (1 | sample)`` (``jaxlmm.datasets``).

Categorical columns are strings in jaxlmm (``.astype(str)``) and ``factor()`` in R; R reads the very
frame jaxlmm fitted (written to a temporary CSV), so both fit the same rows.

What is timed, per model:

* jaxlmm first fit in a fresh process: a subprocess (``sys.executable -c``) imports jaxlmm, loads
  the data, then times only ``MixedLM.from_formula(formula, df).fit(reml=True)`` — JIT compilation
  (or a cache load) plus formula, design and one fit, without the import and data loading. Once with
  the persistent compilation cache off (``JAXLMM_NO_CACHE=1``) and once with a warm cache
  (``JAXLMM_CACHE_DIR`` pointing at a temporary folder that an earlier subprocess populated). The
  subprocess also reports its peak RSS (VmHWM from /proc/self/status around that fit, and
  ``resource.getrusage(...).ru_maxrss``).
* jaxlmm warm fit: in this process, ``m = MixedLM.from_formula(formula, df)`` is built once (its time
  recorded), ``m.fit(reml=True)`` runs once as a warm-up (compilation), then the median of
  ``--repeats`` further ``m.fit(reml=True)`` calls (2 on insteval and star) — fit only, no formula
  or design. The llf, the number of iterations (``r.n_iter``) and ``r.converged`` are recorded.
* lme4: one ``Rscript`` process fits lme4's sleepstudy model once to load lme4's code, then per model
  times ``lmer(formula, data, REML = TRUE)`` (model frame and design included) with ``proc.time``.
  Small models: one warm-up fit, then batches of >= 50 ms, median per fit over ``--repeats``.
  insteval and star: a single timed fit, no warm-up (about 20 s on InstEval). Records ``logLik``
  (``sprintf("%.8f")``) and the number of deviance evaluations ``m@optinfo$feval``.
* Ratios: lme4 time / jaxlmm warm fit, and lme4 time / jaxlmm first fit in a fresh process without
  cache. The log-likelihood difference jaxlmm − lme4 is flagged when below −1e-6 (jaxlmm's optimum
  lower than lme4's).

Results go to ``bench/results/crossed.md`` and ``bench/results/crossed.json``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_INSTEVAL = REPO_ROOT.parent / "shared" / "reference" / "data" / "insteval.csv"
CACHE_DIR = BENCH_DIR / ".cache"
STAR_CSV = CACHE_DIR / "star.csv"
PSYCHOLING_CSV = REPO_ROOT / "tests" / "data" / "psycholing.csv"

# jaxlmm's llf minus lme4's logLik below -LLF_TOL is flagged (jaxlmm stopped at a worse optimum).
LLF_TOL = 1e-6

MODELS = [
    {
        "key": "insteval",
        "formula": "y ~ service + (1 | s) + (1 | d) + (1 | dept)",
        "response": "y",
        "columns": ["y", "service", "s", "d", "dept"],
        "categorical": ["service", "s", "d", "dept"],
        "groups": ["s", "d", "dept"],
        "source": {"csv": None},  # filled from --insteval
        "large": True,
    },
    {
        "key": "star",
        "formula": "math ~ gr + cltype + (1 | id) + (1 | tch) + (1 | sch)",
        "response": "math",
        "columns": ["math", "gr", "cltype", "id", "tch", "sch"],
        "categorical": ["gr", "cltype", "id", "tch", "sch"],
        "groups": ["id", "tch", "sch"],
        "source": {"csv": str(STAR_CSV), "r_export": "star"},
        "large": True,
    },
    {
        "key": "psycholing_max",
        "formula": "rt ~ c + (1 + c | subj) + (1 + c | item)",
        "response": "rt",
        "columns": ["rt", "c", "subj", "item"],
        "categorical": ["subj", "item"],
        "groups": ["subj", "item"],
        "source": {"csv": str(PSYCHOLING_CSV)},
    },
    {
        "key": "penicillin",
        "formula": "diameter ~ 1 + (1 | plate) + (1 | sample)",
        "response": "diameter",
        "columns": ["diameter", "plate", "sample"],
        "categorical": ["plate", "sample"],
        "groups": ["plate", "sample"],
        "source": {"dataset": "penicillin"},
    },
]


# ------------------------------------------------------------------------------------------------
# data


_R_EXPORT_STAR = r"""
args <- commandArgs(TRUE)
data(star, package = "mlmRev")
d <- star[c("math", "gr", "cltype", "id", "tch", "sch")]
for (v in c("gr", "cltype", "id", "tch", "sch")) d[[v]] <- as.character(d[[v]])
write.csv(d, args[1], row.names = FALSE)
cat("@@EXPORTED", nrow(d), sum(complete.cases(d)), "\n", sep = "\t")
"""


def ensure_star_csv(path: Path = STAR_CSV) -> str | None:
    """Export mlmRev's ``star`` (the model's six columns, NAs kept) to ``path`` unless it exists.

    Returns None on success, else a message saying why the file could not be made.
    """
    if path.exists():
        return None
    rscript = shutil.which("Rscript")
    if rscript is None:
        return f"star: skipped, {path} missing and Rscript not found on PATH to export it from mlmRev."
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.csv")
    with tempfile.TemporaryDirectory(prefix="jaxlmm-bench-") as d:
        script = Path(d) / "export_star.R"
        script.write_text(_R_EXPORT_STAR)
        proc = subprocess.run([rscript, str(script), str(tmp)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or not tmp.exists():
        tmp.unlink(missing_ok=True)
        return f"star: skipped, exporting mlmRev's star with Rscript failed (rc={proc.returncode}): {proc.stderr[-500:]}"
    tmp.replace(path)
    return None


def load_frame(spec: dict):
    """The model's DataFrame: used columns, rows with NAs dropped, categoricals as strings, response float."""
    import pandas as pd

    src = spec["source"]
    if src.get("csv"):
        df = pd.read_csv(src["csv"])
    else:
        import jaxlmm

        df = jaxlmm.datasets.load(src["dataset"])
    df = df[spec["columns"]].dropna().reset_index(drop=True)
    for c in spec["categorical"]:
        df[c] = df[c].astype(str)
    df[spec["response"]] = df[spec["response"]].astype(float)
    for c in spec["columns"]:
        if c not in spec["categorical"] and c != spec["response"]:
            df[c] = df[c].astype(float)
    return df


# ------------------------------------------------------------------------------------------------
# jaxlmm first fit in a fresh process

_CHILD = r"""
import json, resource, sys, time, warnings
spec = json.loads(sys.argv[1])
import jaxlmm
sys.path.insert(0, spec["bench_dir"])
from bench_crossed import load_frame
df = load_frame(spec)
def status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1
rss_before = status_kib("VmRSS")
peak_before = status_kib("VmHWM")
# Linux: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS.
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset_ok = True
except OSError:
    reset_ok = False
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    t0 = time.perf_counter()
    r = jaxlmm.MixedLM.from_formula(spec["formula"], df).fit(reml=True)
    t_fit = time.perf_counter() - t0
peak_fit = status_kib("VmHWM")
print("@@RESULT@@" + json.dumps({
    "first_fit_s": t_fit, "llf": float(r.llf), "converged": bool(r.converged), "n_iter": int(r.n_iter),
    "rss_before_fit_kib": rss_before, "peak_before_fit_kib": peak_before, "peak_fit_kib": peak_fit,
    "peak_reset_ok": reset_ok, "peak_process_kib": max(peak_before, peak_fit),
    "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "nobs": int(r.nobs),
    "warnings": [str(x.message)[:200] for x in w],
}))
"""


def _status_kib(field: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def _child_env(cache_dir: str | None) -> dict:
    env = dict(os.environ)
    for k in ("JAXLMM_NO_CACHE", "JAXLMM_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(k, None)
    if cache_dir is None:
        env["JAXLMM_NO_CACHE"] = "1"
    else:
        env["JAXLMM_CACHE_DIR"] = cache_dir
    return env


def _cache_entries(cache_dir: str) -> int:
    return sum(1 for p in Path(cache_dir).iterdir() if not p.name.startswith("."))


def first_fit_subprocess(spec: dict, cache_dir: str | None) -> dict:
    payload = dict(spec, bench_dir=str(BENCH_DIR))
    n_before = _cache_entries(cache_dir) if cache_dir is not None else None
    parent_rss, parent_peak = _status_kib("VmRSS"), _status_kib("VmHWM")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(payload)],
        env=_child_env(cache_dir),
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        timeout=900,
    )
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            out = json.loads(line[len("@@RESULT@@") :])
            out["process_wall_s"] = wall
            out["parent_rss_at_spawn_kib"] = parent_rss
            out["parent_peak_at_spawn_kib"] = parent_peak
            if cache_dir is not None:
                out["cache_entries_before"] = n_before
                out["cache_entries_after"] = _cache_entries(cache_dir)
            return out
    raise RuntimeError(f"jaxlmm subprocess failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------
# jaxlmm warm, in this process


def bench_jaxlmm_warm(spec: dict, df, repeats: int) -> dict:
    import jaxlmm

    t0 = time.perf_counter()
    m = jaxlmm.MixedLM.from_formula(spec["formula"], df)
    t_build = time.perf_counter() - t0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        r = m.fit(reml=True)  # warm-up: compiles (this process runs with JAXLMM_NO_CACHE=1)
        t_warmup = time.perf_counter() - t0
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = m.fit(reml=True)
            times.append(time.perf_counter() - t0)
    return {
        "fit_s": statistics.median(times),
        "fit_times": times,
        "build_s": t_build,
        "warmup_fit_s": t_warmup,
        "llf": float(r.llf),
        "n_iter": int(r.n_iter),
        "converged": bool(r.converged),
        "grad_norm": float(r.grad_norm),
        "is_singular": bool(r.is_singular),
        "theta": [float(x) for x in r.theta],
        "fe_params": {k: float(v) for k, v in r.fe_params.items()},
        "warnings": sorted({str(x.message)[:200] for x in w}),
    }


# ------------------------------------------------------------------------------------------------
# lme4

_R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
spec <- read.delim(args[1], stringsAsFactors = FALSE, quote = "", colClasses = "character")
cat("@@VERSION", as.character(packageVersion("lme4")), R.version.string,
    paste(extSoftVersion()[["BLAS"]], La_library()), "\n", sep = "\t")
# load and byte-compile lme4's code paths once, outside every timing
invisible(suppressMessages(lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE)))
for (i in seq_len(nrow(spec))) {
  key <- spec$key[i]
  res <- tryCatch({
    fac <- strsplit(spec$factors[i], ",", fixed = TRUE)[[1]]
    cols <- strsplit(spec$columns[i], ",", fixed = TRUE)[[1]]
    d <- read.csv(spec$csv[i], colClasses = setNames(rep("character", length(fac)), fac))
    d <- d[complete.cases(d[cols]), cols]
    for (v in fac) d[[v]] <- factor(d[[v]])
    f <- as.formula(spec$formula[i])
    nrep <- as.integer(spec$nrep[i])
    w <- character(0)
    fit1 <- function() withCallingHandlers(lmer(f, data = d, REML = TRUE),
      warning = function(c) { w <<- c(w, conditionMessage(c)); invokeRestart("muffleWarning") },
      message = function(c) { w <<- c(w, conditionMessage(c)); invokeRestart("muffleMessage") })
    if (spec$warmup[i] == "1") {
      t0 <- proc.time()[["elapsed"]]
      m <- fit1()
      t_warm <- proc.time()[["elapsed"]] - t0
      # batches of b fits, each batch >= ~50 ms, so proc.time's 1 ms resolution does not matter
      b <- max(1L, as.integer(ceiling(0.05 / max(t_warm, 1e-3))))
      nb <- max(1L, as.integer(ceiling(nrep / b)))
      tt <- numeric(nb)
      for (k in seq_len(nb)) {
        t0 <- proc.time()[["elapsed"]]
        for (j in seq_len(b)) m <- suppressMessages(suppressWarnings(lmer(f, data = d, REML = TRUE)))
        tt[k] <- (proc.time()[["elapsed"]] - t0) / b
      }
    } else {
      b <- 1L
      nb <- max(1L, nrep)
      tt <- numeric(nb)
      for (k in seq_len(nb)) {
        t0 <- proc.time()[["elapsed"]]
        m <- fit1()
        tt[k] <- proc.time()[["elapsed"]] - t0
      }
    }
    feval <- m@optinfo$feval
    if (is.null(feval)) feval <- NA
    fe <- paste(names(fixef(m)), sprintf("%.17g", fixef(m)), sep = "=", collapse = ";")
    cat("@@RESULT", key, sprintf("%.6f", median(tt)), sprintf("%.8f", as.numeric(logLik(m))),
        nb * b, b, feval, m@optinfo$optimizer, as.integer(isSingular(m)),
        paste(sprintf("%.6f", tt), collapse = ","), nrow(d), fe,
        gsub("[\t\n]", " ", paste(unique(w), collapse = " | ")), "\n", sep = "\t")
    TRUE
  }, error = function(e) {
    cat("@@ERROR", key, gsub("[\t\n]", " ", conditionMessage(e)), "\n", sep = "\t")
    FALSE
  })
}
"""


def bench_lme4(specs: list[dict], frames: dict, repeats: dict, workdir: Path) -> dict:
    rscript = shutil.which("Rscript")
    if rscript is None:
        return {"_skipped": "Rscript not found on PATH: lme4 columns left empty."}
    rows = ["key\tcsv\tfactors\tcolumns\tformula\tnrep\twarmup"]
    for spec in specs:
        csv = workdir / f"{spec['key']}.csv"
        frames[spec["key"]].to_csv(csv, index=False)
        warm = "0" if spec.get("large") else "1"
        rows.append(
            f"{spec['key']}\t{csv}\t{','.join(spec['categorical'])}\t{','.join(spec['columns'])}\t"
            f"{spec['formula']}\t{repeats[spec['key']]}\t{warm}"
        )
    (workdir / "spec.tsv").write_text("\n".join(rows) + "\n")
    (workdir / "bench.R").write_text(_R_SCRIPT)
    proc = subprocess.run(
        [rscript, str(workdir / "bench.R"), str(workdir / "spec.tsv")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    out: dict = {}
    errors = []
    for line in proc.stdout.splitlines():
        parts = line.rstrip("\n").split("\t")
        if parts[0] == "@@VERSION":
            out["_version"] = {"lme4": parts[1], "R": parts[2], "blas": parts[3].strip()}
        elif parts[0] == "@@ERROR":
            errors.append(f"lme4 failed on {parts[1]}: {parts[2].strip() if len(parts) > 2 else ''}")
        elif parts[0] == "@@RESULT":
            key, med, ll, n, batch, feval, opt, sing, tt, nobs, fe, warn = (parts + [""] * 13)[1:13]
            out[key] = {
                "time_s": float(med),
                "llf": float(ll),
                "n_fits": int(n),
                "batch": int(batch),
                "batch_times": [float(x) for x in tt.split(",") if x],
                "feval": None if feval in ("", "NA") else int(float(feval)),
                "optimizer": opt,
                "singular": sing.strip() == "1",
                "nobs": int(nobs),
                "fe_params": {a: float(b) for a, b in (p.split("=") for p in fe.split(";") if p)},
                "warnings": [warn.strip()] if warn.strip() else [],
            }
    if errors:
        out["_errors"] = errors
    if proc.returncode != 0 or (not any(not k.startswith("_") for k in out) and not errors):
        out["_error"] = f"Rscript failed (rc={proc.returncode}): {proc.stderr[-2000:]}"
    return out


# ------------------------------------------------------------------------------------------------
# machine info


def machine_info() -> dict:
    import jax
    import numpy
    import pandas

    import jaxlmm

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(os.cpu_count())
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    source = {"jaxlmm_file": str(Path(jaxlmm.__file__).resolve().parent)}
    try:
        git = ["git", "-C", str(REPO_ROOT)]
        source["repo_head"] = subprocess.run(
            git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
        if Path(source["jaxlmm_file"]).is_relative_to(REPO_ROOT):
            dirty = subprocess.run(
                git + ["status", "--porcelain", "--", "jaxlmm"], capture_output=True, text=True, timeout=30
            ).stdout.split("\n")
            source["jaxlmm_uncommitted"] = [ln[3:] for ln in dirty if ln.strip()]
    except (OSError, subprocess.SubprocessError):
        pass
    thread_env = {
        k: os.environ.get(k, "(unset)")
        for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "JAX_PLATFORMS")
    }
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "nproc": nproc,
        "cpu": cpu,
        "mem_gib": mem_gib,
        "python": platform.python_version(),
        "jaxlmm": jaxlmm.__version__,
        "source": source,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "thread_env": thread_env,
        "loadavg_start": list(os.getloadavg()),
    }


# ------------------------------------------------------------------------------------------------
# reporting


def fmt_t(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "—"
    x = a / b
    return f"{x:.1f}×" if x >= 0.95 else (f"{x:.2f}×" if x >= 0.1 else f"{x:.2g}×")


def fmt_mib(kib: float | None) -> str:
    if kib is None or kib < 0:
        return "—"
    return f"{kib / 1024:.1f} MiB" if abs(kib) < 10 * 1024 else f"{kib / 1024:.0f} MiB"


def _get(d: dict, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def build_tables(results: dict) -> dict:
    timing_h = [
        "model",
        "n",
        "levels",
        "jaxlmm 1st fit, no cache",
        "jaxlmm 1st fit, warm cache",
        "jaxlmm warm fit",
        "jaxlmm iters",
        "lme4",
        "lme4 fevals",
        "lme4 / jaxlmm warm",
        "lme4 / jaxlmm 1st (no cache)",
    ]
    llf_h = ["model", "jaxlmm llf", "lme4 logLik", "jaxlmm − lme4", "jaxlmm converged", "lme4 singular", "check"]
    mem_h = ["model (run)", "rows", "RSS before fit", "peak RSS during 1st fit", "added by 1st fit",
             "process peak (VmHWM)", "ru_maxrss", "parent peak RSS at spawn"]
    timing, llf, mem = [], [], []
    for key, r in results["models"].items():
        jw = _get(r, "jaxlmm", "fit_s")
        j1 = _get(r, "jaxlmm", "first_fit_nocache", "first_fit_s")
        lm = _get(r, "lme4", "time_s")
        lm_txt = fmt_t(lm)
        if lm is not None and _get(r, "lme4", "n_fits") == 1:
            lm_txt += " (1 fit)"
        feval = _get(r, "lme4", "feval")
        timing.append(
            [
                key,
                str(r["nobs"]),
                " × ".join(f"{n} {g}" for g, n in r["levels"].items()),
                fmt_t(j1),
                fmt_t(_get(r, "jaxlmm", "first_fit_warmcache", "first_fit_s")),
                fmt_t(jw),
                "—" if _get(r, "jaxlmm", "n_iter") is None else str(r["jaxlmm"]["n_iter"]),
                lm_txt,
                "—" if feval is None else str(feval),
                fmt_ratio(lm, jw),
                fmt_ratio(lm, j1),
            ]
        )
        lj, ll = _get(r, "jaxlmm", "llf"), _get(r, "lme4", "llf")
        diff = None if (lj is None or ll is None) else lj - ll
        flags = []
        if diff is not None and diff < -LLF_TOL:
            flags.append(f"jaxlmm llf below lme4's by {-diff:.2e}")
        if _get(r, "jaxlmm", "converged") is False:
            flags.append("jaxlmm not converged")
        r["llf_check"] = {"diff_jaxlmm_minus_lme4": diff, "tol": LLF_TOL, "flags": flags}
        f = lambda v: "—" if v is None else f"{v:.8f}"  # noqa: E731
        conv = _get(r, "jaxlmm", "converged")
        sing = _get(r, "lme4", "singular")
        llf.append(
            [
                key,
                f(lj),
                f(ll),
                "—" if diff is None else f"{diff:+.2e}",
                "—" if conv is None else ("yes" if conv else "**no**"),
                "—" if sing is None else ("yes" if sing else "no"),
                ("**" + "; ".join(flags) + "**") if flags else "OK",
            ]
        )
        for label, run in (("no cache", "first_fit_nocache"), ("warm cache", "first_fit_warmcache")):
            c = _get(r, "jaxlmm", run)
            if not c:
                continue
            mem.append(
                [
                    f"{key} ({label})",
                    str(r["nobs"]),
                    fmt_mib(c["rss_before_fit_kib"]),
                    fmt_mib(c["peak_fit_kib"]) if c.get("peak_reset_ok") else "—",
                    fmt_mib(c["peak_fit_kib"] - c["rss_before_fit_kib"]) if c.get("peak_reset_ok") else "—",
                    fmt_mib(c["peak_process_kib"]),
                    fmt_mib(c["ru_maxrss_kib"]),
                    fmt_mib(c["parent_peak_at_spawn_kib"]),
                ]
            )
    return {"timing": (timing_h, timing), "llf": (llf_h, llf), "mem": (mem_h, mem)}


def write_markdown(results: dict, tables: dict, path: Path) -> None:
    m = results["machine"]
    lme4v = results.get("lme4_version") or {}
    src = m.get("source") or {}
    where = ""
    if src.get("jaxlmm_file") and Path(src["jaxlmm_file"]).is_relative_to(REPO_ROOT):
        where = (f", working tree at commit {src.get('repo_head', '?')}"
                 + (f" **with uncommitted changes in {', '.join(src['jaxlmm_uncommitted'])}**"
                    if src.get("jaxlmm_uncommitted") else ", no uncommitted changes in jaxlmm/"))
    elif src.get("jaxlmm_file"):
        where = f", imported from `{src['jaxlmm_file']}`"
    lines = [
        "# jaxlmm crossed random-effects benchmark",
        "",
        f"Date: {m['date']}  ",
        f"Machine: {m['cpu']}, nproc = {m['nproc']}, {m['mem_gib']} GiB RAM, {m['platform']}  ",
        f"Versions: python {m['python']}, jaxlmm {m['jaxlmm']}{where}, jax {m['jax']} ({m['jax_backend']}), "
        f"numpy {m['numpy']}, pandas {m['pandas']}, "
        f"lme4 {lme4v.get('lme4', '—')} ({lme4v.get('R', 'R not run')})  ",
        f"R BLAS/LAPACK: {lme4v.get('blas', '—')}  ",
        "Threads: " + ", ".join(f"{k}={v}" for k, v in m["thread_env"].items()) + " (defaults, not overridden)  ",
        "Load average (1, 5, 15 min) at start: {} ; at end: {}  ".format(
            ", ".join(f"{x:.2f}" for x in m["loadavg_start"]), ", ".join(f"{x:.2f}" for x in m.get("loadavg_end", []))
        ),
        f"Command: `{results['command']}`; repeats = {results['repeats']} "
        f"({results['large_repeats']} on insteval and star); total run time {results['total_s']:.0f} s",
        "",
        "## Time per REML fit",
        "",
        md_table(*tables["timing"]),
        "",
        "- *1st fit*: a fresh Python process; the time of `MixedLM.from_formula(...).fit()` only (import and data "
        "loading excluded), i.e. formula, design, JIT compilation and one fit. *No cache*: `JAXLMM_NO_CACHE=1`; "
        "*warm cache*: `JAXLMM_CACHE_DIR` populated by an earlier process.",
        "- *jaxlmm warm fit*: median over repeats of `m.fit(reml=True)` on a prebuilt model, in one process after "
        "a warm-up fit — fit only (the one-off `from_formula` time is in the JSON as `build_s`). *iters*: `r.n_iter`.",
        "- *lme4*: `lmer(..., REML = TRUE)` timed in R, model frame and design included. Small models: median per "
        "fit over batches after a warm-up fit; insteval and star: a single fit without a warm-up of that model "
        "(lme4's code loaded beforehand by a sleepstudy fit). *fevals*: `m@optinfo$feval`.",
        "- Ratios > 1 mean jaxlmm is faster. The warm ratio compares lme4's whole `lmer()` call with jaxlmm's fit "
        "alone; the 1st-fit ratio compares it with a cold jaxlmm process that compiles everything.",
        "",
        "## Log-likelihoods (REML)",
        "",
        md_table(*tables["llf"]),
        "",
        f"*jaxlmm − lme4*: jaxlmm's `llf` (warm fit) minus lme4's `logLik`; flagged when below −{LLF_TOL:g} (jaxlmm "
        "stopped at a lower optimum). Positive values mean jaxlmm found a higher REML log-likelihood.",
        "",
        "## jaxlmm memory (first-fit subprocesses)",
        "",
        md_table(*tables["mem"]),
        "",
        "From /proc/self/status in the first-fit subprocess: *RSS before fit* is VmRSS after importing jaxlmm and "
        "loading the data; *peak RSS during 1st fit* is VmHWM after the fit, reset just before it by writing 5 to "
        "/proc/self/clear_refs, and *added by 1st fit* the difference (formula, design, compilation or cache "
        "load, JAX runtime start-up, the fit). *Process peak* is the larger of VmHWM before the reset and after the "
        "fit. `ru_maxrss` (`resource.getrusage(RUSAGE_SELF)` in the child) is shown as well, but on Linux it also "
        "counts the memory image the child was forked from (the parent's peak RSS is carried across fork/exec), "
        "so it is the child's own peak only when it is above *parent peak RSS at spawn*; the VmHWM columns are "
        "always the child's own.",
    ]
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    keys = [s["key"] for s in MODELS]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=None,
                    help="repeats for warm timings (default 5, 3 with --quick; insteval and star: at most 2, 1 with "
                         "--quick)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats everywhere")
    ap.add_argument("--insteval", type=Path, default=DEFAULT_INSTEVAL, help="path of insteval.csv")
    ap.add_argument("--models", default=None, help="comma-separated subset of: " + ",".join(keys))
    ap.add_argument("--no-r", action="store_true", help="skip lme4 (star's one-off data export still uses R)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output folder")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    repeats = max(1, args.repeats or (3 if args.quick else 5))
    large_repeats = min(repeats, 1 if args.quick else 2)
    # fresh-process first fits per setting (no cache, warm cache): 2 on the small models, 1 on the large ones
    first_small = 1 if args.quick else min(2, repeats)

    # This process's own warm timings do not need the persistent cache; keep it out of ~/.cache.
    os.environ["JAXLMM_NO_CACHE"] = "1"
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

    notes: list[str] = []
    wanted = None
    if args.models:
        wanted = {k.strip() for k in args.models.split(",") if k.strip()}
        unknown = wanted - set(keys)
        if unknown:
            ap.error(f"unknown model(s) {', '.join(sorted(unknown))}; choose from {', '.join(keys)}")
    specs = []
    for spec in MODELS:
        spec = json.loads(json.dumps(spec))
        if wanted is not None and spec["key"] not in wanted:
            continue
        src = spec["source"]
        if spec["key"] == "insteval":
            src["csv"] = str(args.insteval.expanduser().resolve())
        if src.get("r_export") == "star":
            msg = ensure_star_csv(Path(src["csv"]))
            if msg:
                print(msg)
                notes.append(msg)
                continue
        if src.get("csv") and not Path(src["csv"]).exists():
            msg = f"{spec['key']}: skipped, data file not found at {src['csv']}" + (
                " (pass --insteval PATH)." if spec["key"] == "insteval" else ".")
            print(msg)
            notes.append(msg)
            continue
        specs.append(spec)

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "repeats": repeats,
        "large_repeats": large_repeats,
        "llf_tol": LLF_TOL,
        "machine": machine_info(),
        "models": {},
        "notes": notes,
    }
    print(f"machine: {results['machine']['cpu']}, nproc={results['machine']['nproc']}, jax {results['machine']['jax']}")

    frames = {}
    for spec in specs:
        df = load_frame(spec)
        frames[spec["key"]] = df
        results["models"][spec["key"]] = {
            "formula": spec["formula"],
            "nobs": len(df),
            "levels": {g: int(df[g].nunique()) for g in spec["groups"]},
            "source": spec["source"],
        }

    with tempfile.TemporaryDirectory(prefix="jaxlmm-bench-") as tmp:
        tmp = Path(tmp)
        cache_dir = tmp / "jax-cache"
        cache_dir.mkdir()
        for spec in specs:
            key, df = spec["key"], frames[spec["key"]]
            res = results["models"][key]
            levels = ", ".join(f"{g}: {n}" for g, n in res["levels"].items())
            print(f"\n== {key}: {spec['formula']}  (n={len(df)}; levels {levels})", flush=True)
            n_first = 1 if spec.get("large") else first_small
            n_warm = large_repeats if spec.get("large") else repeats

            # (a) first fit in fresh processes
            cold = [first_fit_subprocess(spec, None) for _ in range(n_first)]
            print(f"  jaxlmm first fit, no cache:   {fmt_t(statistics.median(c['first_fit_s'] for c in cold))}"
                  f"  (peak RSS {fmt_mib(max(c['peak_process_kib'] for c in cold))})", flush=True)
            populate = first_fit_subprocess(spec, str(cache_dir))
            warm = [first_fit_subprocess(spec, str(cache_dir)) for _ in range(n_first)]
            print(f"  jaxlmm first fit, warm cache: {fmt_t(statistics.median(c['first_fit_s'] for c in warm))}"
                  f"  (populating run {fmt_t(populate['first_fit_s'])}; peak RSS "
                  f"{fmt_mib(max(c['peak_process_kib'] for c in warm))})", flush=True)

            def summarise(runs):
                best = dict(runs[-1])
                best["first_fit_s"] = statistics.median(r["first_fit_s"] for r in runs)
                best["first_fit_times"] = [r["first_fit_s"] for r in runs]
                for k in ("peak_fit_kib", "peak_process_kib", "ru_maxrss_kib"):
                    best[k] = max(r[k] for r in runs)
                return best

            # (b) warm, in this process
            jw = bench_jaxlmm_warm(spec, df, n_warm)
            jw["first_fit_nocache"] = summarise(cold)
            jw["first_fit_cache_populate"] = populate
            jw["first_fit_warmcache"] = summarise(warm)
            res["jaxlmm"] = jw
            print(f"  jaxlmm warm fit {fmt_t(jw['fit_s'])} (median of {len(jw['fit_times'])}; warm-up "
                  f"{fmt_t(jw['warmup_fit_s'])}, build {fmt_t(jw['build_s'])}), llf {jw['llf']:.8f}, "
                  f"{jw['n_iter']} iterations, converged={jw['converged']}", flush=True)
            for w in jw["warnings"]:
                notes.append(f"{key}: jaxlmm warning: {w}")
            if not jw["converged"]:
                notes.append(f"{key}: jaxlmm reports converged=False (grad norm {jw['grad_norm']:.2e}).")
            missed = [c for c in warm if c["cache_entries_after"] > c["cache_entries_before"]]
            if missed:
                notes.append(f"{key}: the warm-cache first fit wrote "
                             f"{missed[0]['cache_entries_after'] - missed[0]['cache_entries_before']} new entries to "
                             "the compilation cache, i.e. it missed the cache.")
            for c in cold + [populate] + warm:
                if abs(c["llf"] - jw["llf"]) > 1e-6:
                    notes.append(f"{key}: jaxlmm llf in a subprocess ({c['llf']:.8f}) differs from in-process "
                                 f"({jw['llf']:.8f})")
                    break

        # lme4, one R process for all models
        if specs and not args.no_r:
            print("\n== lme4 (Rscript)", flush=True)
            lrep = {s["key"]: (1 if s.get("large") else repeats) for s in specs}
            lm = bench_lme4(specs, frames, lrep, tmp)
            for msg in [lm.get("_skipped"), lm.get("_error"), *lm.get("_errors", [])]:
                if msg:
                    print("  " + msg)
                    notes.append(msg.splitlines()[0])
            results["lme4_version"] = lm.get("_version")
            for spec in specs:
                key = spec["key"]
                if key not in lm:
                    continue
                r = lm[key]
                results["models"][key]["lme4"] = r
                print(f"  {key}: {fmt_t(r['time_s'])} ({r['n_fits']} fits), logLik {r['llf']:.8f}, "
                      f"feval {r['feval']}", flush=True)
                if r["nobs"] != results["models"][key]["nobs"]:
                    notes.append(f"{key}: lme4 fitted {r['nobs']} rows, jaxlmm {results['models'][key]['nobs']}.")
                for w in r["warnings"]:
                    notes.append(f"{key}: lme4 message: {w}")
        elif args.no_r:
            notes.append("lme4 skipped (--no-r).")

    results["total_s"] = time.perf_counter() - t_start
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    if max(results["machine"]["loadavg_start"][0], results["machine"]["loadavg_end"][0]) > 1.5:
        notes.append(
            "the machine was busy (1-min load average {:.1f} at start, {:.1f} at end, on {} cores): timings are "
            "noisy, rerun on an idle machine for figures to quote.".format(
                results["machine"]["loadavg_start"][0], results["machine"]["loadavg_end"][0], results["machine"]["nproc"]
            )
        )
    tables = build_tables(results)
    for key, r in results["models"].items():
        for f in (r.get("llf_check") or {}).get("flags", []):
            notes.append(f"{key}: log-likelihood check: {f}.")

    print("\nTime per REML fit")
    print(text_table(*tables["timing"]))
    print("\nLog-likelihoods")
    print(text_table(*tables["llf"]))
    print("\njaxlmm memory (first-fit subprocesses)")
    print(text_table(*tables["mem"]))
    if notes:
        print("\nNotes")
        for n in notes:
            print("  - " + n)

    args.out.mkdir(parents=True, exist_ok=True)
    write_markdown(results, tables, args.out / "crossed.md")
    (args.out / "crossed.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out / 'crossed.md'} and {args.out / 'crossed.json'}  (total {results['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
