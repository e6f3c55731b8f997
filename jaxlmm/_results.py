"""`MixedLMResults`: the user-facing view of one fit (pandas objects with term names).

Built once from the model and the `FitArrays` of a fit; everything else is derived on demand.
Inference is Wald inference: fixed effects use lme4's covariance σ² (Xᵀ V⁻¹ X)⁻¹ (conditional on
the variance parameters); the variance parameters use the inverse of the autodiff Hessian of the
(RE)ML log-likelihood, carried to the data scale by the delta method.
"""

from __future__ import annotations

import warnings
from functools import cached_property
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.special import ndtr, stdtrit

from . import _anova, _emmeans, plot
from ._config import float64
from ._contrasts import contrast_table, parse_contrasts
from ._kenward_roger import KenwardRoger, kenward_roger, kenward_roger_f
from ._lrtest import chi2_sf, lrtest
from ._memory_maps import release_if_needed
from ._profile import Profiler
from ._row_terms import new_offset
from ._single_fit import deferred_covariances, deferred_inference
from ._summary import Summary
from .errors import ConvergenceWarning, DataError, SingularFitWarning, check_probability

if TYPE_CHECKING:
    from ._fit import FitArrays
    from ._model import MixedLM

SINGULAR_TOL = 1e-4


def _norm_sf(z: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal, accurate far into the tail."""
    return np.asarray(ndtr(-np.asarray(z, dtype=float)))


def inference_covariances(information, varpar_jac, vcov_beta_jac) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(params_cov, varpar_cov, vcov_beta_jac): the covariance of (θ, σ²), the inverse information
    (NaN where it is singular), and that of the variance parameters by the delta method."""
    information, varpar_jac = np.asarray(information, float), np.asarray(varpar_jac, float)
    try:
        params_cov = np.linalg.inv(information)
    except np.linalg.LinAlgError:
        params_cov = np.full_like(information, np.nan)
    return params_cov, varpar_jac @ params_cov @ varpar_jac.T, np.asarray(vcov_beta_jac, float)


def _norm_ppf(p: float) -> float:
    return NormalDist().inv_cdf(p)


class MixedLMResults:
    """Results of `MixedLM.fit`: estimates, Wald inference, random effects, predictions, summary.

    Examples:
        >>> import jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).fit()
        >>> r.bse_fe.round(4).tolist()
        [6.8246, 1.5458]
        >>> r.cov_re.round(2).values.tolist()
        [[612.09, 9.6], [9.6, 35.07]]
    """

    def __init__(self, model: "MixedLM", arrays: "FitArrays", reml: bool):
        self.model = model
        self._arrays = arrays
        self.reml = reml

    # ---- fit report -----------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return "REML" if self.reml else "ML"

    @property
    def converged(self) -> bool:
        return bool(self._arrays.converged)

    @property
    def grad_norm(self) -> float:
        """Largest absolute projected gradient of the deviance in θ at the solution."""
        return float(self._arrays.grad_norm)

    @property
    def n_iter(self) -> int:
        return int(self._arrays.iterations)

    @property
    def k_fe(self) -> int:
        """Number of fixed effects (statsmodels' name)."""
        return self.model.k_fe

    @property
    def k_re(self) -> int:
        """Number of random effects per group of the grouping factor (statsmodels' name)."""
        return self.model.k_re

    @property
    def k_vc(self) -> int:
        """Number of variance components (statsmodels' name; see `MixedLM.k_vc`)."""
        return self.model.k_vc

    @property
    def df_resid(self) -> int:
        """Residual degrees of freedom as statsmodels reports them: observations minus fixed effects."""
        return self.nobs - self.k_fe

    @property
    def nobs(self) -> int:
        return self.model.nobs

    @property
    def ngroups(self) -> int:
        return self.model.ngroups

    @property
    def theta(self) -> np.ndarray:
        """The relative covariance factor parameters (lme4's ``getME(m, "theta")``)."""
        return np.asarray(self._arrays.theta)

    @property
    def is_singular(self) -> bool:
        """True when a random-effect standard deviation in Λ is (near) zero: a boundary fit."""
        lower = self.model.design.theta_lower
        return bool(np.any(np.isfinite(lower) & (self.theta < SINGULAR_TOL)))

    # ---- fixed effects ------------------------------------------------------------------------
    @property
    def fe_params(self) -> pd.Series:
        return pd.Series(np.asarray(self._arrays.beta), index=self.model.exog_names, name="Coef.")

    @property
    def cov_fe(self) -> pd.DataFrame:
        """Covariance of the fixed effects, σ² (Xᵀ V⁻¹ X)⁻¹ (lme4's ``vcov``)."""
        names = self.model.exog_names
        return pd.DataFrame(np.asarray(self._arrays.vcov_beta), index=names, columns=names)

    @property
    def corr_fe(self) -> pd.DataFrame:
        """Correlation of the fixed-effect estimates (lme4's "Correlation of Fixed Effects")."""
        cov = self.cov_fe.values
        sd = np.sqrt(np.diag(cov))
        return pd.DataFrame(cov / np.outer(sd, sd), index=self.cov_fe.index, columns=self.cov_fe.columns)

    @property
    def bse_fe(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.cov_fe.values)), index=self.model.exog_names, name="Std.Err.")

    @property
    def tvalues(self) -> pd.Series:
        """Wald statistics of the fixed effects (z: compared with the normal distribution)."""
        return (self.fe_params / self.bse_fe).rename("z")

    @property
    def pvalues(self) -> pd.Series:
        return pd.Series(2.0 * _norm_sf(np.abs(self.tvalues.values)), index=self.model.exog_names, name="P>|z|")

    def conf_int(self, alpha: float = 0.05, method: str = "wald", *, n_boot: int = 1000, seed: int = 0,
                 ddf: str = "wald") -> pd.DataFrame:
        """Confidence intervals (columns: lower, upper).

        ``method="wald"`` (default): fixed effects only, estimate ± z·SE; with ``ddf="satterthwaite"``
        or ``"kenward-roger"``, estimate ± t·SE with that method's df (and, for Kenward–Roger, its
        adjusted SE), as lmerTest's ``contest(..., confint=TRUE)``. ``method="profile"``:
        profile-likelihood intervals for the random effects' standard deviations and correlations,
        σ and the fixed effects (rows named as `profile_names`), as lme4's ``confint`` (ML profile;
        see `profile`); an end point where the profile never reaches the cut-off is the bound (0
        for a standard deviation, ±1 for a correlation).
        ``method="boot"``: parametric bootstrap percentile intervals for the fixed effects and the
        variance parameters (``n_boot`` replicates).

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
            >>> r.conf_int(method="profile").round(3).loc[["SD(Intercept)", "Days"]]
                            lower   upper
            SD(Intercept)  14.381  37.716
            Days            7.359  13.576
        """
        check_probability(alpha, "alpha")
        if method == "boot":
            return self.bootstrap(n=n_boot, seed=seed, alpha=alpha, progress=False).conf_int()
        if method == "profile":
            return self._profile_intervals(alpha)
        if method != "wald":
            raise DataError(f"method must be 'wald', 'profile' or 'boot', got {method!r}.")
        if ddf != "wald":
            table = self.t_test(np.eye(len(self.fe_params)), ddf=ddf)
            half = stdtrit(table["df"].to_numpy(), 1.0 - alpha / 2.0) * table["SE"].to_numpy()
            fe = self.fe_params
            return pd.DataFrame({"lower": fe - half, "upper": fe + half})
        z = _norm_ppf(1.0 - alpha / 2.0)
        fe, se = self.fe_params, self.bse_fe
        return pd.DataFrame({"lower": fe - z * se, "upper": fe + z * se})

    # ---- profile likelihood -------------------------------------------------------------------
    @cached_property
    def _profiler(self):

        return Profiler(self)

    @property
    def profile_names(self) -> list[str]:
        """Parameters `profile` accepts: ``SD(...)``/``Corr(...)`` of the random effects, ``sigma``
        (residual standard deviation), then the fixed effects — lme4's ``.sig01``, ``.sig02``, …,
        ``.sigma``, then the fixed effects, in the same order (`profile` accepts those names too)."""
        return list(self._profiler.names)

    def _profile_intervals(self, alpha: float) -> pd.DataFrame:
        prof = self._profiler
        z = _norm_ppf(1.0 - alpha / 2.0)
        lower, upper, ok = prof.end_points(np.arange(len(prof.names)), z)
        if not ok.all():
            bad = [n for n, good in zip(prof.names, ok) if not good]
            warnings.warn(f"the profile of {', '.join(bad)} did not converge everywhere; those interval end points "
                          "may be off.", ConvergenceWarning, stacklevel=3)
        return pd.DataFrame({"lower": lower, "upper": upper}, index=prof.names)

    def profile(self, param=None, *, n: int = 21, level: float = 0.99, values=None) -> pd.DataFrame:
        """Profile likelihood of a parameter (a name, a list of names, or all with ``param=None``), as
        lme4's ``profile``.

        The ML deviance is minimised over all other parameters with ``param`` held at each value —
        every value's refit runs vmapped at once. A REML fit is refitted by ML first (lme4 does the
        same), so the profile peaks at the ML estimate. The grid is ``n`` evenly spaced values
        spanning the ``level`` profile interval (plus the estimate), or the given ``values``.

        Returns a DataFrame with columns ``parameter``, ``value``, ``zeta`` (signed square root of
        the deviance increase: ±1.96 bound a 95% interval), ``ml_deviance`` and ``ml_llf`` (the *ML*
        criterion, also for a REML fit, so not comparable with a REML fit's ``llf``), ``converged``
        and the other parameters at each constrained optimum. Plot it with `jaxlmm.plot.profile`.

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
            >>> pr = r.profile("SD(Days)", n=5)
            >>> pr[["value", "zeta"]].round(3).values.tolist()[0]
            [3.313, -2.576]
        """
        release_if_needed()
        prof = self._profiler
        if param is None:
            params = list(range(len(prof.names)))
        elif isinstance(param, (list, tuple)):
            params = list(dict.fromkeys(prof.index(p) for p in param))
        else:
            params = [prof.index(param)]
        if not params:
            raise DataError(f"no parameters to profile: pass one of {prof.names}, a list of them, or None for all.")
        if values is None:
            check_probability(level, "level")
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
                raise DataError(f"n must be an integer of at least 2 (grid values), got {n!r}.")
            lo, hi, _ = prof.end_points(np.asarray(params), _norm_ppf(0.5 + level / 2.0))
            grids = []
            for j, a, b in zip(params, lo, hi):
                grid = np.linspace(a, b, int(n))
                grids.append(np.union1d(grid[np.abs(grid - prof.estimate[j]) > 1e-6 * (b - a)], [prof.estimate[j]]))
        else:
            if len(params) != 1:
                raise DataError("values= gives a grid for one parameter; profile one parameter at a time with it.")
            j = params[0]
            try:
                grid = np.asarray(values, dtype=float)
            except (TypeError, ValueError):
                raise DataError("values must be a 1-D array of numbers.") from None
            if grid.ndim != 1 or grid.size == 0 or not np.all(np.isfinite(grid)):
                raise DataError(f"values must be a non-empty 1-D array of finite numbers; got shape {grid.shape}.")
            grid = np.unique(grid)
            sigma = prof.names[j] == "sigma"
            outside = (grid < prof.lower[j]) | (grid > prof.upper[j]) | (sigma & (grid <= 0))
            if outside.any():
                where = "be positive" if sigma else f"lie in [{prof.lower[j]:g}, {prof.upper[j]:g}]"
                raise DataError(f"values for {prof.names[j]!r} must {where}; got {grid[outside].tolist()}.")
            grids = [grid]
        which = np.concatenate([np.full(g.size, j) for j, g in zip(params, grids)])
        value = np.concatenate(grids)
        ev = prof.evaluate(which, prof._inside(value, which))
        frame = pd.DataFrame({"parameter": [prof.names[j] for j in which], "value": value, "zeta": ev["zeta"],
                              "ml_deviance": ev["deviance"], "ml_llf": -0.5 * ev["deviance"],
                              "converged": ev["converged"]})
        others = pd.DataFrame(ev["params"], columns=[c if c not in frame.columns else c + "_" for c in prof.names])
        frame.attrs["criterion"] = "ML"
        bad = ~frame["converged"].to_numpy() | ~np.isfinite(frame["ml_deviance"].to_numpy())
        if bad.any():
            warnings.warn(f"{int(bad.sum())} of {len(frame)} profile points did not converge (column 'converged'); "
                          "their deviance may be off — values far outside the profile interval are the usual cause.",
                          ConvergenceWarning, stacklevel=2)
        return pd.concat([frame, others], axis=1)

    def plot_profile(self, param=None, *, alpha: float = 0.05, ax=None, n: int = 21, level: float = 0.99, values=None):
        """Profile likelihood curves (one panel per parameter) with the ``1 − alpha`` cut-off; the
        grid is `profile`'s (``n``, ``level``, ``values``)."""
        check_probability(alpha, "alpha")
        return plot.profile(self.profile(param, n=n, level=level, values=values), ax=ax, alpha=alpha)

    # ---- variance parameters ------------------------------------------------------------------
    @property
    def scale(self) -> float:
        """Residual variance σ²."""
        return float(self._arrays.sigma2)

    @property
    def cov_re(self) -> pd.DataFrame:
        """Random-effects covariance on the data scale (one row/column per random effect)."""
        names = self.model.exog_re_names
        return pd.DataFrame(np.asarray(self._arrays.cov_re), index=names, columns=names)

    @property
    def resid_variance(self) -> pd.Series:
        """Each fitted row's residual variance: σ² / wᵢ, times exp(dᵢᵀδ) under a residual-variance model."""
        d = self.model.design
        variance = np.full(np.shape(d.y), self.scale)
        if d.resid_design is not None:
            delta = np.asarray(self._arrays.varpar)[-d.n_delta:]
            variance = variance * np.exp(np.asarray(d.resid_design) @ delta)
        if d.weights is not None:
            variance = variance / np.asarray(d.weights)
        return pd.Series(variance, index=self.model.row_index, name="resid_variance")

    @property
    def varpar_names(self) -> list[str]:
        """Names of the variance parameters: ``Var(a)``/``Cov(a,b)`` of the random effects, then ``Residual``."""
        return self.model.varpar_names

    @property
    def vcomp(self) -> pd.Series:
        """Variance parameters on the data scale (random-effect (co)variances and σ²)."""
        return pd.Series(np.asarray(self._arrays.varpar), index=self.varpar_names, name="Estimate")

    @cached_property
    def _inference(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(params_cov, varpar_cov, vcov_beta_jac): from the fit's inference arrays when it computed
        them (single fits), else now (a large crossed model's single fit, a member of a batch)."""
        a = self._arrays
        if a.information is not None:
            return inference_covariances(a.information, a.varpar_jac, a.vcov_beta_jac)
        kd = self.model.design.n_delta
        with float64():
            out = deferred_inference(self.model.design, a.theta, a.sigma2, self.reml,
                                     np.asarray(a.varpar)[len(a.varpar) - kd:] if kd else None)
        return inference_covariances(*out)

    @cached_property
    def _mode_covariances(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(ranef_cov, ranef_other_cov): from the fit when it computed them, else now (a large crossed
        model's single fit leaves them to first use, `_fit.defers`)."""
        a = self._arrays
        if not a.deferred:
            other = None if a.ranef_other_cov is None else np.asarray(a.ranef_other_cov)
            return np.asarray(a.ranef_cov), other
        with float64():
            return deferred_covariances(self.model.design, a.theta, a.sigma2)

    @cached_property
    def cov_vcomp(self) -> pd.DataFrame:
        """Covariance of `vcomp` from the inverse autodiff Hessian (delta method to the data scale)."""
        return pd.DataFrame(self._inference[1], index=self.varpar_names, columns=self.varpar_names)

    @property
    def bse_re(self) -> pd.Series:
        """Standard errors of `vcomp` (not meaningful for a parameter on the boundary)."""
        return pd.Series(np.sqrt(np.clip(np.diag(self.cov_vcomp.values), 0.0, None)), index=self.varpar_names)

    @property
    def params(self) -> pd.Series:
        """Fixed effects followed by the variance parameters (data scale)."""
        return pd.concat([self.fe_params, self.vcomp]).rename("Estimate")

    def cov_params(self) -> pd.DataFrame:
        """Covariance of `params`: fixed-effect block as `cov_fe`, variance block as `cov_vcomp`.

        The cross block is zero: β̂ is conditionally independent of the variance estimates (exactly
        under REML, where the criterion does not depend on β; asymptotically under ML).
        """
        names = list(self.params.index)
        p = len(self.model.exog_names)
        out = np.zeros((len(names), len(names)))
        out[:p, :p] = self.cov_fe.values
        out[p:, p:] = self.cov_vcomp.values
        return pd.DataFrame(out, index=names, columns=names)

    @property
    def bse(self) -> pd.Series:
        return pd.Series(np.sqrt(np.clip(np.diag(self.cov_params().values), 0, None)), index=self.params.index)

    # ---- likelihood ---------------------------------------------------------------------------
    @property
    def llf(self) -> float:
        """Log-likelihood at the optimum: the REML log-likelihood for REML fits, as lme4's ``logLik``."""
        return float(self._arrays.llf)

    @property
    def df_modelwc(self) -> int:
        """Number of estimated parameters, counted like lme4: fixed effects + θ + σ² (+ δ of a residual-variance model)."""
        return len(self.model.exog_names) + self.model.design.n_theta + 1 + self.model.design.n_delta

    @property
    def aic(self) -> float:
        return -2.0 * self.llf + 2.0 * self.df_modelwc

    @property
    def bic(self) -> float:
        return -2.0 * self.llf + np.log(self.nobs) * self.df_modelwc

    @property
    def deviance(self) -> float:
        """−2 × llf (lme4's REML criterion under REML, deviance under ML)."""
        return -2.0 * self.llf

    # ---- random effects and predictions -------------------------------------------------------
    def _factor_modes(self, covariances: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Crossed models: per factor (leading first), conditional modes (levels, q) and covariances
        (None with ``covariances=False``)."""
        cov, other_cov = self._mode_covariances if covariances else (None, None)
        out = [(np.asarray(self._arrays.ranef), cov)]
        other = np.asarray(self._arrays.ranef_other)
        start = 0
        for f in self.model.factor_terms[1:]:
            k, q = len(f.levels), len(f.columns)
            out.append((other[start: start + k, :q],
                        None if other_cov is None else other_cov[start: start + k, :q, :q]))
            start += k
        return out

    @property
    def random_effects(self) -> pd.DataFrame | dict:
        """Conditional modes (BLUPs) of the random effects, one row per group. Crossed models: as
        lme4's ``ranef``, one DataFrame per grouping factor, {factor: DataFrame (levels × effects)}."""
        if self.model.factor_terms:
            return {label: pd.DataFrame(b, index=f.levels, columns=list(f.columns))
                    for (label, _), f, (b, _) in zip(self.model.crossed_factors, self.model.factor_terms,
                                                     self._factor_modes(covariances=False))}
        return pd.DataFrame(
            np.asarray(self._arrays.ranef), index=self.model.group_levels, columns=self.model.exog_re_names
        )

    @property
    def random_effects_cov(self) -> dict:
        """Conditional covariance of each group's random effects: {group: DataFrame}. Crossed models:
        {factor: {level: DataFrame}}."""
        if self.model.factor_terms:
            return {label: {lev: pd.DataFrame(c[i], index=list(f.columns), columns=list(f.columns))
                            for i, lev in enumerate(f.levels)}
                    for (label, _), f, (_, c) in zip(self.model.crossed_factors, self.model.factor_terms,
                                                     self._factor_modes())}
        names = self.model.exog_re_names
        cov = self._mode_covariances[0]
        return {lev: pd.DataFrame(cov[i], index=names, columns=names) for i, lev in enumerate(self.model.group_levels)}

    def _linear_predictor(self, X, factors, include_re: bool) -> np.ndarray:
        """X β̂ plus, per grouping factor, each row's Z b̂ of its level ((Z, level codes) pairs; code -1:
        a level not seen in fitting, which contributes nothing)."""
        eta = X @ np.asarray(self._arrays.beta)
        if include_re:
            modes = (self._factor_modes(covariances=False) if self.model.factor_terms
                     else [(np.asarray(self._arrays.ranef), None)])
            for (Z, codes), (b, _) in zip(factors, modes):
                known = codes >= 0
                eta = eta + np.where(known, np.einsum("nq,nq->n", Z, b[np.where(known, codes, 0)]), 0.0)
        return eta

    @property
    def _offset(self) -> np.ndarray | float:
        """The model's offset per fitted row (0 without one)."""
        return 0.0 if self.model.offset is None else np.asarray(self.model.offset)

    @property
    def fittedvalues(self) -> pd.Series:
        """X β̂ + Z b̂ (plus the offset) for the fitted rows, indexed like the rows of the data they came from."""
        d = self.model.design
        factors = [(np.asarray(d.Z), np.asarray(d.group))]
        if d.crossed is not None:
            Zc, block = np.asarray(d.crossed.Z), np.asarray(d.crossed.block)
            offsets = d.crossed.layout.offsets
            for k, f in enumerate(self.model.factor_terms[1:]):
                factors.append((Zc[:, k, : len(f.columns)], block[:, k] - offsets[k]))
        return pd.Series(self._linear_predictor(np.asarray(d.X), factors, True) + self._offset,
                         index=self.model.row_index, name="fitted")

    @property
    def resid(self) -> pd.Series:
        """y − X β̂ − Z b̂ − offset (conditional residuals, unweighted as lme4's ``residuals``); NaN for rows not
        used in the fit."""
        d = self.model.design
        resid = np.where(np.asarray(d.mask) > 0, np.asarray(d.y) + self._offset - self.fittedvalues.values, np.nan)
        return pd.Series(resid, index=self.model.row_index, name="resid")

    def predict(self, newdata: pd.DataFrame | None = None, include_re: bool = True, offset=None) -> pd.Series:
        """Predictions for new data; groups not seen in fitting get the population-level prediction.

        ``include_re=False`` gives population-level predictions (the grouping columns are then not
        needed). A fixed-effect level not seen in fitting raises `DataError`. A model fitted with an
        offset adds the new rows' offset: ``offset`` (a column name or one value per row) when
        given, else the offset's column in ``newdata``.

        Examples:
            >>> import jaxlmm, pandas as pd
            >>> df = jaxlmm.datasets.load("sleepstudy")
            >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).fit()
            >>> new = pd.DataFrame({"Days": [0, 5], "Subject": ["308", "new"]})
            >>> r.predict(new).round(2).tolist()
            [253.66, 303.74]
        """
        if newdata is None:
            return self.fittedvalues if include_re else pd.Series(
                np.asarray(self.model.design.X) @ np.asarray(self._arrays.beta) + self._offset, name="predicted"
            )
        index = newdata.index if isinstance(newdata, pd.DataFrame) else None
        X = self.model.encode_fixed(newdata)
        new_off = new_offset(self.model.offset_name, self.model.offset is not None, newdata, offset)
        if not include_re:  # the grouping columns are not needed
            return pd.Series(X @ np.asarray(self._arrays.beta) + new_off, index=index, name="predicted")
        if self.model.factor_terms:
            return pd.Series(self._linear_predictor(X, self.model.encode_factors(newdata), True) + new_off,
                             index=index, name="predicted")
        X, Z, g = self.model.encode(newdata)
        labels = pd.Index(self.model.group_levels)
        g_cast = g.astype(labels.dtype) if labels.dtype != object else g.astype(str) if labels.inferred_type == "string" else g
        codes = labels.get_indexer(g_cast)
        return pd.Series(self._linear_predictor(X, [(Z, codes)], include_re) + new_off, index=index, name="predicted")

    def satterthwaite_df(self, L) -> np.ndarray:
        """Satterthwaite degrees of freedom for the rows of the contrast matrix ``L`` (lmerTest's).

        ν = 2 (lᵀ C l)² / (∇ᵀ A ∇) per row l, where C(θ, σ²) is the covariance of β̂ as a function of
        the variance parameters, ∇ the derivative of lᵀ C l in (θ, σ²) and A the covariance of
        (θ, σ²) (the inverse observed information): lmerTest's construction.
        """
        L = np.atleast_2d(np.asarray(L, dtype=float))
        params_cov, _, vcov_jac = self._inference
        variance = np.einsum("ij,jk,ik->i", L, np.asarray(self._arrays.vcov_beta), L)
        grad = np.einsum("ij,qjk,ik->iq", L, vcov_jac, L)
        return 2.0 * variance**2 / np.einsum("iq,qr,ir->i", grad, params_cov, grad)

    @cached_property
    def _kenward_roger(self) -> KenwardRoger:
        if not self.reml:
            raise DataError("ddf='kenward-roger' needs a REML fit (as pbkrtest and lmerTest); refit with "
                            "reml=True, or use ddf='satterthwaite'.")
        return kenward_roger(self.model.design, np.asarray(self._arrays.varpar))

    @property
    def cov_fe_kenward_roger(self) -> pd.DataFrame:
        """Kenward–Roger's adjusted covariance of the fixed effects, Φ_A (pbkrtest's ``vcovAdj``;
        REML fits, up to `jaxlmm._kenward_roger.MAX_ROWS` observations)."""
        names = self.model.exog_names
        return pd.DataFrame(self._kenward_roger.vcov_adj, index=names, columns=names)

    def kenward_roger_df(self, L) -> np.ndarray:
        """Kenward–Roger degrees of freedom for the rows of the contrast matrix ``L`` (pbkrtest's
        ``Lb_ddf``, as lmerTest's ``summary(m, ddf = "Kenward-Roger")``)."""
        L = np.atleast_2d(np.asarray(L, dtype=float))
        beta = self.fe_params.values
        return np.array([kenward_roger_f(row[None], beta, self._kenward_roger)[2] for row in L])

    def anova(self, type: int | str = 3, ddf: str = "satterthwaite") -> pd.DataFrame:
        """F tests of the fixed-effect terms, as lmerTest's ``anova(m, type=, ddf=)``.

        ``type`` 3 (SAS's type III, whatever the factor coding), 2 (each term adjusted for the terms
        not containing it) or 1 (sequential); ``ddf="satterthwaite"`` or ``"kenward-roger"`` (REML
        fits only). One row per term of the formula; columns ``Sum Sq``, ``Mean Sq``, ``NumDF``,
        ``DenDF``, ``F value``, ``Pr(>F)``. See `jaxlmm._anova` for the hypotheses. A boolean
        column is a numeric 0/1 variable in formulas (R treats a logical as a factor): write ``C(b)``
        to test it as lmerTest does.

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("distance ~ age * Sex + (1 | Subject)", jaxlmm.datasets.load("orthodont")).fit()
            >>> r.anova()[["NumDF", "DenDF", "F value"]].round(2)  # doctest: +NORMALIZE_WHITESPACE
                     NumDF  DenDF  F value
            age          1  79.00   108.36
            Sex          1 103.99     0.45
            age:Sex      1  79.00     6.30
        """
        return _anova.anova_table(self, type, ddf)

    def t_test(self, hypotheses, ddf: str = "satterthwaite", adjust: str | None = None) -> pd.DataFrame:
        """Tests of linear contrasts of the fixed effects, one row per hypothesis.

        ``hypotheses``: a matrix (one column per fixed effect) or strings such as ``"Days = 0"`` or
        ``["a - b = 0", "c = 0"]``. ``ddf="satterthwaite"`` gives t tests with Satterthwaite degrees
        of freedom (as lmerTest); ``"kenward-roger"`` t tests with Kenward–Roger's adjusted SE and
        df (as pbkrtest; REML fits); ``"wald"`` gives z tests. ``adjust`` = ``"holm"``,
        ``"bonferroni"`` or ``"fdr_bh"`` adds multiplicity-adjusted p-values.

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (1 | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
            >>> t = r.t_test("Days = 0")
            >>> round(float(t["df"].iloc[0]), 1)
            161.0
        """

        L, rhs, labels = parse_contrasts(hypotheses, self.model.exog_names)
        estimate = L @ self.fe_params.values - rhs
        cov = self.cov_fe_kenward_roger.values if ddf == "kenward-roger" else self.cov_fe.values
        se = np.sqrt(np.einsum("ij,jk,ik->i", L, cov, L))
        if ddf == "satterthwaite":
            df = self.satterthwaite_df(L)
        elif ddf == "kenward-roger":
            df = self.kenward_roger_df(L)
        elif ddf == "wald":
            df = np.full(len(labels), np.inf)
        else:
            raise DataError(f"ddf must be 'satterthwaite', 'kenward-roger' or 'wald', got {ddf!r}.")
        return contrast_table(estimate, se, df, labels, adjust)

    def wald_test(self, hypotheses) -> dict:
        """Joint Wald χ² test that all the given contrasts are zero: {statistic, df, pvalue}."""

        L, rhs, _ = parse_contrasts(hypotheses, self.model.exog_names)
        diff = L @ self.fe_params.values - rhs
        cov = L @ self.cov_fe.values @ L.T
        rank = int(np.linalg.matrix_rank(cov))
        stat = float(diff @ np.linalg.pinv(cov) @ diff)
        return {"statistic": stat, "df": rank, "pvalue": chi2_sf(stat, rank)}

    def pairwise(self, term: str, adjust: str | None = "holm", ddf: str = "satterthwaite") -> pd.DataFrame:
        """All pairwise differences between the levels of a categorical term (treatment-coded),
        with multiplicity-adjusted p-values (Holm by default).

        ``term`` is the prefix of the coefficient names, e.g. ``"C(session)"`` or ``"Sex"``.
        """
        names = self.model.exog_names
        cols = [n for n in names if n.startswith(term + "[")]
        if not cols and '"' in term:  # the term as the formula wrote it; formulaic names it with single quotes
            term = term.replace('"', "'")
            cols = [n for n in names if n.startswith(term + "[")]
        if not cols:
            raise DataError(f"no fixed-effect coefficients for {term!r}; coefficients are: {', '.join(names)}.")
        level = {c: c[len(term) + 1 : -1].removeprefix("T.") for c in cols}
        reference = self._reference_level(term)
        rows, labels = [], []
        for c in cols:
            row = np.zeros(len(names))
            row[names.index(c)] = 1.0
            rows.append(row)
            labels.append(f"{level[c]} - {reference}")
        for i, a in enumerate(cols):
            for b in cols[i + 1 :]:
                row = np.zeros(len(names))
                row[names.index(b)] = 1.0
                row[names.index(a)] = -1.0
                rows.append(row)
                labels.append(f"{level[b]} - {level[a]}")
        table = self.t_test(np.asarray(rows), ddf=ddf, adjust=adjust)
        table.index = labels
        return table

    def _reference_level(self, term: str) -> str:
        """The reference level of a treatment-coded factor, from formulaic's model spec."""
        spec = getattr(self.model.spec, "fixed_spec", None) if self.model.spec is not None else None
        for factor, state in (getattr(spec, "factor_contrasts", None) or {}).items():
            if str(factor) == term:
                base = getattr(state.contrasts, "base", None)
                if base is None or type(base).__name__ == "Sentinel":
                    return str(state.levels[0])
                return str(base)
        return "(reference)"

    def emmeans(self, specs, by=None, *, ddf: str = "satterthwaite", alpha: float = 0.05, at: dict | None = None,
                data: pd.DataFrame | None = None) -> pd.DataFrame:
        """Estimated marginal means, as R's ``emmeans(m, specs, by)``: one row per level of ``specs``
        (a factor's column name, or a list of them for cell means), within each level of ``by``.

        Each mean is the model's prediction averaged over emmeans' reference grid: every combination
        of the levels of the factors in the fixed effects, numeric covariates at their mean over the
        fitted rows (or the values in ``at``, which may also restrict factors to some levels), the
        other factors weighted equally; a model's offset enters at its mean. A covariate that enters
        only through a transform needs ``data=`` (the fitting data) or ``at``. SE and df are
        `t_test`'s for ``ddf``; ``lower`` and ``upper`` are the ``1 - alpha`` confidence limits.

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("distance ~ age * Sex + (1 | Subject)", jaxlmm.datasets.load("orthodont")).fit()
            >>> r.emmeans("Sex").round(3)  # doctest: +NORMALIZE_WHITESPACE
                    emmean     SE    df   lower   upper
            Sex
            Female  22.648  0.586  25.0  21.441  23.855
            Male    24.969  0.486  25.0  23.968  25.970
        """
        return _emmeans.emmeans(self, specs, by, ddf=ddf, alpha=alpha, at=at, data=data)

    def emmeans_pairwise(self, specs, by=None, *, adjust: str | None = "tukey", ddf: str = "satterthwaite",
                         at: dict | None = None, data: pd.DataFrame | None = None) -> pd.DataFrame:
        """All pairwise differences of the `emmeans` of ``specs`` (within each level of ``by``), as R's
        ``pairs(emmeans(m, specs, by), adjust = adjust)``: rows ``"a - b"``, columns as `t_test`, plus
        ``p (adjust)``, adjusted within each ``by`` group: ``"tukey"`` (Tukey's HSD, emmeans'
        default), ``"holm"``, ``"bonferroni"``, ``"fdr_bh"`` or None.

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("distance ~ age * Sex + (1 | Subject)", jaxlmm.datasets.load("orthodont")).fit()
            >>> r.emmeans_pairwise("Sex").round(3)  # doctest: +NORMALIZE_WHITESPACE
                           estimate     SE      t    df      p  p (tukey)
            contrast
            Female - Male    -2.321  0.761 -3.048  25.0  0.005      0.005
        """
        return _emmeans.emmeans_pairwise(self, specs, by, adjust=adjust, ddf=ddf, at=at, data=data)

    def bootstrap(self, n: int = 1000, seed: int = 0, alpha: float = 0.05, *, progress: bool = True):
        """Parametric bootstrap: simulate ``n`` responses from the fitted model, refit each (batched).

        Returns a `BootstrapResult` with the replicate estimates (fixed effects and variance
        parameters) and percentile intervals. Replicates whose refit did not converge are dropped and
        counted.

        Examples:
            >>> import jaxlmm
            >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
            >>> b = r.bootstrap(n=64, seed=1, progress=False)
            >>> b.replicates.shape, list(b.conf_int().columns)
            ((64, 6), ['lower', 'upper'])
        """
        release_if_needed()
        if int(n) < 2:
            raise DataError(f"n must be at least 2 bootstrap replicates, got {n!r}.")
        Y = _simulate_responses(self, int(n), seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # singular replicates are expected and fine
            batch = self.model.fit_many(Y, reml=self.reml, progress=progress)
        table = pd.concat([batch.fe_params, batch.vcomp], axis=1)
        return BootstrapResult(table[batch.converged.values].reset_index(drop=True), int((~batch.converged).sum()),
                               self.params, alpha)

    # ---- plots (see jaxlmm.plot; each returns a matplotlib Figure) ----------------------------
    def plot_residuals(self, ax=None):
        """Residuals against fitted values, coloured by group."""
        return plot.residuals_vs_fitted(self, ax=ax)

    def plot_qq(self, ax=None):
        """Normal Q-Q plot of the standardised residuals."""
        return plot.qq_residuals(self, ax=ax)

    def plot_qq_re(self):
        """Normal Q-Q plots of the random effects, one panel per effect."""
        return plot.qq_random_effects(self)

    def plot_caterpillar(self, alpha: float = 0.05):
        """Random effects with conditional intervals, sorted (lme4's dotplot of ranef)."""
        return plot.caterpillar(self, alpha=alpha)

    def plot_fitted_lines(self, x=None, max_groups: int = 12, groups=None):
        """Per-group fitted lines over the data."""
        return plot.fitted_lines(self, x=x, max_groups=max_groups, groups=groups)

    def compare_lr_test(self, restricted: "MixedLMResults"):
        """Likelihood-ratio test of a ``restricted`` (nested) fit against this one; see `jaxlmm.lrtest`."""

        return lrtest(restricted, self)

    # ---- reporting ----------------------------------------------------------------------------
    def summary(self, alpha: float = 0.05, ddf: str = "wald"):
        """A summary table (statsmodels' MixedLM layout, then lme4-style random effects).

        ``ddf="satterthwaite"`` shows t statistics with Satterthwaite degrees of freedom (as
        lmerTest) instead of z statistics; ``ddf="kenward-roger"`` t statistics with Kenward–Roger's
        adjusted standard errors and degrees of freedom (REML fits).
        """

        return Summary(self, alpha, ddf)

    def __repr__(self) -> str:
        return f"<MixedLMResults {self.method}: llf={self.llf:.4f}, nobs={self.nobs}, groups={self.ngroups}>"

    def _warn(self) -> None:
        if not self.converged:
            warnings.warn(
                f"the fit did not converge: the largest gradient of the deviance is {self.grad_norm:.2g} after "
                f"{self.n_iter} iterations. Estimates may be off. Try rescaling predictors (centre and scale "
                "continuous covariates) or simplifying the random-effects structure.",
                ConvergenceWarning,
                stacklevel=3,
            )
        if self.is_singular:
            warnings.warn(
                f"boundary (singular) fit: {self._singular_description()}. The random-effects structure is "
                "richer than these data support; the estimates are still the maximum of the likelihood and "
                "usable, but consider removing that random effect (or the correlation, with '||'). Standard "
                "errors of variance parameters on the boundary are not reliable.",
                SingularFitWarning,
                stacklevel=3,
            )

    def _singular_description(self) -> str:
        cov = np.asarray(self._arrays.cov_re)  # not the cov_re DataFrame (68 µs) in every singular refit
        names = self.model.exog_re_names
        sd = np.sqrt(np.clip(np.diag(cov), 0, None))
        zero = [names[i] for i in range(len(names)) if sd[i] < SINGULAR_TOL * np.sqrt(self.scale)]
        if zero:
            return "the variance of " + ", ".join(repr(z) for z in zero) + " is estimated as zero"
        return "a correlation between random effects is estimated as ±1"


class BootstrapResult:
    """Replicate estimates of a parametric bootstrap and their percentile intervals."""

    def __init__(self, replicates: pd.DataFrame, n_failed: int, estimate: pd.Series, alpha: float):
        self.replicates = replicates
        self.n_failed = n_failed
        self.estimate = estimate
        self.alpha = alpha

    def conf_int(self, alpha: float | None = None) -> pd.DataFrame:
        """Percentile intervals (columns lower, upper) for every parameter."""
        a = self.alpha if alpha is None else alpha
        q = self.replicates.quantile([a / 2, 1 - a / 2]).T
        q.columns = ["lower", "upper"]
        return q

    @property
    def bse(self) -> pd.Series:
        """Bootstrap standard errors (standard deviation of the replicates)."""
        return self.replicates.std(ddof=1)

    def __repr__(self) -> str:
        return (f"<BootstrapResult: {len(self.replicates)} replicates"
                f"{f', {self.n_failed} failed' if self.n_failed else ''}>")


def _psd_root(G: np.ndarray) -> np.ndarray:
    """R with R Rᵀ = G for a positive semi-definite G (singular too)."""
    evals, evecs = np.linalg.eigh(G)
    return evecs * np.sqrt(np.clip(evals, 0.0, None))


def _simulate_responses(results: "MixedLMResults", n: int, seed: int) -> np.ndarray:
    """(nobs, n) responses simulated from the fitted model: X β̂ + Z b + offset + ε, b ~ N(0, Ĝ),
    ε ~ N(0, σ̂ᵢ²) (`MixedLMResults.resid_variance`: prior weights and a residual-variance model)."""
    d = results.model.design
    X, Z, group, mask = (np.asarray(a) for a in (d.X, d.Z, d.group, d.mask))
    rng = np.random.default_rng(seed)
    G = results.cov_re.values
    q1 = Z.shape[1]
    b = rng.standard_normal((n, results.ngroups, q1)) @ _psd_root(G[:q1, :q1]).T
    Y = X @ results.fe_params.values + np.einsum("nq,knq->kn", Z, b[:, group])
    if d.crossed is not None:  # the other terms: one draw per level from the term's block of G
        Zc, block = np.asarray(d.crossed.Z), np.asarray(d.crossed.block)
        for k, (start, size) in enumerate(d.crossed.layout.columns):
            root = _psd_root(G[start: start + size, start: start + size])
            bk = rng.standard_normal((n, d.crossed.layout.n_blocks, size)) @ root.T
            Y = Y + np.einsum("nq,knq->kn", Zc[:, k, :size], bk[:, block[:, k]])
    eps = rng.standard_normal((n, X.shape[0])) * np.sqrt(results.resid_variance.to_numpy())
    Y = Y + eps + results._offset
    Y[:, mask == 0] = np.nan
    return Y.T
