#!/usr/bin/env bash
# The multi-seed CPU study (issue 14): `dvc repro` of profiles/cpu_study.yaml in its own clone of this
# checkout's HEAD (.study/), so the default run's params.yaml and dvc.lock stay as they are. Its report,
# summary.json, dvc.lock and wall time land in reports/study/. Interrupted, it resumes where it stopped
# (DVC keeps finished stages and each student's checkpoints in .study/). Runs go to this checkout's MLflow
# store (or MLFLOW_TRACKING_URI), experiment `cpu-study`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=$repo/.study
[ -x .venv/bin/dvc ] || { echo "study: .venv/bin/dvc is missing; run bash scripts/setup.sh first" >&2; exit 1; }
[ -d "$work/.git" ] || git clone -q --no-checkout "$repo" "$work"
git -C "$work" fetch -q "$repo" HEAD
git -C "$work" checkout -q -f --detach FETCH_HEAD
cp profiles/cpu_study.yaml "$work/params.yaml"
cd "$work"
export PATH=$repo/.venv/bin:$PATH MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$repo/mlflow.db}
started=$(date +%s)
dvc repro
seconds=$(( $(date +%s) - started ))
rm -rf "$repo/reports/study.tmp" && mkdir -p "$repo/reports/study.tmp"
cp -r reports/. dvc.lock params.yaml "$repo/reports/study.tmp/"
printf '{"commit": "%s", "wall_seconds_of_last_repro": %d}\n' "$(git rev-parse HEAD)" "$seconds" \
  > "$repo/reports/study.tmp/run.json"
rm -rf "$repo/reports/study" && mv "$repo/reports/study.tmp" "$repo/reports/study"  # never a half-copied report
echo "study: reports/study/ written (last dvc repro: ${seconds} s)"
