"""`jaxlmm._contract.contract` equals ``jnp.einsum``, with its derivatives, and lowers tiny
contractions without a ``dot_general``; XLA:CPU's YNN fusions are off in jaxlmm's programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm import _config, float64
from jaxlmm._contract import contract

# (spec, shapes): the core's contractions, at q = 1, 2, 3 and with the padded widths they meet.
CASES = [
    ("ji,gjk,kl->gil", [(1, 1), (50, 1, 1), (1, 1)]),
    ("ji,gjk,kl->gil", [(3, 3), (50, 3, 3), (3, 3)]),
    ("ji,gjc->gic", [(2, 2), (40, 2, 5)]),
    ("eij,ejk,ekl->eil", [(60, 2, 2), (60, 2, 1), (60, 1, 1)]),
    ("pia,pib->pab", [(70, 1, 2), (70, 1, 2)]),
    ("eia,eic->eac", [(30, 2, 3), (30, 2, 6)]),
    ("gij,gbjk,bkl->gibl", [(9, 1, 1), (9, 4, 1, 1), (4, 1, 1)]),
    ("gqc,gqd->cd", [(200, 2, 4), (200, 2, 4)]),  # contracts over the levels: einsum
    ("ksa,ksb->kab", [(3, 37, 20), (3, 37, 20)]),  # a real matrix product: einsum
    ("ij,gj->gi", [(2, 2), (25, 2)]),
    ("aij,aj->ai", [(12, 3, 3), (12, 3)]),
]


@pytest.mark.parametrize("spec,shapes", CASES)
def test_contract_equals_einsum_with_derivatives(spec, shapes):
    rng = np.random.default_rng(len(spec) + sum(map(sum, shapes)))
    with float64():
        operands = [jnp.asarray(rng.normal(size=s)) for s in shapes]
        np.testing.assert_allclose(contract(spec, *operands), jnp.einsum(spec, *operands), rtol=1e-13, atol=1e-13)
        weights = jnp.asarray(rng.normal(size=jnp.einsum(spec, *operands).shape))
        grads = jax.grad(lambda *ops: jnp.sum(weights * contract(spec, *ops)), argnums=tuple(range(len(shapes))))
        expected = jax.grad(lambda *ops: jnp.sum(weights * jnp.einsum(spec, *ops)), argnums=tuple(range(len(shapes))))
        for got, want in zip(grads(*operands), expected(*operands)):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        batched = jax.vmap(lambda first: contract(spec, first, *operands[1:]))(jnp.stack([operands[0]] * 2))
        np.testing.assert_allclose(batched[1], jnp.einsum(spec, *operands), rtol=1e-13, atol=1e-13)


def test_tiny_contractions_lower_without_a_matrix_product():
    with float64():
        lam, ztz = jnp.ones((2, 2)), jnp.ones((500, 2, 2))
        tiny = jax.jit(lambda a, b: contract("ji,gjk,kl->gil", a, b, a)).lower(lam, ztz).as_text()
        big = jax.jit(lambda a: contract("gqc,gqd->cd", a, a)).lower(ztz).as_text()
    assert "dot_general" not in tiny
    assert "dot_general" in big


@pytest.mark.skipif(not _config.YNN_FUSIONS_OFF, reason="this jaxlib has no YNN fusion option")
def test_programs_compile_without_ynn_fusions():
    def f(a):
        return jnp.sum(a * a, axis=1), a @ a.T

    a = jnp.ones((300, 7))
    assert "__ynn_fusion" in jax.jit(f).lower(a).compile().as_text()  # XLA's default here
    for options in (_config.DEFAULT_OPTIONS, _config.QUICK_COMPILE_OPTIONS, _config.CLASSIC_EMITTER_OPTIONS):
        assert "__ynn_fusion" not in jax.jit(f, compiler_options=options).lower(a).compile().as_text()
