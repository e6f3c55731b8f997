"""jaxlmm's XLA options (`_compile_options`): XLA:CPU's YNN fusions are off in the programs compiled
for one model and left to XLA in batched programs; option names this jaxlib's XLA does not know are
dropped instead of failing every compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm import _compile_options

YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"


@pytest.mark.skipif(YNN_OPTION not in _compile_options.compile_options("default"),
                    reason="this jaxlib has no YNN fusion option, or the backend is not the CPU")
def test_programs_compile_without_ynn_fusions():
    def f(a):
        return jnp.sum(a * a, axis=1), a @ a.T

    a = jnp.ones((300, 7))
    assert "__ynn_fusion" in jax.jit(f).lower(a).compile().as_text()  # XLA's default here
    for kind in ("default", "quick", "classic"):
        program = _compile_options.jit_with(f, kind)
        assert "__ynn_fusion" not in program.lower(a).compile().as_text()
    for kind in ("batch_quick", "batch_classic"):
        program = _compile_options.jit_with(f, kind)
        assert "__ynn_fusion" in program.lower(a).compile().as_text()


def test_unknown_option_names_are_dropped():
    known = {"xla_backend_optimization_level": 0}
    kept = _compile_options.accepted_options({**known, "xla_no_such_option_in_any_xla": True})
    assert kept == known
    program = jax.jit(lambda x: 2 * x, compiler_options=kept)
    assert float(program(np.float32(3.0))) == 6.0


def test_every_option_set_compiles_on_this_jaxlib():
    for kind in _compile_options.CPU_OPTION_SETS:
        program = _compile_options.jit_with(lambda x: x * x + 1, kind)
        assert float(program(np.float32(2.0))) == 5.0
        assert program._cache_size() == 1


def test_unknown_option_set_is_refused():
    with pytest.raises(ValueError, match="unknown compile-option set"):
        _compile_options.jit_with(lambda x: x, "fastest")
