"""The library's guard against the kernel's memory-map limit (`jaxlmm._memory_maps`)."""

from __future__ import annotations

import warnings

import pytest

import jaxlmm
from jaxlmm import _memory_maps, _program_cache

pytestmark = pytest.mark.skipif(_memory_maps.map_count() is None, reason="needs /proc/self/maps")


def test_counts_are_read():
    assert _memory_maps.map_count() > 0
    limit = _memory_maps.map_limit()
    assert limit is None or limit > 1000


def test_near_the_limit_the_next_fit_clears_compiled_programs(monkeypatch):
    df = jaxlmm.datasets.load("dyestuff")
    model = jaxlmm.MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", df)
    first = model.fit()
    assert len(_program_cache._loaded) > 0
    # Pretend the process is near the limit: any count is above a fraction of 0.
    monkeypatch.setattr(_memory_maps, "LIMIT_FRACTION", 0.0)
    other = jaxlmm.MixedLM.from_formula("strength ~ 1 + (1 | batch/cask)", jaxlmm.datasets.load("pastes"))
    other.fit()  # another shape bucket: compiles a new program, and the listener marks the process
    assert _memory_maps._state["near_limit"]
    cleared = []
    real_clear = _memory_maps.jax.clear_caches
    monkeypatch.setattr(_memory_maps.jax, "clear_caches", lambda: (cleared.append(1), real_clear()))
    with pytest.warns(jaxlmm.ResourceLimitWarning, match="max_map_count"):
        again = model.fit()
    assert cleared == [1]
    assert again.llf == pytest.approx(first.llf, abs=1e-10)  # compiled again, same answer
    _memory_maps._state["near_limit"] = False


def test_nothing_happens_below_the_limit():
    _memory_maps._state["near_limit"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxlmm.ResourceLimitWarning)
        assert _memory_maps.release_if_needed() is False


def test_near_the_limit_fit_arrays_on_data_clears_compiled_programs(monkeypatch):
    """`fit_arrays` called on data is an entry point too: a loop over many shapes (or over
    ``max_iter``, a static argument) compiles a program each time."""
    design = jaxlmm.MixedLM.from_formula("Yield ~ 1 + (1 | Batch)", jaxlmm.datasets.load("dyestuff")).design
    with jaxlmm.float64():
        first = jaxlmm.fit_arrays(design)
        monkeypatch.setitem(_memory_maps._state, "near_limit", True)  # as a compilation near the limit marks it
        monkeypatch.setattr(_memory_maps, "LIMIT_FRACTION", 0.0)  # and the count is still above it
        cleared = []
        real_clear = _memory_maps.jax.clear_caches
        monkeypatch.setattr(_memory_maps.jax, "clear_caches", lambda: (cleared.append(1), real_clear()))
        with pytest.warns(jaxlmm.ResourceLimitWarning, match="max_map_count"):
            again = jaxlmm.fit_arrays(design)
    assert cleared == [1]
    assert float(again.llf) == pytest.approx(float(first.llf), abs=1e-10)  # compiled again, same answer
