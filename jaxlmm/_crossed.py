"""Random-effects terms beyond the leading factor: the blocked Cholesky factor of crossed models.

A model's random effects are terms, each a grouping factor with its own model columns and its own
covariance block of Λ. The factor with the most levels *leads*: its effects are the per-level
blocks of `_kernels` (``Design.Z``, ``Design.group``). Every other term (a factor crossed with the
leader, or partially crossed) is held here. With u = (u₁ for the leader, u₂ for the others, D
entries in all) the penalised system's lower Cholesky factor is blocked as in MixedModels.jl:

    [ L₁     0   ]     L₁ = blockdiag(L₁g),  L₁g L₁gᵀ = Λ₁ᵀ Z₁gᵀ Z₁g Λ₁ + I       (per leading level)
    [ L₂₁   L₂₂  ]     L₂₁ = Λ₂ᵀ Z₂ᵀ Z₁ Λ₁ L₁⁻ᵀ                                     (sparse)
                       L₂₂ L₂₂ᵀ = Λ₂ᵀ Z₂ᵀ Z₂ Λ₂ + I − L₂₁ L₂₁ᵀ                    (dense, D × D)

L₂₁ is sparse: a leading level meets few levels of the other factors. Its non-zero blocks are
*entries* (leading level g, other block b), built once in NumPy: V_e = L₁g⁻¹ Λ₁ᵀ C_e Λ_b with C_e
the cross-products of the rows of g in block b. The Schur update L₂₁ L₂₁ᵀ is a scatter-add of
V_eᵀ V_f over the *pairs* of entries that share a leading level. Columns of X and y ride along
as in `_kernels.deviance_terms`; the dense block enters through `logdet_and_quadratic`, whose
derivative costs one inverse instead of differentiating a factorisation.

Memory: O(rows + entries + pairs + D²); `check_dense_size` refuses a dense block that would not fit.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import _linalg
from ._clusters import (MAX_DENSITY, ClusterSlots, Meetings, cluster_slots, clustered_logdet_and_quadratic,
                        clustered_solve_and_selected_inverse, plan_clusters)
from .errors import ModelTooLargeError

# A dense block of D × D float64 needs about 6 copies of D² in a gradient evaluation.
DENSE_MAX_BYTES = 4 * 2**30
DENSE_COUPLING_MAX_FLOPS = 2e7
# From this many rows of the dense block (with a sparse coupling: below, L₂₁ is held dense when its
# product is cheap), `build_crossed_terms` looks for a clustered split of it (`_clusters`); below, the
# dense factorisation takes well under a millisecond. A nested pattern splits into single levels: 600
# classes in 200 schools, `(1 | school/class)`, fits in 2.1 ms warm clustered against 40 ms dense.
CLUSTER_MIN_SIZE = 64
CLUSTER_TRIAL_MAX_PAIRS = 1_000_000  # a block held dense is tried for clusters up to this many pairs
BITMAP_MAX_BLOCKS = 4096  # a bool B × B bitmap (16 MiB at most) checks the density of M₂₂ first


@dataclasses.dataclass(frozen=True)
class CrossedLayout:
    """Static shape of the non-leading terms: levels per term and its columns in the Λ template."""

    level_counts: tuple[int, ...]
    columns: tuple[tuple[int, int], ...]  # (start, size) of each term's block in the Λ template
    n_lead: int  # levels of the leading factor
    lead_width: int = 1  # the leading factor's effects per level (q₁)
    # L₂₁ held as a dense (m q₁) × D matrix, L₂₁L₂₁ᵀ by one matrix product (see `choose_dense_coupling`)
    dense_coupling: bool = True

    @property
    def n_blocks(self) -> int:
        return int(sum(self.level_counts))

    @property
    def width(self) -> int:
        return max(size for _, size in self.columns)

    @property
    def dense_size(self) -> int:
        return self.n_blocks * self.width

    @property
    def offsets(self) -> np.ndarray:
        """The first global block id of each term."""
        return np.concatenate([[0], np.cumsum(self.level_counts)[:-1]]).astype(np.int64)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CrossedTerms:
    """The rows' effects on the non-leading terms, and the sparsity pattern of L₂₁.

    ``Z`` (n, T, w): each row's model columns for each of the T terms (padded to the widest, w);
    ``block`` (n, T): the row's level of each term as a global block id (term offsets added);
    ``row_entry`` (n, T): the entry (leading level, block) each row contributes to;
    ``entry_group``/``entry_block`` (E,): each entry's leading level and block, sorted by level;
    ``pair_first``/``pair_second`` (P,): the pairs e ≤ f of entries of one leading level (the
    Schur update L₂₁L₂₁ᵀ is symmetric: each pair's block and its transpose);
    ``clusters``: the split of the dense block into clusters and a separator (`_clusters`), or None
    to factor it densely.
    """

    Z: jax.Array
    block: jax.Array
    row_entry: jax.Array
    entry_group: jax.Array
    entry_block: jax.Array
    pair_first: jax.Array
    pair_second: jax.Array
    layout: CrossedLayout = dataclasses.field(metadata=dict(static=True))
    clusters: ClusterSlots | None = None


def dense_rows(crossed: "CrossedTerms | CrossedStats | None") -> int:
    """The rows of the dense block factored as one dense matrix: D, or 0 for one grouping factor or
    a block split into clusters (`_clusters`)."""
    return 0 if crossed is None or crossed.clusters is not None else crossed.layout.dense_size


def crossed_bytes(layout: CrossedLayout, n_entries: int, n_pairs: int) -> int:
    """Working memory of one crossed model's evaluation: about six D × D arrays in a gradient, and
    the entries' and pairs' blocks."""
    return 8 * (6 * layout.dense_size**2 + 4 * (n_entries + n_pairs) * layout.width**2)


def check_dense_size(layout: CrossedLayout, names: tuple[str, ...] = ()) -> None:
    """Refuse a dense block too large for memory, naming the terms and the limit."""
    D = layout.dense_size
    need = 6 * 8 * D * D
    if need > DENSE_MAX_BYTES:
        which = ", ".join(map(repr, names)) if names else "beside the leading factor"
        raise ModelTooLargeError(
            f"the crossed terms {which} have {D:,} random effects in all beside the leading factor: their dense "
            f"Cholesky block would need about {need / 2**30:.1f} GiB (limit {DENSE_MAX_BYTES / 2**30:.0f} GiB, "
            f"{int((DENSE_MAX_BYTES / 48) ** 0.5):,} effects). Drop or nest one of these factors, or fit a subset."
        )


def choose_dense_coupling(layout: CrossedLayout, n_pairs: int) -> bool:
    """Dense L₂₁ (one (m q₁) × D matrix product per evaluation) when that product is small, or when
    the pairs of non-zero blocks would cost more: a scatter-add moves about 50 times fewer elements
    per second than a matrix product does flops. On psycholing (112 × 64) the dense product makes
    the Hessian 5× faster; on InstEval (2,972 × 1,142) it would cost 8 GFlop against 1.8 million
    pair products. Either way a coupling beyond memory is refused."""
    dense_flops = layout.n_lead * layout.lead_width * layout.dense_size**2
    dense = dense_flops <= max(DENSE_COUPLING_MAX_FLOPS, 50 * n_pairs * layout.width**2)
    need = 8 * (layout.n_lead * layout.lead_width * layout.dense_size if dense else 4 * n_pairs * layout.width**2)
    if need > DENSE_MAX_BYTES:
        raise ModelTooLargeError(
            f"the leading factor's {layout.n_lead:,} levels meet {layout.dense_size:,} effects of the other factors in "
            f"so many combinations that their coupling would need about {need / 2**30:.1f} GiB (limit "
            f"{DENSE_MAX_BYTES / 2**30:.0f} GiB). Drop or nest one of the factors, or fit a subset of the data."
        )
    return bool(dense)


def build_crossed_terms(lead_codes: np.ndarray, n_lead: int, codes: list[np.ndarray], level_counts: list[int],
                        Zs: list[np.ndarray], columns: list[tuple[int, int]], lead_width: int = 1,
                        names: tuple[str, ...] = (), dense_coupling: bool | None = None,
                        clusters: bool = True) -> CrossedTerms:
    """The `CrossedTerms` of non-leading terms with level ``codes`` (0..levels-1, one array per term)
    and model columns ``Zs`` (n × q each), whose Λ blocks sit at ``columns`` of the template; the
    leading factor has ``n_lead`` levels and ``lead_width`` effects per level. ``names`` (of the
    non-leading terms) are for the error when the dense block is too large; ``dense_coupling``
    overrides `choose_dense_coupling` (data sets batched together need the same choice);
    ``clusters=False`` keeps the dense block dense (padded layouts shared by several designs)."""
    n = len(lead_codes)
    layout = CrossedLayout(tuple(int(k) for k in level_counts), tuple((int(a), int(b)) for a, b in columns), int(n_lead),
                           int(lead_width))
    check_dense_size(layout, names)
    T, w = len(codes), layout.width
    Z = np.zeros((n, T, w))
    for k, Zk in enumerate(Zs):
        Z[:, k, : Zk.shape[1]] = Zk
    block = np.stack([np.asarray(c, np.int64) + layout.offsets[k] for k, c in enumerate(codes)], axis=1)
    lead = np.asarray(lead_codes, np.int64)
    key = lead[:, None] * layout.n_blocks + block  # (n, T): sorted unique keys number the entries
    keys, row_entry = np.unique(key.ravel(), return_inverse=True)
    entry_group, entry_block = keys // layout.n_blocks, keys % layout.n_blocks
    counts = np.bincount(entry_group, minlength=n_lead)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_pairs = int(np.sum(counts * (counts + 1) // 2))
    automatic = dense_coupling is None
    if automatic:
        dense_coupling = choose_dense_coupling(layout, n_pairs)
    # A block that splits into clusters is cheaper that way even where L₂₁ would be held dense: a
    # nested pattern (240 classes in 80 schools) fits in 2.2 ms warm clustered against 18 ms dense.
    may_split = not dense_coupling or (automatic and n_pairs <= CLUSTER_TRIAL_MAX_PAIRS)
    first = second = np.zeros(0, np.int64)
    if may_split:  # pairs (e, f) of entries of one leading level with e ≤ f: needed, or for the trial
        position = np.arange(len(keys)) - starts[entry_group]
        later = counts[entry_group] - position
        first = np.repeat(np.arange(len(keys)), later)
        second = first + np.arange(len(first)) - np.repeat(np.cumsum(later) - later, later)
    plan = None
    if clusters and may_split and layout.dense_size >= CLUSTER_MIN_SIZE:
        meetings = _meetings(entry_block, first, second, block, layout.n_blocks)
        plan = None if meetings is None else plan_clusters(meetings, w)
    layout = dataclasses.replace(layout, dense_coupling=bool(dense_coupling) and plan is None)
    if layout.dense_coupling:  # no pairs: L₂₁L₂₁ᵀ is one matrix product
        first = second = np.zeros(0, np.int64)
    i32 = lambda a: np.asarray(a, np.int32)  # noqa: E731
    slots = None if plan is None else cluster_slots(plan, block, (entry_block[first], entry_block[second]))
    return CrossedTerms(Z=Z, block=i32(block), row_entry=i32(row_entry.reshape(n, T)), entry_group=i32(entry_group),
                        entry_block=i32(entry_block), pair_first=i32(first), pair_second=i32(second), layout=layout,
                        clusters=slots)


def _meetings(entry_block: np.ndarray, first: np.ndarray, second: np.ndarray, block: np.ndarray,
              n_blocks: int) -> Meetings | None:
    """How often two blocks meet: at one leading level (the pairs of entries ``first``, ``second``:
    L₂₁L₂₁ᵀ) or in one row (Z₂ᵀZ₂) — a superset of the non-zero blocks of the dense block M₂₂. None
    when more than `_clusters.MAX_DENSITY` of all pairs meet (a bitmap first: InstEval's 1.8 million
    pairs are not sorted for nothing)."""
    T = block.shape[1]
    i, j = np.triu_indices(T, 1)
    a = np.concatenate([entry_block[first], block[:, i].ravel()])
    b = np.concatenate([entry_block[second], block[:, j].ravel()])
    if n_blocks <= BITMAP_MAX_BLOCKS:
        seen = np.zeros((n_blocks, n_blocks), bool)
        seen[a, b] = seen[b, a] = True
        if np.count_nonzero(seen) > MAX_DENSITY * n_blocks**2:
            return None
    return Meetings.from_pairs(a, b, n_blocks)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CrossedStats:
    """Sufficient statistics of a crossed model: the leader's (`SufficientStats`); the cross-products
    with the leader ``C``, per entry (E, q₁, w), or with a dense coupling all of Z₁ᵀZ₂ (m, B, q₁, w);
    the other terms' ``G`` = Z₂ᵀZ₂ (B, B, w, w; with ``clusters``, only the slots the split reads,
    (N, w, w)), ``ZtX`` (B, w, p) and ``Zty`` (B, w); and the integer pattern of `CrossedTerms`."""

    lead: NamedTuple
    C: jax.Array
    G: jax.Array
    ZtX: jax.Array
    Zty: jax.Array
    entry_group: jax.Array
    entry_block: jax.Array
    pair_first: jax.Array
    pair_second: jax.Array
    layout: CrossedLayout = dataclasses.field(metadata=dict(static=True))
    clusters: ClusterSlots | None = None

    # the pooled statistics, as `SufficientStats` names them
    XtX = property(lambda self: self.lead.XtX)
    Xty = property(lambda self: self.lead.Xty)
    yty = property(lambda self: self.lead.yty)
    nobs = property(lambda self: self.lead.nobs)
    sum_log_weights = property(lambda self: self.lead.sum_log_weights)
    n_fixed = property(lambda self: self.lead.n_fixed)


def crossed_stats(lead, y: jax.Array, X: jax.Array, Z1: jax.Array, group: jax.Array, mask: jax.Array,
                  terms: CrossedTerms) -> CrossedStats:
    """Reduce the rows to the statistics of the non-leading terms (rows with ``mask == 0`` count nothing)."""
    layout = terms.layout
    B, w = layout.n_blocks, layout.width
    n, T, _ = terms.Z.shape
    E = terms.entry_group.shape[0]
    Zw = terms.Z * mask[:, None, None]
    cross = (Z1[:, None, :, None] * Zw[:, :, None, :]).reshape(n * T, Z1.shape[1], w)
    if layout.dense_coupling:  # Z₁ᵀZ₂ as a dense (m, B, q₁, w) array
        C = jax.ops.segment_sum(cross, (group[:, None] * B + terms.block).reshape(-1), layout.n_lead * B)
        C = C.reshape(layout.n_lead, B, Z1.shape[1], w)
    else:  # only the non-zero blocks (entries)
        C = jax.ops.segment_sum(cross, terms.row_entry.reshape(-1), E)
    products = (Zw[:, :, None, :, None] * terms.Z[:, None, :, None, :]).reshape(n * T * T, w, w)
    if terms.clusters is None:
        pair = (terms.block[:, :, None] * B + terms.block[:, None, :]).reshape(-1)
        G = jax.ops.segment_sum(products, pair, B * B).reshape(B, B, w, w)
    else:  # only the slots of M₂₂ that the clustered split reads
        G = jax.ops.segment_sum(products, terms.clusters.row_pair.reshape(-1), terms.clusters.n_slots)
    flat_block = terms.block.reshape(-1)
    ZtX = jax.ops.segment_sum((Zw[:, :, :, None] * X[:, None, None, :]).reshape(n * T, w, X.shape[1]), flat_block, B)
    Zty = jax.ops.segment_sum((Zw * y[:, None, None]).reshape(n * T, w), flat_block, B)
    return CrossedStats(lead, C, G, ZtX, Zty, terms.entry_group, terms.entry_block, terms.pair_first,
                        terms.pair_second, layout, terms.clusters)


def term_factors(lam: jax.Array, layout: CrossedLayout) -> jax.Array:
    """Λ_t (T, w, w) of each non-leading term, cut from the Λ template and padded to the width w."""
    w = layout.width
    return jnp.stack([jnp.pad(lam[a: a + s, a: a + s], ((0, w - s), (0, w - s))) for a, s in layout.columns])


def factors_at(lam_terms: jax.Array, blocks: jax.Array, layout: CrossedLayout) -> jax.Array:
    """Λ_b (…, w, w) at an array of block ids (id B, padding: 0) from the terms' ``lam_terms``:
    Σ_t [b in term t] Λ_t, elementwise, rather than a gather, whose transpose in the gradient is a
    scatter-add of every slot or entry into a few terms that XLA serialises (STAR: 0.6 ms of a 13 ms
    gradient for 36k entries, more for 219k slots). An einsum with the one-hot matrix was slower
    still (a dot whose inner size is the number of terms)."""
    starts = layout.offsets
    ends = starts + np.asarray(layout.level_counts)
    blocks = blocks[..., None, None]
    return sum(((blocks >= a) & (blocks < b)).astype(lam_terms.dtype) * lam_terms[t]
               for t, (a, b) in enumerate(zip(starts, ends)))


def _pair_weight(stats: CrossedStats) -> jax.Array:
    """½ for a pair of an entry with itself (counted again by the transpose), 1 otherwise."""
    return jnp.where(stats.pair_first == stats.pair_second, 0.5, 1.0)


class _Blocks(NamedTuple):
    L1: jax.Array  # (m, q₁, q₁)
    W1: jax.Array  # (m, q₁, p + 1): L₁g⁻¹ Λ₁ᵀ Z₁gᵀ [X y]
    V: jax.Array  # (E, q₁, w): the non-zero blocks of L₂₁ᵀ; with a dense coupling all of L₂₁ᵀ, (m q₁, D)
    M22: jax.Array  # (D, D): Λ₂ᵀZ₂ᵀZ₂Λ₂ + I − L₂₁L₂₁ᵀ; with clusters, its slots (N, w, w)
    B2: jax.Array  # (D, p + 1): Λ₂ᵀZ₂ᵀ[X y] − L₂₁ W₁
    lam1: jax.Array
    lamB: jax.Array


def _blocks(lam: jax.Array, stats: CrossedStats) -> _Blocks:
    layout, lead = stats.layout, stats.lead
    m, q1 = lead.ZtZ.shape[0], lead.ZtZ.shape[-1]
    B, w = layout.n_blocks, layout.width
    lam1, lam_terms = lam[:q1, :q1], term_factors(lam, layout)
    lamB = factors_at(lam_terms, jnp.arange(B), layout)
    M1 = jnp.einsum("ji,gjk,kl->gil", lam1, lead.ZtZ, lam1) + jnp.eye(q1, dtype=lam.dtype)
    rhs = jnp.einsum("ji,gjc->gic", lam1, jnp.concatenate([lead.ZtX, lead.Zty[:, :, None]], 2))
    L1, solved = _linalg.cholesky_and_solve_lower(M1, jnp.concatenate([rhs, jnp.broadcast_to(lam1.T, (m, q1, q1))], 2))
    W1, scaled = solved[:, :, : rhs.shape[2]], solved[:, :, rhs.shape[2]:]  # scaled: L₁g⁻¹ Λ₁ᵀ
    D = B * w
    B2 = jnp.einsum("aji,ajc->aic", lamB, jnp.concatenate([stats.ZtX, stats.Zty[:, :, None]], 2)).reshape(D, -1)
    if layout.dense_coupling:  # L₂₁ᵀ = blockdiag(L₁g⁻¹Λ₁ᵀ) Z₁ᵀZ₂ Λ₂, dense: matrix products only
        L21t = jnp.einsum("gij,gbjk,bkl->gibl", scaled, stats.C, lamB).reshape(m * q1, D)
        M22 = _dense_gram(lamB, stats.G)
        return _Blocks(L1, W1, L21t, M22 - L21t.T @ L21t, B2 - L21t.T @ W1.reshape(m * q1, -1), lam1, lamB)
    V = jnp.einsum("eij,ejk,ekl->eil", scaled[stats.entry_group], stats.C, factors_at(lam_terms, stats.entry_block, layout))
    products = jnp.einsum("pia,pib->pab", V[stats.pair_first], V[stats.pair_second]) * _pair_weight(stats)[:, None, None]
    coupled = jax.ops.segment_sum(jnp.einsum("eia,eic->eac", V, W1[stats.entry_group]), stats.entry_block, B)
    if stats.clusters is None:
        target = stats.entry_block[stats.pair_first] * B + stats.entry_block[stats.pair_second]
        half = jax.ops.segment_sum(products, target, B * B).reshape(B, B, w, w).transpose(0, 2, 1, 3).reshape(D, D)
        M22 = _dense_gram(lamB, stats.G) - (half + half.T)
    else:
        M22 = _slot_gram(lam_terms, stats) - _slot_schur(products, stats.clusters)
    return _Blocks(L1, W1, V, M22, B2 - coupled.reshape(D, -1), lam1, lamB)


def _dense_gram(lamB: jax.Array, G: jax.Array) -> jax.Array:
    """Λ₂ᵀZ₂ᵀZ₂Λ₂ + I as a dense D × D matrix, from G (B, B, w, w)."""
    B, w = lamB.shape[0], lamB.shape[-1]
    return jnp.einsum("aji,abjk,bkl->aibl", lamB, G, lamB).reshape(B * w, B * w) + jnp.eye(B * w, dtype=lamB.dtype)


def _slot_gram(lam_terms: jax.Array, stats: CrossedStats) -> jax.Array:
    """Λ₂ᵀZ₂ᵀZ₂Λ₂ + I at the clustered split's slots (`_clusters.ClusterSlots`), from G (N, w, w)."""
    slots, layout, w = stats.clusters, stats.layout, lam_terms.shape[-1]
    row, col = slots.slot_row, slots.slot_col
    dtype = lam_terms.dtype
    diagonal = ((row == col) & (row < layout.n_blocks)).astype(dtype)[:, None, None] * jnp.eye(w, dtype=dtype)
    lam_row, lam_col = factors_at(lam_terms, row, layout), factors_at(lam_terms, col, layout)
    return jnp.einsum("nji,njk,nkl->nil", lam_row, stats.G, lam_col) + diagonal


def _slot_schur(products: jax.Array, slots: ClusterSlots) -> jax.Array:
    """L₂₁L₂₁ᵀ at the slots: each pair's product at its slot and its transpose at the transposed one."""
    return (jax.ops.segment_sum(products, slots.pair, slots.n_slots)
            + jax.ops.segment_sum(jnp.swapaxes(products, 1, 2), slots.pair_transposed, slots.n_slots))


def crossed_reduction(lam: jax.Array, stats: CrossedStats):
    """(Σ log|L₁g|² + log|L₂₂|², W₁ᵀW₁ + W₂ᵀW₂): what eliminating all random effects takes from
    [[XᵀX, Xᵀy], [yᵀX, yᵀy]] (see `_kernels.deviance_terms`)."""
    blocks = _blocks(lam, stats)
    if stats.clusters is None:
        logdet22, quad = _linalg.logdet_and_quadratic(blocks.M22, blocks.B2)
    else:  # sparse: clusters and a separator (`_clusters`)
        logdet22, quad = clustered_logdet_and_quadratic(blocks.M22, blocks.B2, stats.clusters)
    return _linalg.logdet_from_cholesky(blocks.L1) + logdet22, jnp.einsum("gqc,gqd->cd", blocks.W1, blocks.W1) + quad


def crossed_modes(lam: jax.Array, stats: CrossedStats, beta: jax.Array, sigma2: jax.Array, covariances: bool = True):
    """Conditional modes and covariances: (leader's b (m, q₁), their covariances (m, q₁, q₁),
    the other blocks' b (B, w), their covariances (B, w, w)), conditional on β̂ as lme4's ``condVar``.
    ``covariances=False``: the covariances are None (what the modes alone need is left to XLA's
    dead-code elimination)."""
    blocks = _blocks(lam, stats)
    m, q1 = blocks.W1.shape[0], blocks.W1.shape[1]
    B, w = stats.layout.n_blocks, stats.layout.width
    p = beta.shape[0]
    rhs = blocks.B2[:, p] - blocks.B2[:, :p] @ beta  # u₂ = M₂₂⁻¹ (c₂ − C₂ β̂)
    slots = stats.clusters
    if slots is None and not covariances:  # a solve, without M₂₂⁻¹
        u2 = _linalg.spd_solve(blocks.M22, rhs[:, None])[:, 0]
    elif slots is None:
        M22_inv, _ = _linalg.spd_inverse_and_logdet(blocks.M22)
        u2 = M22_inv @ rhs
        P = M22_inv.reshape(B, w, B, w)
        cov_u2 = P[jnp.arange(B), :, jnp.arange(B), :]  # (B, w, w) diagonal blocks of M₂₂⁻¹
    else:  # M₂₂⁻¹ at the clustered split's slots only
        u2, P_slots = clustered_solve_and_selected_inverse(blocks.M22, rhs[:, None], slots, inverse=covariances)
        u2 = u2[:, 0]
        cov_u2 = P_slots[slots.diagonal] if covariances else None
    u2_blocks = u2.reshape(B, w)
    if stats.layout.dense_coupling:
        coupled = (blocks.V @ u2).reshape(m, q1)
    else:
        coupled = jax.ops.segment_sum(jnp.einsum("eia,ea->ei", blocks.V, u2_blocks[stats.entry_block]),
                                      stats.entry_group, m)
    r1 = blocks.W1[:, :, p] - blocks.W1[:, :, :p] @ beta - coupled
    u1 = _linalg.solve_upper_transposed(blocks.L1, r1)
    lam1, lamB = blocks.lam1, blocks.lamB
    b1 = jnp.einsum("ij,gj->gi", lam1, u1)
    b2 = jnp.einsum("aij,aj->ai", lamB, u2_blocks)
    if not covariances:
        return b1, None, b2, None
    if stats.layout.dense_coupling:
        L21t = blocks.V.reshape(m, q1, B * w)
        inner = jnp.einsum("gia,ab,gjb->gij", L21t, M22_inv, L21t)
    else:
        if slots is None:
            P_pairs = P[stats.entry_block[stats.pair_first], :, stats.entry_block[stats.pair_second], :]  # (P, w, w)
        else:  # a cluster–separator pair held the other way round: its transpose
            spare = slots.n_slots - 1
            P_pairs = jnp.where((slots.pair == spare)[:, None, None], jnp.swapaxes(P_slots[slots.pair_transposed], 1, 2),
                                P_slots[slots.pair])
        products = jnp.einsum("pia,pab,pjb->pij", blocks.V[stats.pair_first], P_pairs, blocks.V[stats.pair_second])
        half = jax.ops.segment_sum(products * _pair_weight(stats)[:, None, None], stats.entry_group[stats.pair_first], m)
        inner = half + jnp.swapaxes(half, 1, 2)
    L1_inv = _linalg.solve_lower(blocks.L1, jnp.broadcast_to(jnp.eye(q1, dtype=lam.dtype), blocks.L1.shape))
    cov_u1 = jnp.einsum("gki,gkl,glj->gij", L1_inv, jnp.eye(q1, dtype=lam.dtype) + inner, L1_inv)
    cov1 = sigma2 * jnp.einsum("ij,gjk,lk->gil", lam1, cov_u1, lam1)
    cov2 = sigma2 * jnp.einsum("aij,ajk,alk->ail", lamB, cov_u2, lamB)
    return b1, cov1, b2, cov2
