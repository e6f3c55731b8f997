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

import bisect
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _linalg

THRESHOLDS = (1, 2, 3, 5, 8, 13)  # τ tried: the number of meetings that makes a strong link
MIN_SAVING = 8.0  # the split is used when its flop count is at most 1/8 of the dense Cholesky's
MAX_DENSITY = 0.1  # more links than this share of all pairs of levels: dense, no split tried


class Meetings(NamedTuple):
    """How often two levels of the further terms meet, as symmetric links ``rows``/``cols`` (both
    orientations, no self-links) with ``counts``, among ``n`` levels."""

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    n: int

    @classmethod
    def from_pairs(cls, first: np.ndarray, second: np.ndarray, n: int) -> "Meetings":
        """Count each unordered pair of levels (first[i], second[i]); pairs of a level with itself are dropped."""
        first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
        keep = first != second
        lo, hi = np.minimum(first[keep], second[keep]), np.maximum(first[keep], second[keep])
        keys, counts = np.unique(lo * n + hi, return_counts=True)
        a, b = keys // n, keys % n
        return cls(np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([counts, counts]), n)


def connected_components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The component (0, 1, ...) of each of ``n`` vertices joined by the edges (rows[i], cols[i]):
    labels hooked to the smallest neighbour's, then pointer jumping, until nothing changes.

    Examples:
        >>> connected_components(5, np.array([0, 3]), np.array([1, 4])).tolist()
        [0, 0, 1, 2, 2]
    """
    label = np.arange(n)
    while True:
        low = np.minimum(label[rows], label[cols])
        hooked = label.copy()
        np.minimum.at(hooked, label[rows], low)
        np.minimum.at(hooked, label[cols], low)
        while True:
            jumped = hooked[hooked]
            if np.array_equal(jumped, hooked):
                break
            hooked = jumped
        if np.array_equal(hooked, label):
            return np.unique(label, return_inverse=True)[1]
        label = hooked


@dataclasses.dataclass(frozen=True)
class ClusterPlan:
    """Levels (blocks) of M₂₂ by role: ``member`` (K, s) each cluster's blocks, padded with
    ``n_blocks`` (no block); ``separator`` (S,); ``adjacent`` (K, r) the positions in ``separator``
    of the separator blocks each cluster meets, padded with S. Each block has ``width`` columns."""

    member: np.ndarray
    separator: np.ndarray
    adjacent: np.ndarray
    n_blocks: int
    width: int

    def flops(self) -> float:
        (K, s), S, r = self.member.shape, self.separator.shape[0], self.adjacent.shape[1]
        s, S, r = s * self.width, S * self.width, r * self.width
        return K * (s**3 / 3 + s * s * r + s * r * r) + S**3 / 3

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """The (w × w) blocks of M₂₂ the split reads, as (row block, column block) per slot: the
        clusters' K·s², their K·s·r against the separator, the separator's S² (padding: block
        ``n_blocks``). Both orientations of a pair inside a cluster or inside the separator have a
        slot; a pair across cluster and separator only (cluster, separator)."""
        K, s = self.member.shape
        sep = np.append(self.separator, self.n_blocks)[self.adjacent]  # (K, r)
        S = len(self.separator)
        rows = [np.repeat(self.member, s, axis=1).ravel(), np.repeat(self.member, sep.shape[1], axis=1).ravel(),
                np.repeat(self.separator, S)]
        cols = [np.tile(self.member, (1, s)).ravel(), np.tile(sep, (1, s)).ravel(), np.tile(self.separator, S)]
        return np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64)


class _SlotTable:
    """Which slot holds block (a, b) of M₂₂ (`ClusterPlan.slots`), built once for every lookup."""

    def __init__(self, slot_rows: np.ndarray, slot_cols: np.ndarray, n_blocks: int):
        self.width = n_blocks + 1
        self.spare = len(slot_rows)  # the slot one past the plan's: what the split does not read
        keys = slot_rows * self.width + slot_cols
        real = np.flatnonzero((slot_rows < n_blocks) & (slot_cols < n_blocks))
        order = np.argsort(keys[real], kind="stable")
        self.keys, self.slots = keys[real][order], real[order]

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The slot of each block (rows[i], cols[i]), or the spare slot when the split does not read it
        (the other orientation of a cluster–separator pair, or a pair the plan knows to be zero)."""
        wanted = np.asarray(rows, np.int64) * self.width + np.asarray(cols, np.int64)
        at = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return np.where(self.keys[at] == wanted, self.slots[at], self.spare)


def _vertex_cover(rows: np.ndarray, cols: np.ndarray, n: int, limit: int) -> np.ndarray | None:
    """A small vertex cover of the symmetric edges (rows[i], cols[i]) among ``n`` vertices, greedily
    by degree (largest first, computed once): a vertex joins when one of its edges is not yet
    covered. None when it would take more than ``limit`` vertices. O(edges + n)."""
    order = np.argsort(rows, kind="stable")
    neighbours = cols[order]
    starts = np.searchsorted(rows[order], np.arange(n + 1))
    degree = np.diff(starts)
    chosen = np.zeros(n, bool)
    count = 0
    for v in np.argsort(-degree, kind="stable")[: np.count_nonzero(degree)]:
        if not chosen[neighbours[starts[v]: starts[v + 1]]].all():
            chosen[v] = True
            count += 1
            if count > limit:
                return None
    return np.flatnonzero(chosen)


def _pack(sizes: np.ndarray, capacity: int) -> np.ndarray:
    """Bins for items of ``sizes`` (best fit, largest first: the fullest bin that still has room),
    each holding at most ``capacity``. O(items log items)."""
    room: list[tuple[int, int]] = []  # (room left, bin), sorted
    bins = np.empty(len(sizes), np.int64)
    n_bins = 0
    for i in np.argsort(-sizes, kind="stable"):
        size = int(sizes[i])
        j = bisect.bisect_left(room, (size, -1))
        if j < len(room):
            left, b = room.pop(j)
        else:
            left, b = capacity, n_bins
            n_bins += 1
        bisect.insort(room, (left - size, b))
        bins[i] = b
    return bins


def _plan_at(meetings: Meetings, tau: int, width: int) -> ClusterPlan | None:
    n_blocks, row, col = meetings.n, meetings.rows, meetings.cols
    strong = meetings.counts >= tau
    label = connected_components(n_blocks, row[strong], col[strong])
    across = label[row] != label[col]
    # a separator of more than half the levels costs at least 1/8 of the dense factorisation
    separator = _vertex_cover(row[across], col[across], n_blocks, n_blocks // 2)
    if separator is None:
        return None
    inside = np.ones(n_blocks, bool)
    inside[separator] = False
    if not inside.any():
        return None
    _, component = np.unique(label[inside], return_inverse=True)
    sizes = np.bincount(component)
    cluster = _pack(sizes, int(sizes.max()))[component]
    blocks_inside = np.flatnonzero(inside)
    K = int(cluster.max()) + 1
    order = np.argsort(cluster, kind="stable")
    counts = np.bincount(cluster, minlength=K)
    member = np.full((K, int(counts.max())), n_blocks, np.int64)
    member[cluster[order], np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)] = blocks_inside[order]
    # the separator blocks each cluster meets
    where_sep = -np.ones(n_blocks, np.int64)
    where_sep[separator] = np.arange(separator.size)
    block_cluster = -np.ones(n_blocks, np.int64)
    block_cluster[blocks_inside] = cluster
    links = (block_cluster[row] >= 0) & (where_sep[col] >= 0)
    pairs = np.unique(np.stack([block_cluster[row[links]], where_sep[col[links]]], 1), axis=0)
    per_cluster = np.bincount(pairs[:, 0], minlength=K) if pairs.size else np.zeros(K, np.int64)
    adjacent = np.full((K, int(per_cluster.max(initial=0))), separator.size, np.int64)
    if pairs.size:
        start = np.cumsum(per_cluster) - per_cluster
        adjacent[pairs[:, 0], np.arange(len(pairs)) - start[pairs[:, 0]]] = pairs[:, 1]
    return ClusterPlan(member, separator, adjacent, n_blocks, width)


def plan_clusters(meetings: Meetings, width: int) -> ClusterPlan | None:
    """The cheapest split of M₂₂ over the thresholds `THRESHOLDS`, from ``meetings`` (levels have
    ``width`` columns each), or None when none is `MIN_SAVING` times cheaper than a dense
    factorisation, or when more than `MAX_DENSITY` of all pairs of levels meet."""
    D = meetings.n * width
    if meetings.rows.size > MAX_DENSITY * meetings.n**2:
        return None
    best = None
    for tau in THRESHOLDS:
        plan = _plan_at(meetings, tau, width)
        if plan is not None and (best is None or plan.flops() < best.flops()):
            best = plan
    if best is None or best.flops() * MIN_SAVING > D**3 / 3:
        return None
    return best


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClusterSlots:
    """A `ClusterPlan` for the kernels: ``member``/``separator``/``adjacent`` as in the plan (blocks),
    ``slot_row``/``slot_col`` (N,) the blocks of M₂₂ each slot holds (`ClusterPlan.slots`, then the
    spare slot), ``row_pair`` (n, T, T) the slot of each row's pair of further-term blocks, and
    ``pair``/``pair_transposed`` (P,) the slots of each pair of entries' Schur product and its transpose,
    ``diagonal`` (B,) the slot of each block's diagonal."""

    member: jax.Array
    separator: jax.Array
    adjacent: jax.Array
    slot_row: jax.Array
    slot_col: jax.Array
    row_pair: jax.Array
    pair: jax.Array
    pair_transposed: jax.Array
    diagonal: jax.Array

    @property
    def n_slots(self) -> int:
        return int(self.slot_row.shape[0])


def cluster_slots(plan: ClusterPlan, block: np.ndarray, pair_blocks: tuple[np.ndarray, np.ndarray]) -> ClusterSlots:
    """The slots of ``plan`` for rows whose further-term blocks are ``block`` (n, T), and for the
    Schur products of pairs of entries with blocks ``pair_blocks`` (first, second)."""
    rows, cols = plan.slots()
    B = plan.n_blocks
    slot_of = _SlotTable(rows, cols, B)
    n, T = block.shape
    row_pair = slot_of(np.repeat(block, T, axis=1).ravel(), np.tile(block, (1, T)).ravel()).reshape(n, T, T)
    first, second = pair_blocks
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    return ClusterSlots(member=i32(plan.member), separator=i32(plan.separator), adjacent=i32(plan.adjacent),
                        slot_row=i32(np.append(rows, B)), slot_col=i32(np.append(cols, B)),
                        row_pair=i32(row_pair), pair=i32(slot_of(first, second)),
                        pair_transposed=i32(slot_of(second, first)), diagonal=i32(slot_of(np.arange(B), np.arange(B))))


class _Split(NamedTuple):
    """M₂₂ and R by the split's roles, with the clusters factored: L (K, s·w, s·w) the Cholesky
    factors of the clusters' blocks (1 on the diagonal of padded positions) and ``L_inv`` their
    inverses (`_linalg.cholesky_and_inverse`), ``coupling`` (K, s·w, r·w)
    to the separator, C (S·w, S·w) the separator's block, ``cols`` (K, r·w) the separator columns
    each cluster meets (padded: S·w), R_A (K, s·w, c) and R_S (S·w, c) the rows of R."""

    L: jax.Array
    L_inv: jax.Array
    coupling: jax.Array
    C: jax.Array
    cols: jax.Array
    R_A: jax.Array
    R_S: jax.Array


def _split(M: jax.Array, R: jax.Array, slots: ClusterSlots) -> _Split:
    K, s = slots.member.shape
    S, r = slots.separator.shape[0], slots.adjacent.shape[1]
    w = M.shape[-1]
    n_blocks = R.shape[0] // w
    # One split rather than three slices: its transpose in the gradient is one concatenation, where
    # each slice's is a pad to all N slots (STAR: 0.9 ms of a 13 ms gradient).
    A, coupling, C, _ = jnp.split(M, [K * s * s, K * s * (s + r), K * s * (s + r) + S * S])
    A = A.reshape(K, s, s, w, w).transpose(0, 1, 3, 2, 4).reshape(K, s * w, s * w)
    padded = jnp.repeat(slots.member == n_blocks, w, axis=1).astype(M.dtype)
    A = A + jax.vmap(jnp.diag)(padded)  # a padded position: a 1 on the diagonal, nothing else
    coupling = coupling.reshape(K, s, r, w, w).transpose(0, 1, 3, 2, 4).reshape(K, s * w, r * w)
    C = C.reshape(S, S, w, w).transpose(0, 2, 1, 3).reshape(S * w, S * w)
    cols = (slots.adjacent[:, :, None] * w + jnp.arange(w)).reshape(K, r * w)
    Rb = jnp.pad(R.reshape(n_blocks, w, -1), ((0, 1), (0, 0), (0, 0)))
    c = Rb.shape[-1]  # explicit: the separator may be empty (a nested pattern)
    return _Split(*_linalg.cholesky_and_inverse(A), coupling, C, cols, Rb[slots.member].reshape(K, s * w, c),
                  Rb[slots.separator].reshape(S * w, c))


def _schur(C: jax.Array, W_b: jax.Array, cols: jax.Array) -> jax.Array:
    """C − Σ_k W_kᵀW_k scattered to each cluster's separator columns."""
    n = C.shape[0]
    update = jnp.zeros((n + 1, n + 1), C.dtype).at[cols[:, :, None], cols[:, None, :]].add(
        jnp.einsum("ksa,ksb->kab", W_b, W_b), mode="drop")
    return C - update[:n, :n]


def _scatter_rows(values: jax.Array, cols: jax.Array, n: int) -> jax.Array:
    """Σ_k values[k] (r, c) added at rows ``cols[k]`` of an (n, c) array (index n: dropped)."""
    return jnp.zeros((n + 1, values.shape[-1]), values.dtype).at[cols].add(values, mode="drop")[:n]


def clustered_logdet_and_quadratic(M: jax.Array, R: jax.Array, slots: ClusterSlots) -> tuple[jax.Array, jax.Array]:
    """(log|M₂₂|, RᵀM₂₂⁻¹R) from M₂₂'s slots ``M`` (N, w, w) (`ClusterSlots`; M₂₂ symmetric
    positive definite, zero outside the plan's clusters and separator) and ``R`` (D, c), D = B·w."""
    sp = _split(M, R, slots)
    logdet = jnp.sum(_linalg.logdet_from_cholesky(sp.L))
    if slots.separator.shape[0] == 0:
        W_r = sp.L_inv @ sp.R_A
        return logdet, jnp.einsum("ksc,ksd->cd", W_r, W_r)
    # One product for the coupling and R's rows.
    W_b, W_r = jnp.split(sp.L_inv @ jnp.concatenate([sp.coupling, sp.R_A], axis=2), [sp.coupling.shape[2]], axis=2)
    quad = jnp.einsum("ksc,ksd->cd", W_r, W_r)
    R_sep = sp.R_S - _scatter_rows(jnp.einsum("ksa,ksc->kac", W_b, W_r), sp.cols, sp.C.shape[0])
    logdet_s, quad_s = _linalg.logdet_and_quadratic(_schur(sp.C, W_b, sp.cols), R_sep)
    return logdet + logdet_s, quad + quad_s


def clustered_solve_and_selected_inverse(M: jax.Array, R: jax.Array, slots: ClusterSlots, inverse: bool = True
                                         ) -> tuple[jax.Array, jax.Array | None]:
    """(M₂₂⁻¹R (D, c), M₂₂⁻¹ at the slots (N, w, w), 0 in the spare one): what the conditional modes
    and their covariances need, from the block-arrow form M₂₂⁻¹ = [[A⁻¹ + XΣXᵀ, −XΣ], [−ΣXᵀ, Σ]]
    with X = A⁻¹Bᵀ and Σ the inverse of the separator's Schur complement. ``inverse=False``: the
    solve alone (None for the slots), with the separator's Schur complement solved, not inverted."""
    K, s = slots.member.shape
    S, r = slots.separator.shape[0], slots.adjacent.shape[1]
    w = M.shape[-1]
    n_blocks = R.shape[0] // w
    sp = _split(M, R, slots)
    cols = sp.cols
    L_inv = sp.L_inv
    t = jnp.einsum("kij,kjc->kic", L_inv, sp.R_A)
    if S == 0:
        u_A, u_S = jnp.einsum("kji,kjc->kic", L_inv, t), jnp.zeros((0, R.shape[1]), M.dtype)
    else:
        W_b = jnp.einsum("kij,kjc->kic", L_inv, sp.coupling)
        schur = _schur(sp.C, W_b, cols)
        R_sep = sp.R_S - _scatter_rows(jnp.einsum("ksa,ksc->kac", W_b, t), cols, S * w)
        if inverse:
            Sigma, _ = _linalg.spd_inverse_and_logdet(schur)
            u_S = Sigma @ R_sep
        else:
            u_S = _linalg.spd_solve(schur, R_sep)
        u_adjacent = jnp.pad(u_S, ((0, 1), (0, 0)))[cols]  # (K, r·w, c)
        u_A = jnp.einsum("kji,kjc->kic", L_inv, t - jnp.einsum("kia,kac->kic", W_b, u_adjacent))
    u = jnp.zeros((n_blocks + 1, w, R.shape[1]), M.dtype).at[slots.member].set(u_A.reshape(K, s, w, -1))
    u = u.at[slots.separator].set(u_S.reshape(S, w, R.shape[1]))[:n_blocks].reshape(n_blocks * w, -1)
    if not inverse:
        return u, None
    A_inv = jnp.einsum("kji,kjl->kil", L_inv, L_inv)
    if S == 0:
        P_A, P_AS, P_S = A_inv, jnp.zeros((K, s * w, 0), M.dtype), jnp.zeros((0, 0), M.dtype)
    else:
        X = jnp.einsum("kji,kjc->kic", L_inv, W_b)  # A_k⁻¹ B_kᵀ
        Q = jnp.pad(Sigma, ((0, 1), (0, 1)))[cols[:, :, None], cols[:, None, :]]
        P_AS = -jnp.einsum("kia,kab->kib", X, Q)
        P_A = A_inv - jnp.einsum("kib,kjb->kij", P_AS, X)
        P_S = Sigma
    slots_A = P_A.reshape(K, s, w, s, w).transpose(0, 1, 3, 2, 4).reshape(-1, w, w)
    slots_AS = P_AS.reshape(K, s, w, r, w).transpose(0, 1, 3, 2, 4).reshape(-1, w, w)
    slots_S = P_S.reshape(S, w, S, w).transpose(0, 2, 1, 3).reshape(-1, w, w)
    P = jnp.concatenate([slots_A, slots_AS, slots_S, jnp.zeros((1, w, w), M.dtype)])
    return u, P
