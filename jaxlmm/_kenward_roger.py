"""Kenward–Roger: the small-sample adjusted covariance of β̂ and the scaled F test (pbkrtest's).

The marginal covariance is linear in the variance parameters γ (one per random-effect variance and
covariance, then the residual variance — jaxlmm's ``varpar``):

    V(γ) = Σ_k γ_k G_k,    G_k = ∂V/∂γ_k   (taken with `jax.jacfwd`; V is built densely on the rows)

With Φ = (Xᵀ V⁻¹ X)⁻¹, P_k = −Xᵀ V⁻¹ G_k V⁻¹ X and Q_kl = Xᵀ V⁻¹ G_k V⁻¹ G_l V⁻¹ X, the expected REML
information is I_kl = ½ [tr(V⁻¹G_k V⁻¹G_l) − 2 tr(Φ Q_kl) + tr(Φ P_k Φ P_l)] and W = I⁻¹ (pbkrtest's
``2 * solve(IE2)``). Because V is linear in γ its second derivatives vanish, so

    Φ_A = Φ + 2 Φ U Φ,    U = Σ_kl W_kl (Q_kl − P_k Φ P_l).

For H₀: L β = 0 (q independent rows), with Θ = Lᵀ (L Φ Lᵀ)⁻¹ L and u_k = Θ Φ P_k Φ,
A₁ = Σ_kl W_kl tr(u_k) tr(u_l) and A₂ = Σ_kl W_kl tr(u_k u_l) give the denominator df and the scaling
of F = (Lβ̂)ᵀ (L Φ_A Lᵀ)⁻¹ (Lβ̂) / q as in pbkrtest's ``.KR_adjust``.

Prior weights w make the residual's G = diag(1/w) (pbkrtest's is the identity whatever the weights);
a residual-variance model is not linear in its parameters and is refused.

Cost. With one grouping factor V is block diagonal, and every sum above is taken group by group on
blocks padded to the largest group (`group_blocks_kenward_roger`): dietox (861 rows, 72 pigs) in
2.8 ms warm against 196 ms dense, with no limit on the rows. Crossed models build V densely: about
2K + 3 n × n matrices and one n³ product per random-effect parameter (on two CPU cores, n = 1,000:
0.2 s; 2,000: 1.3 s; 4,000: 13 s with K = 4), so they are limited to `MAX_ROWS` rows.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import cho_solve

from . import _linalg
from ._compile_options import jit_with
from ._config import float64
from ._lapack_threads import one_lapack_thread
from .errors import DataError

MAX_ROWS = 6000


class KenwardRoger(NamedTuple):
    """pbkrtest's ``vcovAdj``: ``vcov`` Φ, ``vcov_adj`` Φ_A, ``P`` (K, p, p) and ``W`` (K, K)."""

    vcov: np.ndarray
    vcov_adj: np.ndarray
    P: np.ndarray
    W: np.ndarray


def covariance_from_varpar(varpar: jax.Array, lambda_index: tuple) -> jax.Array:
    """The random effects' covariance template (Λ's shape) with entry (i, j) = ``varpar[idx[i, j]]``
    for ``idx`` = ``lambda_index`` (lower triangle; -1: zero), symmetrised."""
    idx = np.asarray(lambda_index)
    lower = np.tril(idx >= 0)
    vals = jnp.where(lower, jnp.asarray(varpar)[np.where(lower, idx, 0)], 0.0)
    return vals + vals.T - jnp.diag(jnp.diag(vals))


def marginal_covariance(varpar: jax.Array, Zs: tuple, codes: tuple, resid: jax.Array, *, blocks: tuple,
                        lambda_index: tuple) -> jax.Array:
    """V = Σ_terms [rows i, j in one level] z_i G_t z_jᵀ + γ_last · diag(resid), dense (n × n).

    ``Zs``/``codes``: each term's model columns (n, q_t) and level codes (n,); ``blocks``: each term's
    (start, size) in the covariance template; ``resid``: each row's residual variance relative to σ²
    (1/prior weight)."""
    cov = covariance_from_varpar(varpar[:-1], lambda_index)
    V = jnp.diag(varpar[-1] * resid)
    for Z, code, (start, size) in zip(Zs, codes, blocks):
        G = cov[start: start + size, start: start + size]
        V = V + jnp.where(code[:, None] == code[None, :], Z @ G @ Z.T, 0.0)
    return V


def kenward_roger_arrays(X: jax.Array, Zs: tuple, codes: tuple, resid: jax.Array, varpar: jax.Array, *,
                         blocks: tuple, lambda_index: tuple) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(Φ, Φ_A, P, W) at the variance parameters ``varpar`` (see the module docstring); jitted in `_programs`."""
    build = partial(marginal_covariance, Zs=Zs, codes=codes, resid=resid, blocks=blocks, lambda_index=lambda_index)
    V = build(varpar)
    G = jnp.moveaxis(jax.jacfwd(build)(varpar), -1, 0)  # (K, n, n): V is linear, so these are the G_k
    chol = jnp.linalg.cholesky(V)
    Vinv = cho_solve((chol, True), jnp.eye(V.shape[0], dtype=V.dtype))
    T = Vinv @ X
    Phi = jnp.linalg.inv(X.T @ T)
    Phi = 0.5 * (Phi + Phi.T)
    O = G @ T  # (K, n, p): G_k V⁻¹ X
    P = -jnp.einsum("knp,nq->kpq", O, T)
    Q = jnp.einsum("rnp,snq->rspq", O, Vinv @ O)
    # H_k = G_k V⁻¹: one n³ product per random-effect parameter; the residual's G is diagonal
    H = jnp.concatenate([G[:-1] @ Vinv, (resid[:, None] * Vinv)[None]])
    ktrace = jnp.einsum("rij,sji->rs", H, H)
    PhiA, W = _adjusted(Phi, P, Q, ktrace)
    return Phi, PhiA, P, W


def _adjusted(Phi, P, Q, ktrace):
    """(Φ_A, W) from Φ, P (K, p, p), Q (K, K, p, p) and tr(V⁻¹G_k V⁻¹G_l) (K, K)."""
    PhiP = Phi @ P
    IE2 = ktrace - 2.0 * jnp.einsum("pq,rspq->rs", Phi, Q) + jnp.einsum("rab,sba->rs", PhiP, PhiP)
    well_posed = jnp.min(jnp.abs(jnp.linalg.eigvalsh(IE2))) > 1e-10
    W = 2.0 * jnp.where(well_posed, jnp.linalg.inv(IE2), jnp.linalg.pinv(IE2))
    W = 0.5 * (W + W.T)
    U = jnp.einsum("rs,rspq->pq", W, Q) - jnp.einsum("rs,rpa,ab,sbq->pq", W, P, Phi, P)
    return Phi + 2.0 * Phi @ U @ Phi, W


def group_blocks_kenward_roger(X: jax.Array, Z: jax.Array, resid: jax.Array, pad: jax.Array, varpar: jax.Array, *,
                               lambda_index: tuple) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(Φ, Φ_A, P, W) of a model with one grouping factor, whose V is block diagonal: the same sums
    as `kenward_roger_arrays`, taken group by group on rows padded to the largest group (``X`` (m, s, p),
    ``Z`` (m, s, q), ``resid`` (m, s) the relative residual variance, 0 on padding, and ``pad`` (m, s)
    1.0 on padding, which gives V an identity there that no G_k touches). O(m s³ K) instead of O(n³ K)."""

    def build(gamma):
        cov = covariance_from_varpar(gamma[:-1], lambda_index)
        return (jnp.einsum("gsa,ab,gtb->gst", Z, cov, Z)
                + (gamma[-1] * resid + pad)[:, :, None] * jnp.eye(Z.shape[1], dtype=Z.dtype))

    V = build(varpar)
    G = jnp.moveaxis(jax.jacfwd(build)(varpar), -1, 0)  # (K, m, s, s)
    chol = _linalg.cholesky(V)
    Vinv = _linalg.cho_solve(chol, jnp.broadcast_to(jnp.eye(V.shape[-1], dtype=V.dtype), V.shape))
    T = Vinv @ X  # (m, s, p)
    Phi = jnp.linalg.inv(jnp.einsum("gsp,gsq->pq", X, T))
    Phi = 0.5 * (Phi + Phi.T)
    O = G @ T  # (K, m, s, p): G_k V⁻¹ X per group
    P = -jnp.einsum("kgsp,gsq->kpq", O, T)
    Q = jnp.einsum("agip,gij,bgjq->abpq", O, Vinv, O)
    H = G @ Vinv  # (K, m, s, s)
    ktrace = jnp.einsum("rgij,sgji->rs", H, H)
    PhiA, W = _adjusted(Phi, P, Q, ktrace)
    return Phi, PhiA, P, W


# Up to QUICK_ROWS rows compiling dominates (the "quick" options: 0.45-0.65 s instead of 0.8-1.05 s,
# sleepstudy and dietox); beyond, the n³ products do, and XLA's defaults run them about 25% faster
# (n = 4,000 on two CPU cores).
QUICK_ROWS = 1000
_programs = {quick: jit_with(kenward_roger_arrays, "quick" if quick else "default",
                             static_argnames=("blocks", "lambda_index")) for quick in (True, False)}
_group_program = jit_with(group_blocks_kenward_roger, "quick", static_argnames=("lambda_index",))
# One grouping factor: the per-group path while m · s² (the padded blocks' entries) stays moderate.
GROUP_BLOCK_ENTRIES_MAX = 20_000_000


def _group_blocks(design, keep: np.ndarray, resid: np.ndarray):
    """The kept rows of a one-factor design as per-group blocks padded to the largest group
    (X, Z, relative residual variance, padding flag), or None when they would be too large."""
    codes = np.asarray(design.group)[keep]
    groups, local = np.unique(codes, return_inverse=True)
    m = len(groups)
    order = np.argsort(local, kind="stable")
    sizes = np.bincount(local, minlength=m)
    s = int(sizes.max())
    if m * s * s > GROUP_BLOCK_ENTRIES_MAX:
        return None
    position = np.arange(len(codes)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # within its group, sorted
    rows, slots = local[order], position
    X = np.asarray(design.X, float)[keep][order]
    Z = np.asarray(design.Z, float)[keep][order]
    Xb = np.zeros((m, s, X.shape[1]))
    Zb = np.zeros((m, s, Z.shape[1]))
    rb = np.zeros((m, s))
    pad = np.ones((m, s))
    Xb[rows, slots], Zb[rows, slots], rb[rows, slots], pad[rows, slots] = X, Z, resid[order], 0.0
    return Xb, Zb, rb, pad


def kenward_roger(design, varpar) -> KenwardRoger:
    """pbkrtest's ``vcovAdj`` for a fitted design at its variance parameters ``varpar`` (random-effect
    variances and covariances, then σ²). Rows with mask 0 are left out.

    Examples:
        >>> import jaxlmm
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
        >>> kr = kenward_roger(r.model.design, r.vcomp.values)
        >>> kr.vcov_adj.shape, bool(np.allclose(kr.vcov_adj, kr.vcov))  # balanced: no adjustment
        ((2, 2), True)
    """
    if design.resid_design is not None:
        raise DataError("ddf='kenward-roger' is not available with a residual variance model (its variance is not "
                        "linear in the parameters); use ddf='satterthwaite'.")
    keep = np.asarray(design.mask) > 0
    n = int(keep.sum())
    weights = design.weights
    resid = np.ones(n) if weights is None else 1.0 / np.asarray(weights, float)[keep]
    blocked = None if design.crossed is not None else _group_blocks(design, keep, resid)
    if blocked is not None:
        with float64(), one_lapack_thread():
            out = _group_program(*(jnp.asarray(a) for a in blocked), jnp.asarray(np.asarray(varpar, float)),
                                 lambda_index=tuple(design.lambda_index))
            return KenwardRoger(*(np.asarray(a) for a in out))
    if n > MAX_ROWS:
        raise DataError(f"ddf='kenward-roger' builds dense {n:,} × {n:,} covariance matrices; it is limited to "
                        f"{MAX_ROWS:,} observations. Use ddf='satterthwaite' for larger models.")
    Zs = [np.asarray(design.Z, float)[keep]]
    codes = [np.asarray(design.group)[keep]]
    blocks = [(0, Zs[0].shape[1])]
    if design.crossed is not None:
        Zc, block = np.asarray(design.crossed.Z, float)[keep], np.asarray(design.crossed.block)[keep]
        for k, (start, size) in enumerate(design.crossed.layout.columns):
            Zs.append(Zc[:, k, :size])
            codes.append(block[:, k])
            blocks.append((int(start), int(size)))
    with float64(), one_lapack_thread():
        out = _programs[n <= QUICK_ROWS](jnp.asarray(np.asarray(design.X, float)[keep]), tuple(map(jnp.asarray, Zs)),
                                   tuple(map(jnp.asarray, codes)), jnp.asarray(resid),
                                   jnp.asarray(np.asarray(varpar, float)), blocks=tuple(blocks),
                                   lambda_index=tuple(design.lambda_index))
        return KenwardRoger(*(np.asarray(a) for a in out))


def kenward_roger_f(L: np.ndarray, beta: np.ndarray, kr: KenwardRoger, rhs: np.ndarray | None = None
                    ) -> tuple[float, int, float, float]:
    """(F unscaled, NumDF, DenDF, F scaling) of H₀: L β = rhs (pbkrtest's ``KRmodcomp``): lmerTest's
    F value is scaling × F. A rank-deficient L is replaced by an orthonormal basis of its rows.

    Examples:
        >>> import jaxlmm, numpy as np
        >>> r = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy")).fit()
        >>> kr = kenward_roger(r.model.design, r.vcomp.values)
        >>> F, ndf, ddf, scale = kenward_roger_f(np.array([[0.0, 1.0]]), r.fe_params.values, kr)
        >>> ndf, round(ddf, 1), round(F, 2)
        (1, 17.0, 45.85)
    """
    L = np.atleast_2d(np.asarray(L, dtype=float))
    diff = L @ beta - (0.0 if rhs is None else np.asarray(rhs, float))
    q = int(np.linalg.matrix_rank(L))
    if q == 0:
        return np.nan, 0, np.nan, np.nan
    if q < L.shape[0]:  # pbkrtest's force_full_rank; the Wald statistic only needs L's row space
        u, s, vt = np.linalg.svd(L, full_matrices=False)
        diff = (u[:, :q] / s[:q]).T @ diff
        L = vt[:q]
    Phi, PhiA = kr.vcov, kr.vcov_adj
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = np.einsum("ab,bc,kcd,de->kae", Theta, Phi, kr.P, Phi)
    tr = np.trace(u, axis1=1, axis2=2)
    A1 = float(tr @ kr.W @ tr)
    A2 = float(np.einsum("kl,kab,lba->", kr.W, u, u))
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denom = 3.0 * q + 2.0 * (1.0 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    V0, V1, V2 = 1.0 + c1 * B, 1.0 - c2 * B, 1.0 - c3 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    ratio = 1.0 if abs(1.0 - A2 / q) < 1e-14 and abs(V1) < 1e-14 else (1.0 - A2 / q) / V1
    rho = ratio**2 * V0 / V2 / q
    ddf = 4.0 + (q + 2.0) / (q * rho - 1.0)
    scaling = 1.0 if abs(ddf - 2.0) < 0.01 else ddf * (1.0 - A2 / q) / (ddf - 2.0)
    F = float(diff @ np.linalg.solve(L @ PhiA @ L.T, diff)) / q
    return F, q, float(ddf), float(scaling)
