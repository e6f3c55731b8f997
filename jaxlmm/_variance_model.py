"""A log-linear model of the residual variance: σ²ᵢ = σ² exp(dᵢᵀδ) / wᵢ (pure kernels).

``D`` (n × k) holds the rows dᵢ: treatment-coded dummies of a factor (nlme's ``varIdent``: one
variance ratio exp(δ_s) per level against the first) or covariates (``varExp``: σᵢ = σ exp(t xᵢ),
so δ = 2t); wᵢ are the prior weights (1 without). At a given δ the model is the prior-weighted
model with weights wᵢ exp(−dᵢᵀδ), so the deviance is the usual one of the sufficient statistics
recomputed from the rows with those weights — a few segment sums per evaluation, vectorised over
rows and groups — and −Σ log(wᵢ exp(−dᵢᵀδ)) enters it through `SufficientStats.sum_log_weights`.
θ and δ are optimised together.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._crossed import CrossedTerms, crossed_stats
from ._kernels import profiled_deviance, sufficient_stats


class VarianceRows(NamedTuple):
    """The (preconditioned) rows a variance-model objective reduces at each δ."""

    y: jax.Array  # (n,)
    X: jax.Array  # (n, p)
    Z: jax.Array  # (n, q)
    group: jax.Array  # (n,)
    mask: jax.Array  # (n,)
    prior: jax.Array  # (n,) prior weights (ones without)
    D: jax.Array  # (n, k) the variance model's rows
    absent: jax.Array  # (p,) 1.0 for a padding column of X (see `_fit.design_stats`)
    crossed: CrossedTerms | None = None


def row_weights(rows: VarianceRows, delta: jax.Array) -> jax.Array:
    """wᵢ exp(−dᵢᵀδ): each row's precision relative to 1/σ²."""
    return rows.prior * jnp.exp(-(rows.D @ delta))


def variance_stats(rows: VarianceRows, delta: jax.Array, n_groups: int):
    """The sufficient statistics of the model at δ (`SufficientStats`, or `CrossedStats`)."""
    w = row_weights(rows, delta)
    stats = sufficient_stats(rows.y, rows.X, rows.Z, rows.group, rows.mask, n_groups, w)
    stats = stats._replace(XtX=stats.XtX + jnp.diag(rows.absent), n_fixed=rows.X.shape[1] - jnp.sum(rows.absent))
    if rows.crossed is not None:
        stats = crossed_stats(stats, rows.y, rows.X, rows.Z, rows.group, rows.mask * w, rows.crossed)
    return stats


class VarianceObjective(NamedTuple):
    """The profiled deviance in φ = (θ, δ) as a hashable callable f(φ, data), data = (rows, reml,
    free) as `_fit._Objective`'s (``free`` is per θ)."""

    lambda_index: tuple  # nested tuple, as `Design.lambda_index`
    n_groups: int
    forward_hessian: bool | None = None  # as `minimize_newton`'s (None: its default)
    first_step: float | None = None  # as `minimize_newton`'s

    @property
    def n_theta(self) -> int:
        return max(max(row) for row in self.lambda_index) + 1

    def __call__(self, phi, data):
        rows, reml, free = data
        theta, delta = phi[: self.n_theta], phi[self.n_theta:]
        if free is not None:
            theta = jnp.where(free, theta, 0.0)
        stats = variance_stats(rows, delta, self.n_groups)
        return profiled_deviance(theta, stats, jnp.asarray(self.lambda_index), reml)
