"""The summary table: statsmodels' MixedLM layout, followed by lme4's random-effects block."""

from __future__ import annotations

import itertools

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .errors import DataError

if TYPE_CHECKING:
    from ._results import MixedLMResults


def _num(v: float) -> str:
    """Three decimals, as statsmodels prints, but significant digits for small non-zero values."""
    return f"{v:.3g}" if v != 0 and abs(v) < 0.001 else f"{v:.3f}"


def _fmt(v: float, digits: int = 4) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


class Summary:
    """``str()`` is a text table; ``_repr_html_`` renders it in notebooks; ``.tables`` are DataFrames."""

    def __init__(self, results: "MixedLMResults", alpha: float = 0.05, ddf: str = "wald"):
        r = results
        d = r.model.design
        sizes = np.bincount(np.asarray(d.group), weights=np.asarray(d.mask), minlength=r.ngroups).astype(int)
        crossed = r.model.crossed_factors
        if crossed:  # one group holds everything: show the levels of each crossed factor instead
            left = [(f"No. levels ({f}):", str(k)) for f, k in crossed]
        else:
            left = [("No. Groups:", str(r.ngroups)), ("Min. group size:", str(sizes.min())),
                    ("Max. group size:", str(sizes.max())), ("Mean group size:", f"{sizes.mean():.1f}")]
        right = [("Scale:", _fmt(r.scale)), ("Log-Likelihood:", _fmt(r.llf)),
                 ("Converged:", "Yes" if r.converged else "No"), ("AIC / BIC:", f"{r.aic:.4f} / {r.bic:.4f}")]
        self.info = [
            ("Model:", "MixedLM (jaxlmm)", "Dependent Variable:", r.model.endog_name),
            ("No. Observations:", str(r.nobs), "Method:", r.method),
        ] + [(*a, *b) for a, b in itertools.zip_longest(left, right, fillvalue=("", ""))]
        if r.model.n_dropped:
            self.info.append(("Rows dropped (NaN):", str(r.model.n_dropped), "", ""))
        ci = r.conf_int(alpha)
        lo, hi = f"[{alpha / 2:.3f}", f"{1 - alpha / 2:.3f}]"
        if ddf in ("satterthwaite", "kenward-roger"):
            t = r.t_test(np.eye(len(r.fe_params)), ddf=ddf)
            fixed = pd.DataFrame({"Coef.": r.fe_params, "Std.Err.": t["SE"].values, "t": t["t"].values,
                                  "df": t["df"].values, "P>|t|": t["p"].values}, index=r.fe_params.index)
        elif ddf == "wald":
            fixed = pd.DataFrame(
                {
                    "Coef.": r.fe_params,
                    "Std.Err.": r.bse_fe,
                    "z": r.tvalues,
                    "P>|z|": r.pvalues,
                    lo: ci["lower"],
                    hi: ci["upper"],
                }
            )
        else:
            raise DataError(f"ddf must be 'wald', 'satterthwaite' or 'kenward-roger', got {ddf!r}.")
        vc = r.vcomp.drop("Residual")
        label = r.model.group_name if hasattr(r.model, "group_name") else "Group"
        resid_params = set(r.model.resid_param_names)
        variance = pd.DataFrame({"Coef.": vc.values, "Std.Err.": r.bse_re.drop("Residual").values},
                                index=[n if crossed or n in resid_params else f"{label} {n}" for n in vc.index])
        self.fixed, self.variance = fixed, variance
        self.corr_fe = r.corr_fe
        self.random = self._random_block(r, label)
        self.tables = [pd.DataFrame(self.info), fixed, variance, self.random]
        self.singular = r.is_singular

    @staticmethod
    def _random_block(r: "MixedLMResults", label: str) -> pd.DataFrame:
        """lme4's VarCorr layout: one row per random effect (one per variance component), with the
        correlations within each term."""
        cov = r.cov_re.values
        names = r.model.exog_re_names
        sd = np.sqrt(np.clip(np.diag(cov), 0, None))
        rows, first, shown = [], True, set()
        for block in r.model.blocks:
            idx = [names.index(n) for n in block.names]
            if block.factor is not None:  # a crossed model's term: lme4's Groups / Name columns
                for k, i in enumerate(idx):
                    name = names[i]
                    short = "(Intercept)" if name == block.factor else name.removesuffix(f"|{block.factor}")
                    corr = {f"Corr{kk + 1}": cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
                            for kk, j in enumerate(idx[:k])} if block.correlated else {}
                    group = "" if block.factor in shown else block.factor
                    shown.add(block.factor)
                    rows.append({"Groups": group, "Name": short, "Variance": cov[i, i], "Std.Dev.": sd[i], **corr})
                continue
            if block.tied:
                i = idx[0]
                rows.append({"Groups": block.label, "Name": "(Intercept)", "Variance": cov[i, i], "Std.Dev.": sd[i]})
                continue
            for k, i in enumerate(idx):
                corr = {}
                if block.correlated:
                    for kk, j in enumerate(idx[:k]):
                        corr[f"Corr{kk + 1}"] = cov[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
                rows.append({"Groups": label if first else "", "Name": names[i], "Variance": cov[i, i],
                             "Std.Dev.": sd[i], **corr})
                first = False
        rows.append({"Groups": "Residual", "Name": "", "Variance": r.scale, "Std.Dev.": np.sqrt(r.scale)})
        for name in r.model.resid_param_names:  # a factor's residual variances, as σ² exp(δ) per level
            level = name.removeprefix("log σ² ratio: ")
            if "[" in level:
                variance = r.scale * np.exp(r.vcomp[name])
                rows.append({"Groups": "", "Name": level, "Variance": variance, "Std.Dev.": np.sqrt(variance)})
        return pd.DataFrame(rows)

    def _text_info(self) -> list[str]:
        w = [max(len(row[k]) for row in self.info) for k in range(4)]
        return [f"{a:<{w[0]}} {b:<{w[1]}}   {c:<{w[2]}} {d:<{w[3]}}" for a, b, c, d in self.info]

    def __str__(self) -> str:
        info = self._text_info()
        fixed = self.fixed.copy()
        body = pd.concat([fixed, self.variance.reindex(columns=fixed.columns)])
        table = body.to_string(float_format=_num, na_rep="")
        width = max(max(len(s) for s in info), max(len(s) for s in table.splitlines()))
        title = "Mixed Linear Model Regression Results".center(width)
        rand = self.random.copy()
        rand_text = rand.to_string(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
        lines = [title, "=" * width, *info, "-" * width, table, "=" * width, "Random effects:", rand_text]
        if len(self.corr_fe) > 1:
            corr = self.corr_fe.copy()
            corr = corr.where(np.tril(np.ones(corr.shape, dtype=bool), k=-1)).iloc[1:, :-1]
            lines += ["", "Correlation of Fixed Effects:", corr.to_string(float_format=lambda v: f"{v:.3f}", na_rep="")]
        if self.singular:
            lines.append("Note: boundary (singular) fit: see the SingularFitWarning.")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.__str__()

    def _repr_html_(self) -> str:
        info = "".join(f"<tr><th>{a}</th><td>{b}</td><th>{c}</th><td>{d}</td></tr>" for a, b, c, d in self.info)
        fixed = pd.concat([self.fixed, self.variance.reindex(columns=self.fixed.columns)])
        return (
            "<div><b>Mixed Linear Model Regression Results</b>"
            f"<table>{info}</table>"
            + fixed.to_html(float_format=_num, na_rep="")
            + "<b>Random effects</b>"
            + self.random.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}")
            + "</div>"
        )
