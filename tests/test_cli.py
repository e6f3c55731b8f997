"""The console script: summaries on stdout, clear errors on stderr with exit status 2."""

import pandas as pd

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
