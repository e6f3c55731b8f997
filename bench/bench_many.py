#!/usr/bin/env python
"""Many-models benchmark: jaxlmm ``fit_many`` against lme4 ``refit`` loops and statsmodels loops.

Run from the repository root (about 3 minutes on a 2-core machine):

    .venv/bin/python bench/bench_many.py            # full run
    .venv/bin/python bench/bench_many.py --no-r     # skip lme4
    .venv/bin/python bench/bench_many.py --n-sims 2000 --sm-fits 20 --wide-k 2000   # shorter

What is measured (all REML). Sections 1 and 2 call ``fit_many`` without ``batch_size``: chunk
sizes are jaxlmm's automatic ones (a 256 MiB memory budget, at most 128 models a chunk; chunks run in
parallel threads, one per core). Only the batch-size scan of section 3 sets ``batch_size``.

1. sleepstudy ``Reaction ~ Days + (Days | Subject)``: ``--n-sims`` (10,000) responses simulated from
   the fitted REML model (fixed effects + per-subject random effects drawn from N(0, cov_re) +
   N(0, scale) noise, seeded numpy RNG).
   * jaxlmm: ``m.fit_many(Y[:, :300])`` in this process (JIT compilation + 300 fits: "first call"),
     then ``m.fit_many(Y)`` on all responses once (run 1: compiles the remaining chunk shapes) and
     ``--warm-repeats`` (3) more times; the median of those is the warm figure (models/s).
   * lme4: an R script (temporary file) fits ``lmer`` on sleepstudy once, then times a loop of
     ``refit(m, y)`` over the first ``--r-fits`` (300) simulated responses (read from a CSV) and
     writes each refit's ``logLik``; these are compared with jaxlmm's ``llf`` of the same responses.
   * statsmodels: a loop of ``smf.mixedlm("y ~ Days", data, groups="Subject",
     re_formula="~Days").fit(reml=True)`` over the first ``--sm-fits`` (100) responses.
   * Ratios of models/s, and whether jaxlmm reaches the target of >= 100x lme4's models/s.
2. Larger designs, ``y ~ x + (x | g)`` with x = 0..9 in every group (random intercept and slope):
   a. 1,000 groups x 10 observations, ``--large-k`` (1,000) responses: ``fit_many`` first call on
      300, then a warm call on all, against an lme4 ``refit`` loop over ``--r-fits-large`` (30)
      responses, extrapolated to models/s.
   b. 100 groups x 10 observations (1,000 rows per response), ``--wide-k`` (10,000) responses: one
      ``fit_many(Y)`` call on all of them (first call: compilation + fits), then the same call
      ``--warm-repeats`` times (median: warm), with the process's RSS before and peak RSS during the
      calls; against an lme4 ``refit`` loop over ``--r-fits-wide`` (100) responses.
3. Scaling: models/s of warm ``fit_many`` on 2,000 sleepstudy responses for batch_size 16, 64, 128,
   256, 512, 1024 (each size first run once to compile its shapes, then timed), and on 500 responses
   of designs with 18, 100, 500 groups x 10 observations (automatic batch size; first and warm call).

The persistent compilation cache is turned off (``JAXLMM_NO_CACHE=1``) so that first-call times
include the compilation; pass ``--cache`` to keep it. Every ``fit_many`` call runs under a watchdog
(``--call-timeout`` s): a call that does not return in time has its thread stacks printed, the
partial results are written with a note, and the run exits with status 3.

Results: ``bench/results/many.md`` (tables) and ``bench/results/many.json`` (all raw numbers).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import faulthandler
import json
import threading
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, for _common however this is started

from _common import (  # noqa: E402
    BENCH_DIR, cpu_model, in_repo, jaxlmm_source, nproc, reset_peak, rscript_failed, status_kib, thread_env,
    uncommitted_text,
)

SLEEP_FORMULA = "Reaction ~ Days + (Days | Subject)"
LLF_TOL = 1e-6  # |llf(jaxlmm) - logLik(lme4)| above this is flagged
TARGET_RATIO = 100.0  # issue's target: jaxlmm models/s >= 100x lme4's refit loop
SYN_FORMULA = "y ~ x + (x | g)"

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


_PROBES: list = []


def speed_probe(label: str) -> float:
    """Time a fixed single-threaded pure-Python loop (best of 3, about 0.1 s each) and record it.

    On a shared virtual machine the host can slow the vCPUs down without any process in the guest
    being busy; these probes, taken before each section, show such drift in the results."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        acc = 0
        for i in range(1_000_000):
            acc += i * i
        best = min(best, time.perf_counter() - t0)
    _PROBES.append({"at": label, "t_s": time.perf_counter() - _T0, "probe_s": best,
                    "loadavg1": os.getloadavg()[0]})
    return best


# ------------------------------------------------------------------------------------------------
# simulation


def simulate(X, Zcols, gidx, n_groups, beta, cov_re, scale, k, rng):
    """k responses (nobs, k): X beta + per-group b ~ N(0, cov_re) on columns Zcols + N(0, scale)."""
    import numpy as np

    q = Zcols.shape[1]
    L = np.linalg.cholesky(np.asarray(cov_re, dtype=float) + 1e-12 * np.eye(q))
    b = rng.standard_normal((k, n_groups, q)) @ L.T  # (k, G, q)
    fixed = X @ np.asarray(beta, dtype=float)  # (n,)
    # random part: sum_j Z[:, j] * b[k, g(i), j]  -> (n, k)
    rand = np.einsum("nj,knj->nk", Zcols, b[:, gidx, :])
    noise = rng.standard_normal((X.shape[0], k)) * np.sqrt(scale)
    return fixed[:, None] + rand + noise


def synthetic_design(n_groups: int, n_per: int = 10):
    """Balanced design: group g has x = 0..n_per-1."""
    import numpy as np
    import pandas as pd

    g = np.repeat(np.arange(n_groups), n_per)
    x = np.tile(np.arange(n_per, dtype=float), n_groups)
    df = pd.DataFrame({"y": np.zeros(g.size), "x": x, "g": [f"g{i:04d}" for i in g]})
    return df, g, x


SYN_BETA = (10.0, 2.0)
SYN_COV = ((4.0, 0.5), (0.5, 1.0))
SYN_SCALE = 4.0


def simulate_synthetic(n_groups: int, k: int, rng):
    import numpy as np

    df, g, x = synthetic_design(n_groups)
    X = np.column_stack([np.ones(x.size), x])
    Y = simulate(X, X, g, n_groups, SYN_BETA, SYN_COV, SYN_SCALE, k, rng)
    return df, Y


# ------------------------------------------------------------------------------------------------
# jaxlmm timing


_GUARD: dict = {"timeout": 150.0, "on_hang": None}


def timed_fit_many(m, Y, label: str = "", **kw):
    """fit_many under a watchdog: a call that exceeds _GUARD['timeout'] s ends the run (see docstring).

    No call is expected to get near the limit; the watchdog only keeps an unexpected hang or an
    unexpectedly slow call from stalling the whole run, and records where it happened."""
    def fire():
        log(f"TIMEOUT: fit_many {label} (k={Y.shape[1]}, nobs={Y.shape[0]}, {kw}) still running after "
            f"{_GUARD['timeout']:.0f} s; thread stacks follow")
        faulthandler.dump_traceback(all_threads=True)
        if _GUARD["on_hang"] is not None:
            try:
                _GUARD["on_hang"](f"fit_many {label} (k={Y.shape[1]}, nobs={Y.shape[0]}, {kw}) did not return "
                                  f"within the {_GUARD['timeout']:.0f} s watchdog limit (--call-timeout); "
                                  "run stopped there, thread stacks on stderr.")
            except Exception as err:  # noqa: BLE001
                log(f"could not write partial results: {err!r}")
        os._exit(3)

    timer = threading.Timer(_GUARD["timeout"], fire)
    timer.daemon = True
    timer.start()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            rb = m.fit_many(Y, reml=True, progress=False, **kw)
            dt = time.perf_counter() - t0
    finally:
        timer.cancel()
    return rb, dt, sorted({str(x.message)[:160] for x in w})


def chunk_shape(m, k: int, batch_size: int | None = None) -> dict:
    """The chunk size fit_many picks for k responses (before padding) and the compiled (padded) size.

    Read from jaxlmm's private helpers for the report only; empty if they have moved."""
    try:
        from jaxlmm._batch import _pad_batch, _safe_batch_size

        b = _safe_batch_size(m.nobs, batch_size, len(m.exog_re_names), len(m.exog_names), k)
        return {"chunk": int(b), "compiled": int(_pad_batch(b))}
    except Exception:  # noqa: BLE001
        return {}


def fmt_chunk(c: dict) -> str:
    if not c:
        return "?"
    return str(c["chunk"]) if c["chunk"] == c["compiled"] else f"{c['chunk']} (padded to {c['compiled']})"


def rss_mib(field: str = "VmHWM") -> float | None:
    """VmRSS (resident now) or VmHWM (peak since the last `reset_peak`) of this process, MiB."""
    kib = status_kib(field)
    return None if kib < 0 else kib / 1024


def timed_with_peak(m, Y, label: str, **kw):
    """timed_fit_many plus the RSS before the call and the peak RSS during it (MiB)."""
    before = rss_mib("VmRSS")
    reset = reset_peak()
    rb, dt, w = timed_fit_many(m, Y, label, **kw)
    mem = {"rss_before_mib": before, "peak_rss_mib": rss_mib("VmHWM") if reset else None}
    return rb, dt, w, mem


def warm_repeats(m, Y, label: str, n: int):
    """n warm calls; returns the last result, all wall times, the median and the last call's warnings."""
    times, rb, w = [], None, []
    for i in range(max(1, n)):
        rb, t, w = timed_fit_many(m, Y, f"{label} warm {i + 1}")
        times.append(t)
    times_sorted = sorted(times)
    return rb, times, times_sorted[len(times) // 2], w


def batch_summary(rb) -> dict:
    import numpy as np

    return {
        "n": int(len(rb)),
        "converged": int(np.asarray(rb.converged).sum()),
        "singular": int(np.asarray(rb.is_singular).sum()),
        "n_iter_median": float(np.median(np.asarray(rb.n_iter))),
        "n_iter_max": int(np.max(np.asarray(rb.n_iter))),
    }


# ------------------------------------------------------------------------------------------------
# lme4

_R_SCRIPT = r"""
suppressMessages(library(lme4))
args <- commandArgs(TRUE)
d <- read.csv(args[1])
f <- as.formula(args[2])
grp <- args[3]
k <- as.integer(args[4])
out <- args[5]
d[[grp]] <- factor(d[[grp]])
cat("@@VERSION", as.character(packageVersion("lme4")), R.version.string, "\n", sep = "\t")
# lme4's refit.merMod rebuilds the response module with `REML = isREML(object)`, i.e. REML = 1,
# where lmer uses REML = p (the number of fixed effects): for p > 1 the refit optimizes a wrong
# REML criterion (and reports it as logLik). `refit_fixed` is the same function with REML = p.
src <- deparse(lme4:::refit.merMod)
pat <- "REML = isREML(object)"
patched <- sum(grepl(pat, src, fixed = TRUE)) == 1
if (patched) {
  src <- sub(pat, "REML = if (isREML(object)) ncol(getME(object, \"X\")) else 0L", src, fixed = TRUE)
  refit_fixed <- eval(parse(text = src))
  environment(refit_fixed) <- asNamespace("lme4")
} else refit_fixed <- refit
nwarn <- 0L
count <- function(expr) withCallingHandlers(expr,
  warning = function(c) { nwarn <<- nwarn + 1L; invokeRestart("muffleWarning") },
  message = function(c) invokeRestart("muffleMessage"))
t0 <- proc.time()[["elapsed"]]
m <- count(lmer(f, data = d, REML = TRUE))
t_lmer <- proc.time()[["elapsed"]] - t0
ll_template <- as.numeric(logLik(m))
ll_self_stock <- as.numeric(logLik(count(refit(m, newresp = d[["r0"]]))))        # warm-up too
ll_self_fixed <- as.numeric(logLik(count(refit_fixed(m, newresp = d[["r0"]]))))
cat("@@SELF", format(ll_template, digits = 17), format(ll_self_stock, digits = 17),
    format(ll_self_fixed, digits = 17), patched, "\n", sep = "\t")
loop <- function(fn) {
  ll <- numeric(k); nw <- integer(k); sing <- logical(k)
  nwarn <<- 0L
  t0 <- proc.time()[["elapsed"]]
  for (j in seq_len(k)) {
    before <- nwarn
    mj <- count(fn(m, newresp = d[[paste0("r", j - 1L)]]))
    ll[j] <- as.numeric(logLik(mj))
    nw[j] <- nwarn - before
    sing[j] <- isSingular(mj)
  }
  list(elapsed = proc.time()[["elapsed"]] - t0, ll = ll, nw = nw, sing = sing)
}
a <- loop(refit_fixed)
b <- loop(refit)
write.csv(data.frame(j = seq_len(k) - 1L, loglik = sprintf("%.17g", a$ll), nwarn = a$nw, singular = a$sing,
                     loglik_stock = sprintf("%.17g", b$ll)), out, row.names = FALSE)
cat("@@TIME", format(a$elapsed, digits = 17), k, format(t_lmer, digits = 17), format(b$elapsed, digits = 17),
    "\n", sep = "\t")
"""


def run_lme4(df, Y, formula: str, group: str, k: int, workdir: Path, tag: str, timeout: int) -> dict:
    """Time a refit loop over the first k columns of Y; returns timing, versions, per-model logLik."""
    import numpy as np
    import pandas as pd

    rscript = shutil.which("Rscript")
    if rscript is None:
        return {"skipped": "Rscript not found on PATH"}
    k = min(k, Y.shape[1])
    frame = df.copy()
    resp = pd.DataFrame(Y[:, :k], columns=[f"r{j}" for j in range(k)], index=frame.index)
    frame = pd.concat([frame, resp], axis=1)
    csv = workdir / f"{tag}.csv"
    out_csv = workdir / f"{tag}_ll.csv"
    frame.to_csv(csv, index=False, float_format="%.17g")
    script = workdir / "refit.R"
    script.write_text(_R_SCRIPT)
    # lme4 formula: response r0 (the fitted m is only the template for refit)
    lhs, rhs = formula.split("~", 1)
    r_formula = f"r0 ~{rhs}"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [rscript, str(script), str(csv), r_formula, group, str(k), str(out_csv)],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"Rscript timed out after {timeout} s"}
    wall = time.perf_counter() - t0
    res: dict = {"k": k, "process_wall_s": wall, "formula": r_formula}
    for line in proc.stdout.splitlines():
        parts = line.rstrip().split("\t")
        if parts[0] == "@@VERSION":
            res["lme4"], res["R"] = parts[1], parts[2]
        elif parts[0] == "@@TIME":
            res["elapsed_s"] = float(parts[1])
            res["lmer_first_fit_s"] = float(parts[3])
            res["elapsed_stock_refit_s"] = float(parts[4])
        elif parts[0] == "@@SELF":
            res["template_loglik"] = float(parts[1])
            res["self_refit_loglik_stock"] = float(parts[2])
            res["self_refit_loglik_fixed"] = float(parts[3])
            res["refit_patched"] = parts[4].strip() == "TRUE"
    if proc.returncode != 0 or "elapsed_s" not in res:
        res["error"] = rscript_failed(proc)
        return res
    ll = pd.read_csv(out_csv)
    res["loglik"] = ll["loglik"].astype(float).tolist()
    res["loglik_stock_refit"] = ll["loglik_stock"].astype(float).tolist()
    res["stock_refit_models_per_s"] = k / res["elapsed_stock_refit_s"]
    res["n_warn_fits"] = int((ll["nwarn"] > 0).sum())
    res["singular"] = int(ll["singular"].astype(str).str.upper().eq("TRUE").sum())
    res["models_per_s"] = k / res["elapsed_s"]
    res["s_per_model"] = res["elapsed_s"] / k
    return res


def run_lme4_section(s2: dict, df, Y, rb, group: str, k: int, workdir: Path, tag: str) -> None:
    """lme4 refit loop for a section-2 design; fills s2['lme4'], the ratio and the llf comparisons."""
    r2 = run_lme4(df[["x", group]], Y, SYN_FORMULA, group, k, workdir, tag, 600)
    s2["lme4"] = r2
    if "models_per_s" in r2:
        s2["ratio_jaxlmm_over_lme4"] = s2["jaxlmm"]["models_per_s"] / r2["models_per_s"]
        llf = rb.llf.to_numpy(float)[: r2["k"]]
        s2["llf_vs_lme4"] = compare_llf(llf, r2["loglik"])
        s2["llf_vs_lme4_stock_refit"] = compare_llf(llf, r2["loglik_stock_refit"])
        log(f"  lme4 {r2['models_per_s']:.2f} models/s (extrapolated from {r2['k']}); "
            f"ratio {s2['ratio_jaxlmm_over_lme4']:.1f}x")
    else:
        log(f"  lme4 failed: {r2}")


def compare_llf(jax_llf, r_llf, tol: float = LLF_TOL) -> dict:
    import numpy as np

    a = np.asarray(jax_llf, dtype=float)
    b = np.asarray(r_llf, dtype=float)
    d = a - b
    bad = np.abs(d) > tol
    return {
        "n": int(d.size),
        "max_abs_diff": float(np.max(np.abs(d))),
        "median_abs_diff": float(np.median(np.abs(d))),
        "n_over_tol": int(bad.sum()),
        "n_jaxlmm_higher": int((d > tol).sum()),
        "n_other_higher": int((d < -tol).sum()),
        "max_jaxlmm_higher": float(max(d.max(), 0.0)),
        "max_other_higher": float(max(-d.min(), 0.0)),
        "over_tol_index": [int(i) for i in np.flatnonzero(bad)[:20]],
        "over_tol_diffs": [float(x) for x in d[bad][:20]],
    }


# ------------------------------------------------------------------------------------------------
# statsmodels


def run_statsmodels(df, Y, k: int) -> dict:
    import numpy as np
    import statsmodels.formula.api as smf

    k = min(k, Y.shape[1])
    data = df[["Days", "Subject"]].copy()
    llf, conv = [], []
    msgs: set[str] = set()
    t0 = time.perf_counter()
    for j in range(k):
        data["y"] = Y[:, j]
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            r = smf.mixedlm("y ~ Days", data, groups="Subject", re_formula="~Days").fit(reml=True)
        msgs.update(str(x.message)[:120] for x in w)
        llf.append(float(r.llf))
        conv.append(bool(r.converged))
    elapsed = time.perf_counter() - t0
    return {
        "k": k, "elapsed_s": elapsed, "models_per_s": k / elapsed, "s_per_model": elapsed / k,
        "llf": llf, "converged": int(np.sum(conv)), "warnings": sorted(msgs)[:10],
    }


# ------------------------------------------------------------------------------------------------
# machine info


def machine_info() -> dict:
    import jax
    import numpy
    import statsmodels

    import jaxlmm

    source = jaxlmm_source(jaxlmm)
    if os.environ.get("JAXLMM_BENCH_SOURCE"):
        source["note"] = os.environ["JAXLMM_BENCH_SOURCE"]
    try:
        from jaxlmm._batch import AUTO_BATCH_MAX, MEMORY_BUDGET_BYTES, _concurrent_chunks

        chunking = {"chunk_threads": _concurrent_chunks(), "auto_batch_max": AUTO_BATCH_MAX,
                    "memory_budget_mib": MEMORY_BUDGET_BYTES / 2**20}
    except Exception:  # noqa: BLE001
        chunking = {}
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "nproc": nproc(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "jaxlmm": getattr(jaxlmm, "__version__", "?"),
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
        "jax_backend": jax.default_backend(),
        "jax_devices": jax.device_count(),
        "numpy": numpy.__version__,
        "statsmodels": statsmodels.__version__,
        "persistent_cache": "off (JAXLMM_NO_CACHE=1)" if os.environ.get("JAXLMM_NO_CACHE") else "on",
        "thread_env": thread_env(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS", "JAX_PLATFORMS")),
        "loadavg_start": list(os.getloadavg()),
        "fit_many_chunking": chunking,
        "source": source,
    }


# ------------------------------------------------------------------------------------------------
# reporting


def fmt(x, nd=1):
    if x is None:
        return "—"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.{nd}f}"
    return f"{x:.{max(nd, 2)}f}" if abs(x) >= 0.1 else f"{x:.3g}"


def write_markdown(res: dict, path: Path) -> None:
    mi = res["machine"]
    L = ["# jaxlmm `fit_many` benchmark", ""]
    if any(n.startswith("INCOMPLETE") for n in res.get("notes", [])):
        L += ["**" + res["notes"][0] + "**", ""]
    L.append(f"Generated by `bench/bench_many.py` on {mi['date']}. All fits REML; models/s = responses "
             "fitted per second of wall time.")
    L += ["", "## Machine", "", "| | |", "|---|---|"]
    L.append(f"| nproc | {mi['nproc']} |")
    L.append(f"| CPU | {mi['cpu']} |")
    L.append(f"| jax / jaxlib | {mi['jax']} / {mi['jaxlib']} (backend {mi['jax_backend']}, {mi['jax_devices']} device) |")
    src = mi.get("source") or {}
    where = ""
    if in_repo(src):
        where = f"from the working tree at commit {src.get('repo_head', '?')}" + uncommitted_text(src, ", ")
    elif src.get("jaxlmm_file"):
        where = f"imported from `{src['jaxlmm_file']}` (repository HEAD: {src.get('repo_head', '?')})"
    if src.get("note"):
        where += f". {src['note'][0].upper()}{src['note'][1:]}"
    L.append(f"| jaxlmm | {mi['jaxlmm']}, {where} |" if where else f"| jaxlmm | {mi['jaxlmm']} |")
    L.append(f"| statsmodels | {mi['statsmodels']} |")
    L.append(f"| R / lme4 | {mi.get('R', '—')} / {mi.get('lme4', '—')} |")
    L.append(f"| persistent compile cache | {mi['persistent_cache']} |")
    ch = mi.get("fit_many_chunking") or {}
    if ch:
        L.append(f"| `fit_many` automatic chunks | ≤ {ch['auto_batch_max']} models and ≤ {ch['memory_budget_mib']:.0f} MiB "
                 f"each; {ch['chunk_threads']} chunk thread(s) |")
    L.append(f"| load average (start → end) | {', '.join(f'{x:.2f}' for x in mi['loadavg_start'])} → "
             f"{', '.join(f'{x:.2f}' for x in mi.get('loadavg_end', []))} |")
    L.append(f"| total bench wall time | {res['total_wall_s']:.0f} s |")
    if mi.get("speed_probes"):
        L.append("| CPU speed probe, ms (fixed pure-Python loop; before each section → end) | "
                 + " → ".join(f"{x['at']}: {x['probe_s'] * 1e3:.0f}" for x in mi["speed_probes"]) + " |")
    for section in (_md_sleep, _md_large, _md_scaling):
        try:
            section(res, L)
        except (KeyError, TypeError, ZeroDivisionError) as err:
            L += ["", f"(section {section.__name__[4:]} incomplete: {err!r})"]
    if res.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    path.write_text("\n".join(L) + "\n")


def _md_sleep(res: dict, L: list) -> None:
    s1 = res.get("sleepstudy")
    if not s1:
        return
    j = s1["jaxlmm"]
    L += ["", f"## 1. sleepstudy `{SLEEP_FORMULA}`: {s1['n_sims']:,} simulated responses", ""]
    L.append(f"Simulated from the REML fit (β = {', '.join(f'{v:.3f}' for v in s1['truth']['fe_params'])}; "
             f"cov_re = {s1['truth']['cov_re']}; scale = {s1['truth']['scale']:.2f}); numpy seed {res['seed']}.")
    L += ["", "| library | what is timed | models | wall s | models/s |", "|---|---|---:|---:|---:|"]
    L.append(f"| jaxlmm | first call `fit_many(Y[:, :{j['first_k']}])` (compile + fits) | {j['first_k']} | "
             f"{j['first_call_s']:.2f} | — |")
    L.append(f"| jaxlmm | `fit_many(Y)`, run 1 | {s1['n_sims']:,} | {j['run1_s']:.2f} | {fmt(s1['n_sims'] / j['run1_s'])} |")
    L.append(f"| jaxlmm | `fit_many(Y)` again, **warm** (median of {len(j['warm_runs_s'])} calls) | {s1['n_sims']:,} | "
             f"{j['warm_s']:.2f} | "
             f"**{fmt(j['models_per_s'])}** |")
    r = s1.get("lme4", {})
    if "models_per_s" in r:
        L.append(f"| lme4 | loop of `refit(m, y)` (REML-p fix, see below) | {r['k']} | {r['elapsed_s']:.2f} | "
                 f"{fmt(r['models_per_s'])} |")
        L.append(f"| lme4 | loop of stock `refit(m, y)` | {r['k']} | {r['elapsed_stock_refit_s']:.2f} | "
                 f"{fmt(r['stock_refit_models_per_s'])} |")
    else:
        L.append(f"| lme4 | skipped/failed: {r.get('skipped') or r.get('error', '')[:100]} | | | |")
    sm = s1.get("statsmodels", {})
    if "models_per_s" in sm:
        L.append(f"| statsmodels | loop of `smf.mixedlm(...).fit(reml=True)` | {sm['k']} | {sm['elapsed_s']:.2f} | "
                 f"{fmt(sm['models_per_s'])} |")
    L += [""]
    L.append(f"First call minus the warm cost of the same {j['first_k']} fits (≈ compilation): "
             f"{j['compile_est_s']:.2f} s. jaxlmm converged {j['summary']['converged']:,}/{s1['n_sims']:,}, "
             f"singular {j['summary']['singular']:,}; iterations median {j['summary']['n_iter_median']:.0f}, "
             f"max {j['summary']['n_iter_max']}.")
    L.append(f"Warm calls: {', '.join(f'{t:.2f}' for t in j['warm_runs_s'])} s.")
    if j.get("warnings"):
        L.append("jaxlmm warnings (warm): " + "; ".join(f"`{w}`" for w in j["warnings"]))
    L += ["", "| ratio (models/s) | value |", "|---|---:|"]
    rat = s1.get("ratios", {})
    if "jaxlmm_over_lme4" in rat:
        L.append(f"| jaxlmm / lme4 (fixed refit) | **{rat['jaxlmm_over_lme4']:.1f}×** |")
        L.append(f"| jaxlmm / lme4 (stock refit) | {rat['jaxlmm_over_lme4_stock_refit']:.1f}× |")
    if "jaxlmm_over_statsmodels" in rat:
        L.append(f"| jaxlmm / statsmodels | {rat['jaxlmm_over_statsmodels']:,.0f}× |")
    if "target_met" in rat:
        L += ["", f"Target ≥ {TARGET_RATIO:.0f}× lme4's models/s on this machine: "
                  f"**{'met' if rat['target_met'] else 'NOT met'}** ({rat['jaxlmm_over_fastest_lme4']:.1f}× against "
                  "the faster of the two lme4 loops)."]
    for key, name in (("llf_vs_lme4", "lme4 `logLik` (fixed refit)"),
                      ("llf_vs_lme4_stock_refit", "lme4 `logLik` (stock refit)"),
                      ("llf_vs_statsmodels", "statsmodels `llf`")):
        c = s1.get(key)
        if c:
            L += ["", f"Log-likelihood agreement, jaxlmm `llf` vs {name} on the same {c['n']} responses: "
                      f"max |Δ| = {c['max_abs_diff']:.2e}, median {c['median_abs_diff']:.2e}; "
                      f"{c['n_over_tol']} over {LLF_TOL:g} (jaxlmm higher in {c['n_jaxlmm_higher']}, "
                      f"by up to {c['max_jaxlmm_higher']:.2e}; other higher in {c['n_other_higher']}, "
                      f"by up to {c['max_other_higher']:.2e})."]
    if "models_per_s" in r:
        L.append(f"lme4 refits with a convergence warning: {r['n_warn_fits']}; singular: {r['singular']}.")
        L += ["", "**lme4 `refit` caveat.** lme4 " + r["lme4"] + "'s `refit.merMod` rebuilds the response module "
              "with `REML = isREML(object)` (= 1) where `lmer` uses `REML = p` (number of fixed effects), so for "
              "p > 1 a stock REML `refit` optimizes and reports a wrong criterion: refitting the template's own "
              f"response gives logLik {r['self_refit_loglik_stock']:.4f} instead of lmer's "
              f"{r['template_loglik']:.4f}. The bench therefore times (and compares llf against) a copy of "
              "`refit.merMod` with that one argument set to p (`refit_fixed`; same code path, same cost; "
              f"self-refit logLik {r['self_refit_loglik_fixed']:.4f}). The stock `refit` loop is timed too."]



def _md_lme4_rows(s2: dict, L: list) -> None:
    """lme4 rows of a section-2 table, then the ratio and llf agreement lines."""
    r2 = s2.get("lme4", {})
    if "models_per_s" in r2:
        L.append(f"| lme4 | loop of fixed `refit(m, y)` over {r2['k']} responses, **extrapolated** | {r2['k']} | "
                 f"{r2['elapsed_s']:.2f} | {fmt(r2['models_per_s'])} |")
        L.append(f"| lme4 | loop of stock `refit(m, y)` over {r2['k']} responses, extrapolated | {r2['k']} | "
                 f"{r2['elapsed_stock_refit_s']:.2f} | {fmt(r2['stock_refit_models_per_s'])} |")
        L += ["", f"jaxlmm / lme4 (fixed refit): **{s2['ratio_jaxlmm_over_lme4']:.1f}×** (stock refit "
                  f"{s2['jaxlmm']['models_per_s'] / r2['stock_refit_models_per_s']:.1f}×). lme4's rate is extrapolated "
                  f"from {r2['k']} refits (≈ {r2['elapsed_s'] / r2['k'] * s2['k']:,.0f} s for all {s2['k']:,})."]
        c = s2.get("llf_vs_lme4")
        if c:
            L.append(f"llf agreement with the fixed refit on those {c['n']}: max |Δ| = {c['max_abs_diff']:.2e}; "
                     f"{c['n_over_tol']} over {LLF_TOL:g} (jaxlmm higher in {c['n_jaxlmm_higher']}, by up to "
                     f"{c['max_jaxlmm_higher']:.2e}; lme4 higher in {c['n_other_higher']}, by up to "
                     f"{c['max_other_higher']:.2e}). Stock refit: max |Δ| = "
                     f"{s2['llf_vs_lme4_stock_refit']['max_abs_diff']:.2e}.")
    elif r2:
        L.append(f"| lme4 | skipped/failed: {r2.get('skipped') or r2.get('error', '')[:100]} | | | |")


def _md_memory(j: dict) -> str:
    mf, mw = j.get("memory_first") or {}, j.get("memory_warm") or {}
    if mf.get("peak_rss_mib") is None or mw.get("peak_rss_mib") is None:
        return ""
    return (f" Memory of the bench process (VmRSS before → VmHWM peak during the call): first call "
            f"{mf['rss_before_mib']:,.0f} → {mf['peak_rss_mib']:,.0f} MiB, warm "
            f"{mw['rss_before_mib']:,.0f} → {mw['peak_rss_mib']:,.0f} MiB.")


def _md_large(res: dict, L: list) -> None:
    s2, s2b = res.get("large"), res.get("wide")
    if not (s2 or s2b):
        return
    L += ["", f"## 2. Larger designs: `{SYN_FORMULA}`, 10 obs per group (x = 0..9)", ""]
    L.append(f"Simulated with β = {SYN_BETA}, cov_re = {SYN_COV}, scale = {SYN_SCALE}. `fit_many` is called "
             "without `batch_size` (automatic chunks).")
    if s2:
        j2 = s2["jaxlmm"]
        L += ["", f"### 2a. {s2['n_groups']:,} groups × {s2['n_per']} obs ({s2['nobs']:,} rows), {s2['k']:,} responses",
              "", f"Automatic chunk: {fmt_chunk(s2.get('chunk', {}))} models.", "",
              "| library | what is timed | models | wall s | models/s |", "|---|---|---:|---:|---:|"]
        L.append(f"| jaxlmm | first call `fit_many(Y[:, :{j2['first_k']}])` (compile + fits) | {j2['first_k']} | "
                 f"{j2['first_call_s']:.2f} | — |")
        L.append(f"| jaxlmm | `fit_many(Y)` warm | {s2['k']:,} | {j2['warm_s']:.2f} | **{fmt(j2['models_per_s'])}** |")
        _md_lme4_rows(s2, L)
        L.append(f"jaxlmm converged {j2['summary']['converged']}/{s2['k']}, singular {j2['summary']['singular']}."
                 + _md_memory(j2))
    if s2b:
        j = s2b["jaxlmm"]
        L += ["", f"### 2b. {s2b['n_groups']:,} groups × {s2b['n_per']} obs ({s2b['nobs']:,} rows per response), "
                  f"{s2b['k']:,} responses, automatic batch size", ""]
        L.append(f"One `fit_many(Y)` call with Y of shape ({s2b['nobs']:,}, {s2b['k']:,}) "
                 f"({s2b['k'] * s2b['nobs'] * 8 / 2**20:,.0f} MiB), no `batch_size` and no caps: automatic chunk "
                 f"{fmt_chunk(s2b.get('chunk', {}))} models, chunks in parallel threads.")
        L += ["", "| library | what is timed | models | wall s | models/s | converged |", "|---|---|---:|---:|---:|---:|"]
        L.append(f"| jaxlmm | first call `fit_many(Y)` (compile + fits) | {s2b['k']:,} | {j['first_call_s']:.2f} | "
                 f"{fmt(j['first_models_per_s'])} | {j['first_summary']['converged']:,}/{s2b['k']:,} |")
        L.append(f"| jaxlmm | `fit_many(Y)` again, warm (median of {len(j['warm_runs_s'])} calls) | {s2b['k']:,} | "
                 f"{j['warm_s']:.2f} | "
                 f"**{fmt(j['models_per_s'])}** | {j['summary']['converged']:,}/{s2b['k']:,} |")
        tab_start = len(L)
        _md_lme4_rows(s2b, L)
        # the lme4 rows have one column fewer than this table: pad them
        for i in range(tab_start, len(L)):
            if L[i].startswith("| lme4 |"):
                L[i] += " — |"
        L.append(f"Warm calls: {', '.join(f'{t:.2f}' for t in j['warm_runs_s'])} s; singular "
                 f"{j['summary']['singular']:,}; iterations median {j['summary']['n_iter_median']:.0f}, max "
                 f"{j['summary']['n_iter_max']}; largest |llf difference| between the first and the warm call "
                 f"{j['max_abs_llf_diff_first_vs_warm']:.1e}." + _md_memory(j))
        if j.get("warnings"):
            L.append("jaxlmm warnings (warm call): " + "; ".join(f"`{w}`" for w in j["warnings"]))


def _md_scaling(res: dict, L: list) -> None:
    s3 = res.get("scaling")
    if s3:
        L += ["", "## 3. Scaling", "", f"### Batch size (sleepstudy, {s3['batch']['k']:,} responses)", "",
              "Each batch_size is run once (first call: compiles its chunk shapes), then timed (warm).", "",
              "| batch_size | first call s (compile + fits) | warm wall s | models/s |", "|---:|---:|---:|---:|"]
        for row in s3["batch"]["rows"]:
            star = " *" if row.get("shape_compiled_before") else ""
            L.append(f"| {row['batch_size']} | {row['warmup_s']:.2f}{star} | {row['warm_s']:.2f} | "
                     f"{fmt(row['models_per_s'])} |")
        if any(row.get("shape_compiled_before") for row in s3["batch"]["rows"]):
            L += ["", "\\* chunk shape already compiled in section 1 (the automatic chunk for sleepstudy is 256)."]
        kb = s3["batch"]["k"]
        big = [row["batch_size"] for row in s3["batch"]["rows"] if -(-kb // row["batch_size"]) <= 4]
        if big:
            L += ["", f"{kb:,} responses make only "
                      + ", ".join(f"{-(-kb // b)} chunk(s) at batch_size {b:,}" for b in big)
                      + ". fit_many runs the first chunk alone (its median θ warm-starts the others) and the rest "
                      "in parallel threads, so with few chunks a core sits idle for part of the call."]
        L += ["", f"### Groups per model ({s3['groups']['k']} responses each, 10 obs/group, `{SYN_FORMULA}`; "
                  "automatic batch size)", "",
              "| groups | rows | chunk (models) | first call s (compile + fits) | warm wall s | models/s | converged |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
        for row in s3["groups"]["rows"]:
            star = " *" if row.get("shape_compiled_before") else ""
            L.append(f"| {row['n_groups']:,} | {row['nobs']:,} | {fmt_chunk(row.get('chunk', {}))} | "
                     f"{row['first_s']:.2f}{star} | {row['warm_s']:.2f} | "
                     f"{fmt(row['models_per_s'])} | {row['summary']['converged']}/{row['summary']['n']} |")
        if any(row.get("shape_compiled_before") for row in s3["groups"]["rows"]):
            L += ["", "\\* no compilation: a design of the same shape (rows, groups, chunk) was compiled earlier "
                  "in the run (18 groups × 10 = sleepstudy's shape; 100 groups × 10 = section 2b's)."]


# ------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-sims", type=int, default=10_000)
    ap.add_argument("--first-k", type=int, default=300, help="responses in the first (compiling) call")
    ap.add_argument("--r-fits", type=int, default=300)
    ap.add_argument("--warm-repeats", type=int, default=3, help="warm calls timed in sections 1 and 2b (median)")
    ap.add_argument("--sm-fits", type=int, default=100)
    ap.add_argument("--large-groups", type=int, default=1000)
    ap.add_argument("--large-k", type=int, default=1000)
    ap.add_argument("--r-fits-large", type=int, default=30)
    ap.add_argument("--wide-groups", type=int, default=100, help="groups of the section-2b design (10 rows each)")
    ap.add_argument("--wide-k", type=int, default=10_000, help="responses fitted in section 2b")
    ap.add_argument("--r-fits-wide", type=int, default=100)
    ap.add_argument("--scaling-k", type=int, default=2000)
    ap.add_argument("--batch-sizes", default="16,64,128,256,512,1024")
    ap.add_argument("--group-sizes", default="18,100,500")
    ap.add_argument("--groups-k", type=int, default=500)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--no-r", action="store_true")
    ap.add_argument("--no-sm", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: large,wide,scaling")
    ap.add_argument("--cache", action="store_true", help="keep jaxlmm's persistent compilation cache on")
    ap.add_argument("--call-timeout", type=float, default=150.0, help="watchdog per fit_many call, s")
    ap.add_argument("--out", default=str(BENCH_DIR / "results"))
    args = ap.parse_args()

    if not args.cache:
        os.environ["JAXLMM_NO_CACHE"] = "1"
    import numpy as np
    import pandas as pd

    import jaxlmm

    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="jaxlmm_bench_many_"))
    rng = np.random.default_rng(args.seed)
    res: dict = {"seed": args.seed, "args": vars(args), "notes": []}
    res["machine"] = machine_info()
    log(f"machine: {res['machine']['nproc']} cpu, {res['machine']['cpu']}, jax {res['machine']['jax']}")

    _GUARD["timeout"] = args.call_timeout

    def write_results(note: str | None = None) -> None:
        res["machine"]["loadavg_end"] = list(os.getloadavg())
        res["machine"]["speed_probes"] = _PROBES
        res["total_wall_s"] = time.perf_counter() - _T0
        if note:
            res["notes"].insert(0, "INCOMPLETE RUN: " + note)
        (out_dir / "many.json").write_text(json.dumps(res, indent=1, default=float))
        write_markdown(res, out_dir / "many.md")

    _GUARD["on_hang"] = write_results
    seen_shapes: set = set()  # (nobs, groups, compiled chunk size) already compiled in this process

    # ============================================================ 1. sleepstudy
    speed_probe("start")
    df = jaxlmm.datasets.load("sleepstudy")[["Reaction", "Days", "Subject"]].copy()
    df["Subject"] = df["Subject"].astype(str)
    m = jaxlmm.MixedLM.from_formula(SLEEP_FORMULA, df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = m.fit(reml=True)
    beta = fit.fe_params.to_numpy(dtype=float)
    cov = fit.cov_re.to_numpy(dtype=float)
    scale = float(fit.scale)
    subj = df["Subject"].to_numpy()
    levels, gidx = np.unique(subj, return_inverse=True)
    X = np.column_stack([np.ones(len(df)), df["Days"].to_numpy(float)])
    Y = simulate(X, X, gidx, len(levels), beta, cov, scale, args.n_sims, rng)
    s1: dict = {"n_sims": args.n_sims,
                "truth": {"fe_params": beta.tolist(), "cov_re": np.round(cov, 3).tolist(), "scale": scale}}
    res["sleepstudy"] = s1
    log(f"sleepstudy: simulated {Y.shape}; first call on {args.first_k}")
    fk = min(args.first_k, args.n_sims)
    s1["chunk"] = chunk_shape(m, args.n_sims)
    for kk in (fk, args.n_sims):  # the automatic chunk depends on the number of responses
        seen_shapes.add((len(df), 18, chunk_shape(m, kk).get("compiled")))
    _, t_first, _ = timed_fit_many(m, Y[:, :fk], "sleepstudy first")
    log(f"  first call {t_first:.2f}s; full run 1")
    _, t1, _ = timed_fit_many(m, Y, "sleepstudy run 1")
    log(f"  run 1 {t1:.2f}s; {args.warm_repeats} warm runs")
    rb, t_warm, t2, w2 = warm_repeats(m, Y, "sleepstudy", args.warm_repeats)
    log(f"  warm runs {', '.join(f'{t:.2f}' for t in t_warm)} s; median {t2:.2f}s -> {args.n_sims / t2:.0f} models/s")
    # warm cost of the same first-k fits, to separate the compile from the first call
    _, t_fk_warm, _ = timed_fit_many(m, Y[:, :fk], "sleepstudy first-k warm")
    jllf = rb.llf.to_numpy(dtype=float)
    s1["jaxlmm"] = {"first_k": fk, "first_call_s": t_first, "run1_s": t1, "warm_s": t2, "warm_runs_s": t_warm,
                    "warm_first_k_s": t_fk_warm, "compile_est_s": t_first - t_fk_warm,
                    "models_per_s": args.n_sims / t2, "summary": batch_summary(rb), "warnings": w2,
                    "llf_first": jllf[: max(args.r_fits, args.sm_fits)].tolist()}
    if not args.no_r:
        log(f"  lme4 refit loop over {args.r_fits}")
        r = run_lme4(df[["Days", "Subject"]], Y, SLEEP_FORMULA, "Subject", args.r_fits, workdir, "sleep", 600)
        s1["lme4"] = r
        if "models_per_s" in r:
            res["machine"]["R"], res["machine"]["lme4"] = r["R"], r["lme4"]
            s1["llf_vs_lme4"] = compare_llf(jllf[: r["k"]], r["loglik"])
            s1["llf_vs_lme4_stock_refit"] = compare_llf(jllf[: r["k"]], r["loglik_stock_refit"])
            log(f"  lme4 {r['models_per_s']:.1f} models/s; llf max|d| {s1['llf_vs_lme4']['max_abs_diff']:.2e}")
        else:
            log(f"  lme4 failed: {r}")
    if not args.no_sm:
        log(f"  statsmodels loop over {args.sm_fits}")
        sm = run_statsmodels(df, Y, args.sm_fits)
        s1["statsmodels"] = sm
        s1["llf_vs_statsmodels"] = compare_llf(jllf[: sm["k"]], sm["llf"])
        log(f"  statsmodels {sm['models_per_s']:.2f} models/s")
    rat: dict = {}
    if "models_per_s" in s1.get("lme4", {}):
        rat["jaxlmm_over_lme4"] = s1["jaxlmm"]["models_per_s"] / s1["lme4"]["models_per_s"]
        rat["jaxlmm_over_lme4_stock_refit"] = s1["jaxlmm"]["models_per_s"] / s1["lme4"]["stock_refit_models_per_s"]
        # conservative: against the faster of the two lme4 loops
        rat["jaxlmm_over_fastest_lme4"] = min(rat["jaxlmm_over_lme4"], rat["jaxlmm_over_lme4_stock_refit"])
        rat["target_met"] = bool(rat["jaxlmm_over_fastest_lme4"] >= TARGET_RATIO)
    if "statsmodels" in s1:
        rat["jaxlmm_over_statsmodels"] = s1["jaxlmm"]["models_per_s"] / s1["statsmodels"]["models_per_s"]
    s1["ratios"] = rat
    res["sleepstudy"] = s1
    if "target_met" in rat:
        log(f"  jaxlmm/lme4 = {rat['jaxlmm_over_lme4']:.1f}x (stock refit {rat['jaxlmm_over_lme4_stock_refit']:.1f}x); target >= {TARGET_RATIO:.0f}x "
            f"{'MET' if rat['target_met'] else 'NOT met'}")
    del Y, rb

    # ============================================================ 2. larger designs
    if "large" not in skip:
        speed_probe("2a")
        G = args.large_groups
        log(f"large: {G} groups x 10, {args.large_k} responses")
        dfl, Yl = simulate_synthetic(G, args.large_k, rng)
        dfl["y"] = Yl[:, 0]  # the model's own response (only its design is used by fit_many)
        ml = jaxlmm.MixedLM.from_formula(SYN_FORMULA, dfl)
        fk2 = min(args.first_k, args.large_k)
        ch2 = chunk_shape(ml, args.large_k)
        for kk in (fk2, args.large_k):
            seen_shapes.add((len(dfl), G, chunk_shape(ml, kk).get("compiled")))
        log(f"  automatic chunk {fmt_chunk(ch2)}")
        _, tf2, _, mem_f2 = timed_with_peak(ml, Yl[:, :fk2], "large first")
        log(f"  first call {tf2:.2f}s")
        rbl, tw2, w2l, mem_w2 = timed_with_peak(ml, Yl, "large warm")
        log(f"  warm {tw2:.2f}s -> {args.large_k / tw2:.1f} models/s; peak RSS {fmt(mem_w2['peak_rss_mib'])} MiB")
        s2 = {"n_groups": G, "n_per": 10, "nobs": len(dfl), "k": args.large_k, "chunk": ch2,
              "jaxlmm": {"first_k": fk2, "first_call_s": tf2, "warm_s": tw2, "models_per_s": args.large_k / tw2,
                         "summary": batch_summary(rbl), "warnings": w2l,
                         "memory_first": mem_f2, "memory_warm": mem_w2}}
        res["large"] = s2
        if not args.no_r:
            run_lme4_section(s2, dfl, Yl, rbl, "g", args.r_fits_large, workdir, "large")
        res["large"] = s2
        del Yl, rbl

    if "wide" not in skip:
        speed_probe("2b")
        G = args.wide_groups
        log(f"wide: {G} groups x 10, {args.wide_k} responses, automatic batch size")
        dfw, Yw = simulate_synthetic(G, args.wide_k, rng)
        dfw["y"] = Yw[:, 0]
        mw = jaxlmm.MixedLM.from_formula(SYN_FORMULA, dfw)
        chw = chunk_shape(mw, args.wide_k)
        seen_shapes.add((len(dfw), G, chw.get("compiled")))
        log(f"  Y {Yw.shape}, automatic chunk {fmt_chunk(chw)}")
        rbw1, tfw, _, mem_fw = timed_with_peak(mw, Yw, "wide first")
        log(f"  first call {tfw:.2f}s -> {args.wide_k / tfw:.0f} models/s; peak RSS {fmt(mem_fw['peak_rss_mib'])} MiB")
        before_w = rss_mib("VmRSS")
        reset_w = reset_peak()
        rbw, tw_all, tww, www = warm_repeats(mw, Yw, "wide", args.warm_repeats)
        mem_ww = {"rss_before_mib": before_w, "peak_rss_mib": rss_mib("VmHWM") if reset_w else None}
        log(f"  warm runs {', '.join(f'{t:.2f}' for t in tw_all)} s; median {tww:.2f}s -> "
            f"{args.wide_k / tww:.0f} models/s; peak RSS {fmt(mem_ww['peak_rss_mib'])} MiB")
        s2b = {"n_groups": G, "n_per": 10, "nobs": len(dfw), "k": args.wide_k, "chunk": chw,
               "jaxlmm": {"first_call_s": tfw, "first_models_per_s": args.wide_k / tfw,
                          "first_summary": batch_summary(rbw1), "warm_s": tww, "models_per_s": args.wide_k / tww,
                          "warm_runs_s": tw_all, "summary": batch_summary(rbw), "warnings": www,
                          "memory_first": mem_fw, "memory_warm": mem_ww,
                          "max_abs_llf_diff_first_vs_warm": float(np.nanmax(np.abs(
                              rbw1.llf.to_numpy(float) - rbw.llf.to_numpy(float))))}}
        res["wide"] = s2b
        del rbw1
        if not args.no_r:
            run_lme4_section(s2b, dfw, Yw, rbw, "g", args.r_fits_wide, workdir, "wide")
        res["wide"] = s2b
        del Yw, rbw

    # ============================================================ 3. scaling
    if "scaling" not in skip:
        speed_probe("3")
        s3: dict = {"batch": {"k": args.scaling_k, "rows": []}, "groups": {"k": args.groups_k, "rows": []}}
        res["scaling"] = s3
        Ys = simulate(X, X, gidx, len(levels), beta, cov, scale, args.scaling_k, rng)
        log(f"scaling: batch sizes {batch_sizes} on {args.scaling_k} sleepstudy responses")
        for bs in batch_sizes:
            chb = chunk_shape(m, args.scaling_k, bs)
            shape_seen = (len(df), 18, chb.get("compiled", bs)) in seen_shapes
            seen_shapes.add((len(df), 18, chb.get("compiled", bs)))
            # first call: the same call as the timed one, so it compiles exactly the shapes the timed
            # call uses (full chunks, the short last chunk, the small chunks for stragglers)
            _, tw, _ = timed_fit_many(m, Ys, f"batch {bs} first", batch_size=bs)
            _, t, _ = timed_fit_many(m, Ys, f"batch {bs}", batch_size=bs)
            s3["batch"]["rows"].append({"batch_size": bs, "shape_compiled_before": shape_seen, "warmup_s": tw, "warm_s": t, "models_per_s": args.scaling_k / t})
            log(f"  batch_size {bs}: warm-up {tw:.1f}s, {args.scaling_k / t:.0f} models/s")
        group_sizes = [int(g) for g in args.group_sizes.split(",") if g]
        log(f"scaling: groups {group_sizes}, {args.groups_k} responses each")
        for G in group_sizes:
            dfg, Yg = simulate_synthetic(G, args.groups_k, rng)
            dfg["y"] = Yg[:, 0]
            mg = jaxlmm.MixedLM.from_formula(SYN_FORMULA, dfg)
            chg = chunk_shape(mg, args.groups_k)
            shape_seen = (len(dfg), G, chg.get("compiled")) in seen_shapes
            seen_shapes.add((len(dfg), G, chg.get("compiled")))
            _, tf, _ = timed_fit_many(mg, Yg, f"{G} groups first")
            rbg, tw, _ = timed_fit_many(mg, Yg, f"{G} groups warm")
            s3["groups"]["rows"].append({"n_groups": G, "nobs": len(dfg), "chunk": chg,
                                         "shape_compiled_before": shape_seen, "first_s": tf, "warm_s": tw,
                                         "models_per_s": args.groups_k / tw, "summary": batch_summary(rbg)})
            log(f"  {G} groups: first {tf:.1f}s, warm {tw:.2f}s -> {args.groups_k / tw:.0f} models/s")
        res["scaling"] = s3

    res["machine"]["loadavg_end"] = list(os.getloadavg())
    speed_probe("end")
    pr = [x["probe_s"] for x in _PROBES]
    if pr and max(pr) > 1.3 * min(pr):
        res["notes"].append(f"The CPU speed probe (a fixed pure-Python loop, timed before each section) ranged "
                            f"{min(pr) * 1e3:.0f}–{max(pr) * 1e3:.0f} ms during the run: the machine's speed varied "
                            "(on a shared virtual machine, the host's load), so timings here are noisy beyond what "
                            "the load average shows.")
    if max(res["machine"]["loadavg_start"][0], res["machine"]["loadavg_end"][0]) > float(res["machine"]["nproc"] or 1):
        res["notes"].append("Load average above the core count during the run: timings are noisy "
                            "(other processes were using the CPU).")
    res["notes"].append("lme4 and statsmodels loops run single-threaded per fit; jaxlmm uses XLA:CPU's threads "
                        "(both cores). lme4 timings are `proc.time()` elapsed around the refit loop only "
                        "(R start-up, data reading and the template `lmer` fit excluded).")
    chunk = res["machine"].get("fit_many_chunking") or {}
    res["notes"].append("All `fit_many` calls except the batch-size scan of section 3 use the automatic batch size: "
                        f"chunks of at most {chunk.get('auto_batch_max', '?')} models within a "
                        f"{chunk.get('memory_budget_mib', 0):.0f} MiB memory budget, run in parallel threads (one "
                        "per core). The earlier caps (32,768 rows per chunk, 46,080 rows across concurrent chunks), "
                        "a workaround for jaxlib's batched-LAPACK deadlock, are gone: jaxlmm no longer makes batched "
                        "LAPACK calls (docs/deadlock.md).")
    res["notes"].append("jaxlmm's first-call time includes JIT compilation of the chunk shapes "
                        "(persistent cache off unless --cache); later calls with the same shapes reuse them.")
    shutil.rmtree(workdir, ignore_errors=True)
    write_results()
    log(f"wrote {out_dir / 'many.md'} and {out_dir / 'many.json'}")
    print((out_dir / "many.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
