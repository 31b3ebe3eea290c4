#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): one table of VQGAN, BART and GRU4Rec throughput
# on the GPU in bf16 and on the CPU for the ratio. `--tiny`: CPU only, tiny models, a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" benchmarks/gpu_check.py "$@"
