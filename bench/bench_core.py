#!/usr/bin/env python
"""Core benchmark: jaxlmm against statsmodels MixedLM and R's lme4, on three REML fits.

Run from the repository root:

    .venv/bin/python bench/bench_core.py            # full run (a few minutes)
    .venv/bin/python bench/bench_core.py --quick    # fewer repeats

What is timed, per model (all REML):

* jaxlmm first fit in a fresh process: a subprocess (``sys.executable -c``) imports jaxlmm, loads
  the data, then times only ``MixedLM.from_formula(...).fit()`` — so the figure is JIT compilation
  plus one fit, without the import. Once with the persistent compilation cache off
  (``JAXLMM_NO_CACHE=1``) and once with a warm cache (``JAXLMM_CACHE_DIR`` pointing at a temporary
  folder that an earlier subprocess populated). The subprocess also reports its peak RSS
  during that fit and during a second fit.
* jaxlmm warm fit: median of repeats in this process after a first compile, of
  ``MixedLM.from_formula(formula, df).fit(reml=True)`` (formula parsing and design included) and
  of ``m.fit(reml=True)`` alone on a prebuilt model.
* statsmodels: median of ``smf.mixedlm(fixed, df, groups=..., re_formula=...).fit(reml=True)``.
* lme4: an R script run with ``Rscript`` warms up once, then times ``lmer(..., REML=TRUE)`` repeatedly
  (in batches long enough for ``proc.time``'s resolution) and prints the median per fit.

Results go to ``bench/results/core.md`` and ``bench/results/core.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _common however this is started

import _common  # noqa: E402
from _common import (  # noqa: E402
    BENCH_DIR, DEFAULT_INSTEVAL, _get, attach_first_fits, check_first_fits, finish_run, fmt_ratio, fmt_t,
    load_frames, machine_lines, md_section, new_results, no_cache_here, parse_fixef, r_version, r_warnings,
    read_source, rscript_failed, run_r_spec, tsv_lines, workdir_with_cache, write_report,
)

# core.md shows negative memory deltas as numbers (crossed.md shows them as "—")
fmt_mib = functools.partial(_common.fmt_mib, hide_negative=False)

# Log-likelihoods that differ by more than this (absolute) are flagged.
LLF_TOL = 1e-3

MODELS = [
    {
        "key": "sleepstudy",
        "formula": "Reaction ~ Days + (Days | Subject)",
        "sm_fixed": "Reaction ~ Days",
        "group": "Subject",
        "sm_re": "~Days",
        "response": "Reaction",
        "columns": ["Reaction", "Days", "Subject"],
        "source": {"dataset": "sleepstudy"},
    },
    {
        "key": "dietox",
        "formula": "Weight ~ Time + (Time | Pig)",
        "sm_fixed": "Weight ~ Time",
        "group": "Pig",
        "sm_re": "~Time",
        "response": "Weight",
        "columns": ["Weight", "Time", "Pig"],
        "source": {"dataset": "dietox"},
    },
    {
        "key": "insteval",
        # `service` is 0/1 in the CSV: kept numeric everywhere (jaxlmm, statsmodels and lme4 all see
        # the same single 0/1 column; lme4's own InstEval has it as a factor, whose treatment coding
        # gives the identical column, named `service1`).
        "formula": "y ~ service + (1 | d)",
        "sm_fixed": "y ~ service",
        "group": "d",
        "sm_re": "~1",
        "response": "y",
        "columns": ["y", "service", "d"],
        "source": {"csv": None},  # filled from --insteval
        "large": True,
    },
]


# ------------------------------------------------------------------------------------------------
# data


def load_frame(spec: dict):
    """The model's DataFrame: grouping column as strings, response as float."""
    df = read_source(spec["source"])[spec["columns"]].copy()
    df[spec["group"]] = df[spec["group"]].astype(str)
    df[spec["response"]] = df[spec["response"]].astype(float)
    for c in spec["columns"]:
        if c not in (spec["group"], spec["response"]) and df[c].dtype == object:
            raise SystemExit(f"column {c!r} of {spec['key']} is not numeric: {df[c].dtype}")
    return df


# ------------------------------------------------------------------------------------------------
# jaxlmm first fit in a fresh process

_CHILD = r"""
import json, resource, sys, time, warnings
spec = json.loads(sys.argv[1])
t0 = time.perf_counter()
import jaxlmm
t_import = time.perf_counter() - t0
sys.path.insert(0, spec["bench_dir"])
from bench_core import load_frame
from _common import reset_peak, status_kib, timed_reml_fit
df = load_frame(spec)
rss_before = status_kib("VmRSS")
reset_ok = reset_peak()
r, t_fit, msgs = timed_reml_fit(spec["formula"], df)
peak_first = status_kib("VmHWM")
# a second (warm) fit in the same process: its own peak above the resident set before it
rss_before_2 = status_kib("VmRSS")
reset_peak()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r2 = jaxlmm.MixedLM.from_formula(spec["formula"], df).fit(reml=True)
peak_second = status_kib("VmHWM")
print("@@RESULT@@" + json.dumps({
    "import_s": t_import, "first_fit_s": t_fit, "llf": float(r.llf), "converged": bool(r.converged),
    "rss_before_fit_kib": rss_before, "peak_rss_kib": peak_first, "peak_reset_ok": reset_ok,
    "rss_before_second_fit_kib": rss_before_2, "peak_second_fit_kib": peak_second,
    "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "nobs": int(r.nobs),
    "warnings": msgs,
}))
"""


def first_fit_subprocess(spec: dict, cache_dir: str | None) -> dict:
    """One first fit in a fresh process (cache off, or JAXLMM_CACHE_DIR=cache_dir): see _CHILD."""
    return _common.first_fit_subprocess(_CHILD, spec, cache_dir, timeout=600)


# ------------------------------------------------------------------------------------------------
# in-process timings


def time_repeats(fn, n: int, budget_s: float = 20.0, min_n: int = 3) -> list[float]:
    """Time fn() n times, stopping early once budget_s is spent and at least min_n ran."""
    times: list[float] = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if i + 1 >= min(min_n, n) and time.perf_counter() - start > budget_s:
            break
    return times


def bench_jaxlmm_warm(spec: dict, df, repeats: int) -> dict:
    import jaxlmm

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = jaxlmm.MixedLM.from_formula(spec["formula"], df).fit(reml=True)  # compile
    out = {
        "llf": float(r.llf),
        "converged": bool(r.converged),
        "n_iter": int(r.n_iter),
        "fe_params": {k: float(v) for k, v in r.fe_params.items()},
        "warnings": sorted({str(x.message)[:200] for x in w}),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_full = time_repeats(lambda: jaxlmm.MixedLM.from_formula(spec["formula"], df).fit(reml=True), repeats)
        m = jaxlmm.MixedLM.from_formula(spec["formula"], df)
        m.fit(reml=True)
        t_fit = time_repeats(lambda: m.fit(reml=True), repeats)
    out.update(
        warm_fit_s=statistics.median(t_full),
        warm_fit_times=t_full,
        fit_only_s=statistics.median(t_fit),
        fit_only_times=t_fit,
    )
    return out


def bench_statsmodels(spec: dict, df, repeats: int) -> dict:
    import statsmodels.formula.api as smf

    def fit():
        return smf.mixedlm(spec["sm_fixed"], df, groups=spec["group"], re_formula=spec["sm_re"]).fit(reml=True)

    times = []
    msgs: set[str] = set()
    r = None
    for _ in range(repeats):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            r = fit()
            times.append(time.perf_counter() - t0)
        msgs.update(str(x.message)[:200] for x in w)
        if sum(times) > 30 and len(times) >= 1:
            break
    return {
        "time_s": statistics.median(times),
        "times": times,
        "llf": float(r.llf),
        "converged": bool(r.converged),
        "fe_params": {k: float(v) for k, v in r.fe_params.items()},
        "warnings": sorted(msgs),
    }


# ------------------------------------------------------------------------------------------------
# lme4

_R_SCRIPT = _common.R_LME4_PRELUDE + r"""
args <- commandArgs(TRUE)
spec <- read.delim(args[1], stringsAsFactors = FALSE, quote = "")
for (i in seq_len(nrow(spec))) {
  d <- read.csv(spec$csv[i])
  d[[spec$group[i]]] <- factor(d[[spec$group[i]]])
  f <- as.formula(spec$formula[i])
  w <- character(0)
  tb <- time_batches(
    function() withCallingHandlers(lmer(f, data = d, REML = TRUE),
      warning = function(c) { w <<- c(w, conditionMessage(c)); invokeRestart("muffleWarning") },
      message = function(c) { w <<- c(w, conditionMessage(c)); invokeRestart("muffleMessage") }),
    function() suppressMessages(suppressWarnings(lmer(f, data = d, REML = TRUE))),
    spec$nrep[i])
  m <- tb$m
  fe <- paste(names(fixef(m)), format(fixef(m), digits = 17), sep = "=", collapse = ";")
  cat("@@RESULT", spec$key[i], format(median(tb$tt), digits = 17), format(as.numeric(logLik(m)), digits = 17),
      tb$nb * tb$b, tb$b, fe, gsub("[\t\n]", " ", paste(unique(w), collapse = " | ")), "\n", sep = "\t")
}
"""


def bench_lme4(specs: list[dict], frames: dict, repeats: dict, workdir: Path) -> dict:
    proc = run_r_spec(
        _R_SCRIPT, "key\tcsv\tgroup\tformula\tnrep", specs, frames,
        lambda spec, csv: f"{spec['key']}\t{csv}\t{spec['group']}\t{spec['formula']}\t{repeats[spec['key']]}",
        workdir, timeout=900,
    )
    if proc is None:
        return {"_skipped": "Rscript not found on PATH: lme4 column left empty."}
    out: dict = {}
    for parts in tsv_lines(proc.stdout):
        if parts[0] == "@@VERSION":
            out["_version"] = r_version(parts)
        elif parts[0] == "@@RESULT":
            key, med, ll, n, batch, fe, warn = (parts + [""] * 8)[1:8]
            out[key] = {
                "time_s": float(med),
                "llf": float(ll),
                "n_fits": int(n),
                "batch": int(batch),
                "fe_params": parse_fixef(fe),
                "warnings": r_warnings(warn),
            }
    if proc.returncode != 0 or not any(not k.startswith("_") for k in out):
        out["_error"] = rscript_failed(proc)
    return out


# ------------------------------------------------------------------------------------------------
# reporting


def machine_info() -> dict:
    return _common.machine_info(statsmodels=True)


def build_tables(results: dict) -> dict:
    timing_h = [
        "model",
        "n",
        "jaxlmm 1st fit, no cache",
        "jaxlmm 1st fit, warm cache",
        "jaxlmm warm (formula+fit)",
        "jaxlmm fit only",
        "statsmodels",
        "lme4",
        "lme4 / jaxlmm",
        "statsmodels / jaxlmm",
    ]
    llf_h = ["model", "jaxlmm llf", "statsmodels llf", "lme4 logLik", "|Δ| sm", "|Δ| lme4", "check"]
    mem_h = ["model", "rows", "data (rows×cols×8 B)", "RSS before fit", "peak RSS, 1st fit", "added by 1st fit",
             "added by 2nd fit", "2nd fit added / data"]
    timing, llf, mem = [], [], []
    for key, r in results["models"].items():
        if r.get("skipped"):
            timing.append([key, "—"] + ["skipped"] + ["—"] * 7)
            continue
        jw = _get(r, "jaxlmm", "warm_fit_s")
        sm, lm = _get(r, "statsmodels", "time_s"), _get(r, "lme4", "time_s")
        timing.append(
            [
                key,
                str(r["nobs"]),
                fmt_t(_get(r, "jaxlmm", "first_fit_nocache", "first_fit_s")),
                fmt_t(_get(r, "jaxlmm", "first_fit_warmcache", "first_fit_s")),
                fmt_t(jw),
                fmt_t(_get(r, "jaxlmm", "fit_only_s")),
                fmt_t(sm) + ("" if _get(r, "statsmodels", "converged") in (True, None) else " (not conv.)"),
                fmt_t(lm),
                fmt_ratio(lm, jw),
                fmt_ratio(sm, jw),
            ]
        )
        lj, ls, ll = _get(r, "jaxlmm", "llf"), _get(r, "statsmodels", "llf"), _get(r, "lme4", "llf")
        ds = None if ls is None else abs(ls - lj)
        dl = None if ll is None else abs(ll - lj)
        flags = []
        if ds is not None and ds > LLF_TOL:
            flags.append("statsmodels differs" + (" (jaxlmm higher)" if lj > ls else " (statsmodels higher)"))
        if dl is not None and dl > LLF_TOL:
            flags.append("lme4 differs" + (" (jaxlmm higher)" if lj > ll else " (lme4 higher)"))
        r["llf_check"] = {"abs_diff_statsmodels": ds, "abs_diff_lme4": dl, "tol": LLF_TOL, "flags": flags}
        f = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
        g = lambda v: "—" if v is None else f"{v:.1e}"  # noqa: E731
        llf.append([key, f(lj), f(ls), f(ll), g(ds), g(dl), "; ".join(flags) or "OK"])
        for label, run in (("no cache", "first_fit_nocache"), ("warm cache", "first_fit_warmcache")):
            c = _get(r, "jaxlmm", run)
            if not c:
                continue
            delta = c["peak_rss_kib"] - c["rss_before_fit_kib"]
            delta2 = c["peak_second_fit_kib"] - c["rss_before_second_fit_kib"]
            mem.append(
                [
                    f"{key} ({label})",
                    str(r["nobs"]),
                    f"{r['data_bytes'] / 2**20:.2f} MiB",
                    fmt_mib(c["rss_before_fit_kib"]),
                    fmt_mib(c["peak_rss_kib"]),
                    fmt_mib(delta),
                    fmt_mib(delta2),
                    f"{delta2 * 1024 / r['data_bytes']:.1f}×",
                ]
            )
    return {"timing": (timing_h, timing), "llf": (llf_h, llf), "mem": (mem_h, mem)}


def write_markdown(results: dict, tables: dict, path: Path) -> None:
    m = results["machine"]
    lme4v = results.get("lme4_version") or {}
    lines = [
        "# jaxlmm core benchmark",
        "",
        *machine_lines(m, lme4v),
        f"Command: `{results['command']}`; repeats = {results['repeats']}; total run time {results['total_s']:.0f} s",
        *md_section("Time per REML fit", tables["timing"]),
        "- *1st fit*: a fresh Python process; the time of `MixedLM.from_formula(...).fit()` only (import and data "
        "loading excluded), i.e. JIT compilation plus one fit. *No cache*: `JAXLMM_NO_CACHE=1`; "
        "*warm cache*: `JAXLMM_CACHE_DIR` populated by an earlier process.",
        "- *warm*: median over repeats in one process after a first compile; *formula+fit* includes formula "
        "parsing and design construction (as do statsmodels' and lme4's figures), *fit only* is `m.fit()` on a "
        "prebuilt model.",
        "- statsmodels: `smf.mixedlm(..., groups=, re_formula=).fit(reml=True)`; lme4: `lmer(..., REML=TRUE)` "
        "timed in R (batches, median per fit). Ratios > 1 mean jaxlmm (warm, formula+fit) is faster.",
        *md_section("Log-likelihoods (REML)", tables["llf"]),
        f"Flagged when |Δ| > {LLF_TOL:g}.",
        *md_section("jaxlmm memory (first-fit subprocesses)", tables["mem"]),
        "Measured inside the first-fit subprocess from /proc/self/status: *RSS before fit* is VmRSS after "
        "importing jaxlmm and loading the data (Python + JAX + pandas baseline); the peak is VmHWM, reset just before "
        "the fit by writing 5 to /proc/self/clear_refs. *Added by 1st fit* = peak − RSS before (formula, design, "
        "compilation or cache load, JAX runtime start-up); *added by 2nd fit* is the same for a second "
        "`from_formula(...).fit()` in that process, i.e. the memory a fit itself needs. Data size counts the used "
        "columns (response, fixed-effect column, grouping factor) at 8 bytes each. (`ru_maxrss` is not used: a "
        "child's `ru_maxrss` on Linux carries the parent's peak RSS across fork/exec.)",
    ]
    write_report(path, lines, results.get("notes"))


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=None, help="repeats for warm timings (default 20; 5 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats everywhere")
    ap.add_argument("--insteval", type=Path, default=DEFAULT_INSTEVAL, help="path of insteval.csv")
    ap.add_argument("--models", default=None, help="comma-separated subset of: sleepstudy,dietox,insteval")
    ap.add_argument("--no-r", action="store_true", help="skip lme4")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="output folder")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    repeats = args.repeats or (5 if args.quick else 20)
    first_repeats = 1 if args.quick else 2
    sm_large = 1 if args.quick else 2
    lme4_large = 2 if args.quick else 3

    # This process's own warm timings do not need the persistent cache; keep it out of ~/.cache.
    no_cache_here()

    notes: list[str] = []
    wanted = set(args.models.split(",")) if args.models else None
    specs = []
    for spec in MODELS:
        spec = json.loads(json.dumps(spec))
        if wanted is not None and spec["key"] not in wanted:
            continue
        if "csv" in spec["source"]:
            path = args.insteval.expanduser().resolve()
            if not path.exists():
                msg = f"{spec['key']}: skipped, data file not found at {path} (pass --insteval PATH)."
                print(msg)
                notes.append(msg)
                continue
            spec["source"]["csv"] = str(path)
        specs.append(spec)

    results = new_results(argv, machine_info(), notes, repeats=repeats)
    frames = load_frames(specs, load_frame, results["models"], lambda spec, df: {
        "ngroups": int(df[spec["group"]].nunique()),
        "data_bytes": len(df) * len(spec["columns"]) * 8,
    })

    with workdir_with_cache() as (tmp, cache_dir):
        for spec in specs:
            key, df = spec["key"], frames[spec["key"]]
            res = results["models"][key]
            print(f"\n== {key}: {spec['formula']}  (n={len(df)}, groups={res['ngroups']})")

            # (a) first fit in fresh processes
            cold = [first_fit_subprocess(spec, None) for _ in range(first_repeats)]
            print(f"  jaxlmm first fit, no cache:   {fmt_t(statistics.median(c['first_fit_s'] for c in cold))}")
            populate = first_fit_subprocess(spec, str(cache_dir))
            warm = [first_fit_subprocess(spec, str(cache_dir)) for _ in range(first_repeats)]
            print(f"  jaxlmm first fit, warm cache: {fmt_t(statistics.median(c['first_fit_s'] for c in warm))}"
                  f"  (populating run {fmt_t(populate['first_fit_s'])})")

            # (b) warm in-process
            jw = bench_jaxlmm_warm(spec, df, repeats)
            attach_first_fits(jw, cold, populate, warm, ("peak_rss_kib", "peak_second_fit_kib"))
            res["jaxlmm"] = jw
            print(f"  jaxlmm warm formula+fit {fmt_t(jw['warm_fit_s'])}, fit only {fmt_t(jw['fit_only_s'])}, "
                  f"llf {jw['llf']:.6f}")
            for w in jw["warnings"]:
                notes.append(f"{key}: jaxlmm warning: {w}")
            check_first_fits(key, warm, cold + [populate] + warm, jw["llf"], notes,
                             "(did the jaxlmm source change during the run, or is a cache key not deterministic?)")

            # statsmodels
            n_sm = sm_large if spec.get("large") else repeats
            sm = bench_statsmodels(spec, df, n_sm)
            res["statsmodels"] = sm
            print(f"  statsmodels {fmt_t(sm['time_s'])} ({len(sm['times'])} runs), llf {sm['llf']:.6f}, "
                  f"converged={sm['converged']}")
            if not sm["converged"]:
                notes.append(f"{key}: statsmodels reports converged=False.")
            for w in sm["warnings"]:
                notes.append(f"{key}: statsmodels warning: {w}")

        # lme4, one R process for all models
        if specs and not args.no_r:
            print("\n== lme4 (Rscript)")
            lrep = {s["key"]: (lme4_large if s.get("large") else repeats) for s in specs}
            lm = bench_lme4(specs, frames, lrep, tmp)
            if "_skipped" in lm:
                print("  " + lm["_skipped"])
                notes.append(lm["_skipped"])
            if "_error" in lm:
                print("  " + lm["_error"])
                notes.append(lm["_error"].splitlines()[0])
            results["lme4_version"] = lm.get("_version")
            for spec in specs:
                if spec["key"] in lm:
                    results["models"][spec["key"]]["lme4"] = lm[spec["key"]]
                    print(f"  {spec['key']}: {fmt_t(lm[spec['key']]['time_s'])} ({lm[spec['key']]['n_fits']} fits), "
                          f"logLik {lm[spec['key']]['llf']:.6f}")
                    for w in lm[spec["key"]]["warnings"]:
                        notes.append(f"{spec['key']}: lme4 message: {w}")
        elif args.no_r:
            notes.append("lme4 skipped (--no-r).")

    return finish_run(results, t_start, build_tables, write_markdown, args.out, "core",
                      "jaxlmm memory (first-fit subprocess)")


if __name__ == "__main__":
    sys.exit(main())
