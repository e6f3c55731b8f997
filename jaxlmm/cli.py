"""Command line: ``jaxlmm fit data.csv "y ~ x + (x | g)" [--ml]``, ``jaxlmm example [name]`` and
``jaxlmm fit-many data.csv "~ x + (x | g)" --out results.csv`` (one model per response column)."""

from __future__ import annotations

import argparse
import gc
import re
import sys
import warnings

import jax
import pandas as pd

from . import datasets
from ._model import MixedLM
from .errors import FormulaError, JaxlmmError

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


def _read_table(path: str) -> pd.DataFrame:
    if path.endswith(".parquet"):
        return pd.read_parquet(path)  # needs pyarrow or fastparquet
    return pd.read_csv(path)


def _fit_many_to_file(data: pd.DataFrame, rhs: str, responses: list[str] | None, out: str, reml: bool) -> int:
    """Fit ``<response> <rhs>`` to every response column; write one tidy row per response and term."""
    rhs = rhs.strip()
    if not rhs.startswith("~"):
        raise FormulaError(f"fit-many takes the formula's right-hand side, starting with '~' (e.g. '~ x + (x | g)'); "
                           f"got {rhs!r}.")
    if responses is None:
        used = {c for c in data.columns if re.search(rf"\b{re.escape(str(c))}\b", rhs)}
        responses = [c for c in data.columns if c not in used and pd.api.types.is_numeric_dtype(data[c])]
    missing = [c for c in responses if c not in data.columns]
    if missing or not responses:
        raise FormulaError(f"response columns {missing or responses} are not in the data; columns are {list(data.columns)}.")
    model = MixedLM.from_formula(f"{responses[0]} {rhs}", data)
    batch = model.fit_many(data[responses], reml=reml, progress=False, results_on=0)
    if batch is None:  # another process of a distributed run: process 0 has the results and writes them
        print(f"process {jax.process_index()}: fitted its share of {len(responses)} models")
        return 0
    table = batch.to_frame()
    per_model = pd.DataFrame({"response": batch.names, "llf": batch.llf.to_numpy(), "scale": batch.scale.to_numpy(),
                              "converged": batch.converged.to_numpy()})
    variances = batch.vcomp.reset_index(names="response").melt(id_vars="response", var_name="term",
                                                                value_name="estimate")
    variances["kind"] = "variance"
    table["kind"] = "fixed"
    tidy = pd.concat([table, variances], ignore_index=True).merge(per_model.drop(columns="converged"), on="response")
    tidy = tidy.sort_values(["response", "kind"], kind="stable")
    if out.endswith(".parquet"):
        tidy.to_parquet(out, index=False)
    else:
        tidy.to_csv(out, index=False)
    print(f"fitted {len(responses)} models ({int(per_model.converged.sum())} converged); wrote {len(tidy)} rows to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jaxlmm", description="Fit linear mixed models with JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit a model to a CSV file and print the summary")
    fit.add_argument("csv", help="path to a CSV file with a header row")
    fit.add_argument("formula", help='model formula, e.g. "Reaction ~ Days + (Days | Subject)"')
    fit.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    fit.add_argument("--drop-missing", action="store_true", help="drop rows with NaN in used columns")
    many = sub.add_parser("fit-many", help="fit one model per response column and write a tidy results file")
    many.add_argument("table", help="CSV or Parquet file: the design's columns and the response columns")
    many.add_argument("rhs", help='right-hand side of the formula, e.g. "~ Days + (Days | Subject)"')
    many.add_argument("--responses", help="comma-separated response columns (default: every numeric column "
                                          "the formula does not use)")
    many.add_argument("--out", required=True, help="results file (.csv or .parquet): one row per response and term")
    many.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    many.add_argument("--distributed", action="store_true",
                      help="run as one of several processes (jax.distributed.initialize: arguments from SLURM, "
                           "Open MPI or Kubernetes, or the three options below); process 0 writes --out")
    many.add_argument("--coordinator", help="host:port of process 0, for --distributed without a cluster manager")
    many.add_argument("--num-processes", type=int)
    many.add_argument("--process-id", type=int)
    ex = sub.add_parser("example", help="fit a bundled example and print the summary")
    ex.add_argument("name", nargs="?", default="sleepstudy", choices=sorted(EXAMPLES))
    ex.add_argument("--ml", action="store_true", help="maximum likelihood instead of REML")
    args = parser.parse_args(argv)
    try:
        if args.command == "example":
            return _fit_and_print(datasets.load(args.name), EXAMPLES[args.name], not args.ml, "raise")
        if args.command == "fit-many":
            if args.distributed or args.coordinator:
                jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
            try:
                data = _read_table(args.table)
            except (OSError, ImportError, pd.errors.ParserError, UnicodeDecodeError) as err:
                print(f"error: cannot read {args.table!r}: {err}", file=sys.stderr)
                return 2
            responses = [c.strip() for c in args.responses.split(",")] if args.responses else None
            return _fit_many_to_file(data, args.rhs, responses, args.out, not args.ml)
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


def run() -> None:
    """The ``jaxlmm`` command: `main`, then exit without Python's final garbage collection.

    `import jaxlmm` in a script already froze the objects its imports made (`_import_gc`); the
    command owns its process and has closed what it wrote, so it also freezes what the fit made
    (`gc.freeze`), and the interpreter's final collection skips those too.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
