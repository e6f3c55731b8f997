"""Traced programs saved on disk (`_program_cache`): written once, loaded with the same result, keyed on
what they depend on, and a damaged entry falls back to tracing."""

import numpy as np
import pytest

import jaxlmm
from jaxlmm import _program_cache


@pytest.fixture
def program_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(_program_cache, "_folder", lambda: tmp_path)
    monkeypatch.setattr(_program_cache, "_loaded", {})
    monkeypatch.setattr(_program_cache, "_uses", {})  # first fits of a shape: the bucket's saved program
    return tmp_path


def _fit(formula="Reaction ~ Days + (Days | Subject)", reml=True, data="sleepstudy"):
    return jaxlmm.MixedLM.from_formula(formula, jaxlmm.datasets.load(data)).fit(reml=reml)


def test_a_saved_program_is_loaded_and_gives_the_same_fit(program_folder):
    first = _fit()
    entries = list(program_folder.glob("*.exported"))
    assert len(entries) == 1
    _program_cache._loaded.clear()  # as a new process: the program comes from the file
    again = _fit()
    assert list(program_folder.glob("*.exported")) == entries
    assert again.llf == first.llf
    np.testing.assert_array_equal(again.fe_params, first.fe_params)
    np.testing.assert_array_equal(again.cov_vcomp, first.cov_vcomp)


def test_the_key_separates_buckets_but_not_reml_or_structures_of_one_bucket(program_folder):
    _fit()
    _fit(reml=False)  # REML is data: the same program
    _fit("Reaction ~ Days + (Days || Subject)")  # the same Λ template, a θ held at 0
    assert len(list(program_folder.glob("*.exported"))) == 1
    _fit("strength ~ 1 + (1 | batch/cask)", data="pastes")  # tied θ: its own Λ
    assert len(list(program_folder.glob("*.exported"))) == 2


def test_a_damaged_entry_falls_back_to_tracing(program_folder):
    first = _fit()
    (entry,) = program_folder.glob("*.exported")
    entry.write_bytes(b"not a program")
    _program_cache._loaded.clear()
    assert _fit().llf == pytest.approx(first.llf, abs=1e-10)
