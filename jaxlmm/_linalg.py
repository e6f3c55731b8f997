"""Dense linear algebra in plain XLA operations: no LAPACK custom calls in any compiled program.

Why: on CPU, jaxlib (0.10.2) runs a *batched* LAPACK call (``lapack_dtrsm_ffi``, ``dpotrf``,
``dgeqrf``, ``dsyevd``, ``dgetrf``: anything `vmap` or a leading batch axis gives a batch dimension)
through ``jax::ParallelBatchMap``, which splits the batch into tasks on the same XLA intra-op
thread pool that runs the calling program, then blocks until they finish. When every pool thread
is inside such a call at once (two threads on a 2-core machine: two concurrent programs, or a
parallel section of one), no thread is left to run the tasks, and the process hangs for good.
Written here in elementwise operations, matrix products, `while_loop`s and static slices, the
kernels never leave XLA's own code, so that wait cannot occur (`docs/deadlock.md`).

* `cholesky` and the triangular solves are unrolled over the matrix size up to ``UNROLL_MAX``
  (measured on 2 CPU cores: 1.6–1.9× faster warm fits than per-matrix LAPACK calls, for about
  0.3 s more compilation); larger matrices are split in two halves recursively (a blocked
  algorithm whose off-diagonal work is matrix products), so a k × k factor costs O(k) small
  kernels, not O(k³) scalar operations. Everything is differentiable by plain JAX rules (forward,
  reverse, and forward-over-reverse Hessians) and vmappable.
* `solve` is Gauss–Jordan elimination with partial pivoting (small general systems: Hessians,
  information matrices).
* `symmetric_eigh` is the cyclic Jacobi method (the optimiser's eigenvalue-modified Newton step);
  it is never differentiated.
* `orthonormalize` is shifted Cholesky-QR, three passes (stable up to condition numbers near
  1/eps, Fukaya et al. 2020), for the design's preconditioner.

A non-positive-definite input to `cholesky` gives NaN (as `jnp.linalg.cholesky` does).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

UNROLL_MAX = 3
JACOBI_MAX_SWEEPS = 40


def _mT(A: jax.Array) -> jax.Array:
    return jnp.swapaxes(A, -1, -2)


def _split(k: int) -> int:
    """Where a k × k matrix is split: the leading block a multiple of ``UNROLL_MAX`` near k/2."""
    h = max(UNROLL_MAX, (k // 2) // UNROLL_MAX * UNROLL_MAX)
    return min(h, k - 1)


def _blocks(M: jax.Array, h: int):
    return M[..., :h, :h], M[..., h:, :h], M[..., h:, h:]


def _cholesky_unrolled(M: jax.Array) -> jax.Array:
    k = M.shape[-1]
    L: list[list] = [[None] * k for _ in range(k)]
    for j in range(k):
        s = M[..., j, j]
        for t in range(j):
            s = s - L[j][t] * L[j][t]
        d = jnp.sqrt(s)
        L[j][j] = d
        for i in range(j + 1, k):
            s = M[..., i, j]
            for t in range(j):
                s = s - L[i][t] * L[j][t]
            L[i][j] = s / d
    zero = jnp.zeros_like(M[..., 0, 0])
    rows = [jnp.stack([L[i][j] if j <= i else zero for j in range(k)], axis=-1) for i in range(k)]
    return jnp.stack(rows, axis=-2)


def cholesky(M: jax.Array) -> jax.Array:
    """Lower Cholesky factor of symmetric positive-definite ``M`` (..., k, k).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxlmm._linalg import cholesky
        >>> cholesky(jnp.array([[4.0, 2.0], [2.0, 5.0]])).tolist()
        [[2.0, 0.0], [1.0, 2.0]]
    """
    k = M.shape[-1]
    if k <= UNROLL_MAX:
        return _cholesky_unrolled(M)
    h = _split(k)
    A, B, C = _blocks(M, h)
    L11 = cholesky(A)
    L21 = _mT(solve_lower(L11, _mT(B)))  # B L11⁻ᵀ
    L22 = cholesky(C - L21 @ _mT(L21))
    zero = jnp.zeros(M.shape[:-2] + (h, k - h), M.dtype)
    top = jnp.concatenate([L11, zero], axis=-1)
    bottom = jnp.concatenate([L21, L22], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def _solve_lower_unrolled(L: jax.Array, B: jax.Array) -> jax.Array:
    k = L.shape[-1]
    xs = []
    for i in range(k):
        s = B[..., i, :]
        for t in range(i):
            s = s - L[..., i, t, None] * xs[t]
        xs.append(s / L[..., i, i, None])
    return jnp.stack(xs, axis=-2)


def _solve_lower_matrix(L: jax.Array, B: jax.Array) -> jax.Array:
    k = L.shape[-1]
    if k <= UNROLL_MAX:
        return _solve_lower_unrolled(L, B)
    h = _split(k)
    L11, L21, L22 = _blocks(L, h)
    X1 = _solve_lower_matrix(L11, B[..., :h, :])
    X2 = _solve_lower_matrix(L22, B[..., h:, :] - L21 @ X1)
    return jnp.concatenate([X1, X2], axis=-2)


def _solve_upper_transposed_unrolled(L: jax.Array, B: jax.Array) -> jax.Array:
    k = L.shape[-1]
    xs: list = [None] * k
    for i in reversed(range(k)):
        s = B[..., i, :]
        for t in range(i + 1, k):
            s = s - L[..., t, i, None] * xs[t]
        xs[i] = s / L[..., i, i, None]
    return jnp.stack(xs, axis=-2)


def _solve_upper_transposed_matrix(L: jax.Array, B: jax.Array) -> jax.Array:
    k = L.shape[-1]
    if k <= UNROLL_MAX:
        return _solve_upper_transposed_unrolled(L, B)
    h = _split(k)
    L11, L21, L22 = _blocks(L, h)
    X2 = _solve_upper_transposed_matrix(L22, B[..., h:, :])
    X1 = _solve_upper_transposed_matrix(L11, B[..., :h, :] - _mT(L21) @ X2)
    return jnp.concatenate([X1, X2], axis=-2)


def solve_lower(L: jax.Array, B: jax.Array) -> jax.Array:
    """Solve ``L X = B`` for lower-triangular ``L`` (..., k, k); ``B`` is (..., k) or (..., k, r)."""
    vector = B.ndim == L.ndim - 1
    X = _solve_lower_matrix(L, B[..., None] if vector else B)
    return X[..., 0] if vector else X


def solve_upper_transposed(L: jax.Array, B: jax.Array) -> jax.Array:
    """Solve ``Lᵀ X = B`` for lower-triangular ``L`` (..., k, k); ``B`` is (..., k) or (..., k, r)."""
    vector = B.ndim == L.ndim - 1
    X = _solve_upper_transposed_matrix(L, B[..., None] if vector else B)
    return X[..., 0] if vector else X


def cho_solve(L: jax.Array, B: jax.Array) -> jax.Array:
    """Solve ``(L Lᵀ) X = B`` given the lower Cholesky factor ``L``."""
    return solve_upper_transposed(L, solve_lower(L, B))


def logdet_from_cholesky(L: jax.Array) -> jax.Array:
    """log|L Lᵀ| summed over any batch axes."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))


def solve(A: jax.Array, B: jax.Array) -> jax.Array:
    """Solve ``A X = B`` for a small square ``A`` (k, k) by Gauss–Jordan elimination with partial
    pivoting; ``B`` is (k,) or (k, r). Singular ``A`` gives inf/NaN.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxlmm._linalg import solve
        >>> solve(jnp.array([[0.0, 2.0], [1.0, 1.0]]), jnp.array([4.0, 3.0])).tolist()
        [1.0, 2.0]
    """
    vector = B.ndim == 1
    X = B[:, None] if vector else B
    k = A.shape[-1]
    rows = jnp.arange(k)
    # The row operations are decided by A alone and applied to A and B alike, so the map B -> X
    # stays visibly linear to JAX (reverse mode transposes it).
    for j in range(k):
        magnitude = jnp.where(rows >= j, jnp.abs(A[:, j]), -1.0)
        pivot = jnp.argmax(magnitude)
        at_pivot, at_j = (rows == pivot)[:, None], (rows == j)[:, None]
        a_j, a_p, x_j, x_p = A[j], A[pivot], X[j], X[pivot]
        A = jnp.where(at_pivot, a_j[None, :], A)
        X = jnp.where(at_pivot, x_j[None, :], X)
        a_row, x_row = a_p / a_p[j], x_p / a_p[j]
        factors = jnp.where(rows == j, 0.0, A[:, j])[:, None]
        A = jnp.where(at_j, a_row[None, :], A - factors * a_row[None, :])
        X = jnp.where(at_j, x_row[None, :], X - factors * x_row[None, :])
    return X[:, 0] if vector else X


def inverse(A: jax.Array) -> jax.Array:
    """Inverse of a small square matrix (see `solve`)."""
    return solve(A, jnp.eye(A.shape[-1], dtype=A.dtype))


def symmetric_eigh(A: jax.Array, max_sweeps: int = JACOBI_MAX_SWEEPS) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues and eigenvectors (columns) of a symmetric ``A`` (k, k), by cyclic Jacobi sweeps
    until the off-diagonal part is at rounding level. Not for differentiation.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxlmm._linalg import symmetric_eigh
        >>> evals, _ = symmetric_eigh(jnp.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> sorted(round(float(v), 5) for v in evals)
        [1.0, 3.0]
    """
    k = A.shape[-1]
    eye = jnp.eye(k, dtype=A.dtype)
    if k == 1:
        return A[:, 0], eye
    pairs = np.array([(p, q) for p in range(k) for q in range(p + 1, k)], dtype=np.int32)
    first, second = jnp.asarray(pairs[:, 0]), jnp.asarray(pairs[:, 1])
    index = jnp.arange(k)
    off_diagonal = 1.0 - eye
    eps = jnp.finfo(A.dtype).eps

    def rotate(i, carry):
        S, V = carry
        p, q = first[i], second[i]
        app, aqq, apq = S[p, p], S[q, q], S[p, q]
        rotating = apq != 0
        tau = (aqq - app) / (2.0 * jnp.where(rotating, apq, 1.0))
        t = jnp.where(tau >= 0, 1.0, -1.0) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
        t = jnp.where(rotating & jnp.isfinite(t), t, 0.0)
        c = 1.0 / jnp.sqrt(1.0 + t * t)
        s = t * c
        ep, eq = (index == p).astype(A.dtype), (index == q).astype(A.dtype)
        J = eye + (c - 1.0) * (jnp.outer(ep, ep) + jnp.outer(eq, eq)) + s * (jnp.outer(ep, eq) - jnp.outer(eq, ep))
        return J.T @ S @ J, V @ J

    def unfinished(carry):
        S, _, sweeps = carry
        off = jnp.sqrt(jnp.sum((S * off_diagonal) ** 2))
        return (sweeps < max_sweeps) & ~(off <= 4.0 * eps * jnp.sqrt(jnp.sum(S * S)))

    def sweep(carry):
        S, V, sweeps = carry
        S, V = jax.lax.fori_loop(0, pairs.shape[0], rotate, (S, V))
        return S, V, sweeps + 1

    S, V, _ = jax.lax.while_loop(unfinished, sweep, (A, eye, jnp.zeros((), jnp.int32)))
    return jnp.diagonal(S), V


def orthonormalize(X: jax.Array) -> jax.Array:
    """Upper-triangular ``R`` (p, p) with ``X R⁻¹`` orthonormal, for ``X`` (n, p) of full column rank:
    shifted Cholesky-QR in three passes after scaling the columns to unit length (no LAPACK QR).

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxlmm._linalg import orthonormalize
        >>> X = jnp.array([[1.0, 150.0], [1.0, 200.0], [1.0, 260.0]])
        >>> Q = X @ jnp.linalg.inv(orthonormalize(X))
        >>> bool(jnp.allclose(Q.T @ Q, jnp.eye(2), atol=1e-5))
        True
    """
    n, p = X.shape
    norms = jnp.sqrt(jnp.sum(X * X, axis=0))
    scale = jnp.where(norms > 0, norms, 1.0)
    Q = X / scale
    R = jnp.diag(scale)
    eps = jnp.finfo(X.dtype).eps
    shift = 11.0 * (n * p + p * (p + 1)) * eps * p  # ‖Q‖₂² ≤ p after scaling
    for k in range(3):
        G = Q.T @ Q
        if k == 0:
            G = G + shift * jnp.eye(p, dtype=X.dtype)
        Lk = cholesky(G)  # G = Lk Lkᵀ, so Q = (Q Lk⁻ᵀ) Lkᵀ
        Q = _mT(solve_lower(Lk, Q.T))
        R = Lk.T @ R
    return R
