"""Test-session hygiene.

Every compiled XLA:CPU executable holds memory mappings (about 1,000 for one fit and its summary),
and the kernel allows 65,530 per process (vm.max_map_count). The whole suite compiles enough
programs to approach that limit, and going over it makes XLA crash (a segfault while compiling or
loading from the cache). So compiled programs are dropped after each test module.
"""

import gc

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs_after_module():
    yield
    jax.clear_caches()
    gc.collect()
