"""`jaxlmm.plot`: every function returns a Figure with the expected panels and labels.

No pixel comparisons: the structure (number of axes, titles, axis labels, plotted data) is checked,
and every figure is rendered to PNG (Agg) so that drawing errors surface. Set
``JAXLMM_PLOT_DIR=/some/dir`` to keep the PNGs for a look.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import jaxlmm
import jaxlmm.plot as jplot

OUT = Path(os.environ.get("JAXLMM_PLOT_DIR") or tempfile.mkdtemp(prefix="jaxlmm_plots_"))


def render(fig: Figure, name: str) -> Figure:
    assert isinstance(fig, Figure)
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT / f"{name}.png", dpi=60)
    assert (OUT / f"{name}.png").stat().st_size > 1000
    return fig


@pytest.fixture(scope="module")
def sleep():
    df = jaxlmm.datasets.load("sleepstudy")
    return jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).fit()


@pytest.fixture(scope="module")
def three():
    """Three groups (a legend), random intercept only, array-free formula front end."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"cls": np.repeat(["A", "B", "C"], 20), "x": rng.normal(size=60)})
    df["y"] = 1 + 0.5 * df.x + df.cls.map({"A": 0.0, "B": 1.0, "C": -1.0}) + rng.normal(size=60)
    return jaxlmm.MixedLM.from_formula("y ~ x + (1 | cls)", df).fit()


def test_public_names():
    assert sorted(jplot.__all__) == sorted(
        ["residuals_vs_fitted", "qq_residuals", "qq_random_effects", "caterpillar", "fitted_lines", "profile"]
    )


def test_residuals_vs_fitted(sleep, three):
    fig = render(jplot.residuals_vs_fitted(sleep), "resid_sleep")
    (ax,) = fig.axes
    assert ax.get_xlabel() == "Fitted values" and ax.get_ylabel() == "Residuals"
    assert "Subject" in ax.get_title()  # 18 groups: colour explained in the title, no legend
    assert ax.get_legend() is None
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], sleep.fittedvalues.values)
    np.testing.assert_allclose(offsets[:, 1], sleep.resid.values)

    fig = render(jplot.residuals_vs_fitted(three), "resid_three")
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B", "C"]
    assert legend.get_title().get_text() == "cls"


def test_single_axes_functions_draw_into_given_axes(sleep):
    host = Figure(figsize=(9, 3))
    axes = host.subplots(1, 3)
    assert jplot.residuals_vs_fitted(sleep, ax=axes[0]) is host
    assert jplot.qq_residuals(sleep, ax=axes[1]) is host
    v = np.linspace(-1, 1, 11)
    assert jplot.profile(pd.DataFrame({"value": v, "llf": -v**2}), ax=axes[2]) is host
    assert len(host.axes) == 3
    render(host, "given_axes")


def test_qq_residuals(sleep):
    fig = render(jplot.qq_residuals(sleep), "qq_resid")
    (ax,) = fig.axes
    assert ax.get_xlabel().startswith("Theoretical quantiles")
    points = ax.collections[0].get_offsets()
    assert len(points) == sleep.nobs
    np.testing.assert_allclose(np.sort(points[:, 1]), np.sort(sleep.resid.values / np.sqrt(sleep.scale)))
    assert np.all(np.diff(points[:, 0]) > 0)  # theoretical quantiles increase
    assert abs(points[:, 0].mean()) < 1e-12  # symmetric plotting positions


def test_qq_random_effects(sleep, three):
    fig = render(jplot.qq_random_effects(sleep), "qq_re_sleep")
    assert [ax.get_title() for ax in fig.axes] == ["Intercept", "Days"]
    for ax, name in zip(fig.axes, ["Intercept", "Days"]):
        np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 1], np.sort(sleep.random_effects[name]))
    fig = render(jplot.qq_random_effects(three), "qq_re_three")
    assert len(fig.axes) == 1


def test_caterpillar(sleep):
    fig = render(jplot.caterpillar(sleep), "caterpillar")
    assert [ax.get_title() for ax in fig.axes] == ["Intercept", "Days"]
    assert "95%" in fig.get_suptitle()
    first = fig.axes[0]
    labels = [t.get_text() for t in first.get_yticklabels()]
    expected = sleep.random_effects.sort_values("Intercept").index.astype(str).tolist()
    assert labels == expected  # sorted by the first random effect, every group labelled
    assert "Subject" in first.get_ylabel()
    # The plotted points and interval half-widths: mode ± 1.96 conditional sd.
    xs = np.concatenate([line.get_xdata() for line in first.lines if line.get_linestyle() == "None"])
    assert sorted(xs) == pytest.approx(sorted(sleep.random_effects["Intercept"]))
    fig90 = jplot.caterpillar(sleep, alpha=0.1)
    assert "90%" in fig90.get_suptitle()
    with pytest.raises(jaxlmm.DataError):
        jplot.caterpillar(sleep, alpha=1.5)


def test_caterpillar_interval_widths(three):
    fig = render(jplot.caterpillar(three), "caterpillar_three")
    (ax,) = fig.axes
    widths = []
    for coll in ax.collections:  # error bars: LineCollections of horizontal segments
        for seg in coll.get_segments():
            widths.append(seg[1, 0] - seg[0, 0])
    sd = np.sqrt([three.random_effects_cov[g].iloc[0, 0] for g in three.random_effects.index])
    assert sorted(widths) == pytest.approx(sorted(2 * 1.959963984540054 * sd), rel=1e-9)


def test_fitted_lines(sleep, three):
    fig = render(jplot.fitted_lines(sleep), "fitted_sleep")
    assert len(fig.axes) == 12
    assert fig.axes[0].get_title() == f"Subject {sleep.model.group_levels[0]}"
    assert fig.axes[-1].get_xlabel() == "Days"
    assert fig.axes[0].get_ylabel() == "Reaction"
    # The solid line of panel 1 is the group's fitted values.
    solid = [ln for ln in fig.axes[0].lines if ln.get_linestyle() == "-"][0]
    rows = np.asarray(sleep.model.design.group) == 0
    np.testing.assert_allclose(np.sort(solid.get_ydata()), np.sort(sleep.fittedvalues.values[rows]))

    fig = render(jplot.fitted_lines(sleep, max_groups=5), "fitted_sleep5")
    assert len(fig.axes) == 5
    assert all(ax.get_xlabel() == "Days" for ax in fig.axes[1:])  # bottom of each column labelled
    fig = jplot.fitted_lines(sleep, groups=["337", "309"])
    assert [ax.get_title() for ax in fig.axes] == ["Subject 337", "Subject 309"]
    with pytest.raises(jaxlmm.DataError, match="not a level"):
        jplot.fitted_lines(sleep, groups=["nobody"])
    with pytest.raises(jaxlmm.DataError, match="not a column"):
        jplot.fitted_lines(sleep, x="Hours")

    # Random intercept only: x defaults to the fixed-effect column.
    fig = render(jplot.fitted_lines(three), "fitted_three")
    assert len(fig.axes) == 3 and fig.axes[0].get_xlabel() == "x"


def test_fitted_lines_intercept_only_and_array_x():
    df = jaxlmm.datasets.load("dyestuff")
    r = jaxlmm.MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", df).fit()
    fig = render(jplot.fitted_lines(r), "fitted_dyestuff")
    assert len(fig.axes) == 6 and fig.axes[-1].get_xlabel() == "observation within group"
    fig = jplot.fitted_lines(r, x=np.arange(len(df), dtype=float))
    assert fig.axes[-1].get_xlabel() == "x"


def test_plots_of_a_batch_member_with_missing_rows():
    df = jaxlmm.datasets.load("sleepstudy")
    m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df)
    y = df.Reaction.to_numpy().copy()
    y[:5] = np.nan
    member = m.fit_many(np.column_stack([df.Reaction, y]), progress=False)[1]
    fig = render(jplot.residuals_vs_fitted(member), "resid_member")
    assert len(fig.axes[0].collections[0].get_offsets()) == len(df) - 5
    fig = jplot.qq_residuals(member)
    assert len(fig.axes[0].collections[0].get_offsets()) == len(df) - 5
    fig = jplot.fitted_lines(member, max_groups=1)
    assert len(fig.axes[0].collections[0].get_offsets()) == 5


def test_profile():
    v = np.linspace(-2, 2, 21)
    fig = render(jplot.profile(pd.DataFrame({"value": v, "llf": -0.5 * v**2})), "profile_llf")
    (ax,) = fig.axes
    assert ax.get_ylabel() == "log-likelihood"
    cut = [ln for ln in ax.lines if ln.get_linestyle() == "--"][0]
    assert cut.get_ydata()[0] == pytest.approx(-1.959963984540054**2 / 2)

    frame = pd.concat(
        [
            pd.DataFrame({"parameter": "sd_Intercept", "value": v + 3, "deviance": v**2}),
            pd.DataFrame({"parameter": "Days", "value": v, "deviance": 2 * v**2}),
        ]
    )
    fig = render(jplot.profile(frame), "profile_deviance")
    assert [ax.get_title() for ax in fig.axes] == ["Profile: sd_Intercept", "Profile: Days"]
    assert all(ax.get_ylabel() == "deviance" for ax in fig.axes)
    with pytest.raises(jaxlmm.DataError, match="'value'"):
        jplot.profile(pd.DataFrame({"x": v, "llf": v}))
    with pytest.raises(jaxlmm.DataError, match="llf"):
        jplot.profile(pd.DataFrame({"value": v, "loglik": v}))
    with pytest.raises(jaxlmm.DataError, match="2 parameters"):
        jplot.profile(frame, ax=Figure().add_subplot())


def test_no_pyplot_state(sleep):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    jplot.caterpillar(sleep)
    jplot.residuals_vs_fitted(sleep)
    assert plt.get_fignums() == before


@pytest.mark.parametrize(
    "formula, kwargs",
    [("strength ~ 1 + (1 | batch/cask)", {}), ("strength ~ 1", {"groups": "batch", "re_formula": "1", "vc_formula": {"cask": "0 + C(cask)"}})],
)
def test_nested_variance_component_gets_one_panel(formula, kwargs):
    """Pastes: casks nested in batches — one panel for the batches, one for the 30 casks that occur."""
    df = jaxlmm.datasets.load("pastes")
    r = jaxlmm.MixedLM.from_formula(formula, df, **kwargs).fit()
    fig = render(jplot.caterpillar(r), "caterpillar_pastes")
    assert len(fig.axes) == 2
    batches, casks = sorted(fig.axes, key=lambda ax: len(ax.get_yticklabels()))
    assert batches.get_title() == ("Intercept" if kwargs else "batch")
    assert len(batches.get_yticklabels()) == 10
    labels = [t.get_text() for t in casks.get_yticklabels()]
    assert sorted(labels) == sorted(f"{b}:{c}" for b, c in df[["batch", "cask"]].drop_duplicates().to_numpy())
    fig = render(jplot.qq_random_effects(r), "qq_re_pastes")
    assert len(fig.axes) == 2 and sorted(len(ax.collections[0].get_offsets()) for ax in fig.axes) == [10, 30]
    fig = jplot.fitted_lines(r)
    if kwargs:  # one grouping factor: x is not a variance-component column
        assert fig.axes[-1].get_xlabel() == "observation within group"


def test_results_plot_methods_return_figures():
    from matplotlib.figure import Figure

    r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
    for method in (r.plot_residuals, r.plot_qq, r.plot_qq_re, r.plot_caterpillar, r.plot_fitted_lines):
        assert isinstance(method(), Figure)
