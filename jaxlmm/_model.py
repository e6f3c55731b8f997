"""`MixedLM`: user input (formula + DataFrame, or arrays) → checked `Design` → fit → results."""

from __future__ import annotations

import copy
import dataclasses
import re
import warnings
from typing import Any, Sequence

import numpy as np
import pandas as pd

from . import _formula
from ._config import float64
from ._memory_maps import release_if_needed
from ._batch import fit_many
from ._crossed import CrossedTerms, build_crossed_terms
from ._design import Design, make_design
from ._exog_vc import bad_rows, crossed_factors, nested_columns, read_exog_vc
from ._fit import term_theta_groups
from ._single_fit import fit_single
from ._results import MixedLMResults
from ._resid_formula import ResidModel, resid_design, resid_expression
from ._row_terms import RowTerms, attach_row_terms, row_arrays
from .errors import (
    IgnoredOptionWarning,
    DataError,
    FormulaError,
    IdentifiabilityError,
    IdentifiabilityWarning,
    MissingDataError,
    check_flag,
    check_positive,
    check_reml,
)


@dataclasses.dataclass(frozen=True)
class RandomBlock:
    """Columns of Z (by name) that share one covariance block; ``correlated`` for a full block.

    A ``tied`` block is a variance component: independent effects with one shared variance (e.g.
    the casks nested in a batch), named ``label``.
    """

    names: tuple[str, ...]
    correlated: bool
    tied: bool = False
    label: str | None = None
    factor: str | None = None  # crossed models: the grouping factor of the block (None: the model's group)


@dataclasses.dataclass(frozen=True)
class FactorTerms:
    """One grouping factor of a crossed model with the random-effect columns of all its terms:
    ``levels`` seen in fitting, display ``columns`` (e.g. ``("Intercept", "c")``), their ``names``
    in the model's Λ template (``exog_re_names``), and the formula specs that encode them."""

    factor: str
    levels: pd.Index
    columns: tuple[str, ...]
    names: tuple[str, ...]
    specs: tuple  # formulaic ModelSpecs of the factor's terms, in column order

    def codes(self, data: pd.DataFrame) -> np.ndarray:
        """Each row's level index, -1 for a level not seen in fitting."""
        values = _group_values(self.factor, data)
        return self.levels.get_indexer(values.astype(str))

    def encode(self, data: pd.DataFrame) -> np.ndarray:
        return np.concatenate([_encode_with(spec, data) for spec in self.specs], axis=1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What was learned from the fitting data, to encode new data identically."""

    fixed_spec: Any  # formulaic ModelSpec, or None for the array front end
    random_specs: tuple  # formulaic ModelSpecs, one per random term (or empty)
    group_expr: str | None
    response: str


def lambda_index_for_blocks(blocks: Sequence[RandomBlock]) -> np.ndarray:
    """Λ's θ index: block-diagonal, lower triangle of correlated blocks filled column-major (lme4's order)."""
    q = sum(len(b.names) for b in blocks)
    idx = np.full((q, q), -1, dtype=np.int32)
    start, k = 0, 0
    for block in blocks:
        size = len(block.names)
        if block.tied:
            for j in range(size):
                idx[start + j, start + j] = k
            k += 1
            start += size
            continue
        for j in range(size):
            for i in range(j, size):
                if block.correlated or i == j:
                    idx[start + i, start + j] = k
                    k += 1
        start += size
    return idx


def _group_values(expr: str, data: pd.DataFrame) -> pd.Series:
    parts = [p.strip() for p in expr.split(":")]
    if any("/" in p for p in parts):
        raise FormulaError(
            f"grouping expression '{expr}' contains '/': write nested factors as formula terms, "
            "'(1 | outer/inner)' or '(1 | outer) + (1 | outer:inner)'."
        )
    _formula.check_columns_exist(parts, data, expr)
    if len(parts) == 1:
        return data[parts[0]]
    return data[parts].astype(str).agg(":".join, axis=1)


def _rank_problem(X: np.ndarray, names: Sequence[str]) -> str | None:
    """Describe the first column that is a linear combination of earlier ones, or None."""
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    singular_values = np.linalg.svd(Xs, compute_uv=False)
    if singular_values.min() > 1e-9 * max(1.0, singular_values.max()) and np.all(np.linalg.norm(X, axis=0) > 0):
        return None
    for j in range(X.shape[1]):
        if np.linalg.norm(Xs[:, j]) == 0:
            return f"column {names[j]!r} is all zeros"
        if j == 0:
            continue
        coef, *_ = np.linalg.lstsq(Xs[:, :j], Xs[:, j], rcond=None)
        resid = Xs[:, j] - Xs[:, :j] @ coef
        if np.linalg.norm(resid) < 1e-9 * np.sqrt(X.shape[0]):
            used = [names[i] for i in np.flatnonzero(np.abs(coef) > 1e-8)]
            return f"column {names[j]!r} is a linear combination of {', '.join(repr(u) for u in used)}"
    return None


class MixedLM:
    """A linear mixed model with one grouping factor (and factors nested in it), or with several
    crossed or partially crossed factors, fitted by REML or ML.

    Build it from a formula (lme4 bars or statsmodels' ``groups=``/``re_formula=``) or from arrays
    (``endog``, ``exog``, ``groups``, ``exog_re``; ``exog_re=None`` means a random intercept), with
    statsmodels' variance components ``exog_vc={name: {group: matrix}}`` (then ``exog_re=None``
    means none; see `_exog_vc`).

    Examples:
        >>> import jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df)
        >>> r = m.fit()
        >>> round(float(r.fe_params["Days"]), 4), r.method
        (10.4673, 'REML')
    """

    crossed_factors: tuple = ()  # crossed models: ((factor, number of levels), ...), the leading factor first
    factor_terms: tuple = ()  # crossed models: one `FactorTerms` per factor, the leading factor first

    def __init__(
        self,
        endog: Any,
        exog: Any,
        groups: Any,
        exog_re: Any = None,
        exog_vc: Any = None,
        *,
        missing: str = "raise",
        weights: Any = None,
        offset: Any = None,
        _blocks: Sequence[RandomBlock] | None = None,
        _spec: ModelSpec | None = None,
        _n_dropped: int = 0,
    ):
        if missing not in ("raise", "drop"):
            raise DataError(f"missing must be 'raise' or 'drop', got {missing!r}.")
        y, y_name = _as_vector(endog, "endog")
        X, x_names = _as_matrix(exog, "exog", len(y))
        g_arr = groups.to_numpy() if isinstance(groups, (pd.Series, pd.Index)) else np.asarray(groups, dtype=object)
        if g_arr.ndim == 2 and g_arr.shape[1] == 1:
            g_arr = g_arr[:, 0]
        if g_arr.ndim != 1:
            raise DataError(f"groups must be one-dimensional (one group label per row), got shape {g_arr.shape}.")
        g = pd.Series(g_arr)
        if len(g) != len(y):
            raise DataError(f"groups has {len(g)} entries but endog has {len(y)}: pass one group label per row.")
        vcs = () if exog_vc is None else read_exog_vc(exog_vc, g_arr)
        if exog_re is None:  # statsmodels: a random intercept, unless variance components are given
            Z, z_names = (np.zeros((len(y), 0)), []) if vcs else (np.ones((len(y), 1)), ["Intercept"])
        else:
            Z, z_names = _as_matrix(exog_re, "exog_re", len(y))
        if not np.issubdtype(y.dtype, np.number) or y.dtype == bool:
            raise DataError(f"endog ({y_name}) is not numeric (dtype {y.dtype}); convert it to float.")
        rows = pd.DataFrame(index=pd.RangeIndex(len(y)))
        rows, row_terms = attach_row_terms(rows, weights, offset, missing)
        w_arr, o_arr = row_arrays(rows, row_terms)
        vc_bad, vc_where = bad_rows(vcs, len(y))
        bad = ~np.isfinite(y) | ~np.all(np.isfinite(X), axis=1) | ~np.all(np.isfinite(Z), axis=1) | g.isna().to_numpy()
        bad |= vc_bad
        for extra in (w_arr, o_arr):
            if extra is not None:
                bad |= ~np.isfinite(extra)
        n_dropped = _n_dropped
        if bad.any():
            if missing == "raise":
                where = [name for name, col in [("endog", ~np.isfinite(y)), ("groups", g.isna().to_numpy())] if col.any()]
                where += [n for j, n in enumerate(x_names) if (~np.isfinite(X[:, j])).any()]
                where += [n for j, n in enumerate(z_names) if (~np.isfinite(Z[:, j])).any()] + vc_where
                raise MissingDataError(
                    f"{int(bad.sum())} rows have NaN or inf in {', '.join(where)}. "
                    "Pass missing='drop' to drop those rows, or clean the data."
                )
            y, X, Z, g = y[~bad], X[~bad], Z[~bad], g[~bad].reset_index(drop=True)
            w_arr = None if w_arr is None else w_arr[~bad]
            o_arr = None if o_arr is None else o_arr[~bad]
            vcs = tuple(vc.take(~bad) for vc in vcs)
            n_dropped += int(bad.sum())
        if vcs:
            self._init_exog_vc(y, y_name, X, x_names, Z, z_names, g, vcs, n_dropped, w_arr, o_arr)
            return
        blocks = list(_blocks) if _blocks is not None else [RandomBlock(tuple(z_names), True)]
        self._init_checked(y, y_name, X, x_names, Z, z_names, g, blocks, _spec, n_dropped, weights=w_arr,
                           offset=o_arr)

    def _init_exog_vc(self, y, y_name, X, x_names, Z, z_names, g, vcs, n_dropped, weights, offset):
        """statsmodels' ``exog_vc`` (`_exog_vc`): components nested in the groups (tied blocks, as
        ``vc_formula``); with one group for all rows, crossed factors ``(1 | name)``, the most levels leading."""
        if g.nunique() > 1:
            codes, levels = pd.factorize(g, sort=True)
            Zv, names, tied = nested_columns(vcs, codes, len(levels))
            blocks = [RandomBlock(tuple(z_names), True)] if z_names else []
            blocks += [RandomBlock(cols, False, tied=True, label=name) for name, cols in tied]
            self._init_checked(y, y_name, X, x_names, np.concatenate([Z, Zv], axis=1), z_names + names, g, blocks, None,
                               n_dropped, weights=weights, offset=offset)
            return
        if z_names:
            raise DataError("with one group for all rows, exog_re's effects of that group cannot be told apart from the "
                            "fixed effects: pass exog_re=None and write the random effects as exog_vc components, or "
                            "pass groups= with several groups.")
        factors = crossed_factors(vcs, len(y))
        lead, others = factors[0], factors[1:]
        crossed = None if not others else build_crossed_terms(
            lead.codes, len(lead.levels), [f.codes for f in others], [len(f.levels) for f in others],
            [f.values[:, None] for f in others], [(k, 1) for k in range(1, len(factors))], 1,
            tuple(f.name for f in others))
        for f in others:  # the leading factor is checked with the design below
            _warn_if_absorbed_by_fixed_effects(X, f.values[:, None], f.codes, len(f.levels), f.name, x_names)
        if others:
            self.factor_terms = tuple(FactorTerms(f.name, f.levels, (f.name,), (f.name,), ()) for f in factors)
            self.crossed_factors = tuple((f.name, len(f.levels)) for f in factors)
        blocks = [RandomBlock((f.name,), True, factor=f.name if others else None) for f in factors]
        self._init_checked(y, y_name, X, x_names, lead.values[:, None], [lead.name], pd.Series(lead.codes), blocks,
                           None, n_dropped, lead.name, crossed=crossed, re_names=[f.name for f in factors],
                           weights=weights, offset=offset)
        self.group_levels = lead.levels  # the codes passed as groups are positions in the leader's levels
        self.group_name = " + ".join(f.name for f in factors)

    def _init_checked(self, y, y_name, X, x_names, Z, z_names, g, blocks, spec, n_dropped, group_label="groups",
                      crossed: CrossedTerms | None = None, re_names: list | None = None, weights=None, offset=None,
                      offset_name: str | None = None, resid: tuple[np.ndarray, ResidModel] | None = None):
        codes, levels = pd.factorize(g, sort=True)
        n, p = X.shape
        m, q = len(levels), Z.shape[1]
        if m < 2:
            raise DataError(
                f"the grouping factor {group_label!r} has {m} level{'s' if m != 1 else ''}; a mixed model needs at least 2 groups "
                "(with one group, fit an ordinary regression instead)."
            )
        if np.ptp(y) == 0:
            raise DataError(f"the response {y_name!r} is constant ({float(y[0]):g} in every row): there is nothing to model.")
        problem = _rank_problem(X, x_names)
        if problem:
            raise IdentifiabilityError(
                f"the fixed effects are collinear: {problem}. Remove one of these terms from the formula "
                "(or the exog columns)."
            )
        if n <= p:
            raise IdentifiabilityError(f"{n} observations cannot identify {p} fixed effects; use fewer terms.")
        others = 0 if crossed is None else sum(
            k * size for k, (_, size) in zip(crossed.layout.level_counts, crossed.layout.columns))
        # The leading factor's random effects: its columns that are not all zero within each group
        # (nested components and statsmodels' variance components may have fewer in some groups).
        active = np.zeros((m, q), bool)
        np.logical_or.at(active, codes, Z != 0)
        lead = int(np.count_nonzero(active))
        if lead + others >= n:
            count = f"{lead} in the {m} groups" + (f", plus {others} of the other factors" if others else "")
            raise IdentifiabilityError(
                f"the number of observations ({n}) is not larger than the number of random effects "
                f"({count}): the random-effect variances and the residual variance cannot "
                "both be identified. Use fewer random effects per group (e.g. a random intercept only)."
            )
        _warn_if_absorbed_by_fixed_effects(X, Z, codes, m, group_label, x_names)
        plain = [j for j, name in enumerate(z_names) if not any(b.tied and name in b.names for b in blocks)]
        problem = _rank_problem(Z[:, plain], [z_names[j] for j in plain]) if plain else None
        if problem:
            raise IdentifiabilityError(f"the random-effect columns are collinear: {problem}. Remove one of them.")
        self.endog_name = y_name
        self.exog_names = list(x_names)
        self.exog_re_names = list(z_names if re_names is None else re_names)
        self.group_levels = pd.Index(levels)
        self.blocks = tuple(blocks)
        self.spec = spec
        self.n_dropped = n_dropped
        self._group_codes = codes
        self.row_index = pd.RangeIndex(n)  # the data's index of the fitted rows (set by from_formula)
        self.lambda_index = lambda_index_for_blocks(self.blocks)
        self.weights = weights  # lme4's prior weights (None: all 1)
        self.offset = offset  # the offset (None: 0); the design's y is the response minus it
        self.offset_name = offset_name  # the offset's column in the data, for predictions on new data
        self.resid_model = None if resid is None else resid[1]  # the residual-variance model (`_resid_formula`)
        y_model = y if offset is None else y - offset
        with float64():
            self.design: Design = make_design(y_model, X, Z, codes, m, self.lambda_index, crossed=crossed,
                                              weights=weights, resid_design=None if resid is None else resid[0])

    # --------------------------------------------------------------------------------------------
    @classmethod
    def from_formula(
        cls,
        formula: str,
        data: pd.DataFrame,
        groups: str | None = None,
        re_formula: str | None = None,
        vc_formula: dict | None = None,
        *,
        missing: str = "raise",
        weights: Any = None,
        offset: Any = None,
        resid_formula: str | None = None,
    ) -> "MixedLM":
        """Build a model from a formula and a DataFrame.

        lme4 style: ``"y ~ x + (x | g)"`` (correlated), ``"(x || g)"`` (uncorrelated),
        ``"(1 | g) + (0 + x | g)"``. statsmodels style: ``"y ~ x"`` with ``groups="g"`` and
        ``re_formula="~x"`` (random intercept when omitted). Variance components nested in the
        grouping factor: ``"(1 | batch) + (1 | batch:cask)"``, ``"(1 | batch/cask)"``, or statsmodels'
        ``groups="batch", vc_formula={"cask": "0 + C(cask)"}`` (one shared variance per component).
        Crossed or partially crossed factors, with intercepts and slopes: ``"(1 + c | subj) + (1 + c | item)"``,
        ``"(1 | s) + (1 | d) + (1 | dept)"`` (see `_crossed`).
        ``missing="drop"`` drops rows with NaN/inf in the columns the model uses; the default raises.
        ``weights`` and ``offset`` (a column name, or one value per row) are lme4's: row i's residual
        variance is σ²/wᵢ, and the offset enters the linear predictor with coefficient 1.
        ``resid_formula`` models the residual variance, σ²ᵢ = σ² exp(dᵢᵀδ): ``"~ session"`` gives one
        variance per session (nlme's ``varIdent``), ``"~ x"`` an exponential variance function (nlme's
        ``varExp``; see `_variance_model`).

        Examples:
            >>> import jaxlmm
            >>> df = jaxlmm.datasets.load("sleepstudy")
            >>> m = jaxlmm.MixedLM.from_formula("Reaction ~ Days", df, groups="Subject", re_formula="~Days")
            >>> m.exog_re_names, m.ngroups
            (['Intercept', 'Days'], 18)
        """
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}.")
        if missing not in ("raise", "drop"):
            raise DataError(f"missing must be 'raise' or 'drop', got {missing!r}.")
        if len(data) == 0:
            raise DataError("data has no rows.")
        data, row_terms = attach_row_terms(data, weights, offset, missing)
        resid_expr = None if resid_formula is None else resid_expression(resid_formula)
        parsed = _formula.parse_mixed_formula(formula)
        terms = list(parsed.random)
        vc_terms: list[tuple[str, str]] = []
        if vc_formula is not None:
            if groups is None or not isinstance(vc_formula, dict):
                raise FormulaError("vc_formula needs groups= and a dict {name: formula}, e.g. {'cask': '0 + C(cask)'}.")
            vc_terms = [(str(k), _formula.translate_powers(str(v).strip().lstrip("~").strip())) for k, v in vc_formula.items()]
        if groups is not None or re_formula is not None:
            if groups is None:
                raise FormulaError("re_formula needs groups= (the grouping column), e.g. groups='Subject'.")
            if terms:
                raise FormulaError(
                    f"formula {formula!r} has random-effect bars and groups= was given too: use one of the two styles."
                )
            # statsmodels' meaning: a group random intercept by default, but none when only
            # variance components are given (re_formula="1" adds it).
            expr = (re_formula or ("0" if vc_terms else "1")).strip()
            expr = _formula.translate_powers(expr[1:].strip() if expr.startswith("~") else expr)
            data, group_name = _groups_column(groups, data)
            terms = [_formula.RandomTerm(expr, group_name, True)]
            one_group_crossed = _one_group_crossed_terms(vc_terms, group_name, expr, data)
            if one_group_crossed:
                terms, vc_terms = one_group_crossed, []
        if not terms:
            raise FormulaError(
                f"formula {formula!r} has no random effects: add a term such as '(1 | group)', or pass groups=. "
                "A model without random effects is an ordinary least-squares fit: statsmodels.formula.api.ols("
                f"{formula!r}, data).fit() (or numpy.linalg.lstsq on the design matrix)."
            )
        expanded = []
        for t in terms:
            if "/" in t.group:
                parts = [p.strip() for p in t.group.split("/")]
                for i in range(len(parts)):
                    expanded.append(_formula.RandomTerm(t.expr, ":".join(parts[: i + 1]), t.correlated))
            else:
                expanded.append(t)
        terms = expanded
        group_exprs = sorted({t.group for t in terms}, key=lambda g: (g.count(":"), g))
        if len(group_exprs) > 1:  # several factors, nested or crossed: one term per factor (`_crossed`)
            if vc_terms:
                raise FormulaError("vc_formula cannot be combined with several grouping factors; write the components as "
                                   "'(1 | factor)' terms.")
            return cls._from_crossed_terms(parsed, terms, data, formula, missing, row_terms, resid_formula)
        group_expr = group_exprs[0]

        used = _formula.required_columns(
            [f"{parsed.response} ~ {parsed.fixed}"] + [t.expr for t in terms if t.expr != "0"] + [v for _, v in vc_terms]
            + ([resid_expr] if resid_expr else []),
            data,
        )
        group_cols = list(dict.fromkeys(p.strip() for p in group_expr.split(":")))
        _formula.check_columns_exist(group_cols, data, formula)
        used_cols = list(dict.fromkeys(used + group_cols + row_terms.columns))
        data, row_index, n_dropped = _drop_missing_rows(data, used_cols, missing)
        w_arr, o_arr = row_arrays(data, row_terms)
        resid = None if resid_formula is None else resid_design(resid_formula, data)

        if parsed.response not in data.columns and parsed.response.isidentifier():
            _formula.check_columns_exist([parsed.response], data, formula)
        y = _formula.response_vector(parsed.response, data)
        fixed_mm = _formula.model_matrix(parsed.fixed, data, "fixed-effects matrix", formula)
        X = np.asarray(fixed_mm, dtype=float)
        x_names = list(fixed_mm.columns)

        blocks, z_cols, z_names, random_specs = [], [], [], []
        for term in terms:
            if term.expr == "0":
                continue
            mm = _formula.model_matrix(term.expr, data, "random-effects matrix", formula)
            random_specs.append((mm.model_spec, term.correlated))
            cols = list(mm.columns)
            if term.correlated:
                blocks.append(RandomBlock(tuple(cols), True))
            else:
                for idx in mm.model_spec.term_indices.values():
                    blocks.append(RandomBlock(tuple(cols[i] for i in idx), True))
            z_cols.append(np.asarray(mm, dtype=float))
            z_names += cols
        for name, expr in vc_terms:
            mm = _formula.model_matrix(expr, data, f"variance component {name!r}", formula)
            random_specs.append((mm.model_spec, False))
            cols = [f"{name}[{c}]" for c in mm.columns]
            blocks.append(RandomBlock(tuple(cols), False, tied=True, label=name))
            z_cols.append(np.asarray(mm, dtype=float))
            z_names += cols
        if len(set(z_names)) != len(z_names):
            dup = sorted({n for n in z_names if z_names.count(n) > 1})
            raise IdentifiabilityError(
                f"the random-effect column(s) {', '.join(map(repr, dup))} appear in more than one term for "
                f"{group_expr!r}; each random effect can appear once."
            )
        Z = np.concatenate(z_cols, axis=1)
        g = _group_values(group_expr, data)
        built_bad = ~np.isfinite(y) | ~np.all(np.isfinite(X), axis=1) | ~np.all(np.isfinite(Z), axis=1)
        if built_bad.any():
            where = ([parsed.response] if (~np.isfinite(y)).any() else []) + [
                n for j, n in enumerate(x_names) if (~np.isfinite(X[:, j])).any()
            ] + [n for j, n in enumerate(z_names) if (~np.isfinite(Z[:, j])).any()]
            if missing == "raise":
                raise MissingDataError(
                    f"{int(built_bad.sum())} rows evaluate to NaN or inf in {', '.join(repr(w) for w in where)} "
                    "(a transform such as log of 0 or of a negative number?). Pass missing='drop' to drop those "
                    "rows, or change the transform."
                )
            keep = ~built_bad
            y, X, Z, g = y[keep], X[keep], Z[keep], g[keep].reset_index(drop=True)
            w_arr = None if w_arr is None else w_arr[keep]
            o_arr = None if o_arr is None else o_arr[keep]
            resid = None if resid is None else (resid[0][keep], resid[1])
            row_index = row_index[keep]
            n_dropped += int(built_bad.sum())
        spec = ModelSpec(fixed_mm.model_spec, tuple(random_specs), group_expr, parsed.response)
        self = cls.__new__(cls)
        self._init_checked(y, parsed.response, X, x_names, Z, z_names, g, blocks, spec, n_dropped, group_expr,
                           weights=w_arr, offset=o_arr, offset_name=row_terms.offset_name, resid=resid)
        self.row_index = row_index
        self.formula = formula
        self.group_name = group_expr
        return self

    @classmethod
    def _from_crossed_terms(cls, parsed, terms, data: pd.DataFrame, formula: str, missing: str,
                            row_terms: RowTerms = RowTerms(), resid_formula: str | None = None):
        """A model whose random terms are on several factors, crossed or nested: the leading factor
        (most levels) per level, the others through `CrossedTerms` (see `_crossed`)."""
        used = _formula.required_columns(
            [f"{parsed.response} ~ {parsed.fixed}"] + [t.expr for t in terms if t.expr != "0"]
            + ([resid_expression(resid_formula)] if resid_formula else []), data
        )
        group_cols = list(dict.fromkeys(p.strip() for t in terms for p in t.group.split(":")))
        _formula.check_columns_exist(group_cols, data, formula)
        data, row_index, n_dropped = _drop_missing_rows(data, list(dict.fromkeys(used + group_cols + row_terms.columns)),
                                                        missing)
        if parsed.response not in data.columns and parsed.response.isidentifier():
            _formula.check_columns_exist([parsed.response], data, formula)
        y = _formula.response_vector(parsed.response, data)
        fixed_mm = _formula.model_matrix(parsed.fixed, data, "fixed-effects matrix", formula)
        X = np.asarray(fixed_mm, dtype=float)
        factors = _crossed_factor_terms(terms, data, formula)
        built_bad = ~np.isfinite(y) | ~np.all(np.isfinite(X), axis=1)
        for _, Zf, _, _ in factors:
            built_bad |= ~np.all(np.isfinite(Zf), axis=1)
        if built_bad.any():
            if missing == "raise":
                raise MissingDataError(
                    f"{int(built_bad.sum())} rows evaluate to NaN or inf in the response, the fixed effects or the random "
                    "effects (a transform such as log of 0?). Pass missing='drop' to drop those rows, or change the "
                    "transform."
                )
            keep = ~built_bad
            self = cls._from_crossed_terms(parsed, terms, data.loc[keep], formula, missing, row_terms,
                                           resid_formula)
            self.row_index = row_index[keep]
            self.n_dropped += n_dropped + int(built_bad.sum())
            return self
        lead, others = factors[0], factors[1:]
        blocks = [b for f in factors for b in f[3]]
        widths = [Zf.shape[1] for _, Zf, _, _ in factors]
        starts = np.cumsum([0] + widths)[:-1]
        layout_terms = build_crossed_terms(
            lead[2], len(lead[0].levels), [c for _, _, c, _ in others], [len(f.levels) for f, _, _, _ in others],
            [Zf for _, Zf, _, _ in others], [(int(a), w) for a, w in zip(starts[1:], widths[1:])], widths[0],
            tuple(f.factor for f, _, _, _ in others),
        )
        for f, Zf, codes, _ in others:  # the leading factor is checked with the design below
            _warn_if_absorbed_by_fixed_effects(X, Zf, codes, len(f.levels), f.factor,
                                               list(fixed_mm.columns))
        spec = ModelSpec(fixed_mm.model_spec, (), None, parsed.response)
        w_arr, o_arr = row_arrays(data, row_terms)
        resid = None if resid_formula is None else resid_design(resid_formula, data)
        self = cls.__new__(cls)
        self.factor_terms = tuple(f for f, _, _, _ in factors)
        self.crossed_factors = tuple((f.factor, len(f.levels)) for f in self.factor_terms)
        g = _group_values(lead[0].factor, data).astype(str)
        self._init_checked(y, parsed.response, X, list(fixed_mm.columns), lead[1], list(lead[0].names), g, blocks, spec,
                           n_dropped, lead[0].factor, crossed=layout_terms,
                           re_names=[n for f in self.factor_terms for n in f.names], weights=w_arr, offset=o_arr,
                           offset_name=row_terms.offset_name, resid=resid)
        self.row_index = row_index
        self.formula = formula
        self.group_name = " + ".join(f for f, _ in self.crossed_factors)
        return self

    # --------------------------------------------------------------------------------------------
    @property
    def varpar_names(self) -> list[str]:
        """Names of the variance parameters, one per θ, then ``Residual``."""
        names = []
        for block in self.blocks:
            if block.tied:
                names.append(f"Var({block.label})")
                continue
            size = len(block.names)
            for j in range(size):
                for i in range(j, size):
                    if block.correlated or i == j:
                        a, b = block.names[j], block.names[i]
                        names.append(f"Var({a})" if i == j else f"Cov({a},{b})")
        return names + ["Residual"] + self.resid_param_names

    @property
    def random_terms(self) -> frozenset[tuple[str, str]]:
        """The random effects as (grouping factor, column) pairs, e.g. ``("batch:cask", "Intercept")``:
        what decides whether one model's random effects are nested in another's (`jaxlmm.lrtest`),
        however each model was written."""
        if self.factor_terms:
            return frozenset((f.factor, c) for f in self.factor_terms for c in f.columns)
        return frozenset((self.group_name, n) for n in self.exog_re_names)

    @property
    def resid_param_names(self) -> list[str]:
        """Names of the residual-variance parameters δ (log variance ratios; none without a model)."""
        return [] if self.resid_model is None else [f"log σ² ratio: {n}" for n in self.resid_model.names]

    @property
    def nobs(self) -> int:
        """Number of observations used (rows with mask 1)."""
        return int(np.asarray(self.design.mask).sum())

    def with_response(self, y: Any, mask: Any = None, name: str | None = None) -> "MixedLM":
        """The same design with another response (NaN rows masked out); used by `fit_many`."""
        y = np.asarray(y, dtype=float)
        if y.shape != (int(np.asarray(self.design.y).shape[0]),):
            raise DataError(f"the new response must have {np.asarray(self.design.y).shape[0]} values, got shape {y.shape}.")
        if mask is None:
            mask = np.isfinite(y) * np.asarray(self.design.mask)
        mask = np.asarray(mask, dtype=float)
        clone = copy.copy(self)
        clone.design = self.design.replace(y=np.where(mask > 0, y, 0.0), mask=mask)
        clone.endog_name = name or self.endog_name
        return clone

    def fit_many(self, Y: Any, reml: bool = True, *, batch_size: int | None = None, progress: bool = True,
                 gtol: float = 1e-6, mesh=None, results_on="all"):
        """Fit this design to many responses at once: ``Y`` is (nobs, k) or a DataFrame of k columns.

        Model i is the same fit as fitting response i alone; a NaN in response i drops that row from
        model i only. Work is vmapped, split in chunks of ``batch_size`` (automatic by default), and
        sharded over this process's devices (those in ``mesh``, a `jax.sharding.Mesh`, when given).
        Under multi-controller JAX (`jax.distributed.initialize` in several processes), each process
        fits a share of the models and every process gets all results (`docs/distributed.md`), or
        only process ``results_on`` does (the others return None; the transfer is the same gather).
        Returns a `BatchResults`.

        Examples:
            >>> import jaxlmm, numpy as np
            >>> df = jaxlmm.datasets.load("sleepstudy")
            >>> m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df)
            >>> Y = np.column_stack([df.Reaction, df.Reaction * 2 + 1])
            >>> rb = m.fit_many(Y, progress=False)
            >>> rb.fe_params.round(3).values.tolist()
            [[251.405, 10.467], [503.81, 20.935]]
        """
        return fit_many(self, Y, reml, batch_size=batch_size, progress=progress, gtol=gtol, mesh=mesh,
                        results_on=results_on)

    @property
    def ngroups(self) -> int:
        return self.design.n_groups

    @property
    def k_fe(self) -> int:
        """Number of fixed effects (statsmodels' name)."""
        return len(self.exog_names)

    @property
    def k_re(self) -> int:
        """Number of random effects per group of the grouping factor (statsmodels' name)."""
        return len(self.exog_re_names)

    @property
    def k_vc(self) -> int:
        """Number of variance parameters beyond the grouping factor's covariance, statsmodels' variance
        components: one per nested component, and the θ of the other factors' terms in a crossed model."""
        if self.design.crossed is not None:
            return self.design.n_theta - len(term_theta_groups(self.design)[0])
        return sum(1 for block in self.blocks if block.tied)

    def fit(self, reml: bool = True, *, gtol: float = 1e-6, warn: bool = True, method=None, free=None,
            **statsmodels_options):
        """Fit by REML (default) or ML (``reml=False``) and return a `MixedLMResults`.

        statsmodels' options are accepted where they mean something: ``method`` (jaxlmm always uses
        Newton's method with exact autodiff derivatives), ``maxiter``, ``full_output``, ``niter_sa``
        and ``do_cg`` are ignored with an `IgnoredOptionWarning`; ``free`` (a covariance pattern with
        zeros) is written in the formula instead: ``(x || g)`` for uncorrelated random effects.

        Examples:
            >>> import jaxlmm
            >>> df = jaxlmm.datasets.load("dyestuff")
            >>> r = jaxlmm.MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", df).fit(reml=False)
            >>> round(r.llf, 4)
            -163.6635
        """
        reml = check_reml(reml)
        gtol = check_positive(gtol, "gtol")
        warn = check_flag(warn, "warn")
        _check_statsmodels_fit_options(method, free, statsmodels_options)
        release_if_needed()
        with float64():
            arrays = fit_single(self.design, bool(reml), float(gtol))
        result = MixedLMResults(self, arrays, bool(reml))
        if warn:
            result._warn()
        return result

    # --------------------------------------------------------------------------------------------
    def encode_fixed(self, data: pd.DataFrame) -> np.ndarray:
        """X of new data, encoded exactly as in fitting (formula models); only the fixed-effect
        columns need to be present. A categorical level not seen in fitting is an error."""
        if self.spec is None or self.spec.fixed_spec is None:
            raise DataError("encode(newdata) needs a model built with from_formula; pass arrays to predict instead.")
        if not isinstance(data, pd.DataFrame):
            raise DataError(f"newdata must be a pandas DataFrame, got {type(data).__name__}.")
        _check_levels_seen(self.spec.fixed_spec, data)
        return _encode_with(self.spec.fixed_spec, data)

    def encode_factors(self, data: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
        """Crossed models: per factor (leading first), new data's random-effect columns and level
        codes (-1 for a level not seen in fitting)."""
        return [(f.encode(data), f.codes(data)) for f in self.factor_terms]

    def encode(self, data: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.Series]:
        """X, Z and group labels of new data, encoded exactly as in fitting (formula models)."""
        X = self.encode_fixed(data)
        Zs = [_encode_with(s, data) for s, _ in self.spec.random_specs]
        g = _group_values(self.spec.group_expr, data)
        return X, np.concatenate(Zs, axis=1), g


STATSMODELS_IGNORED_FIT_OPTIONS = ("maxiter", "full_output", "niter_sa", "do_cg", "start_params", "fe_pen",
                                   "cov_pen")


def _check_statsmodels_fit_options(method, free, options: dict) -> None:
    """statsmodels' `MixedLM.fit` keywords: warn about those with no meaning here, refuse the rest."""
    if free is not None:
        raise DataError(
            "free= (statsmodels' MixedLMParams pattern) is written in the formula in jaxlmm: '(x || g)' for "
            "uncorrelated random effects, '(1 | g) + (0 + x | g)' for separate terms, re_formula='~x' with "
            "groups= for a correlated block."
        )
    unknown = sorted(set(options) - set(STATSMODELS_IGNORED_FIT_OPTIONS))
    if unknown:
        raise DataError(f"fit() got unknown options {unknown}; it takes reml=, gtol= and warn= (and ignores "
                        f"statsmodels' {', '.join(('method',) + STATSMODELS_IGNORED_FIT_OPTIONS)}).")
    ignored = (["method"] if method is not None else []) + sorted(options)
    if ignored:
        warnings.warn(
            f"{', '.join(ignored)} ignored: jaxlmm always fits by Newton's method with exact autodiff gradients and "
            "Hessians, from lme4's start, to its own convergence criterion (gtol=).",
            IgnoredOptionWarning,
            stacklevel=3,
        )


def _groups_column(groups, data: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(data, name of the grouping column) for ``groups=``: a column name, or statsmodels' array or
    Series with one label per row (added to a copy of ``data``; the caller's frame is not changed)."""
    if isinstance(groups, str):  # checked with the other columns the model uses
        return data, groups
    values = groups.to_numpy() if isinstance(groups, pd.Series) else np.asarray(groups)
    if values.ndim != 1 or len(values) != len(data):
        raise DataError(f"groups= must be a column name or one label per row of data ({len(data)} rows); got shape "
                        f"{np.shape(values)}.")
    name = groups.name if isinstance(groups, pd.Series) and isinstance(groups.name, str) else "groups"
    if name in data.columns:
        existing = data[name].to_numpy()
        if len(existing) == len(values) and (existing == values).all():
            return data, name
        name = f"{name}_groups"
    out = data.copy()
    out[name] = values
    return out, name


def _crossed_factor_terms(terms, data: pd.DataFrame, formula: str):
    """Group the random terms of a crossed model by factor (terms on one factor amalgamated), most
    levels first (the leading factor). Returns [(FactorTerms, Z, codes, blocks)]."""
    by_factor: dict[str, list] = {}
    for t in terms:
        by_factor.setdefault(t.group, []).append(t)
    out = []
    for factor, fterms in by_factor.items():
        values = _group_values(factor, data).astype(str)
        levels = pd.Index(np.unique(values.to_numpy()))
        if len(levels) < 2:
            raise DataError(f"the grouping factor {factor!r} has {len(levels)} level: a random effect needs at least 2 "
                            f"levels; drop the term '(… | {factor})'.")
        cols, names, blocks, zs, specs = [], [], [], [], []
        for t in fterms:
            if t.expr.strip() == "0":
                continue
            mm = _formula.model_matrix(t.expr, data, "random-effects matrix", formula)
            specs.append(mm.model_spec)
            these = list(mm.columns)
            named = [factor if c == "Intercept" else f"{c}|{factor}" for c in these]  # lme4's "(Intercept)" of the factor
            if t.correlated:
                blocks.append(RandomBlock(tuple(named), True, factor=factor))
            else:
                for idx in mm.model_spec.term_indices.values():
                    blocks.append(RandomBlock(tuple(named[i] for i in idx), True, factor=factor))
            cols += these
            names += named
            zs.append(np.asarray(mm, dtype=float))
        if len(set(cols)) != len(cols):
            dup = sorted({c for c in cols if cols.count(c) > 1})
            raise IdentifiabilityError(
                f"the random-effect column(s) {', '.join(map(repr, dup))} appear in more than one term for {factor!r}; "
                "each random effect can appear once (write one term, e.g. '(1 + x1 + x2 | g)')."
            )
        if len(cols) >= len(levels):
            raise IdentifiabilityError(
                f"the term(s) on {factor!r} have {len(cols)} random effects per level ({', '.join(cols)}) but {factor!r} has "
                f"only {len(levels)} levels: their {len(cols)}×{len(cols)} covariance cannot be estimated. Use fewer "
                f"effects for {factor!r} (e.g. '(1 | {factor})'), or uncorrelated effects '(… || {factor})'."
            )
        info = FactorTerms(factor, levels, tuple(cols), tuple(names), tuple(specs))
        out.append((info, np.concatenate(zs, axis=1), levels.get_indexer(values), blocks))
    out.sort(key=lambda entry: -len(entry[0].levels))  # lme4's order: most levels first
    return out


def _encode_with(spec, data: pd.DataFrame) -> np.ndarray:
    try:
        return np.asarray(spec.get_model_matrix(data, na_action="ignore"), dtype=float)
    except Exception as err:
        raise DataError(f"cannot encode the new data like the fitting data: {_formula._formulaic_message(err)}") from None


_FACTOR_COLUMN = re.compile(r"^C\(\s*([A-Za-z_][A-Za-z_0-9.]*)\s*[,)]")


def _check_levels_seen(spec, data: pd.DataFrame) -> None:
    """Raise `DataError` naming the column and level when new data holds a categorical level the
    model was not fitted with (formulaic would encode it as NaN, or as the reference level)."""
    for factor, (_, state) in getattr(spec, "encoder_state", {}).items():
        categories = state.get("categories") if isinstance(state, dict) else None
        if categories is None:
            continue
        match = _FACTOR_COLUMN.match(factor)
        column = factor if factor in data.columns else match.group(1) if match else None
        if column is None or column not in data.columns:
            continue
        known = {str(c) for c in categories}
        values = pd.unique(data[column].dropna())
        unseen = [v for v in values if str(v) not in known]
        if unseen:
            shown = ", ".join(repr(v) for v in unseen[:5]) + (", ..." if len(unseen) > 5 else "")
            raise DataError(
                f"newdata column {column!r} has level(s) {shown} that the model was not fitted with "
                f"(fitted levels: {', '.join(map(repr, categories))}); a fixed effect has no estimate for them. "
                "Drop those rows or map them to a fitted level."
            )


_VC_FACTOR = re.compile(r"^(?:0\s*\+\s*)?C\(\s*([A-Za-z_][A-Za-z_0-9.]*)\s*\)(?:\s*-\s*1)?$|^0\s*\+\s*([A-Za-z_][A-Za-z_0-9.]*)$")


def _one_group_crossed_terms(vc_terms, group_name: str, expr: str, data: pd.DataFrame):
    """statsmodels' spelling of crossed random intercepts: one group holding every row (``groups``
    constant) and one variance component ``"0 + C(f)"`` per factor. Returns the lme4 terms
    ``(1 | f)``, or None when the model is not written that way."""
    if not vc_terms or expr != "0" or group_name not in data.columns or data[group_name].nunique(dropna=True) != 1:
        return None
    factors = []
    for _, vc in vc_terms:
        match = _VC_FACTOR.match(vc.strip())
        if match is None:
            return None
        factors.append(match.group(1) or match.group(2))
    return [_formula.RandomTerm("1", f, True) for f in factors]


def _warn_if_absorbed_by_fixed_effects(X, Z, codes, m: int, group_label: str, x_names) -> None:
    """Warn when every random-effect column, group by group, lies in the span of the fixed effects
    (e.g. ``y ~ classroom + (1 | classroom)``): its variance is then not identifiable. Only checked
    when the m·q group-wise columns could fit in X's p dimensions at all."""
    n, p = X.shape
    q = Z.shape[1]
    if m * q > p or m < 2:
        return
    full = np.zeros((n, m * q))
    full[np.arange(n)[:, None], codes[:, None] * q + np.arange(q)[None, :]] = Z
    coef, *_ = np.linalg.lstsq(X, full, rcond=None)
    resid = np.linalg.norm(full - X @ coef, axis=0)
    if np.all(resid <= 1e-8 * np.maximum(np.linalg.norm(full, axis=0), 1e-300)):
        warnings.warn(
            f"the random effects of {group_label!r} are absorbed by the fixed effects (every group's "
            f"random-effect columns are combinations of {', '.join(map(repr, x_names))}): their variance "
            "cannot be estimated and its value means nothing. Remove the grouping factor from the fixed "
            "effects, or drop the random term.",
            IdentifiabilityWarning,
            stacklevel=4,
        )


def _drop_missing_rows(data: pd.DataFrame, cols: list[str], missing: str):
    """(data without rows that have NaN/inf in ``cols``, reindexed from 0; the kept rows' original
    index; the number dropped). With ``missing="raise"`` such rows are an error naming the columns."""
    bad = _bad_rows(data, cols)
    if bad.any():
        counts = {c: int(_bad_rows(data, [c]).sum()) for c in cols}
        detail = ", ".join(f"{c!r} ({k} rows)" for c, k in counts.items() if k)
        if missing == "raise":
            raise MissingDataError(
                f"NaN or inf in columns the model uses: {detail}. Pass missing='drop' to drop those "
                f"{int(bad.sum())} rows, or clean the data."
            )
        data = data.loc[~bad]
    return data.reset_index(drop=True), data.index, int(bad.sum())


def _bad_rows(data: pd.DataFrame, cols: Sequence[str]) -> np.ndarray:
    """Rows with NaN/None (any column) or ±inf (numeric columns) among ``cols``."""
    bad = np.zeros(len(data), dtype=bool)
    for c in cols:
        values = data[c].to_numpy()
        if values.dtype.kind in "fc":
            bad |= ~np.isfinite(values)
        elif values.dtype.kind not in "iub":
            bad |= pd.isna(values)
    return bad


def _as_vector(obj: Any, what: str) -> tuple[np.ndarray, str]:
    name = obj.name if isinstance(obj, pd.Series) and obj.name is not None else what
    arr = np.asarray(obj)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{what} must be one-dimensional (one value per row), got shape {arr.shape}.")
    if np.iscomplexobj(arr):
        raise DataError(f"{what} ({name}) is complex; a linear mixed model needs real numbers.")
    if arr.dtype == object:
        try:
            arr = arr.astype(float)
        except (TypeError, ValueError):
            raise DataError(f"{what} ({name}) is not numeric; convert it to float.") from None
    return arr, str(name)


def _as_matrix(obj: Any, what: str, n: int) -> tuple[np.ndarray, list[str]]:
    if isinstance(obj, pd.DataFrame):
        names = [str(c) for c in obj.columns]
        try:
            arr = obj.to_numpy(dtype=float)
        except (TypeError, ValueError):
            bad = [c for c in obj.columns if not pd.api.types.is_numeric_dtype(obj[c])]
            raise DataError(
                f"{what} has non-numeric columns {bad}: encode them first, or use MixedLM.from_formula."
            ) from None
    else:
        try:
            arr = np.asarray(obj, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"{what} is not numeric: pass numbers (encode categories first, or use MixedLM.from_formula).") from None
        if arr.ndim == 1:
            arr = arr[:, None]
        names = [f"{'x' if what == 'exog' else 'z'}{j + 1}" for j in range(arr.shape[1])] if arr.ndim == 2 else []
    if arr.ndim != 2 or arr.shape[0] != n:
        raise DataError(f"{what} must be a 2-D array with one row per observation ({n}), got shape {arr.shape}.")
    return arr, names
