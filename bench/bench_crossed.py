#!/usr/bin/env python
"""Crossed random-effects benchmark: jaxlmm against R's lme4 on four REML fits with crossed terms.

Run from the repository root:

    .venv/bin/python bench/bench_crossed.py            # full run (several minutes: InstEval dominates)
    .venv/bin/python bench/bench_crossed.py --quick    # fewer repeats
    .venv/bin/python bench/bench_crossed.py --models penicillin,psycholing_max --no-r

Models (all REML):

* ``insteval``: ``y ~ service + (1 | s) + (1 | d) + (1 | dept)``, 73,421 rows, read from
  ``tests/data/insteval.csv.gz`` (``--insteval``); s, d, dept and service are categorical.
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
  recorded), ``m.fit(reml=True)`` runs once as a warm-up (compilation) and ``OPTIMISE_AFTER`` more
  times (past the quick tier of the first fits, to the program a refit loop runs), then the median of
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
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _common however this is started

import _common  # noqa: E402
from _common import (  # noqa: E402
    BENCH_DIR, DEFAULT_INSTEVAL, REPO_ROOT, _get, attach_first_fits, check_first_fits, finish_run, fmt_mib, fmt_t,
    in_repo, load_frames, machine_lines, md_section, new_results, no_cache_here, parse_fixef, r_version,
    r_warnings, read_source, rscript_failed, run_r_spec, tsv_lines, uncommitted_text, workdir_with_cache,
    write_report,
)

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
    df = read_source(spec["source"])[spec["columns"]].dropna().reset_index(drop=True)
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
import json, resource, sys, time
spec = json.loads(sys.argv[1])
import jaxlmm
sys.path.insert(0, spec["bench_dir"])
from bench_crossed import load_frame
from _common import reset_peak, status_kib, timed_reml_fit
df = load_frame(spec)
rss_before = status_kib("VmRSS")
peak_before = status_kib("VmHWM")
reset_ok = reset_peak()
r, t_fit, msgs = timed_reml_fit(spec["formula"], df)
t0 = time.perf_counter()
str(r.summary())
t_summary = time.perf_counter() - t0
peak_fit = status_kib("VmHWM")
print("@@RESULT@@" + json.dumps({
    "first_fit_s": t_fit, "first_summary_s": t_summary, "llf": float(r.llf), "converged": bool(r.converged), "n_iter": int(r.n_iter),
    "rss_before_fit_kib": rss_before, "peak_before_fit_kib": peak_before, "peak_fit_kib": peak_fit,
    "peak_reset_ok": reset_ok, "peak_process_kib": max(peak_before, peak_fit),
    "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "nobs": int(r.nobs),
    "warnings": msgs,
}))
"""


def first_fit_subprocess(spec: dict, cache_dir: str | None) -> dict:
    """One first fit in a fresh process (cache off, or JAXLMM_CACHE_DIR=cache_dir): see _CHILD."""
    return _common.first_fit_subprocess(_CHILD, spec, cache_dir, timeout=900, parent_memory=True)


# ------------------------------------------------------------------------------------------------
# jaxlmm warm, in this process


def bench_jaxlmm_warm(spec: dict, df, repeats: int) -> dict:
    import jaxlmm
    from jaxlmm._program_cache import OPTIMISE_AFTER

    t0 = time.perf_counter()
    m = jaxlmm.MixedLM.from_formula(spec["formula"], df)
    t_build = time.perf_counter() - t0
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        r = m.fit(reml=True)  # warm-up: compiles (this process runs with JAXLMM_NO_CACHE=1)
        t_warmup = time.perf_counter() - t0
        for _ in range(OPTIMISE_AFTER):  # past the quick tier: a refit loop's steady state
            m.fit(reml=True)
    batched = not spec.get("large")  # small models: per-fit means of batches of >= 50 ms, as lme4's

    def timed(call) -> float:
        t0 = time.perf_counter()
        call()
        once = time.perf_counter() - t0
        if not batched:
            return once
        n = max(1, math.ceil(0.05 / max(once, 1e-6)))
        t0 = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - t0) / n

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times = [timed(lambda: m.fit(reml=True)) for _ in range(repeats)]
        r = m.fit(reml=True)
        # fit + summary(): a large crossed model's fit leaves its inference to the summary (`_fit.defers`);
        # warm-up summaries past the quick tier of those programs first
        for _ in range(OPTIMISE_AFTER + 1):
            str(m.fit(reml=True).summary())
        with_summary = [timed(lambda: str(m.fit(reml=True).summary())) for _ in range(repeats)]
    return {
        "fit_s": statistics.median(times),
        "fit_times": times,
        "fit_summary_s": statistics.median(with_summary),
        "fit_summary_times": with_summary,
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

_R_SCRIPT = _common.R_LME4_PRELUDE + r"""
args <- commandArgs(TRUE)
spec <- read.delim(args[1], stringsAsFactors = FALSE, quote = "", colClasses = "character")
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
      tb <- time_batches(fit1, function() suppressMessages(suppressWarnings(lmer(f, data = d, REML = TRUE))), nrep)
      m <- tb$m; b <- tb$b; nb <- tb$nb; tt <- tb$tt
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
    def row(spec: dict, csv: Path) -> str:
        warm = "0" if spec.get("large") else "1"  # large models: a single timed fit, no warm-up
        return (f"{spec['key']}\t{csv}\t{','.join(spec['categorical'])}\t{','.join(spec['columns'])}\t"
                f"{spec['formula']}\t{repeats[spec['key']]}\t{warm}")

    proc = run_r_spec(_R_SCRIPT, "key\tcsv\tfactors\tcolumns\tformula\tnrep\twarmup", specs, frames, row,
                      workdir, timeout=1800)
    if proc is None:
        return {"_skipped": "Rscript not found on PATH: lme4 columns left empty."}
    out: dict = {}
    errors = []
    for parts in tsv_lines(proc.stdout):
        if parts[0] == "@@VERSION":
            out["_version"] = r_version(parts)
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
                "fe_params": parse_fixef(fe),
                "warnings": r_warnings(warn),
            }
    if errors:
        out["_errors"] = errors
    if proc.returncode != 0 or (not any(not k.startswith("_") for k in out) and not errors):
        out["_error"] = rscript_failed(proc)
    return out


# ------------------------------------------------------------------------------------------------
# reporting


def machine_info() -> dict:
    return _common.machine_info(source=True)


def fmt_ratio(a: float | None, b: float | None) -> str:
    return _common.fmt_ratio(a, b, fine=True)


def build_tables(results: dict) -> dict:
    timing_h = [
        "model",
        "n",
        "levels",
        "jaxlmm 1st fit, no cache",
        "jaxlmm 1st fit, warm cache",
        "jaxlmm warm fit",
        "jaxlmm warm fit + summary",
        "jaxlmm iters",
        "lme4",
        "lme4 fevals",
        "lme4 / jaxlmm warm",
        "lme4 / jaxlmm warm fit + summary",
        "lme4 / jaxlmm 1st (no cache)",
        "jaxlmm 1st summary, no cache",
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
                fmt_t(_get(r, "jaxlmm", "fit_summary_s")),
                "—" if _get(r, "jaxlmm", "n_iter") is None else str(r["jaxlmm"]["n_iter"]),
                lm_txt,
                "—" if feval is None else str(feval),
                fmt_ratio(lm, jw),
                fmt_ratio(lm, _get(r, "jaxlmm", "fit_summary_s")),
                fmt_ratio(lm, j1),
                fmt_t(_get(r, "jaxlmm", "first_fit_nocache", "first_summary_s")),
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
    if in_repo(src):
        where = f", working tree at commit {src.get('repo_head', '?')}" + uncommitted_text(src, " ")
    elif src.get("jaxlmm_file"):
        where = f", imported from `{src['jaxlmm_file']}`"
    lines = [
        "# jaxlmm crossed random-effects benchmark",
        "",
        *machine_lines(m, lme4v, where),
        f"Command: `{results['command']}`; repeats = {results['repeats']} "
        f"({results['large_repeats']} on insteval and star); total run time {results['total_s']:.0f} s",
        *md_section("Time per REML fit", tables["timing"]),
        "- *1st fit*: a fresh Python process; the time of `MixedLM.from_formula(...).fit()` only (import and data "
        "loading excluded), i.e. formula, design, JIT compilation and one fit. *No cache*: `JAXLMM_NO_CACHE=1`; "
        "*warm cache*: `JAXLMM_CACHE_DIR` populated by an earlier process.",
        "- *jaxlmm warm fit*: median over repeats of `m.fit(reml=True)` on a prebuilt model, in one process after "
        "warm-up fits past the quick tier of the first fits (small models: each repeat the mean per fit of a batch "
        "of at least 50 ms, as lme4's; insteval and star: single fits) — fit only (the one-off `from_formula` time is in the JSON as `build_s`). *iters*: `r.n_iter`. "
        "A crossed model with a dense block of 32+ rows leaves its exact Hessian and conditional covariances to "
        "the results (`_fit.defers`), so *warm fit + summary* (the median of `str(m.fit().summary())`, after "
        "warm-up summaries) is shown too; its ratio compares it with lme4's `lmer()` alone, without lme4's summary. "
        "*1st summary, no cache*: `str(r.summary())` right after the first fit in the fresh process.",
        "- *lme4*: `lmer(..., REML = TRUE)` timed in R, model frame and design included. Small models: median per "
        "fit over batches after a warm-up fit; insteval and star: a single fit without a warm-up of that model "
        "(lme4's code loaded beforehand by a sleepstudy fit). *fevals*: `m@optinfo$feval`.",
        "- Ratios > 1 mean jaxlmm is faster. The warm ratio compares lme4's whole `lmer()` call with jaxlmm's fit "
        "alone; the 1st-fit ratio compares it with a cold jaxlmm process that compiles everything.",
        *md_section("Log-likelihoods (REML)", tables["llf"]),
        f"*jaxlmm − lme4*: jaxlmm's `llf` (warm fit) minus lme4's `logLik`; flagged when below −{LLF_TOL:g} (jaxlmm "
        "stopped at a lower optimum). Positive values mean jaxlmm found a higher REML log-likelihood.",
        *md_section("jaxlmm memory (first-fit subprocesses)", tables["mem"]),
        "From /proc/self/status in the first-fit subprocess: *RSS before fit* is VmRSS after importing jaxlmm and "
        "loading the data; *peak RSS during 1st fit* is VmHWM after the fit, reset just before it by writing 5 to "
        "/proc/self/clear_refs, and *added by 1st fit* the difference (formula, design, compilation or cache "
        "load, JAX runtime start-up, the fit). *Process peak* is the larger of VmHWM before the reset and after the "
        "fit. `ru_maxrss` (`resource.getrusage(RUSAGE_SELF)` in the child) is shown as well, but on Linux it also "
        "counts the memory image the child was forked from (the parent's peak RSS is carried across fork/exec), "
        "so it is the child's own peak only when it is above *parent peak RSS at spawn*; the VmHWM columns are "
        "always the child's own.",
    ]
    write_report(path, lines, results.get("notes"))


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
    no_cache_here()

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

    results = new_results(argv, machine_info(), notes, repeats=repeats, large_repeats=large_repeats,
                          llf_tol=LLF_TOL)
    frames = load_frames(specs, load_frame, results["models"], lambda spec, df: {
        "levels": {g: int(df[g].nunique()) for g in spec["groups"]},
        "source": spec["source"],
    })

    with workdir_with_cache() as (tmp, cache_dir):
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

            # (b) warm, in this process
            jw = bench_jaxlmm_warm(spec, df, n_warm)
            attach_first_fits(jw, cold, populate, warm, ("peak_fit_kib", "peak_process_kib", "ru_maxrss_kib"))
            res["jaxlmm"] = jw
            print(f"  jaxlmm warm fit {fmt_t(jw['fit_s'])} (median of {len(jw['fit_times'])}; warm-up "
                  f"{fmt_t(jw['warmup_fit_s'])}, build {fmt_t(jw['build_s'])}), llf {jw['llf']:.8f}, "
                  f"{jw['n_iter']} iterations, converged={jw['converged']}", flush=True)
            for w in jw["warnings"]:
                notes.append(f"{key}: jaxlmm warning: {w}")
            if not jw["converged"]:
                notes.append(f"{key}: jaxlmm reports converged=False (grad norm {jw['grad_norm']:.2e}).")
            check_first_fits(key, warm, cold + [populate] + warm, jw["llf"], notes)

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

    return finish_run(results, t_start, build_tables, write_markdown, args.out, "crossed",
                      "jaxlmm memory (first-fit subprocesses)")


if __name__ == "__main__":
    sys.exit(main())
