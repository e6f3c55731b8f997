"""A sparse dense block: the further terms' levels split into clusters and a separator.

In a crossed model the further terms' block M₂₂ (`_crossed`) is often sparse. In students ×
teachers × schools (mlmRev's STAR) a teacher meets the teachers of the same school, through the
students they share, and a few others through students who changed school. Ordered cluster by
cluster, with a separator S last,

    M₂₂ = [ A   Bᵀ ]     A = blockdiag(A_k): no entry of M₂₂ joins two clusters
          [ B   C  ]

so log|M₂₂| = Σ log|A_k| + log|C − B A⁻¹ Bᵀ|, and rᵀM₂₂⁻¹r = Σ |L_k⁻¹ r_k|² + r̃ᵀ(C − BA⁻¹Bᵀ)⁻¹r̃ with
r̃ = r_S − B A⁻¹ r_A: one Cholesky factor per cluster (batched, padded to one size) and a dense one
of the separator's Schur complement. A cluster couples to a few separator levels only, so the Schur
update is a scatter-add of small blocks.

`plan_clusters` finds the split once, in NumPy, from how often two levels meet (shared rows or
shared levels of the leading factor): levels joined by at least τ meetings form clusters, and a
greedy vertex cover of the weaker links between clusters forms the separator. Components are
packed into clusters of one padded size. It returns None when the split would not be at least
`MIN_SAVING` times cheaper than the dense factorisation (InstEval: a student meets lecturers of
every department, and M₂₂ is dense).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from . import _linalg

THRESHOLDS = (1, 2, 3, 5, 8, 13)  # τ tried: the number of meetings that makes a strong link
MIN_SAVING = 8.0  # the split is used when its flop count is at most 1/8 of the dense Cholesky's


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """Columns of M₂₂ (D × D) by role: ``member`` (K, s) each cluster's columns, padded with D (a
    spare zero column); ``separator`` (S,); ``adjacent`` (K, r) the positions in ``separator`` of
    the separator columns each cluster meets, padded with S (a spare position)."""

    member: np.ndarray
    separator: np.ndarray
    adjacent: np.ndarray

    def flops(self) -> float:
        (K, s), S, r = self.member.shape, self.separator.shape[0], self.adjacent.shape[1]
        return K * (s**3 / 3 + s * s * r + s * r * r) + S**3 / 3


def _vertex_cover(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A small vertex cover of the edges (rows[i], cols[i]), greedily: the vertex on most uncovered edges first."""
    chosen: list[int] = []
    while rows.size:
        counts = np.bincount(np.concatenate([rows, cols]))
        v = int(np.argmax(counts))
        chosen.append(v)
        keep = (rows != v) & (cols != v)
        rows, cols = rows[keep], cols[keep]
    return np.asarray(chosen, np.int64)


def _pack(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Bins for items of ``sizes`` (first fit, largest first), each holding at most ``capacity``."""
    order = np.argsort(-sizes, kind="stable")
    loads: list[int] = []
    bins = np.empty(len(sizes), np.int64)
    for i in order:
        for b, load in enumerate(loads):
            if load + sizes[i] <= capacity:
                loads[b] += int(sizes[i])
                bins[i] = b
                break
        else:
            loads.append(int(sizes[i]))
            bins[i] = len(loads) - 1
    return bins


def _plan_at(meetings: sp.csr_matrix, tau: int, width: int) -> ClusterPlan | None:
    n_blocks = meetings.shape[0]
    strong = meetings.multiply(meetings >= tau).tocsr()
    _, label = connected_components(strong, directed=False)
    coo = meetings.tocoo()
    across = label[coo.row] != label[coo.col]
    separator = _vertex_cover(coo.row[across], coo.col[across])
    inside = np.ones(n_blocks, bool)
    inside[separator] = False
    if not inside.any():
        return None
    _, component = np.unique(label[inside], return_inverse=True)
    sizes = np.bincount(component)
    cluster_of_component = _pack(sizes, int(sizes.max()))
    blocks_inside = np.flatnonzero(inside)
    cluster = cluster_of_component[component]
    K = int(cluster.max()) + 1
    order = np.argsort(cluster, kind="stable")
    counts = np.bincount(cluster, minlength=K)
    s = int(counts.max()) * width
    D = n_blocks * width
    member = np.full((K, s), D, np.int64)
    position = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
    for j in range(width):
        member[cluster[order], position * width + j] = blocks_inside[order] * width + j
    sep_cols = (separator[:, None] * width + np.arange(width)[None, :]).ravel()
    # the separator columns each cluster meets
    where_sep = -np.ones(n_blocks, np.int64)
    where_sep[separator] = np.arange(separator.size)
    block_cluster = -np.ones(n_blocks, np.int64)
    block_cluster[blocks_inside] = cluster
    links = (block_cluster[coo.row] >= 0) & (where_sep[coo.col] >= 0)
    pairs = np.unique(np.stack([block_cluster[coo.row[links]], where_sep[coo.col[links]]], 1), axis=0)
    per_cluster = np.bincount(pairs[:, 0], minlength=K) if pairs.size else np.zeros(K, np.int64)
    r = int(per_cluster.max()) * width if pairs.size else 0
    S = sep_cols.size
    adjacent = np.full((K, r), S, np.int64)
    if pairs.size:
        start = np.cumsum(per_cluster) - per_cluster
        slot = np.arange(len(pairs)) - start[pairs[:, 0]]
        for j in range(width):
            adjacent[pairs[:, 0], slot * width + j] = pairs[:, 1] * width + j
    return ClusterPlan(member, sep_cols, adjacent)


def plan_clusters(meetings: sp.spmatrix, width: int) -> ClusterPlan | None:
    """The cheapest split of M₂₂ over the thresholds `THRESHOLDS`, from ``meetings`` (B × B, how
    often two levels of the further terms meet; levels have ``width`` columns each), or None when
    none is `MIN_SAVING` times cheaper than a dense factorisation."""
    meetings = sp.csr_matrix(meetings, dtype=np.float64)
    meetings.setdiag(0)
    meetings.eliminate_zeros()
    meetings = (meetings + meetings.T).tocsr()
    D = meetings.shape[0] * width
    best = None
    for tau in THRESHOLDS:
        plan = _plan_at(meetings, tau, width)
        if plan is not None and (best is None or plan.flops() < best.flops()):
            best = plan
    if best is None or best.flops() * MIN_SAVING > D**3 / 3:
        return None
    return best


def clustered_logdet_and_quadratic(M: jax.Array, R: jax.Array, member: jax.Array, separator: jax.Array,
                                   adjacent: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(log|M|, RᵀM⁻¹R) for the symmetric positive-definite ``M`` (D, D) whose entries outside the
    plan's clusters and separator (`ClusterPlan`) are zero; ``R`` (D, c)."""
    D, S = M.shape[0], separator.shape[0]
    M = jax.lax.optimization_barrier(M)
    Mp = jnp.pad(M, ((0, 1), (0, 1)))
    Rp = jnp.pad(R, ((0, 1), (0, 0)))
    padded = member == D
    A = Mp[member[:, :, None], member[:, None, :]] + jax.vmap(jnp.diag)(padded.astype(M.dtype))
    L = _linalg.cholesky(A)
    W_r = _linalg.solve_lower(L, Rp[member])
    logdet = jnp.sum(_linalg.logdet_from_cholesky(L))
    quad = jnp.einsum("ksc,ksd->cd", W_r, W_r)
    if S == 0:
        return logdet, quad
    sep_cols = jnp.concatenate([separator, jnp.asarray([D], separator.dtype)])[adjacent]  # (K, r)
    W_b = _linalg.solve_lower(L, Mp[member[:, :, None], sep_cols[:, None, :]])
    update = jnp.zeros((S + 1, S + 1), M.dtype).at[adjacent[:, :, None], adjacent[:, None, :]].add(
        jnp.einsum("ksa,ksb->kab", W_b, W_b))
    shift = jnp.zeros((S + 1, R.shape[1]), M.dtype).at[adjacent].add(jnp.einsum("ksa,ksc->kac", W_b, W_r))
    schur = M[separator[:, None], separator[None, :]] - update[:S, :S]
    logdet_s, quad_s = _linalg.logdet_and_quadratic(schur, R[separator] - shift[:S])
    return logdet + logdet_s, quad + quad_s
