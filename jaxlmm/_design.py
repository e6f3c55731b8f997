"""The design pytree: the arrays a fit needs (y, X, Z, group codes, mask) and the Λ pattern."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, NamedTuple

import jax
import numpy as np

from ._crossed import CrossedTerms


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Design:
    """Arrays of one LMM: ``y`` (n,), ``X`` (n, p), ``Z`` (n, q), ``group`` codes 0..m-1 (n,), ``mask`` (n,).

    ``lambda_index`` (nested tuple) says which θ fills each entry of the lower-triangular
    relative covariance factor Λ (-1: structurally zero): the leading factor's q × q block first,
    then one block per further term of a crossed model, whose rows are held in ``crossed``
    (`CrossedTerms`; None for one grouping factor). ``weights`` (n,) are lme4's prior weights (row i's
    residual variance is σ²/wᵢ; None: all 1). ``resid_design`` (n, k) holds the rows dᵢ of a residual
    variance model σ²ᵢ = σ² exp(dᵢᵀδ)/wᵢ (`_variance_model`; None: none). ``n_groups`` and ``lambda_index`` are
    static: changing them recompiles; changing the arrays does not. ``replace`` returns a copy
    with some arrays swapped, for differentiating a fit with respect to them.

    Examples:
        >>> import jaxlmm
        >>> df = jaxlmm.datasets.load("sleepstudy")
        >>> d = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", df).design
        >>> d.X.shape, d.Z.shape, d.n_groups, d.n_theta
        ((180, 2), (180, 2), 18, 3)
    """

    y: jax.Array
    X: jax.Array
    Z: jax.Array
    group: jax.Array
    mask: jax.Array
    n_groups: int = dataclasses.field(metadata=dict(static=True))
    lambda_index: tuple = dataclasses.field(metadata=dict(static=True))
    crossed: CrossedTerms | None = None
    weights: jax.Array | None = None
    resid_design: jax.Array | None = None

    def replace(self, **changes: Any) -> "Design":
        """A copy with the named arrays replaced (``y``, ``X``, ``Z``, ``mask``, ``weights``)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_theta(self) -> int:
        return _pattern(self.lambda_index).n_theta

    @property
    def lambda_index_array(self) -> np.ndarray:
        return _pattern(self.lambda_index).index.copy()

    @property
    def n_delta(self) -> int:
        """The number of residual-variance parameters δ (0 without a variance model)."""
        return 0 if self.resid_design is None else int(np.shape(self.resid_design)[1])

    @property
    def theta_lower(self) -> np.ndarray:
        """0 for θ on Λ's diagonal (standard deviations), -inf for off-diagonal θ."""
        return np.where(_pattern(self.lambda_index).on_diagonal, 0.0, -np.inf)

    @property
    def theta_start(self) -> np.ndarray:
        """lme4's start: Λ = I."""
        return _pattern(self.lambda_index).on_diagonal.astype(np.float64)

    @property
    def theta_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, col) of the first Λ entry each θ fills."""
        rows, cols = _pattern(self.lambda_index).positions
        return rows.copy(), cols.copy()


class _Pattern(NamedTuple):
    index: np.ndarray
    n_theta: int
    positions: tuple[np.ndarray, np.ndarray]
    on_diagonal: np.ndarray


@lru_cache(maxsize=1024)
def _pattern(lambda_index: tuple) -> _Pattern:
    """What `Design`'s properties derive from its static Λ pattern, computed once per pattern (callers
    get copies): every warm fit reads some of them, and the four took 90 µs, against 5 µs now, of a
    0.5-0.6 ms sleepstudy fit."""
    index = np.asarray(lambda_index, dtype=np.int32)
    rows, cols = theta_positions(index)
    pattern = _Pattern(index, int(np.max(index)) + 1, (rows, cols), rows == cols)
    for array in (index, rows, cols, pattern.on_diagonal):
        array.flags.writeable = False
    return pattern


def theta_positions(lambda_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the first entry of Λ that each θ fills (Λ's θ-index pattern ``lambda_index``)."""
    idx = np.asarray(lambda_index)
    first = [np.argwhere(idx == k)[0] for k in range(int(idx.max()) + 1)]
    return np.asarray([r for r, _ in first]), np.asarray([c for _, c in first])


def theta_on_diagonal(lambda_index: np.ndarray) -> np.ndarray:
    """Per θ: whether it sits on Λ's diagonal (a relative standard deviation, bounded below by 0)."""
    rows, cols = theta_positions(lambda_index)
    return rows == cols


def make_design(y, X, Z, group, n_groups: int, lambda_index, mask=None, dtype=np.float64,
                crossed: CrossedTerms | None = None, weights=None, resid_design=None) -> Design:
    """Build a `Design` from array-likes (no checks: the model layer validates user input).

    The arrays are kept as NumPy arrays (JAX converts them when a fit is called, and they are
    valid leaves for jit, vmap and grad).
    """
    y = np.asarray(y, dtype)
    if mask is None:
        mask = np.ones(y.shape[0], dtype)
    return Design(
        y=y,
        X=np.asarray(X, dtype),
        Z=np.asarray(Z, dtype),
        group=np.asarray(group, np.int32),
        mask=np.asarray(mask, dtype),
        n_groups=int(n_groups),
        lambda_index=tuple(tuple(int(v) for v in row) for row in np.asarray(lambda_index)),
        crossed=None if crossed is None else dataclasses.replace(crossed, Z=np.asarray(crossed.Z, dtype)),
        weights=None if weights is None else np.asarray(weights, dtype),
        resid_design=None if resid_design is None else np.asarray(resid_design, dtype),
    )
