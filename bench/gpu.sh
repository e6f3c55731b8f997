#!/usr/bin/env bash
# GPU benchmark, ready to run on a machine with one GPU (121 s on one H200, 2026-11-28):
#   bash bench/gpu.sh            # accelerator and CPU figures -> bench/results/gpu.md, gpu.json
#   bash bench/gpu.sh --smoke    # tiny sizes on the CPU: checks that the script runs (the tests do this)
# Needs jaxlmm installed with a CUDA build of jaxlib for the GPU figures (pip install -e . "jax[cuda12]").
# Set PYTHON to choose the interpreter (default: .venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
exec "$PYTHON" bench/gpu_bench.py "$@"
