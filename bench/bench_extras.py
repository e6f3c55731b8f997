"""Issue 13's features side by side with R: prior weights and offsets (lme4), residual-variance
models (nlme's varIdent / varExp), ANOVA tables (lmerTest, Satterthwaite and Kenward–Roger) and
marginal means (emmeans).

For each case, in fresh processes: jaxlmm without the persistent cache (import, first call with
compilation, then the warm median of repeated calls after the tiered compilation has settled), and
R (library load, first call, warm median). Writes bench/results/extras.md and extras.json.

    python bench/bench_extras.py [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = ROOT / "tests" / "data"

# name: (jaxlmm setup, jaxlmm call, R setup, R call, what)
CASES = {
    "weights_offset": (
        f"df = pd.read_csv('{DATA}/sleepstudy_wo.csv', dtype={{'Subject': str}})\n"
        "m = jaxlmm.MixedLM.from_formula('Reaction ~ Days + (Days | Subject)', df, weights='w', offset='o')",
        "m.fit(warn=False)",
        f"suppressMessages(library(lme4)); d <- read.csv('{DATA}/sleepstudy_wo.csv'); d$Subject <- factor(d$Subject)",
        "lmer(Reaction ~ Days + (Days | Subject), d, weights = w, offset = o)",
        "sleepstudy with weights and offset, REML fit (lme4)",
    ),
    "varident": (
        f"df = pd.read_csv('{DATA}/sessions_60.csv')\n"
        "m = jaxlmm.MixedLM.from_formula('y ~ x + session + (1 | subject)', df, resid_formula='~ session')",
        "m.fit(warn=False)",
        f"suppressMessages(library(nlme)); d <- read.csv('{DATA}/sessions_60.csv')",
        "lme(y ~ x + session, random = ~1 | subject, weights = varIdent(form = ~1 | session), data = d)",
        "720 rows, 60 subjects, one residual variance per session, REML fit (nlme varIdent)",
    ),
    "varexp": (
        f"df = pd.read_csv('{DATA}/varexp.csv')\n"
        "m = jaxlmm.MixedLM.from_formula('y ~ x + (1 | subject)', df, resid_formula='~ x')",
        "m.fit(warn=False)",
        f"suppressMessages(library(nlme)); d <- read.csv('{DATA}/varexp.csv')",
        "lme(y ~ x, random = ~1 | subject, weights = varExp(form = ~ x), data = d)",
        "240 rows, exponential residual variance, REML fit (nlme varExp)",
    ),
    "anova_satterthwaite": (
        "df = jaxlmm.datasets.load('orthodont')\n"
        "m = jaxlmm.MixedLM.from_formula('distance ~ age * Sex + (1 | Subject)', df)",
        "m.fit(warn=False).anova()",
        f"suppressMessages(library(lmerTest)); d <- read.csv('{ROOT}/jaxlmm/datasets/data/orthodont.csv')",
        "anova(lmer(distance ~ age * Sex + (1 | Subject), d))",
        "orthodont fit + type III ANOVA, Satterthwaite (lmerTest)",
    ),
    "anova_kenward_roger": (
        "df = jaxlmm.datasets.load('orthodont')\n"
        "m = jaxlmm.MixedLM.from_formula('distance ~ age * Sex + (1 | Subject)', df)",
        "m.fit(warn=False).anova(ddf='kenward-roger')",
        f"suppressMessages(library(lmerTest)); d <- read.csv('{ROOT}/jaxlmm/datasets/data/orthodont.csv')",
        "anova(lmer(distance ~ age * Sex + (1 | Subject), d), ddf = 'Kenward-Roger')",
        "orthodont fit + type III ANOVA, Kenward-Roger (lmerTest with pbkrtest)",
    ),
    "emmeans_pairs": (
        f"df = pd.read_csv('{DATA}/sessions_60.csv')\n"
        "m = jaxlmm.MixedLM.from_formula('y ~ x + session + (1 | subject)', df)",
        "m.fit(warn=False).emmeans_pairwise('session', adjust='tukey')",
        f"suppressMessages({{library(lmerTest); library(emmeans)}}); emm_options(lmer.df = 'satterthwaite'); "
        f"d <- read.csv('{DATA}/sessions_60.csv')",
        "pairs(emmeans(lmer(y ~ x + session + (1 | subject), d), ~ session), adjust = 'tukey')",
        "sessions fit + Tukey-adjusted pairwise contrasts of marginal means (lmerTest + emmeans)",
    ),
}


def _jaxlmm_child(setup: str, call: str, reps: int) -> dict:
    code = textwrap.dedent(f"""
        import json, statistics, time
        t0 = time.perf_counter()
        import numpy as np, pandas as pd, jaxlmm
        t_import = time.perf_counter() - t0
        {setup.replace(chr(10), chr(10) + '        ')}
        t1 = time.perf_counter(); out = {call}; t_first = time.perf_counter() - t1
        for _ in range(5):  # past the tiered compilation of a refitted shape
            out = {call}
        times = []
        for _ in range({reps}):
            t = time.perf_counter(); out = {call}; times.append(time.perf_counter() - t)
        print(json.dumps({{"import": t_import, "first": t_first, "warm": statistics.median(times)}}))
    """)
    env = dict(os.environ, JAXLMM_NO_CACHE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _r_child(setup: str, call: str, reps: int) -> dict:
    code = f"""
t0 <- proc.time()[["elapsed"]]
{setup}
t_load <- proc.time()[["elapsed"]] - t0
t1 <- proc.time()[["elapsed"]]; out <- {call}; t_first <- proc.time()[["elapsed"]] - t1
for (i in 1:3) out <- {call}
times <- sapply(1:{reps}, function(i) {{ t <- proc.time()[["elapsed"]]; out <- {call}; proc.time()[["elapsed"]] - t }})
cat(sprintf('{{"import": %.6f, "first": %.6f, "warm": %.6f}}\\n', t_load, t_first, median(times)))
"""
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(code)
    out = subprocess.run(["Rscript", f.name], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    rows = {}
    for name, (jsetup, jcall, rsetup, rcall, what) in CASES.items():
        j = _jaxlmm_child(jsetup, jcall, args.reps)
        r = _r_child(rsetup, rcall, args.reps)
        rows[name] = {"what": what, "jaxlmm": j, "R": r}
        print(f"{name:22s} jaxlmm first {j['first']:.3f} s warm {1e3 * j['warm']:.2f} ms | "
              f"R first {r['first']:.3f} s warm {1e3 * r['warm']:.2f} ms | warm ratio {r['warm'] / j['warm']:.1f}x")
    out = BENCH / "results"
    (out / "extras.json").write_text(json.dumps(rows, indent=1))
    lines = ["# Issue 13's features against R, measured in the same run", "",
             f"`python bench/bench_extras.py --reps {args.reps}`; fresh processes; jaxlmm with `JAXLMM_NO_CACHE=1`. "
             "First: the first call in the process (jaxlmm: compilation included; R: after library() and data "
             "loading). Warm: the median of repeated calls (jaxlmm after its tiered compilation settled).", "",
             "| case | jaxlmm first (s) | R first (s) | jaxlmm warm (ms) | R warm (ms) | R warm / jaxlmm warm |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        j, r = row["jaxlmm"], row["R"]
        lines.append(f"| {row['what']} | {j['first']:.2f} | {r['first']:.3f} | {1e3 * j['warm']:.2f} | "
                     f"{1e3 * r['warm']:.2f} | {r['warm'] / j['warm']:.1f}× |")
    (out / "extras.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
