"""The plain-XLA linear algebra (`jaxlmm._linalg`) against NumPy/LAPACK, its derivatives against
JAX's own LAPACK-backed rules, and the property that no LAPACK custom call is lowered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm import _linalg, float64, jit

from tests.hlo_checks import batched_lapack_calls, lapack_calls

SIZES = [1, 2, 3, 4, 7, 23]
REPO_ROOT = Path(__file__).resolve().parent.parent


def _spd(rng, k, batch=()):
    A = rng.normal(size=batch + (k, k + 3))
    return A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(k)


def _lowered(fun, *args) -> str:
    return jax.jit(fun).lower(*args).as_text()


@pytest.mark.parametrize("k", SIZES)
def test_cholesky_and_solves_match_numpy(k):
    rng = np.random.default_rng(k)
    M = _spd(rng, k, (3,))
    B = rng.normal(size=(3, k, 2))
    with float64():
        L = np.asarray(_linalg.cholesky(jnp.asarray(M)))
        np.testing.assert_allclose(L, np.linalg.cholesky(M), rtol=1e-10, atol=1e-12)
        X = np.asarray(_linalg.solve_lower(jnp.asarray(L), jnp.asarray(B)))
        np.testing.assert_allclose(L @ X, B, atol=1e-9)
        Y = np.asarray(_linalg.solve_upper_transposed(jnp.asarray(L), jnp.asarray(B)))
        np.testing.assert_allclose(np.swapaxes(L, -1, -2) @ Y, B, atol=1e-9)
        v = np.asarray(_linalg.cho_solve(jnp.asarray(L), jnp.asarray(B[..., 0])))
        np.testing.assert_allclose(np.einsum("bij,bj->bi", M, v), B[..., 0], atol=1e-8)
        logdet = float(_linalg.logdet_from_cholesky(jnp.asarray(L[0])))
        assert logdet == pytest.approx(np.linalg.slogdet(M[0])[1], rel=1e-12, abs=1e-12)


def test_cholesky_of_indefinite_matrix_is_nan():
    with float64():
        L = _linalg.cholesky(jnp.array([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]]))
    assert np.isnan(np.asarray(L)).any()


@pytest.mark.parametrize("k", [2, 5])
def test_cholesky_derivatives_match_jax(k):
    """Forward, reverse and forward-over-reverse derivatives equal those of JAX's LAPACK Cholesky."""
    rng = np.random.default_rng(10 + k)
    M, D, W = _spd(rng, k) + k * np.eye(k), rng.normal(size=(k, k)), rng.normal(size=(k, k))
    D = 0.1 * (D + D.T)

    def ours(t):
        return jnp.sum(W * _linalg.cholesky(M + t * D)) + _linalg.logdet_from_cholesky(_linalg.cholesky(M + t * D))

    def reference(t):
        L = jnp.linalg.cholesky(M + t * D)
        return jnp.sum(W * L) + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))

    with float64():
        M, D, W = jnp.asarray(M), jnp.asarray(D), jnp.asarray(W)
        t = jnp.asarray(0.3)
        assert float(jit(jax.grad(ours))(t)) == pytest.approx(float(jit(jax.grad(reference))(t)), rel=1e-9)
        assert float(jit(jax.jacfwd(jax.grad(ours)))(t)) == pytest.approx(float(jit(jax.jacfwd(jax.grad(reference)))(t)), rel=1e-8)
        ours_jvp = jax.jvp(lambda m: _linalg.cholesky(m), (M,), (D,))[1]
        ref_jvp = jax.jvp(jnp.linalg.cholesky, (M,), (D,))[1]
        np.testing.assert_allclose(np.asarray(ours_jvp), np.asarray(ref_jvp), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("k", [2, 5, 40])
def test_cholesky_and_inverse_and_their_derivatives_match_jax(k):
    """`cholesky_and_inverse` (batched, as the clusters call it): L and L⁻¹, and their forward, reverse and
    forward-over-reverse derivatives, equal those of JAX's LAPACK Cholesky and inverse."""
    rng = np.random.default_rng(30 + k)
    M, D = _spd(rng, k, (3,)) + k * np.eye(k), rng.normal(size=(3, k, k))
    D = 0.1 * (D + np.swapaxes(D, -1, -2))
    W, V = rng.normal(size=(3, k, k)), rng.normal(size=(3, k, k))

    def ours(t):
        L, L_inv = _linalg.cholesky_and_inverse(M + t * D)
        return jnp.sum(W * L) + jnp.sum(V * L_inv)

    def reference(t):
        L = jnp.linalg.cholesky(M + t * D)
        return jnp.sum(W * L) + jnp.sum(V * jnp.linalg.inv(L))

    with float64():
        M, D, W, V = map(jnp.asarray, (M, D, W, V))
        L, L_inv = _linalg.cholesky_and_inverse(M)
        np.testing.assert_allclose(np.asarray(L), np.linalg.cholesky(np.asarray(M)), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(np.asarray(L_inv @ L), np.broadcast_to(np.eye(k), (3, k, k)), atol=1e-10)
        t = jnp.asarray(0.3)
        assert float(jit(jax.grad(ours))(t)) == pytest.approx(float(jit(jax.grad(reference))(t)), rel=1e-8)
        assert float(jit(jax.jacfwd(jax.grad(ours)))(t)) == pytest.approx(float(jit(jax.jacfwd(jax.grad(reference)))(t)), rel=1e-7)
        got = jax.jvp(_linalg.cholesky_and_inverse, (M,), (D,))[1]
        want = jax.jvp(lambda m: (jnp.linalg.cholesky(m), jnp.linalg.inv(jnp.linalg.cholesky(m))), (M,), (D,))[1]
        for g, w in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("k", [2, 5])
def test_cholesky_and_solve_lower_equals_cholesky_then_solve(k):
    rng = np.random.default_rng(50 + k)
    M, D, B = _spd(rng, k, (4,)) + np.eye(k), rng.normal(size=(4, k, k)), rng.normal(size=(4, k, 3))
    D = 0.1 * (D + np.swapaxes(D, -1, -2))

    def ours(t):
        L, X = _linalg.cholesky_and_solve_lower(M + t * D, B * (1 + t))
        return jnp.sum(X * X) + jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))

    def reference(t):
        L = _linalg.cholesky(M + t * D)
        X = _linalg.solve_lower(L, B * (1 + t))
        return jnp.sum(X * X) + jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))

    with float64():
        M, D, B = map(jnp.asarray, (M, D, B))
        t = jnp.asarray(0.2)
        assert float(jit(ours)(t)) == pytest.approx(float(jit(reference)(t)), rel=1e-12)
        assert float(jit(jax.grad(ours))(t)) == pytest.approx(float(jit(jax.grad(reference))(t)), rel=1e-9)
        assert float(jit(jax.jacfwd(jax.grad(ours)))(t)) == pytest.approx(float(jit(jax.jacfwd(jax.grad(reference)))(t)), rel=1e-8)


@pytest.mark.parametrize("k", [1, 4])
def test_solve_with_pivoting_and_its_gradient(k):
    rng = np.random.default_rng(20 + k)
    A = rng.normal(size=(k, k))
    if k > 1:
        A[0, 0] = 0.0  # needs a row exchange
    b = rng.normal(size=k)
    with float64():
        x = np.asarray(_linalg.solve(jnp.asarray(A), jnp.asarray(b)))
        np.testing.assert_allclose(A @ x, b, atol=1e-10)
        np.testing.assert_allclose(np.asarray(_linalg.inverse(jnp.asarray(A))) @ A, np.eye(k), atol=1e-9)
        g_ours = jit(jax.grad(lambda a, c: jnp.sum(_linalg.solve(a, c) ** 2), argnums=(0, 1)))(jnp.asarray(A), jnp.asarray(b))
        g_ref = jit(jax.grad(lambda a, c: jnp.sum(jnp.linalg.solve(a, c) ** 2), argnums=(0, 1)))(jnp.asarray(A), jnp.asarray(b))
    for a, r in zip(g_ours, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_eigh_one_at_a_time_matches_numpy_also_under_vmap(k):
    rng = np.random.default_rng(30 + k)
    A = rng.normal(size=(4, k, k))
    A = A + np.swapaxes(A, -1, -2)
    with float64():
        values, vectors = (np.asarray(a) for a in jax.vmap(_linalg.eigh_one_at_a_time)(jnp.asarray(A)))
        leading = np.asarray(_linalg.eigh_one_at_a_time(jnp.asarray(A))[0])  # a leading axis of our own
    np.testing.assert_allclose(values, np.linalg.eigvalsh(A), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(leading, values, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(vectors @ (values[..., None] * np.swapaxes(vectors, -1, -2)), A, atol=1e-12)


def test_orthonormalize_keeps_digits_on_an_ill_conditioned_design():
    """Uncentred polynomial columns (condition number ~1e8 before scaling)."""
    t = np.linspace(150.0, 260.0, 50)
    X = np.column_stack([np.ones_like(t), t, t**2, t**3])
    with float64():
        R = np.asarray(_linalg.orthonormalize(jnp.asarray(X)))
    assert np.allclose(R, np.triu(R))
    Q = np.linalg.solve(R.T, X.T).T
    np.testing.assert_allclose(Q.T @ Q, np.eye(4), atol=1e-10)
    np.testing.assert_allclose(Q @ R, X, rtol=1e-12)


def test_vmap_and_jit_change_nothing():
    rng = np.random.default_rng(5)
    M = _spd(rng, 6, (4,))
    with float64():
        batched = np.asarray(jax.jit(jax.vmap(_linalg.cholesky))(jnp.asarray(M)))
        looped = np.stack([np.asarray(_linalg.cholesky(jnp.asarray(m))) for m in M])
        np.testing.assert_allclose(batched, looped, rtol=1e-14, atol=1e-15)


def test_no_batched_lapack_call_is_lowered():
    rng = np.random.default_rng(6)
    with float64():
        M = jnp.asarray(_spd(rng, 9, (8,)))
        texts = [
            _lowered(jax.vmap(_linalg.cholesky), M),
            _lowered(_linalg.cholesky, M),  # a leading axis of our own
            _lowered(jax.vmap(lambda m: _linalg.cho_solve(_linalg.cholesky(m), m[:, :2])), M),
            _lowered(jax.vmap(lambda m: _linalg.solve(m, m[:, 0])), M),
            _lowered(jax.vmap(_linalg.eigh_one_at_a_time), M),
            _lowered(jax.vmap(_linalg.orthonormalize), M),
            _lowered(jax.vmap(jax.hessian(lambda m: _linalg.logdet_from_cholesky(_linalg.cholesky(m)))), M),
            _lowered(jax.vmap(jax.grad(lambda m: jnp.sum(_linalg.solve_lower(_linalg.cholesky(m), m)))), M),
        ]
        # The check can fail: JAX's own routines lower to batched LAPACK calls here.
        assert batched_lapack_calls(_lowered(jax.vmap(jnp.linalg.cholesky), M))
    assert any(lapack_calls(t) for t in texts)  # large matrices do use LAPACK, one matrix a call
    for text in texts:
        assert not batched_lapack_calls(text)


def test_spd_solve_matches_numpy_with_derivatives_under_vmap():
    """`spd_solve` (Cholesky and two triangular solves, no inverse): values against NumPy, its JVP
    and gradient against JAX's general solve, vmap equal to a loop, and one LAPACK call per matrix."""
    rng = np.random.default_rng(7)
    M, B = _spd(rng, 12, (3,)), rng.normal(size=(3, 12, 2))
    dM, dB = _spd(rng, 12, (3,)), rng.normal(size=(3, 12, 2))
    with float64():
        got = np.stack([np.asarray(_linalg.spd_solve(jnp.asarray(m), jnp.asarray(b))) for m, b in zip(M, B)])
        np.testing.assert_allclose(got, np.linalg.solve(M, B), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(_linalg.spd_solve))(M, B)), got, rtol=1e-14)
        for m, b, dm, db in zip(M, B, dM, dB):
            _, tangent = jax.jvp(_linalg.spd_solve, (m, b), (dm, db))
            _, want = jax.jvp(jnp.linalg.solve, (m, b), (dm, db))
            np.testing.assert_allclose(tangent, want, rtol=1e-10)
        loss = lambda solve: lambda m, b: jnp.sum(jnp.sin(solve(m, b)))  # noqa: E731
        grads = jax.grad(loss(_linalg.spd_solve), argnums=(0, 1))(M[0], B[0])
        wants = jax.grad(loss(jnp.linalg.solve), argnums=(0, 1))(M[0], B[0])
        for g, w in zip(grads, wants):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
        text = _lowered(jax.vmap(jax.grad(lambda m, b: jnp.sum(_linalg.spd_solve(m, b)))), M, B)
    assert lapack_calls(text) and not batched_lapack_calls(text)


_ACCELERATOR_CHECK = r"""
import jax, jax.numpy as jnp, numpy as np
from jaxlmm import _linalg, float64
from tests.hlo_checks import batched_lapack_calls


def each(m, b):
    L = _linalg.cholesky(m)
    values, _ = _linalg.eigh_one_at_a_time(m)
    inverse = _linalg.cholesky_and_inverse(m)[1]
    return L, _linalg.solve_lower(L, b), _linalg.spd_solve(m, b), values, inverse


rng = np.random.default_rng(11)
A = rng.normal(size=(5, 7, 10))
M, B = A @ np.swapaxes(A, -1, -2) + 0.1 * np.eye(7), rng.normal(size=(5, 7, 2))
if __import__("sys").argv[1] == "gpu":
    jax.default_backend = lambda: "gpu"  # _linalg reads the backend at trace time
with float64():
    program = jax.jit(jax.vmap(each))
    print(len(batched_lapack_calls(program.lower(M, B).as_text())))
    np.save(__import__("sys").argv[2], np.concatenate([np.ravel(a) for a in program(M, B)]))
"""


def test_accelerator_path_batches_the_solver_calls_and_agrees(tmp_path):
    """On an accelerator (`_linalg._map_matrices` sees a backend other than the CPU) vmapped axes go to
    one batched solver call instead of a loop of single-matrix calls; the numbers are the same. The
    backend is faked, in a child process each (JAX caches traces, so one process cannot trace both
    ways); the batched calls run on this CPU, a batch small enough to run inline."""
    out = {}
    for backend in ("cpu", "gpu"):
        child = subprocess.run([sys.executable, "-c", _ACCELERATOR_CHECK, backend, str(tmp_path / backend)],
                               capture_output=True, text=True, cwd=str(REPO_ROOT), timeout=120)
        assert child.returncode == 0, child.stderr[-2000:]
        out[backend] = (int(child.stdout.split()[-1]), np.load(tmp_path / f"{backend}.npy"))
    assert out["cpu"][0] == 0 and out["gpu"][0] > 0
    np.testing.assert_allclose(out["gpu"][1], out["cpu"][1], rtol=1e-11, atol=1e-12)
