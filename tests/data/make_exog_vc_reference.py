"""statsmodels' fits of variance components written as exog_vc, for tests/test_exog_vc.py.

Run from the repository root (needs statsmodels):  .venv/bin/python tests/data/make_exog_vc_reference.py
Writes tests/data/exog_vc_reference.json.

Data: sessions_5.csv (5 subjects × 4 sessions t1..t4 × 3 repeats), fixed effects 1 + x + session
(treatment dummies, t1 the reference). Models (one variance component per session except the one
left out; within a session's component each row is its own random effect, so the rows of session s
have residual variance σ² + τ²_s and the left-out session's rows σ²):

* ``hetero_<s>out``: statsmodels' heteroscedastic example, one group for all rows (groups = 1);
  the component of session s is an n × n_s matrix with a single 1 per row of session s.
* ``subject_hetero_<s>out``: the same components nested in subject (groups = subject, a random
  intercept per subject); in subject g the component is an n_g × n_gs matrix.

Each model is fitted by REML and ML with several of statsmodels' optimisers; the best llf and its
estimates are kept (``best``), and every method's llf is recorded.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels
import statsmodels.api as sm

HERE = Path(__file__).parent
METHODS = ["lbfgs", "bfgs", "cg", "powell", "nm"]
SESSIONS = ("t1", "t2", "t3", "t4")


def fixed_effects(d: pd.DataFrame) -> np.ndarray:
    return np.column_stack([np.ones(len(d)), d.x] + [(d.session == s).astype(float) for s in SESSIONS[1:]])


def session_components(d: pd.DataFrame, groups: np.ndarray, left_out: str) -> dict:
    """{session: {group: matrix}}: within group g, one column per row of session s (a 1 in that row)."""
    vc = {}
    for s in SESSIONS:
        if s == left_out:
            continue
        vc[s] = {}
        for g in np.unique(groups):
            in_g = np.flatnonzero(groups == g)
            rows = np.flatnonzero(d.session.to_numpy()[in_g] == s)
            M = np.zeros((len(in_g), len(rows)))
            M[rows, np.arange(len(rows))] = 1.0
            vc[s][g] = M
    return vc


def fit_all(y, X, groups, exog_re, vc):
    out = {}
    for reml in (True, False):
        runs = {}
        for method in METHODS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    r = sm.MixedLM(y, X, groups, exog_re=exog_re, exog_vc=vc).fit(reml=reml, method=[method])
                except Exception as err:  # an optimiser that fails is recorded as such
                    runs[method] = {"error": repr(err)}
                    continue
            runs[method] = {"llf": float(r.llf), "converged": bool(r.converged), "fe_params": r.fe_params.tolist(),
                            "vcomp": dict(zip(r.model.exog_vc.names, map(float, r.vcomp))),
                            "cov_re": np.asarray(r.cov_re).tolist(), "scale": float(r.scale)}
        best = max((m for m in runs if "llf" in runs[m]), key=lambda m: runs[m]["llf"])
        out["reml" if reml else "ml"] = {"best_method": best, "best": runs[best],
                                         "llf_by_method": {m: runs[m].get("llf") for m in runs}}
    return out


def main():
    d = pd.read_csv(HERE / "sessions_5.csv")
    y, X = d.y.to_numpy(), fixed_effects(d)
    ones = np.ones(len(d), dtype=int)
    subject = d.subject.to_numpy()
    ref = {"statsmodels": statsmodels.__version__, "data": "sessions_5.csv", "exog": ["Intercept", "x", "t2", "t3", "t4"]}
    for left_out in ("t1", "t3"):
        ref[f"hetero_{left_out}out"] = fit_all(y, X, ones, None, session_components(d, ones, left_out))
        ref[f"subject_hetero_{left_out}out"] = fit_all(y, X, subject, np.ones((len(d), 1)),
                                                        session_components(d, subject, left_out))
    (HERE / "exog_vc_reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    for key, value in ref.items():
        if isinstance(value, dict):
            for crit, fit in value.items():
                print(key, crit, fit["best_method"], fit["best"]["llf"], fit["llf_by_method"])


if __name__ == "__main__":
    main()
