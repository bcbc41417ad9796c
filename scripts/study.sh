#!/usr/bin/env bash
# The multi-seed CPU study (issue 14): `dvc repro` of the cpu_study profile, whole or one setting at a
# time, in its own clone of this checkout's HEAD (.study/PART/), so the default run's params.yaml and
# dvc.lock stay as they are. Its report, summary.json, dvc.lock and wall time land in reports/study/PART/.
#   bash scripts/study.sh [PART] [PROFILE]   PART: all (default), self_supervised, metric_learning, self_taught,
#   classification
#   PROFILE: cpu_study (default; report in reports/study/PART/) or another, e.g. cpu_study_tuned, the values
#   `bash scripts/search.sh` chose on validation (report in reports/PROFILE/PART/, clone in .study/PROFILE-PART/)
# A part is one setting with every seed (scripts/study_profile.py composes profiles/cpu_study.yaml over the
# default params.yaml and keeps that setting): each fits a session on a slow 2-core
# machine where the whole study does not. Interrupted, a part resumes where it stopped (DVC keeps finished
# stages and each student's checkpoints in .study/PART/). Runs go to this checkout's MLflow store (or
# MLFLOW_TRACKING_URI), experiment `cpu-study`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
part=${1:-all}
study=${2:-cpu_study}
[ -x .venv/bin/dvc ] || { echo "study: .venv/bin/dvc is missing; run bash scripts/setup.sh first" >&2; exit 1; }
profile=$(mktemp)
trap 'rm -f "$profile"' EXIT
.venv/bin/python scripts/study_profile.py "$part" "$study" > "$profile"  # checks the part and the profile first
work=$repo/.study/$part
reports=$repo/reports/study
if [ "$study" != cpu_study ]; then work=$repo/.study/$study-$part; reports=$repo/reports/$study; fi
[ -d "$work/.git" ] || git clone -q --no-checkout "$repo" "$work"
git -C "$work" fetch -q "$repo" HEAD
git -C "$work" checkout -q -f --detach FETCH_HEAD
cp "$profile" "$work/params.yaml"
cd "$work"
export PATH=$repo/.venv/bin:$PATH MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$repo/mlflow.db}
started=$(date +%s)
dvc repro
seconds=$(( $(date +%s) - started ))
out=$reports/$part
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
# What the report stage writes (pipeline/stage_spec.py REPORT_FILES), not the committed studies, searches and
# ablations that reports/ also holds
for path in $(python -c "from pipeline.stage_spec import REPORT_FILES; print(*REPORT_FILES.values())"); do
  cp -r "$path" "$out.tmp/"
done
cp dvc.lock params.yaml "$out.tmp/"
printf '{"commit": "%s", "profile": "%s", "part": "%s", "wall_seconds_of_last_repro": %d}\n' "$(git rev-parse HEAD)" \
  "$study" "$part" "$seconds" \
  > "$out.tmp/run.json"
rm -rf "$out" && mv "$out.tmp" "$out"  # never a half-copied report
echo "study: $out/ written (last dvc repro: ${seconds} s)"
