"""Multi-process fit_many and fit_datasets (multi-controller JAX on localhost CPU processes): every
process gets all results, in the caller's order, equal member by member to one process's."""

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxlmm

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, warnings
import jax
pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=n, process_id=pid,
                           initialization_timeout=60)
warnings.simplefilter("ignore")
import numpy as np
import jaxlmm
sys.path.insert(0, sys.argv[5])
from test_distributed import responses, datasets
m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
many = m.fit_many(responses(), progress=False)
sets = jaxlmm.fit_datasets("Reaction ~ Days + (Days | Subject)", datasets(), progress=False)
on_first = m.fit_many(responses(), progress=False, results_on=0)
json.dump({"processes": jax.process_count(), "llf": many.llf.tolist(), "beta": many.fe_params.values.tolist(),
           "problems": many.problems.tolist(), "sets_llf": sets.llf.tolist(),
           "on_first": None if on_first is None else on_first.llf.tolist()}, open(out, "w"))
"""


def responses() -> np.ndarray:
    """11 responses (uneven over 2 or 3 processes): simulated ones, one with missing rows, one with no
    observations at all (a member that cannot be fitted)."""
    df = jaxlmm.datasets.load("sleepstudy")
    rng = np.random.default_rng(7)
    Y = df.Reaction.to_numpy()[:, None] + rng.normal(0.0, 25.0, (len(df), 11))
    Y[:40, 3] = np.nan
    Y[:, 8] = np.nan
    return Y


def datasets() -> list:
    df = jaxlmm.datasets.load("sleepstudy")
    rng = np.random.default_rng(3)
    return [df.sample(frac=0.8, random_state=int(rng.integers(1 << 30))) for _ in range(5)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_processes(n: int, tmp_path: Path) -> list[dict]:
    port = _free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(i), str(n), str(port), str(outs[i]), str(ROOT / "tests")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
                              env={"JAXLMM_NO_CACHE": "1", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
             for i in range(n)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module")
def single_process():
    m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
    with pytest.warns(Warning):
        many = m.fit_many(responses(), progress=False)
    sets = jaxlmm.fit_datasets("Reaction ~ Days + (Days | Subject)", datasets(), progress=False)
    return many, sets


@pytest.mark.parametrize("n_processes", [2, 3])
def test_every_process_gets_the_single_process_results(n_processes, tmp_path, single_process):
    many, sets = single_process
    for i, got in enumerate(_run_processes(n_processes, tmp_path)):
        assert got["processes"] == n_processes
        if i == 0:
            np.testing.assert_allclose(got["on_first"], many.llf.to_numpy(), atol=1e-8, equal_nan=True)
        else:
            assert got["on_first"] is None
        np.testing.assert_allclose(got["llf"], many.llf.to_numpy(), atol=1e-8, equal_nan=True)
        np.testing.assert_allclose(got["beta"], many.fe_params.to_numpy(), rtol=1e-8, equal_nan=True)
        assert got["problems"] == many.problems.tolist() and got["problems"][8] != ""
        np.testing.assert_allclose(got["sets_llf"], sets.llf.to_numpy(), atol=1e-8)


def test_an_unreachable_coordinator_is_a_clear_error_within_the_timeout():
    script = ("import jax; jax.distributed.initialize(coordinator_address='localhost:%d', num_processes=2, "
              "process_id=1, initialization_timeout=5)" % _free_port())
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode != 0 and time.perf_counter() - started < 60
    assert "DEADLINE_EXCEEDED" in proc.stderr or "timed out" in proc.stderr.lower() or "unavailable" in proc.stderr.lower()


def test_a_process_that_dies_stops_the_others_with_a_clear_message():
    """Process 1 exits before fitting; process 0, waiting in the gather, is stopped by JAX's coordination
    service once the heartbeat timeout passes, with a message saying that another task died."""
    port = _free_port()
    script = r"""
import os, sys, warnings
import jax
pid = int(sys.argv[1])
jax.distributed.initialize(coordinator_address="localhost:%d", num_processes=2, process_id=pid,
                           initialization_timeout=60, heartbeat_timeout_seconds=5)
if pid == 1:
    os._exit(0)
warnings.simplefilter("ignore")
import numpy as np, jaxlmm
m = jaxlmm.MixedLM.from_formula("Reaction ~ Days + (Days | Subject)", jaxlmm.datasets.load("sleepstudy"))
m.fit_many(np.tile(m.design.y[:, None], (1, 4)), progress=False)
""" % port
    env = {"JAXLMM_NO_CACHE": "1", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    started = time.perf_counter()
    survivor = subprocess.Popen([sys.executable, "-c", script, "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env, cwd=str(ROOT))
    subprocess.run([sys.executable, "-c", script, "1"], env=env, cwd=str(ROOT), timeout=120, capture_output=True)
    _, err = survivor.communicate(timeout=180)
    assert survivor.returncode != 0 and time.perf_counter() - started < 150
    assert "another task died" in err or "stopped sending heartbeats" in err


def test_the_command_line_runs_the_same_under_two_processes(tmp_path):
    df = jaxlmm.datasets.load("sleepstudy")
    Y = responses()[:, :5]
    for i in range(Y.shape[1]):
        df[f"y{i}"] = Y[:, i]
    data = tmp_path / "d.csv"
    df.drop(columns="Reaction").to_csv(data, index=False)
    cli = "import sys; from jaxlmm.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {"JAXLMM_NO_CACHE": "1", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    args = ["fit-many", str(data), "~ Days + (Days | Subject)"]
    one = subprocess.run([sys.executable, "-c", cli, *args, "--out", str(tmp_path / "one.csv")], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", cli, *args, "--out", str(tmp_path / "two.csv"),
                               "--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    import pandas as pd

    a, b = pd.read_csv(tmp_path / "one.csv"), pd.read_csv(tmp_path / "two.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 5 * 6
    np.testing.assert_allclose(b.estimate, a.estimate, rtol=1e-8)
    np.testing.assert_allclose(b.llf, a.llf, atol=1e-8)
