#!/usr/bin/env bash
# GPU smoke check, one command on a CUDA machine: every test marked `gpu` (tests/test_gpu_smoke.py: a few
# steps of every recipe with AMP, channels_last and kornia on the device, feature extraction and k-means NMI
# on CUDA, 2-process NCCL DDP when two GPUs are visible; plus the other suites' CUDA tests), then a short
# throughput print (benchmarks/gpu_throughput.py). Without CUDA the tests skip and the script stops there.
#
#     scripts/gpu_smoke.sh            # from the repository root, with .venv set up (scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
PY
"$PYTHON" -m pytest -m gpu -q -ra tests/ "$@"
if "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    "$PYTHON" benchmarks/gpu_throughput.py
else
    echo "no CUDA device: the gpu tests above skipped, no throughput to print" >&2
    exit 1
fi
