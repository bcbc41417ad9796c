#!/usr/bin/env bash
# GPU smoke check, one command on a CUDA machine:
#   1. every test marked `gpu` (tests/test_gpu_smoke.py: a few steps of every recipe with AMP, channels_last and
#      the view generator on the device, the evaluation protocol on the device, 2-process NCCL DDP when two GPUs
#      are visible; plus the other suites' CUDA tests);
#   2. the throughput table (benchmarks/gpu_throughput.py: network, augmentation, fit and lightly's loop at
#      batch 512 and 1024, and one SOP-sized evaluation), with the targets of issue 27;
#   3. the default profile's `dvc repro` on CUDA in a throw-away clone of this commit, then each stage's wall
#      time from its MLflow run.
# Without CUDA the tests skip and the script stops after them.
#
#     scripts/gpu_smoke.sh            # from the repository root, with .venv set up (scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
"$PYTHON" - <<'PY'
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    print(f"  cuda:{i} {torch.cuda.get_device_name(i)}")
PY
"$PYTHON" -m pytest -m gpu -q -ra tests/ "$@"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "no CUDA device: the gpu tests above skipped, no throughput to print" >&2
    exit 1
fi
"$PYTHON" benchmarks/gpu_throughput.py

CLONE=$(mktemp -d)
trap 'rm -rf "$CLONE"' EXIT
git clone -q "$ROOT" "$CLONE/repo"
cd "$CLONE/repo"
start=$(date +%s)
PATH="$(dirname "$PYTHON"):$PATH" dvc repro
echo "default dvc repro on CUDA: $(( $(date +%s) - start )) s"
"$PYTHON" - <<'PY'
from mlflow import MlflowClient

client = MlflowClient("sqlite:///mlflow.db")
runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], max_results=1000)]
stages = sorted((r.info.end_time - r.info.start_time, r.data.tags["dvc.stage"]) for r in runs
                if "dvc.stage" in r.data.tags and r.info.end_time)
for milliseconds, stage in reversed(stages):
    print(f"  {stage:<50} {milliseconds / 1000:7.1f} s")
PY
