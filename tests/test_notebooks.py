"""Execute every notebook in notebooks/ with nbclient; any cell error fails the test.

The kernel is the "python3" kernelspec; jupyter_client starts it with this interpreter (a kernelspec
whose argv starts with "python" is run by ``sys.executable``), so the notebooks use this
environment's jaxlmm. ``JAXLMM_NB_SMALL=1`` asks notebooks to shrink their workloads (e.g. fewer
simulated responses). The notebooks assert their own claims (agreement with lme4, invariances), so
running them checks the text as well as the code. Committed notebooks must have no outputs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT = 300


def test_notebooks_exist():
    names = [p.name for p in PATHS]
    for expected in ["01_quickstart.ipynb", "02_ols_to_mixed.ipynb", "03_repeated_measures.ipynb",
                     "04_many_models_and_gradients.ipynb"]:
        assert expected in names


def test_kernel_runs_this_interpreter():
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    cmd = km.format_kernel_cmd()
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve(), cmd


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("JAXLMM_NB_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
        allow_errors=False,
    )
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:  # the message holds the traceback
        pytest.fail(f"{path.name} failed:\n{err}")
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 1, f"{path.name} displayed no figure"
    print(f"{path.name}: {elapsed:.1f} s, {images} figures")
