"""bench/gpu.sh runs (smoke mode: tiny sizes on the CPU), so that it works when a GPU is lent."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_in_smoke_mode(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", "--out", str(tmp_path)],
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "gpu.md").read_text()
    assert "smoke run" in report
    for job in ("fit_many", "groups x 10 rows", "gradient through a sleepstudy fit", "InstEval"):
        assert job in report
    cpu = json.loads((tmp_path / "gpu.json").read_text())["results"]["cpu"]
    assert cpu["platform"] == "cpu" and cpu["many"]["models_per_s"] > 0
    assert all(fit["llf"] < 0 for fit in cpu["insteval"].values())
