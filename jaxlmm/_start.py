"""A start for θ from moments: each random effect's variance estimated from the residuals of the
fixed effects alone, as the ANOVA estimators of variance components do.

For a model column z of a term on factor g, with OLS residuals r and row weights w, level l's
S_l = Σ wᵢ zᵢ rᵢ and Q_l = Σ wᵢ zᵢ² (its rows). If the effect's variance is v and the residuals'
is σ², E[S_l²/Q_l] ≈ v Q_l + σ², so

    v ≈ (Σ_l S_l²/Q_l − L σ̃²) / Σ_l Q_l

over the L levels with Q_l > 0, with σ̃² the residuals' total variance (which overstates σ², so v
errs low). θ starts at the square roots of v / σ², with σ² the total less the effects' shares, on
Λ's diagonal (correlations 0). It ignores the other terms, so it is a start, not an estimate: on
InstEval it gives θ = (0.26, 0.45, 0.09) against the optimum's (0.28, 0.44, 0.07).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._design import Design

THETA_FLOOR = 0.05  # a θ at exactly 0 has no gradient by symmetry: start just off it
RESIDUAL_SHARE_MIN = 0.05  # σ² is at least this share of the residuals' variance


def _column_variance(z: jax.Array, r: jax.Array, w: jax.Array, codes: jax.Array, n_levels: int, total: jax.Array):
    """(v, Σ_l Q_l): the moment estimate of one column's variance, and its weight."""
    S = jax.ops.segment_sum(w * z * r, codes, n_levels)
    Q = jax.ops.segment_sum(w * z * z, codes, n_levels)
    seen = Q > 0
    between = jnp.sum(jnp.where(seen, S * S / jnp.where(seen, Q, 1.0), 0.0))
    weight = jnp.sum(Q)
    return jnp.maximum(between - jnp.sum(seen) * total, 0.0) / jnp.maximum(weight, 1e-300), weight


def moment_start(design: Design, residual: jax.Array, row_weights: jax.Array) -> jax.Array:
    """θ from moments (module docstring); ``residual``: y minus its weighted least-squares fit on X."""
    n = jnp.sum(row_weights)
    total = jnp.sum(row_weights * residual * residual) / jnp.maximum(n, 1.0)
    columns = []  # (position on Λ's diagonal, z, codes, levels)
    for c in range(design.Z.shape[1]):
        columns.append((c, design.Z[:, c], design.group, design.n_groups))
    crossed = design.crossed
    if crossed is not None:
        layout = crossed.layout
        for k, ((start, size), levels) in enumerate(zip(layout.columns, layout.level_counts)):
            codes = crossed.block[:, k] - int(layout.offsets[k])
            for c in range(size):
                columns.append((start + c, crossed.Z[:, k, c], codes, levels))
    estimates = [(pos, *_column_variance(z, residual, row_weights, codes, levels, total))
                 for pos, z, codes, levels in columns]
    explained = sum(v * weight for _, v, weight in estimates) / jnp.maximum(n, 1.0)
    sigma2 = jnp.maximum(total - explained, RESIDUAL_SHARE_MIN * total)
    idx = design.lambda_index_array
    theta = jnp.zeros(design.n_theta, residual.dtype)
    for pos, v, _ in estimates:
        j = int(idx[pos, pos])
        if j >= 0:
            theta = theta.at[j].set(jnp.maximum(jnp.sqrt(v / sigma2), THETA_FLOOR))
    return theta
