"""Command line: ``jaxlmm fit data.csv "y ~ x + (x | g)" [--ml]`` and ``jaxlmm example [name]``."""

from __future__ import annotations

import argparse
import sys
import warnings

import pandas as pd

from . import datasets
from ._model import MixedLM
from .errors import JaxlmmError

EXAMPLES = {
    "sleepstudy": "Reaction ~ Days + (Days | Subject)",
    "dietox": "Weight ~ Time + (Time | Pig)",
}


def _fit_and_print(data: pd.DataFrame, formula: str, reml: bool, missing: str) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = MixedLM.from_formula(formula, data, missing=missing).fit(reml=reml)
    print(f"Formula: {formula}")
    print(result.summary())
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Fit linear mixed models with JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model to a CSV file and print the summary")
    fit.add_argument("csv", help="path to a CSV file with a header row")
    fit.add_argument("formula", help='model formula, e.g. "Reaction ~ Days + (Days | Subject)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--drop-missing", action="store_true", help="drop rows with NaN in used columns")
    ex = sub.add_parser("example", help="fit a bundled example and print the summary")
    ex.add_argument("name", nargs="?", default="sleepstudy", choices=sorted(EXAMPLES))
    ex.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    args = parser.parse_args(argv)
    try:
        if args.command == "example":
            return _fit_and_print(datasets.load(args.name), EXAMPLES[args.name], not args.ml, "raise")
        try:
            data = pd.read_csv(args.csv)
        except (OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
            print(f"error: cannot read {args.csv!r} as CSV: {err}", file=sys.stderr)
            return 2
        return _fit_and_print(data, args.formula, not args.ml, "drop" if args.drop_missing else "raise")
    except JaxlmmError as err:
        message = str(err).replace("Pass missing='drop'", "Pass --drop-missing")
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
