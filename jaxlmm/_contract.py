"""Einsum over tiny blocks as broadcast products and sums, not as a batched matrix product.

The per-level algebra of the core contracts q × q blocks (q = 1-3 for most terms) over thousands of
levels, entries or pairs: ``einsum("ji,gjk,kl->gil", Λ, ZᵀZ, Λ)``. ``jnp.einsum`` lowers that to
``dot_general`` with a huge batch and an inner size of 1-3, which XLA:CPU runs as one tiny matrix
product per batch element (or a YNN fusion): on STAR (10,767 levels, q = 1) the leading factor's
contraction and its transpose took 0.9 ms of a 13 ms gradient. As an elementwise product and a sum,
XLA fuses it into one loop.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Largest product of the contracted sizes, and of the sizes of the broadcast product over the
# output's, that ``contract`` computes elementwise; anything larger is a real matrix product.
TINY_CONTRACTION = 16
TINY_EXPANSION = 16


def contract(spec: str, *operands: jax.Array) -> jax.Array:
    """``jnp.einsum(spec, *operands)``, as broadcast products and a sum when the contraction is tiny.

    Falls back to ``jnp.einsum`` when the contracted sizes multiply to more than ``TINY_CONTRACTION``
    or the broadcast product would be more than ``TINY_EXPANSION`` times the output. Explicit
    output only (``"->"``), no ellipsis, no repeated index within one operand.

    >>> import jax.numpy as jnp
    >>> a, b = jnp.ones((5, 2, 3)), jnp.ones((5, 2, 4))
    >>> contract("gqc,gqd->gcd", a, b).shape
    (5, 3, 4)
    """
    inputs, output = spec.replace(" ", "").split("->")
    terms = inputs.split(",")
    sizes: dict[str, int] = {}
    for term, operand in zip(terms, operands, strict=True):
        sizes.update(zip(term, operand.shape, strict=True))
    contracted = [c for c in dict.fromkeys("".join(terms)) if c not in output]
    inner = math.prod(sizes[c] for c in contracted)
    if inner > TINY_CONTRACTION or len(operands) == 1 or (
            inner * math.prod(sizes[c] for c in output) > TINY_EXPANSION * max(
                math.prod(sizes[c] for c in output), max(x.size for x in operands))):
        return jnp.einsum(spec, *operands)
    order = list(output) + contracted
    expanded = []
    for term, operand in zip(terms, operands):
        axes = sorted(range(len(term)), key=lambda a: order.index(term[a]))
        shape = [sizes[c] if c in term else 1 for c in order]
        expanded.append(jnp.transpose(operand, axes).reshape(shape))
    product = expanded[0]
    for x in expanded[1:]:
        product = product * x
    return product.sum(axis=tuple(range(len(output), len(order)))) if contracted else product
