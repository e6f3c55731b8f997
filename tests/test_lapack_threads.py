"""jaxlib's LAPACK runs on one thread while jaxlmm's programs run, and the user's setting comes back."""

import threading

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

import jaxlmm
from jaxlmm import _lapack_threads
from jaxlmm._lapack_threads import one_lapack_thread


def _threads():
    """Thread counts of the pools the scope limits (jaxlib's LAPACK: SciPy's OpenBLAS in a pip install)."""
    return [pool.get() for pool in _lapack_threads.lapack_pools()]


@pytest.fixture
def enabled(monkeypatch):
    for name in _lapack_threads._USER_SETTINGS + ("JAXLMM_LAPACK_THREADS",):
        monkeypatch.delenv(name, raising=False)
    pools = _lapack_threads.lapack_pools()
    if not pools:
        pytest.skip("no OpenBLAS library besides NumPy's is loaded")
    before = _threads()
    for pool in pools:
        pool.set(2)  # a user's setting of 2 threads, restored by the scope
    yield
    for pool, threads in zip(pools, before):
        pool.set(threads)


def test_one_thread_inside_the_scope_and_the_setting_restored_after(enabled):
    before = _threads()
    with one_lapack_thread():
        assert all(n == 1 for n in _threads())
        with one_lapack_thread():  # nested: still one
            assert all(n == 1 for n in _threads())
        assert all(n == 1 for n in _threads())
    assert _threads() == before == [2] * len(before)


def test_concurrent_scopes_restore_once_the_last_one_leaves(enabled):
    inside, release = threading.Barrier(3), threading.Event()
    seen = []

    def work():
        with one_lapack_thread():
            inside.wait()
            release.wait()
            seen.append(_threads())

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    inside.wait()  # both threads are inside their scopes
    assert all(n == 1 for n in _threads())
    release.set()
    for w in workers:
        w.join()
    assert all(all(n == 1 for n in s) for s in seen)
    assert all(n == 2 for n in _threads())


@pytest.mark.parametrize("name,value", [("OPENBLAS_NUM_THREADS", "2"), ("OMP_NUM_THREADS", "2"),
                                        ("JAXLMM_LAPACK_THREADS", "default")])
def test_a_users_choice_of_threads_is_left_alone(enabled, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with one_lapack_thread():
        assert all(n == 2 for n in _threads())


def test_numpys_own_blas_is_left_alone():
    np.linalg.cholesky(np.eye(3))  # loads NumPy's BLAS if it has its own
    numpy_pools = [info["filepath"] for info in ThreadpoolController().info() if "numpy" in info["filepath"]]
    limited = [pool.filepath for pool in _lapack_threads.lapack_pools()]
    assert not set(numpy_pools) & set(limited)


def test_a_fit_of_a_crossed_model_restores_the_setting(enabled):
    before = _threads()
    r = jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)",
                                    jaxlmm.datasets.load("penicillin")).fit()
    assert r.converged and _threads() == before


def test_fit_arrays_on_a_crossed_design_runs_in_the_scope_and_under_jit_outside_it(enabled, monkeypatch):
    """Called on data, `fit_arrays` of a crossed design runs its program on one LAPACK thread; traced
    (inside the user's own `jax.jit`), it only traces, and the setting is the user's throughout."""
    import jax

    design = jaxlmm.MixedLM.from_formula("diameter ~ 1 + (1 | plate) + (1 | sample)",
                                         jaxlmm.datasets.load("penicillin")).design
    entered = []
    original = _lapack_threads.one_lapack_thread

    def recording(needed=True):
        entered.append(needed)
        return original(needed)

    monkeypatch.setattr("jaxlmm._fit.one_lapack_thread", recording)
    before = _threads()
    with jaxlmm.float64():
        fit = jaxlmm.fit_arrays(design)
        assert entered == [True] and _threads() == before
        traced = jax.jit(lambda d: jaxlmm.fit_arrays(d).llf)(design)
    assert len(entered) == 1 and _threads() == before
    assert float(traced) == pytest.approx(float(fit.llf), abs=1e-9)


def test_a_scope_that_is_not_needed_leaves_the_setting_and_does_not_count(enabled):
    before = _threads()
    with one_lapack_thread(False):
        assert _threads() == before
        with one_lapack_thread():  # the first scope that limits is this one, and it restores on exit
            assert all(n == 1 for n in _threads())
        assert _threads() == before
