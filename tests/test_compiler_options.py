"""XLA:CPU's YNN fusions are off in the programs jaxlmm compiles for one model
(`_config.YNN_FUSIONS_OFF`), and left to XLA in batched programs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxlmm import _config


@pytest.mark.skipif(not _config.YNN_FUSIONS_OFF, reason="this jaxlib has no YNN fusion option")
def test_programs_compile_without_ynn_fusions():
    def f(a):
        return jnp.sum(a * a, axis=1), a @ a.T

    a = jnp.ones((300, 7))
    assert "__ynn_fusion" in jax.jit(f).lower(a).compile().as_text()  # XLA's default here
    for options in (_config.DEFAULT_OPTIONS, _config.QUICK_COMPILE_OPTIONS, _config.CLASSIC_EMITTER_OPTIONS):
        assert "__ynn_fusion" not in jax.jit(f, compiler_options=options).lower(a).compile().as_text()
    for options in (_config.BATCH_QUICK_OPTIONS, _config.BATCH_CLASSIC_OPTIONS):
        assert "__ynn_fusion" in jax.jit(f, compiler_options=options).lower(a).compile().as_text()
