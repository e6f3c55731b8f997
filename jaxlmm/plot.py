"""Diagnostic plots of a fitted `MixedLMResults` (matplotlib, object-oriented).

Every function returns a `matplotlib.figure.Figure`. A new figure is released from pyplot as soon
as it is created, so pyplot's list of open figures is left as it was: in Jupyter a figure that is a
cell's value is displayed (once); in a script use ``fig.savefig("name.png")``. Functions that draw a
single panel accept ``ax=`` to draw into your own axes (e.g. from ``plt.subplots()``) and then
return ``ax.figure`` — a pyplot figure of yours, which Jupyter also shows at the end of the cell:
end that line with ``;`` to see it once.

* `residuals_vs_fitted` — conditional residuals against fitted values, coloured by group;
* `qq_residuals` — normal Q-Q plot of the standardised conditional residuals;
* `qq_random_effects` — normal Q-Q plot of the conditional modes, one panel per random effect;
* `caterpillar` — conditional modes with intervals from their conditional variances;
* `fitted_lines` — per-group data and fitted values against a covariate;
* `profile` — a likelihood profile table (columns ``value`` and ``llf`` or ``deviance``).
"""

from __future__ import annotations

import math
import re
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from .errors import DataError, check_probability

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ._results import MixedLMResults

__all__ = ["residuals_vs_fitted", "qq_residuals", "qq_random_effects", "caterpillar", "fitted_lines", "profile"]

_POINT_COLOUR = "#1f77b4"
_LINE_COLOUR = "#d62728"
_REF_COLOUR = "0.45"


# ---- helpers --------------------------------------------------------------------------------------
def _new_figure(width: float, height: float) -> "Figure":
    """A constrained-layout figure, created by pyplot and at once released from it.

    Creating it through pyplot lets the active backend hook in (Jupyter's inline backend then
    displays a figure that is a cell's value); closing it right away keeps pyplot's list of open
    figures unchanged, so the figure is not shown a second time at the end of the cell and is
    freed when no longer referenced.
    """
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(width, height), layout="constrained")
    plt.close(fig)
    return fig


def _single_axes(ax: "Axes | None", width: float = 6.0, height: float = 4.2) -> tuple["Figure", "Axes"]:
    if ax is not None:
        return ax.figure, ax
    fig = _new_figure(width, height)
    return fig, fig.add_subplot()


def _normal_quantiles(n: int) -> np.ndarray:
    """Expected normal order statistics (Blom's positions (i − 3/8) / (n + 1/4))."""
    dist = NormalDist()
    return np.array([dist.inv_cdf((i + 1 - 0.375) / (n + 0.25)) for i in range(n)])


def _used_rows(r: "MixedLMResults") -> np.ndarray:
    return np.asarray(r.model.design.mask) > 0


def _group_label(r: "MixedLMResults") -> str:
    return str(getattr(r.model, "group_name", None) or "group")


def _group_colours(codes: np.ndarray, n_groups: int):
    """A colour per row: qualitative palette (tab10 up to 10 groups, tab20 cycled beyond)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_groups <= 10 else "tab20"]
    return cmap(codes % cmap.N)


def _grid(k: int, max_cols: int = 4) -> tuple[int, int]:
    ncols = min(max_cols, k)
    return math.ceil(k / ncols), ncols


class _Panel:
    """One panel of random effects: a title, row labels, conditional modes and conditional sds."""

    def __init__(self, title: str, labels: list[str], est: np.ndarray, sd: np.ndarray, per_group: bool):
        self.title, self.labels, self.est, self.sd, self.per_group = title, labels, est, sd, per_group


def _tied_labels(r: "MixedLMResults", block) -> dict[tuple[int, int], str]:
    """(group code, column in block) → label of a nested level, from the model's encoder when known."""
    spec = getattr(r.model, "spec", None)
    levels = [str(v) for v in r.model.group_levels]
    for enc, _ in getattr(spec, "random_specs", ()) or ():
        mapping = getattr(enc, "mapping", None)
        if mapping is not None and list(getattr(enc, "names", [])) == list(block.names):
            code = {lev: i for i, lev in enumerate(levels)}
            return {(code[g], j): f"{g}:{h}" for (g, h), j in mapping if g in code}
    return {}


def _level_name(column: str, label: str | None) -> str:
    """'cask[C(cask)[a]]' → 'a': the level in a variance-component column name."""
    if label and column.startswith(f"{label}[") and column.endswith("]"):
        column = column[len(label) + 1 : -1]
    match = re.fullmatch(r".*\[(?:T\.)?([^\[\]]+)\]", column)
    return match.group(1) if match else column


def _re_panels(r: "MixedLMResults") -> list[_Panel]:
    """Panels of conditional modes: one per random effect of the grouping factor (rows: groups),
    and one per variance component nested in it (rows: the nested levels that occur in the data).
    Crossed models: one panel per factor and effect (rows: the factor's levels)."""
    if getattr(r.model, "factor_terms", ()):
        panels = []
        for (factor, modes), covs in zip(r.random_effects.items(), r.random_effects_cov.values()):
            for j, col in enumerate(modes.columns):
                var = np.array([covs[lev].to_numpy()[j, j] for lev in modes.index])
                title = factor if len(modes.columns) == 1 else f"{factor}: {col}"
                panels.append(_Panel(title, [str(v) for v in modes.index], modes[col].to_numpy(),
                                     np.sqrt(np.clip(var, 0.0, None)), False))
        return panels
    re = r.random_effects
    names = list(re.columns)
    modes = re.to_numpy()
    cov = r.random_effects_cov
    sd = np.sqrt(np.clip(np.array([np.diag(cov[lev].to_numpy()) for lev in re.index]), 0.0, None))
    groups = [str(v) for v in re.index]
    tied = [b for b in getattr(r.model, "blocks", ()) if getattr(b, "tied", False)]
    tied_cols = {n for b in tied for n in b.names}
    panels = [
        _Panel(name, groups, modes[:, j], sd[:, j], True) for j, name in enumerate(names) if name not in tied_cols
    ]
    if tied:
        d = r.model.design
        Z = np.asarray(d.Z)
        codes = np.asarray(d.group)[_used_rows(r)]
        Zu = Z[_used_rows(r)] != 0
    for block in tied:
        cols = [names.index(n) for n in block.names]
        occurs = np.zeros((len(groups), len(cols)), dtype=bool)
        for k, j in enumerate(cols):
            np.logical_or.at(occurs[:, k], codes, Zu[:, j])
        known = _tied_labels(r, block)
        short = [_level_name(names[j], getattr(block, "label", None)) for j in cols]
        crossed = bool(getattr(r.model, "crossed_factors", ()))  # one group: the level names suffice
        labels, est, sds = [], [], []
        for g in range(len(groups)):
            for k, j in enumerate(cols):
                if occurs[g, k]:
                    labels.append(short[k] if crossed else known.get((g, k), f"{groups[g]}:{short[k]}"))
                    est.append(modes[g, j])
                    sds.append(sd[g, j])
        title = str(getattr(block, "label", None) or "variance component")
        panels.append(_Panel(title, labels, np.asarray(est), np.asarray(sds), False))
    return panels


# ---- residuals ------------------------------------------------------------------------------------
def residuals_vs_fitted(r: "MixedLMResults", ax: "Axes | None" = None) -> "Figure":
    """Conditional residuals (y − Xβ̂ − Zb̂) against fitted values, coloured by group.

    A dashed line marks zero and a red line joins the mean residual in bins of the fitted values
    (a trend in it means a missed non-linearity; a funnel means non-constant variance). With at
    most 10 groups a legend names them.

    Examples:
        >>> import matplotlib; matplotlib.use("Agg")  # no display needed
        >>> import jaxlmm, jaxlmm.plot
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)",
        ...                                 jaxlmm.datasets.load("sleepstudy")).fit()
        >>> fig = jaxlmm.plot.residuals_vs_fitted(r); type(fig).__name__
        'Figure'
    """
    fig, ax = _single_axes(ax)
    used = _used_rows(r)
    fitted = r.fittedvalues.to_numpy()[used]
    resid = r.resid.to_numpy()[used]
    codes = np.asarray(r.model.design.group)[used]
    m = r.model.ngroups
    colours = _group_colours(codes, m)
    ax.axhline(0.0, color=_REF_COLOUR, lw=1, ls="--", zorder=1)
    if m <= 10:
        for c in range(m):
            sel = codes == c
            if sel.any():
                ax.scatter(fitted[sel], resid[sel], s=16, alpha=0.8, color=colours[sel][0],
                           label=str(r.model.group_levels[c]), zorder=2)
        ax.legend(title=_group_label(r), fontsize="small", title_fontsize="small", loc="best",
                  ncols=2 if m > 5 else 1)
    else:
        ax.scatter(fitted, resid, s=12, alpha=0.7, c=colours, linewidths=0, zorder=2)
    n_bins = int(np.clip(len(fitted) // 25, 3, 20))
    if len(fitted) >= 3 * n_bins:
        edges = np.quantile(fitted, np.linspace(0, 1, n_bins + 1))
        which = np.clip(np.searchsorted(edges, fitted, side="right") - 1, 0, n_bins - 1)
        centres = np.array([fitted[which == b].mean() for b in range(n_bins) if (which == b).any()])
        means = np.array([resid[which == b].mean() for b in range(n_bins) if (which == b).any()])
        ax.plot(centres, means, color=_LINE_COLOUR, lw=1.8, label="_binned mean", zorder=3)
    ax.set_xlabel("Fitted values")
    ax.set_ylabel("Residuals")
    suffix = "" if m <= 10 else f" (colour: {_group_label(r)})"
    ax.set_title(f"Residuals vs fitted{suffix}")
    return fig


def qq_residuals(r: "MixedLMResults", ax: "Axes | None" = None) -> "Figure":
    """Normal Q-Q plot of the conditional residuals divided by σ̂, with the line y = x.

    Examples:
        >>> import matplotlib; matplotlib.use("Agg")  # no display needed
        >>> import jaxlmm, jaxlmm.plot
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)",
        ...                                 jaxlmm.datasets.load("sleepstudy")).fit()
        >>> fig = jaxlmm.plot.qq_residuals(r); type(fig).__name__
        'Figure'
    """
    fig, ax = _single_axes(ax, 4.8, 4.5)
    resid = r.resid.to_numpy()[_used_rows(r)] / math.sqrt(r.scale)
    sample = np.sort(resid)
    theory = _normal_quantiles(len(sample))
    ax.scatter(theory, sample, s=12, alpha=0.75, color=_POINT_COLOUR, linewidths=0, zorder=2)
    lim = np.array([theory[0], theory[-1]]) * 1.05
    ax.plot(lim, lim, color=_LINE_COLOUR, lw=1.2, zorder=1, label="y = x")
    ax.set_xlabel("Theoretical quantiles (normal)")
    ax.set_ylabel("Residual / σ̂")
    ax.set_title("Normal Q-Q plot of residuals")
    return fig


def qq_random_effects(r: "MixedLMResults") -> "Figure":
    """Normal Q-Q plots of the conditional modes (BLUPs), one panel per random effect.

    The red line passes through the quartiles (as R's ``qqline``): the modes are shrunk towards
    zero, so their spread is smaller than the estimated random-effect standard deviation. A variance
    component nested in the grouping factor gets one panel (its levels that occur in the data).

    Examples:
        >>> import matplotlib; matplotlib.use("Agg")  # no display needed
        >>> import jaxlmm, jaxlmm.plot
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)",
        ...                                 jaxlmm.datasets.load("sleepstudy")).fit()
        >>> fig = jaxlmm.plot.qq_random_effects(r); type(fig).__name__, len(fig.axes)
        ('Figure', 2)
    """
    panels = _re_panels(r)
    q = len(panels)
    rows, cols = _grid(q, 3)
    fig = _new_figure(3.8 * cols, 3.6 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    dist = NormalDist()
    z1, z3 = dist.inv_cdf(0.25), dist.inv_cdf(0.75)
    for ax, panel in zip(axes, panels):
        sample = np.sort(panel.est)
        theory = _normal_quantiles(len(sample))
        ax.scatter(theory, sample, s=16, alpha=0.8, color=_POINT_COLOUR, linewidths=0, zorder=2)
        y1, y3 = np.quantile(sample, [0.25, 0.75])
        slope = (y3 - y1) / (z3 - z1)
        ends = theory[[0, -1]]
        ax.plot(ends, y1 + slope * (ends - z1), color=_LINE_COLOUR, lw=1.2, zorder=1)
        ax.set_title(panel.title if panel.per_group else f"{panel.title} ({len(sample)} levels)")
        ax.set_xlabel("Theoretical quantiles (normal)")
        ax.set_ylabel("Conditional mode")
    for ax in axes[q:]:
        ax.remove()
    groups = "" if getattr(r.model, "crossed_factors", ()) else f", {r.model.ngroups} groups"
    fig.suptitle(f"Normal Q-Q plots of random effects ({_group_label(r)}{groups})")
    return fig


# ---- random effects -------------------------------------------------------------------------------
def caterpillar(r: "MixedLMResults", alpha: float = 0.05) -> "Figure":
    """Conditional modes of the random effects with ``1 − alpha`` conditional intervals.

    One panel per random effect; groups are sorted by the first random effect and share the
    vertical axis across panels (as lme4's ``dotplot(ranef(m, condVar = TRUE))``). A variance
    component nested in the grouping factor (``(1 | batch/cask)``) gets one panel of its own, with
    a row per nested level that occurs in the data, sorted. Intervals are mode ± z·sd, with sd from
    `random_effects_cov`; intervals that exclude zero are drawn darker.

    Examples:
        >>> import matplotlib; matplotlib.use("Agg")  # no display needed
        >>> import jaxlmm, jaxlmm.plot
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)",
        ...                                 jaxlmm.datasets.load("sleepstudy")).fit()
        >>> fig = jaxlmm.plot.caterpillar(r); type(fig).__name__, len(fig.axes)
        ('Figure', 2)
    """
    check_probability(alpha, "alpha")
    panels = _re_panels(r)
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0)
    plain = [p for p in panels if p.per_group]
    order = np.argsort(plain[0].est, kind="stable") if plain else None
    most = max(len(p.labels) for p in panels)
    height = float(np.clip(0.17 * most + 1.3, 3.0, 14.0))
    fig = _new_figure(min(3.6 * len(panels) + 1.0, 14.0), height)
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    first_plain = None
    for ax, panel in zip(axes, panels):
        rows = order if panel.per_group else np.argsort(panel.est, kind="stable")
        n = len(rows)
        est, half = panel.est[rows], z * panel.sd[rows]
        ypos = np.arange(n)
        excludes = (est - half > 0) | (est + half < 0)
        ax.axvline(0.0, color=_REF_COLOUR, lw=1, ls="--", zorder=1)
        for mask, colour in ((~excludes, "#8fb3d9"), (excludes, "#1f4e8c")):
            if mask.any():
                ax.errorbar(est[mask], ypos[mask], xerr=half[mask], fmt="o", ms=3.5, color=colour,
                            ecolor=colour, elinewidth=1.2, capsize=0, zorder=2)
        ax.set_title(panel.title)
        ax.set_xlabel("Conditional mode")
        ax.grid(axis="x", color="0.9", lw=0.8)
        ax.set_axisbelow(True)
        ax.set_ylim(-0.8, n - 0.2)
        if panel.per_group and first_plain is not None:
            ax.sharey(first_plain)
            ax.tick_params(labelleft=False)
            continue
        if n <= 100:
            ax.set_yticks(ypos)
            ax.set_yticklabels([panel.labels[i] for i in rows], fontsize=8 if n <= 40 else 6)
        else:
            ax.set_yticks([])
        if panel.per_group:
            first_plain = ax
            ax.set_ylabel(f"{_group_label(r)} (sorted by {panel.title})")
        else:
            ax.set_ylabel(f"{panel.title} (sorted)")
    pct = f"{100 * (1 - alpha):g}%"
    fig.suptitle(f"Random effects with {pct} conditional intervals")
    return fig


# ---- fitted lines ---------------------------------------------------------------------------------
def _default_x(r: "MixedLMResults") -> str | None:
    tied = {n for b in getattr(r.model, "blocks", ()) if getattr(b, "tied", False) for n in b.names}
    for names in (r.model.exog_re_names, r.model.exog_names):
        for name in names:
            if name.lower() not in ("intercept", "(intercept)", "const") and name not in tied:
                return name
    return None


def _x_values(r: "MixedLMResults", x: Any) -> tuple[np.ndarray, str]:
    d = r.model.design
    if x is None:
        x = _default_x(r)
        if x is None:
            codes = np.asarray(d.group)
            within = pd.Series(np.arange(len(codes))).groupby(codes).cumcount().to_numpy()
            return within.astype(float), "observation within group"
    if isinstance(x, str):
        if x in r.model.exog_re_names:
            return np.asarray(d.Z)[:, r.model.exog_re_names.index(x)], x
        if x in r.model.exog_names:
            return np.asarray(d.X)[:, r.model.exog_names.index(x)], x
        raise DataError(
            f"x={x!r} is not a column of the model (fixed: {r.model.exog_names}; random: {r.model.exog_re_names}); "
            "pass one of those names or an array with one value per row of the model."
        )
    values = np.asarray(x, dtype=float)
    if values.shape != (np.asarray(d.y).shape[0],):
        raise DataError(f"x must have one value per row of the model ({np.asarray(d.y).shape[0]}), got shape {values.shape}.")
    return values, getattr(x, "name", None) or "x"


def fitted_lines(r: "MixedLMResults", x: Any = None, max_groups: int = 12,
                 groups: Sequence[Any] | None = None) -> "Figure":
    """Data and fitted values against ``x``, one panel per group.

    Solid line: the group's fitted values (Xβ̂ + Zb̂); dashed: the population-level prediction
    (Xβ̂). ``x`` is a column name of the model (fixed or random design) or an array with one value
    per row; by default the first non-intercept random-effect column, else the first non-intercept
    fixed-effect column, else the observation number within the group. The first ``max_groups``
    groups are shown, or the levels listed in ``groups``.

    Examples:
        >>> import matplotlib; matplotlib.use("Agg")  # no display needed
        >>> import jaxlmm, jaxlmm.plot
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)",
        ...                                 jaxlmm.datasets.load("sleepstudy")).fit()
        >>> fig = jaxlmm.plot.fitted_lines(r, max_groups=6); type(fig).__name__, len(fig.axes)
        ('Figure', 6)
    """
    levels = r.model.group_levels
    if groups is None:
        if max_groups < 1:
            raise DataError(f"max_groups must be at least 1, got {max_groups!r}.")
        chosen = list(range(min(max_groups, len(levels))))
    else:
        as_str = [str(v) for v in levels]
        chosen = []
        for g in groups:
            if g in levels:
                chosen.append(int(levels.get_loc(g)))
            elif str(g) in as_str:
                chosen.append(as_str.index(str(g)))
            else:
                raise DataError(f"group {g!r} is not a level of {_group_label(r)!r} (e.g. {as_str[:3]}).")
    if not chosen:
        raise DataError("groups is empty: list at least one level to plot (or leave groups=None).")
    xv, x_name = _x_values(r, x)
    used = _used_rows(r)
    codes = np.asarray(r.model.design.group)
    y = np.asarray(r.model.design.y)
    fitted = r.fittedvalues.to_numpy()
    population = r.predict(include_re=False).to_numpy()
    k = len(chosen)
    rows, cols = _grid(k, 4)
    fig = _new_figure(min(3.0 * cols + 0.6, 14.0), 2.5 * rows + 0.6)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    flat = axes.ravel()
    for ax, c in zip(flat, chosen):
        sel = (codes == c) & used
        o = np.argsort(xv[sel], kind="stable")
        xs = xv[sel][o]
        ax.plot(xs, population[sel][o], color=_REF_COLOUR, lw=1.2, ls="--", label="population (Xβ̂)")
        ax.plot(xs, fitted[sel][o], color=_LINE_COLOUR, lw=1.6, label="group fit (Xβ̂ + Zb̂)")
        ax.scatter(xs, y[sel][o], s=14, color=_POINT_COLOUR, alpha=0.85, linewidths=0, label="data", zorder=3)
        ax.set_title(f"{_group_label(r)} {levels[c]}", fontsize="medium")
    for ax in flat[k:]:
        ax.remove()
    # The bottom row may be partly removed: label the last panel of each column.
    for j in range(cols):
        column = [ax for ax in axes[:, j] if ax in fig.axes]
        if column:
            column[-1].set_xlabel(x_name)
            column[-1].xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(r.model.endog_name)
    handles, labels = flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small", frameon=False)
    return fig


# ---- profile --------------------------------------------------------------------------------------
def profile(profile_frame: pd.DataFrame, ax: "Axes | None" = None, alpha: float = 0.05) -> "Figure":
    """Plot a likelihood profile: column ``value`` against ``llf`` (or ``deviance``).

    The horizontal line is the likelihood-ratio cut-off of a ``1 − alpha`` profile interval
    (max llf − χ²₁(1 − alpha)/2, or min deviance + χ²₁(1 − alpha)). With a ``parameter`` column
    each parameter gets its own panel (pass ``ax`` only for a single parameter).

    Examples:
        >>> import matplotlib; matplotlib.use("Agg")  # no display needed
        >>> import numpy as np, pandas as pd, jaxlmm.plot
        >>> v = np.linspace(-2, 2, 41)
        >>> fig = jaxlmm.plot.profile(pd.DataFrame({"value": v, "llf": -0.5 * v**2})); type(fig).__name__
        'Figure'
    """
    if not isinstance(profile_frame, pd.DataFrame):
        raise DataError(f"profile_frame must be a pandas DataFrame, got {type(profile_frame).__name__}.")
    if "value" not in profile_frame.columns:
        raise DataError(f"profile_frame needs a 'value' column; it has {list(profile_frame.columns)}.")
    ycol = next((c for c in ("ml_llf", "llf", "ml_deviance", "deviance") if c in profile_frame.columns), None)
    is_llf = ycol in ("ml_llf", "llf")
    if ycol is None:
        raise DataError(f"profile_frame needs an 'llf' or a 'deviance' column; it has {list(profile_frame.columns)}.")
    if "parameter" in profile_frame.columns:
        parts = [(str(k), g) for k, g in profile_frame.groupby("parameter", sort=False)]
    else:
        parts = [(None, profile_frame)]
    if ax is not None and len(parts) > 1:
        raise DataError(f"profile_frame has {len(parts)} parameters; pass ax only for one (or leave ax=None).")
    check_probability(alpha, "alpha")
    chi2 = NormalDist().inv_cdf(1.0 - alpha / 2.0) ** 2
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        rows, cols = _grid(len(parts), 3)
        fig = _new_figure(4.2 * cols, 3.4 * rows)
        axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
        for extra in axes[len(parts):]:
            extra.remove()
    for ax_, (name, part) in zip(axes, parts):
        part = part.sort_values("value")
        yv = part[ycol].to_numpy(dtype=float)
        ax_.plot(part["value"].to_numpy(dtype=float), yv, color=_POINT_COLOUR, lw=1.6, marker="o", ms=3)
        finite = yv[np.isfinite(yv)]
        if finite.size:
            cut = finite.max() - chi2 / 2.0 if is_llf else finite.min() + chi2
            ax_.axhline(cut, color=_LINE_COLOUR, lw=1, ls="--", label=f"{100 * (1 - alpha):g}% cut-off")
            ax_.legend(fontsize="small", loc="best")
        ax_.set_xlabel(name if name is not None else "value")
        ml = "ML " if ycol.startswith("ml_") else ""
        ax_.set_ylabel(f"{ml}log-likelihood" if is_llf else f"{ml}deviance")
        ax_.set_title(f"Profile: {name}" if name is not None else "Likelihood profile")
    return fig
