"""Helpers shared by the benchmark scripts (bench_core.py, bench_crossed.py, bench_many.py, bench_grad.py).

The scripts run as ``python bench/bench_X.py`` from the repository root, so this folder is on
``sys.path`` and they import this module as ``_common``; the fresh-process children of
bench_core.py and bench_crossed.py put the folder on ``sys.path`` before importing it. Only the
standard library is imported at module level (jax, jaxlmm, pandas are imported where needed).
"""

from __future__ import annotations

import compileall
import contextlib
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
DEFAULT_INSTEVAL = REPO_ROOT / "tests" / "data" / "insteval.csv.gz"  # lme4's InstEval, bundled with the tests

# Load average (1 min) above which core.md / crossed.md carry a "machine was busy" note.
BUSY_LOADAVG = 1.5


# ------------------------------------------------------------------------------------------------
# data


def read_source(src: dict):
    """The raw DataFrame of a model's ``source``: its ``csv``, else the ``dataset`` of jaxlmm.datasets."""
    import pandas as pd

    if src.get("csv"):
        return pd.read_csv(src["csv"])
    import jaxlmm

    return jaxlmm.datasets.load(src["dataset"])


def load_frames(specs: list[dict], load_frame, models: dict, describe) -> dict:
    """key -> load_frame(spec) for each spec; ``models[key]`` gets the formula, nobs and describe(spec, df)."""
    frames = {}
    for spec in specs:
        df = load_frame(spec)
        frames[spec["key"]] = df
        models[spec["key"]] = {"formula": spec["formula"], "nobs": len(df), **describe(spec, df)}
    return frames


# ------------------------------------------------------------------------------------------------
# memory readings (Linux /proc)


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: peak); -1 if unreadable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# jaxlmm first fit in a fresh process


def no_cache_here() -> None:
    """Keep this process's own (warm) timings off the persistent compilation cache and ~/.cache."""
    os.environ["JAXLMM_NO_CACHE"] = "1"
    os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


def compile_jaxlmm_bytecode() -> bool:
    """Compile jaxlmm's modules to bytecode, as ``pip install`` does for an installed package.

    An editable install in an environment with ``PYTHONDONTWRITEBYTECODE=1`` (this sandbox's) never
    writes them, so every fresh process recompiled jaxlmm's source: about 0.1 s of each process
    figure that a user's second run does not pay (its dependencies' bytecode came with their
    wheels). Returns whether every module compiled."""
    return bool(compileall.compile_dir(str(REPO_ROOT / "jaxlmm"), quiet=1))


def child_env(cache_dir: str | None) -> dict:
    """Environment of a first-fit child: cache off (None) or JAXLMM_CACHE_DIR=cache_dir."""
    env = dict(os.environ)
    for k in ("JAXLMM_NO_CACHE", "JAXLMM_CACHE_DIR", "JAX_COMPILATION_CACHE_DIR"):
        env.pop(k, None)
    if cache_dir is None:
        env["JAXLMM_NO_CACHE"] = "1"
    else:
        env["JAXLMM_CACHE_DIR"] = cache_dir
    return env


def cache_entries(cache_dir: str) -> int:
    """Number of entries (non-hidden files) in a compilation-cache folder."""
    return sum(1 for p in Path(cache_dir).iterdir() if not p.name.startswith("."))


def timed_reml_fit(formula: str, df):
    """``MixedLM.from_formula(formula, df).fit(reml=True)`` timed, warnings recorded: (result, s, messages)."""
    import jaxlmm

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        r = jaxlmm.MixedLM.from_formula(formula, df).fit(reml=True)
        t_fit = time.perf_counter() - t0
    return r, t_fit, [str(x.message)[:200] for x in w]


@contextlib.contextmanager
def workdir_with_cache():
    """A temporary folder (R's files go there) holding an empty compilation-cache folder: (tmp, cache_dir)."""
    with tempfile.TemporaryDirectory(prefix="jaxlmm-bench-") as tmp:
        tmp = Path(tmp)
        cache_dir = tmp / "jax-cache"
        cache_dir.mkdir()
        yield tmp, cache_dir


def first_fit_subprocess(child: str, spec: dict, cache_dir: str | None, timeout: float,
                         parent_memory: bool = False) -> dict:
    """Run the script ``child`` as ``sys.executable -c`` with ``spec`` (plus ``bench_dir``) as JSON.

    Returns the dict the child printed after ``@@RESULT@@``, with the process wall time, the
    compilation-cache entries before/after (when ``cache_dir`` is given) and, with
    ``parent_memory``, this process's VmRSS/VmHWM when it spawned the child.
    """
    payload = dict(spec, bench_dir=str(BENCH_DIR))
    n_before = cache_entries(cache_dir) if cache_dir is not None else None
    if parent_memory:
        parent_rss, parent_peak = status_kib("VmRSS"), status_kib("VmHWM")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", child, json.dumps(payload)],
        env=child_env(cache_dir),
        capture_output=True,
        text=True,
        cwd=str(REPO_ROOT),
        timeout=timeout,
    )
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            out = json.loads(line[len("@@RESULT@@") :])
            out["process_wall_s"] = wall
            if parent_memory:
                out["parent_rss_at_spawn_kib"] = parent_rss
                out["parent_peak_at_spawn_kib"] = parent_peak
            if cache_dir is not None:
                out["cache_entries_before"] = n_before
                out["cache_entries_after"] = cache_entries(cache_dir)
            return out
    raise RuntimeError(f"jaxlmm subprocess failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")


def summarise_runs(runs: list[dict], peak_keys: tuple[str, ...]) -> dict:
    """The last run's record, with the median first-fit time, all first-fit times and the max of peak_keys."""
    best = dict(runs[-1])
    best["first_fit_s"] = statistics.median(r["first_fit_s"] for r in runs)
    best["first_fit_times"] = [r["first_fit_s"] for r in runs]
    if all("first_summary_s" in r for r in runs):
        best["first_summary_s"] = statistics.median(r["first_summary_s"] for r in runs)
    for k in peak_keys:
        best[k] = max(r[k] for r in runs)
    return best


def attach_first_fits(jw: dict, cold: list[dict], populate: dict, warm: list[dict], peak_keys: tuple[str, ...]) -> None:
    """Store the first-fit runs in a warm-fit record: no cache and warm cache summarised, the populating run as is."""
    jw["first_fit_nocache"] = summarise_runs(cold, peak_keys)
    jw["first_fit_cache_populate"] = populate
    jw["first_fit_warmcache"] = summarise_runs(warm, peak_keys)


def check_first_fits(key: str, warm: list[dict], runs: list[dict], llf: float, notes: list[str],
                     miss_hint: str = "") -> None:
    """Notes for a warm-cache run that wrote new cache entries, and for a child llf off the in-process one."""
    missed = [c for c in warm if c["cache_entries_after"] > c["cache_entries_before"]]
    if missed:
        notes.append(f"{key}: the warm-cache first fit wrote "
                     f"{missed[0]['cache_entries_after'] - missed[0]['cache_entries_before']} new entries to "
                     "the compilation cache, i.e. it missed the cache" + (f" {miss_hint}" if miss_hint else "") + ".")
    for c in runs:
        if abs(c["llf"] - llf) > 1e-6:
            notes.append(f"{key}: jaxlmm llf in a subprocess ({c['llf']:.8f}) differs from in-process "
                         f"({llf:.8f})")
            break


# ------------------------------------------------------------------------------------------------
# R / lme4

# Start of the lme4 scripts: load lme4, print an @@VERSION line, define time_batches(fit1, refit, nrep):
# one timed warm-up fit1(), then refit() in batches of b fits, each batch >= ~50 ms so proc.time's 1 ms
# resolution does not matter (tt: time per fit, per batch).
R_LME4_PRELUDE = r"""
suppressMessages(library(lme4))
cat("@@VERSION", as.character(packageVersion("lme4")), R.version.string,
    paste(extSoftVersion()[["BLAS"]], La_library()), "\n", sep = "\t")
time_batches <- function(fit1, refit, nrep) {
  t0 <- proc.time()[["elapsed"]]
  m <- fit1()
  t_warm <- proc.time()[["elapsed"]] - t0
  b <- max(1L, as.integer(ceiling(0.05 / max(t_warm, 1e-3))))
  nb <- max(1L, as.integer(ceiling(nrep / b)))
  tt <- numeric(nb)
  for (k in seq_len(nb)) {
    t0 <- proc.time()[["elapsed"]]
    for (j in seq_len(b)) m <- refit()
    tt[k] <- (proc.time()[["elapsed"]] - t0) / b
  }
  list(m = m, b = b, nb = nb, tt = tt)
}
"""


def run_r_spec(script: str, header: str, specs: list[dict], frames: dict, row, workdir: Path,
               timeout: float) -> subprocess.CompletedProcess | None:
    """Write each spec's frame to ``workdir/<key>.csv`` and a ``spec.tsv`` (header, then ``row(spec, csv)``
    per spec), then run ``Rscript bench.R spec.tsv`` with ``script`` as bench.R. None without Rscript."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return None
    rows = [header]
    for spec in specs:
        csv = workdir / f"{spec['key']}.csv"
        frames[spec["key"]].to_csv(csv, index=False)
        rows.append(row(spec, csv))
    (workdir / "spec.tsv").write_text("\n".join(rows) + "\n")
    (workdir / "bench.R").write_text(script)
    return subprocess.run(
        [rscript, str(workdir / "bench.R"), str(workdir / "spec.tsv")],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tsv_lines(stdout: str):
    """Tab-separated fields of each line of an R script's output."""
    for line in stdout.splitlines():
        yield line.rstrip("\n").split("\t")


def r_version(parts: list[str]) -> dict:
    """An ``@@VERSION`` line (lme4 version, R.version.string, BLAS/LAPACK) as a dict."""
    return {"lme4": parts[1], "R": parts[2], "blas": parts[3].strip()}


def parse_fixef(fe: str) -> dict:
    """``name=value;name=value`` (fixef as printed by the R scripts) as a dict of floats."""
    return {a: float(b) for a, b in (p.split("=") for p in fe.split(";") if p)}


def r_warnings(warn: str) -> list[str]:
    """The warnings field of an ``@@RESULT`` line as a list (empty when there were none)."""
    return [warn.strip()] if warn.strip() else []


def rscript_failed(proc: subprocess.CompletedProcess) -> str:
    """The message for an Rscript run that failed: return code and the end of stderr."""
    return f"Rscript failed (rc={proc.returncode}): {proc.stderr[-2000:]}"


# ------------------------------------------------------------------------------------------------
# machine info


def cpu_model(default: str = "unknown") -> str:
    """The CPU's model name from /proc/cpuinfo, else ``default``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def nproc() -> str:
    """The output of ``nproc`` (cores available to this process), else os.cpu_count()."""
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return str(os.cpu_count())


def mem_gib() -> float | None:
    """Physical memory in GiB (one decimal), None where sysconf cannot tell."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def thread_env(keys=("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "JAXLMM_LAPACK_THREADS", "XLA_FLAGS",
                     "JAX_PLATFORMS")) -> dict:
    """The thread-related environment variables, ``(unset)`` where not set."""
    return {k: os.environ.get(k, "(unset)") for k in keys}


def jaxlmm_source(jaxlmm) -> dict:
    """Where jaxlmm was imported from; in this repository, its HEAD and uncommitted files under jaxlmm/."""
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
    return source


def machine_info(statsmodels: bool = False, source: bool = False) -> dict:
    """Date, host, CPU, cores, memory, versions (statsmodels's if asked), jaxlmm's source if asked,
    thread settings and the load average at start: the machine record of core.json and crossed.json."""
    import jax
    import numpy
    import pandas

    import jaxlmm

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "nproc": nproc(),
        "cpu": cpu_model(),
        "mem_gib": mem_gib(),
        "python": platform.python_version(),
        "jaxlmm": jaxlmm.__version__,
    }
    if source:
        info["source"] = jaxlmm_source(jaxlmm)
    info.update(
        jax=jax.__version__,
        jax_backend=jax.default_backend(),
        numpy=numpy.__version__,
        pandas=pandas.__version__,
    )
    if statsmodels:
        import statsmodels as sm

        info["statsmodels"] = sm.__version__
    info.update(thread_env=thread_env(), loadavg_start=list(os.getloadavg()))
    return info


def new_results(argv, machine: dict, notes: list[str], **params) -> dict:
    """The results record of a run (command, params, machine, models, notes); prints a machine summary."""
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        **params,
        "machine": machine,
        "models": {},
        "notes": notes,
    }
    print(f"machine: {machine['cpu']}, nproc={machine['nproc']}, jax {machine['jax']}")
    return results


def in_repo(src: dict) -> bool:
    """Whether the jaxlmm recorded by jaxlmm_source was imported from this repository's working tree."""
    return bool(src.get("jaxlmm_file")) and Path(src["jaxlmm_file"]).is_relative_to(REPO_ROOT)


def uncommitted_text(src: dict, sep: str) -> str:
    """``sep`` + the uncommitted files under jaxlmm/ (bold), or that there are none."""
    if src.get("jaxlmm_uncommitted"):
        return f"{sep}**with uncommitted changes in {', '.join(src['jaxlmm_uncommitted'])}**"
    return ", no uncommitted changes in jaxlmm/"


# ------------------------------------------------------------------------------------------------
# reporting


def fmt_t(s: float | None) -> str:
    """Seconds as µs / ms / s; ``—`` for None."""
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_ratio(a: float | None, b: float | None, fine: bool = False) -> str:
    """a / b as ``1.2×`` (``—`` if missing); with ``fine``, more digits below 0.95."""
    if a is None or b is None or b == 0:
        return "—"
    x = a / b
    if not fine:
        return f"{x:.1f}×"
    return f"{x:.1f}×" if x >= 0.95 else (f"{x:.2f}×" if x >= 0.1 else f"{x:.2g}×")


def fmt_mib(kib: float | None, hide_negative: bool = True) -> str:
    """KiB as MiB (one decimal below 10 MiB); ``—`` for None and, with hide_negative, below zero."""
    if kib is None or (hide_negative and kib < 0):
        return "—"
    return f"{kib / 1024:.1f} MiB" if abs(kib) < 10 * 1024 else f"{kib / 1024:.0f} MiB"


def _get(d: dict, *keys):
    """d[k1][k2]..., None as soon as a key is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table with left-aligned columns, for the terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def machine_lines(m: dict, lme4v: dict, where: str = "") -> list[str]:
    """The Date / Machine / Versions / R BLAS / Threads / Load average lines atop core.md and crossed.md.

    ``where`` follows jaxlmm's version; statsmodels's version is listed when ``m`` records it."""
    sm = f"statsmodels {m['statsmodels']}, " if "statsmodels" in m else ""
    return [
        f"Date: {m['date']}  ",
        f"Machine: {m['cpu']}, nproc = {m['nproc']}, {m['mem_gib']} GiB RAM, {m['platform']}  ",
        f"Versions: python {m['python']}, jaxlmm {m['jaxlmm']}{where}, jax {m['jax']} ({m['jax_backend']}), "
        f"numpy {m['numpy']}, pandas {m['pandas']}, {sm}"
        f"lme4 {lme4v.get('lme4', '—')} ({lme4v.get('R', 'R not run')})  ",
        f"R BLAS/LAPACK: {lme4v.get('blas', '—')}  ",
        "Threads: " + ", ".join(f"{k}={v}" for k, v in m["thread_env"].items()) + " (defaults, not overridden)  ",
        "Load average (1, 5, 15 min) at start: {} ; at end: {}  ".format(
            ", ".join(f"{x:.2f}" for x in m["loadavg_start"]), ", ".join(f"{x:.2f}" for x in m.get("loadavg_end", []))
        ),
    ]


def md_section(title: str, table: tuple) -> list[str]:
    """Lines of a ``## title`` section holding a Markdown table (``table``: header, rows)."""
    return ["", f"## {title}", "", md_table(*table), ""]


def write_report(path: Path, lines: list[str], notes: list[str] | None) -> None:
    """Write a Markdown report: its lines, then a Notes section when there are notes."""
    if notes:
        lines = lines + ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


def finish_run(results: dict, t_start: float, build_tables, write_markdown, out_dir: Path, stem: str,
               mem_title: str) -> int:
    """End of a model benchmark's main(): total time, load-average note, tables and llf-check notes,
    the printed report, then ``<stem>.md`` and ``<stem>.json`` in out_dir."""
    notes = results["notes"]
    results["total_s"] = time.perf_counter() - t_start
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    if max(results["machine"]["loadavg_start"][0], results["machine"]["loadavg_end"][0]) > BUSY_LOADAVG:
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
    print(f"\n{mem_title}")
    print(text_table(*tables["mem"]))
    if notes:
        print("\nNotes")
        for n in notes:
            print("  - " + n)

    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    write_markdown(results, tables, md)
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {md} and {js}  (total {results['total_s']:.0f} s)")
    return 0
