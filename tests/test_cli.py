"""The console script: summaries on stdout, clear errors on stderr with exit status 2."""

import subprocess
import sys

import pandas as pd
import pytest

from jaxlmm.cli import main


def test_example_prints_summary(capsys):
    assert main(["example", "sleepstudy"]) == 0
    out = capsys.readouterr().out
    assert "Mixed Linear Model Regression Results" in out
    assert "-871.8141" in out  # REML log-likelihood of sleepstudy (Days | Subject), as lme4


def test_fit_csv_ml(tmp_path, capsys):
    from jaxlmm import datasets

    path = tmp_path / "d.csv"
    datasets.load("sleepstudy").to_csv(path, index=False)
    assert main(["fit", str(path), "Reaction ~ Days + (Days | Subject)", "--ml"]) == 0
    out = capsys.readouterr().out
    assert "ML" in out and "-875.9697" in out


def test_fit_reports_missing_column(tmp_path, capsys):
    path = tmp_path / "d.csv"
    pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "g": list("aabb")}).to_csv(path, index=False)
    assert main(["fit", str(path), "y ~ x + (1 | g)"]) == 2
    err = capsys.readouterr().err
    assert "'x'" in err and "not in the data" in err


def test_fit_reports_missing_values_with_cli_flag(tmp_path, capsys):
    from jaxlmm import datasets

    path = tmp_path / "d.csv"
    datasets.load("dietox").to_csv(path, index=False)
    assert main(["fit", str(path), "Weight ~ Time + Feed + (1 | Pig)"]) == 2
    err = capsys.readouterr().err
    assert "'Feed'" in err and "--drop-missing" in err
    assert main(["fit", str(path), "Weight ~ Time + Feed + (1 | Pig)", "--drop-missing"]) == 0
    assert "Rows dropped" in capsys.readouterr().out


def test_unreadable_csv(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "nope.csv"), "y ~ 1 + (1 | g)"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_fit_many_writes_one_tidy_row_per_response_and_term(tmp_path, capsys):
    import numpy as np

    import jaxlmm

    df = jaxlmm.datasets.load("sleepstudy")
    rng = np.random.default_rng(1)
    df["noisy"] = df.Reaction + rng.normal(0.0, 20.0, len(df))
    path, out = tmp_path / "d.csv", tmp_path / "r.csv"
    df.to_csv(path, index=False)
    assert main(["fit-many", str(path), "~ Days + (Days | Subject)", "--out", str(out)]) == 0
    assert "fitted 2 models (2 converged)" in capsys.readouterr().out
    tidy = pd.read_csv(out)
    assert set(tidy.response) == {"Reaction", "noisy"}
    for response in ("Reaction", "noisy"):
        alone = jaxlmm.MixedLM.from_formula(f"{response} ~ Days + (Days | Subject)", df).fit()
        rows = tidy[tidy.response == response].set_index("term")
        assert rows.llf.iloc[0] == pytest.approx(alone.llf, abs=1e-6)
        np.testing.assert_allclose(rows.loc[["Intercept", "Days"], "estimate"], alone.fe_params, rtol=1e-6)
        np.testing.assert_allclose(rows.loc[alone.vcomp.index, "estimate"], alone.vcomp, rtol=1e-5)
    assert main(["fit-many", str(path), "Days + (1 | Subject)", "--out", str(out)]) == 2
    assert "right-hand side" in capsys.readouterr().err


_RUN_COMMAND = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
sys.argv = ["jaxlmm"] + sys.argv[1:]
from jaxlmm.cli import run
run()
"""


@pytest.mark.parametrize("argv, code", [(["example"], 0), (["fit", "no-such-file.csv", "y ~ x + (1 | g)"], 2)])
def test_command_exits_with_mains_code_and_skips_the_final_collection(argv, code):
    """The ``jaxlmm`` command (`cli.run`) prints what `main` prints, exits with its code, and
    freezes the garbage collector for the interpreter's shutdown only after all of that."""
    proc = subprocess.run([sys.executable, "-c", _RUN_COMMAND, *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.rstrip().endswith("frozen at exit: True")
    if code == 0:
        assert "Formula: Reaction ~ Days + (Days | Subject)" in proc.stdout
    else:
        assert "cannot read 'no-such-file.csv'" in proc.stderr
