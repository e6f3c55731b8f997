"""The dense block split into clusters and a separator (`_clusters`): the same deviance, derivatives
and fit as the dense factorisation, on a students × teachers × schools design (STAR's shape)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm._clusters import Meetings, clustered_solve_and_selected_inverse, connected_components, plan_clusters
from jaxlmm._crossed import _blocks
from jaxlmm._fit import _Objective, design_stats, fit_arrays
from jaxlmm._kernels import relative_factor
from tests.hlo_checks import batched_lapack_calls

FORMULA = "y ~ grade + (1 | student) + (1 | teacher) + (1 | school)"


def school_data(seed: int = 5, schools: int = 40, per_school: int = 30, switch: float = 0.05) -> pd.DataFrame:
    """Students followed over 4 grades, 2 teachers per grade and school; a few change school once."""
    rng = np.random.default_rng(seed)
    rows = []
    for school in range(schools):
        for k in range(per_school):
            student = f"s{school}_{k}"
            home = school
            for grade in range(4):
                if grade == 2 and rng.random() < switch:
                    home = int(rng.integers(schools))
                rows.append((student, f"t{home}_{grade}_{rng.integers(2)}", f"h{home}", grade))
    df = pd.DataFrame(rows, columns=["student", "teacher", "school", "grade"])
    effect = {c: dict(zip(df[c].unique(), rng.normal(0, sd, df[c].nunique())))
              for c, sd in (("student", 1.0), ("teacher", 0.5), ("school", 0.7))}
    df["y"] = 0.3 * df.grade + sum(df[c].map(effect[c]) for c in effect) + rng.normal(0, 0.8, len(df))
    df["grade"] = df.grade.astype(str)
    return df


def dense_twin(design):
    """The same design with its dense block factored densely."""
    crossed = dataclasses.replace(design.crossed, clusters=None)
    return dataclasses.replace(design, crossed=crossed)


@pytest.fixture(scope="module")
def model():
    return jaxlmm.MixedLM.from_formula(FORMULA, school_data())


def test_a_school_design_is_split_into_clusters_and_a_separator(model):
    crossed = model.design.crossed
    slots = crossed.clusters
    assert crossed.layout.dense_size >= 256 and slots is not None
    B = crossed.layout.n_blocks
    members = np.asarray(slots.member)
    K, s = members.shape
    S = slots.separator.shape[0]
    used = np.concatenate([members[members < B], np.asarray(slots.separator)])
    assert np.array_equal(np.sort(used), np.arange(B))  # every level once: in a cluster or the separator
    assert s < B / 4 and S < B / 2
    # every pair of levels that meet has a slot (in one orientation at least), so M₂₂ loses nothing
    rows, cols = np.asarray(slots.slot_row), np.asarray(slots.slot_col)
    held = set(zip(rows.tolist(), cols.tolist()))
    block = np.asarray(crossed.block)
    for a, b in zip(block[:, 0], block[:, 1]):
        assert (a, b) in held or (b, a) in held


def test_the_plan_refuses_a_dense_pattern():
    rng = np.random.default_rng(0)
    first, second = rng.integers(0, 300, 200_000), rng.integers(0, 300, 200_000)
    assert plan_clusters(Meetings.from_pairs(first, second, 300), 1) is None


def test_connected_components_agree_with_a_union_find():
    rng = np.random.default_rng(1)
    n = 500
    rows, cols = rng.integers(0, n, 400), rng.integers(0, n, 400)
    parent = list(range(n))

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for a, b in zip(rows, cols):
        parent[find(a)] = find(b)
    roots = np.array([find(v) for v in range(n)])
    label = connected_components(n, np.concatenate([rows, cols]), np.concatenate([cols, rows]))
    same = label[:, None] == label[None, :]
    assert np.array_equal(same, roots[:, None] == roots[None, :])


@pytest.mark.parametrize("reml", [1.0])
def test_the_clustered_deviance_and_its_derivatives_equal_the_dense_ones(model, reml):
    design = model.design
    objective = _Objective(design.lambda_index)
    with jaxlmm.float64():
        theta = jnp.asarray([0.8, 0.45, 0.6])
        values = []
        for d in (design, dense_twin(design)):
            @jax.jit
            def derivatives(d, t):
                f = lambda u: objective(u, (design_stats(d)[1], reml, None))  # noqa: E731
                return f(t), jax.grad(f)(t), jax.hessian(f)(t)

            values.append([np.asarray(v) for v in derivatives(d, theta)])
            assert not batched_lapack_calls(derivatives.lower(d, theta).as_text())  # the clusters: one at a time
    for got, want, label in zip(values[0], values[1], ("deviance", "gradient", "hessian")):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-8, err_msg=label)


def test_a_clustered_fit_equals_the_dense_fit(model):
    r = model.fit()  # clustered
    with jaxlmm.float64():
        b = jax.tree.map(np.asarray, fit_arrays(dense_twin(model.design)))
    assert r.converged and r.llf == pytest.approx(float(b.llf), abs=1e-8)
    a = r._arrays
    for field in ("theta", "beta", "sigma2", "vcov_beta", "ranef", "ranef_other", "ranef_cov", "ranef_other_cov"):
        want = np.asarray(getattr(b, field))  # two optimisers (exact Newton, BFGS) stopping within tolerance
        np.testing.assert_allclose(getattr(a, field), want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=field)
    assert list(r.random_effects) == ["student", "teacher", "school"]


def test_fit_many_on_a_clustered_design(model):
    """vmapped fits through the clustered split: the model's own response gives its single fit, and
    2y + 1 the same θ with the REML log-likelihood lower by (n − p) log 2."""
    y = np.asarray(model.design.y)  # no offset: the response itself
    rl = model.fit_many(np.stack([y, 2 * y + 1], axis=1), progress=False)
    single = model.fit()
    assert bool(rl.converged.all())
    assert float(rl.llf.iloc[0]) == pytest.approx(single.llf, abs=1e-7)
    np.testing.assert_allclose(rl.theta[1], rl.theta[0], rtol=1e-5, atol=1e-7)
    n, p = model.nobs, len(model.exog_names)
    assert float(rl.llf.iloc[1]) == pytest.approx(float(rl.llf.iloc[0]) - (n - p) * np.log(2.0), abs=1e-6)


def test_the_separator_covers_every_link_between_clusters_and_packing_respects_capacity():
    from jaxlmm._clusters import _pack, _vertex_cover

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 2000, 5000), rng.integers(0, 2000, 5000)
    m = Meetings.from_pairs(a, b, 2000)
    cover = _vertex_cover(m.rows, m.cols, m.n, m.n)
    chosen = np.zeros(m.n, bool)
    chosen[cover] = True
    assert np.all(chosen[m.rows] | chosen[m.cols])
    assert _vertex_cover(m.rows, m.cols, m.n, 10) is None  # more than the limit: refused
    sizes = rng.integers(1, 30, 3000)
    bins = _pack(sizes, 40)
    assert np.all(np.bincount(bins, weights=sizes) <= 40)
    assert bins.max() + 1 <= 2 * np.ceil(sizes.sum() / 40) + 1  # best fit wastes less than half


def test_a_clustered_block_with_random_slopes_equals_the_dense_one():
    """Two effects per teacher (width 2): the deviance and its gradient equal the dense factorisation's."""
    df = school_data()
    df["x"] = np.random.default_rng(1).normal(size=len(df))
    m = jaxlmm.MixedLM.from_formula("y ~ grade + x + (1 | student) + (1 + x | teacher) + (1 | school)", df)
    assert m.design.crossed.layout.width == 2 and m.design.crossed.clusters is not None
    objective = _Objective(m.design.lambda_index)
    with jaxlmm.float64():
        theta = jnp.asarray(np.linspace(0.3, 0.9, m.design.n_theta))

        @jax.jit
        def value_and_grad(d, t):
            return jax.value_and_grad(lambda u: objective(u, (design_stats(d)[1], 1.0, None)))(t)

        got, want = (value_and_grad(d, theta) for d in (m.design, dense_twin(m.design)))
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(got[1]), np.asarray(want[1]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("schools, classes", [(300, 3), (150, 6), (80, 3)])
def test_a_nested_design_splits_with_an_empty_separator_and_fits_as_the_dense_one(schools, classes):
    """Classes within schools, `(1 | school/klass)`: the schools never meet, so the block splits
    into clusters with no separator (from 64 schools; at 80 schools L₂₁ would be held dense, and
    the split is preferred); the fit equals the dense factorisation's, modes included."""
    rng = np.random.default_rng(8)
    school = np.repeat(np.arange(schools), 4 * classes)
    klass = np.tile(np.repeat(np.arange(classes), 4), schools)
    df = pd.DataFrame({"school": school.astype(str), "klass": klass.astype(str), "x": rng.normal(size=school.size)})
    df["y"] = 0.5 * df.x + rng.normal(size=schools)[school] \
        + 0.6 * rng.normal(size=schools * classes)[school * classes + klass] + rng.normal(size=school.size)
    m = jaxlmm.MixedLM.from_formula("y ~ x + (1 | school/klass)", df)
    slots = m.design.crossed.clusters
    assert slots is not None and slots.separator.shape[0] == 0
    r = m.fit()
    with jaxlmm.float64():
        b = jax.tree.map(np.asarray, fit_arrays(dense_twin(m.design)))
    assert r.converged and r.llf == pytest.approx(float(b.llf), abs=1e-8)
    for field in ("theta", "beta", "ranef", "ranef_other", "ranef_cov", "ranef_other_cov"):
        want = np.asarray(getattr(b, field))
        np.testing.assert_allclose(getattr(r._arrays, field), want, rtol=1e-5, atol=1e-6 * np.abs(want).max(),
                                   err_msg=field)
    assert list(r.vcomp.index) == ["Var(school:klass)", "Var(school)", "Residual"]


def test_the_clustered_solve_alone_equals_the_solve_with_the_selected_inverse(model):
    """``inverse=False`` (a fit's conditional modes, the covariances deferred) solves the separator's
    Schur complement instead of inverting it: the same M₂₂⁻¹R as with the inverse, and as dense."""
    lambda_index = jnp.asarray(model.design.lambda_index_array)

    @jax.jit
    def solves(design, dense_design, theta):
        stats = design_stats(design)[1]
        blocks = _blocks(relative_factor(theta, lambda_index), stats)
        alone, none = clustered_solve_and_selected_inverse(blocks.M22, blocks.B2, stats.clusters, inverse=False)
        with_inverse, _ = clustered_solve_and_selected_inverse(blocks.M22, blocks.B2, stats.clusters)
        dense = _blocks(relative_factor(theta, lambda_index), design_stats(dense_design)[1])
        return alone, none, with_inverse, dense.M22, dense.B2

    assert model.design.crossed.clusters.separator.shape[0] > 0  # the block-arrow case, with a separator
    with jaxlmm.float64():
        alone, none, with_inverse, M22, B2 = solves(model.design, dense_twin(model.design), jnp.asarray([0.8, 0.45, 0.6]))
    assert none is None
    np.testing.assert_allclose(alone, with_inverse, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(alone, np.linalg.solve(np.asarray(M22), np.asarray(B2)), rtol=1e-9, atol=1e-11)
