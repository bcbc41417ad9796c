#!/usr/bin/env bash
# The hyperparameter search of a profile (issue 29): `python -m pipeline.search` on profile PROFILE in its own
# clone of this checkout's HEAD (.search/PROFILE/), so this checkout's params.yaml stays as it is. Its trials,
# page and wall time land in reports/search/PROFILE/, the chosen values in profiles/PROFILE_tuned.yaml (the
# study then runs: bash scripts/study.sh PART PROFILE_tuned).
#   bash scripts/search.sh [PROFILE] [ARGS...]   PROFILE: cpu_study by default; ARGS go to pipeline.search
# More workers: run `python -m pipeline.search --worker N` in the same clone, or on other machines with the
# same profile and `search.storage` set to the team PostgreSQL (docs/search.md). Interrupted, it resumes: the
# finished trials are in the study's storage (.search/PROFILE/outputs/search/optuna.db by default).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
profile=${1:-cpu_study}
shift || true
[ -x .venv/bin/python ] || { echo "search: .venv/bin/python is missing; run bash scripts/setup.sh first" >&2; exit 1; }
work=$repo/.search/$profile
[ -d "$work/.git" ] || git clone -q --no-checkout "$repo" "$work"
git -C "$work" fetch -q "$repo" HEAD
git -C "$work" checkout -q -f --detach FETCH_HEAD
cd "$work"
export PATH=$repo/.venv/bin:$PATH MLFLOW_TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$repo/mlflow.db}
python -m pipeline.profiles "$profile" >/dev/null
started=$(date +%s)
python -m pipeline.search "$@"
seconds=$(( $(date +%s) - started ))
printf '{"commit": "%s", "profile": "%s", "wall_seconds": %d}\n' "$(git rev-parse HEAD)" "$profile" "$seconds" \
  > "reports/search/$profile/run.json"
rm -rf "$repo/reports/search/$profile.tmp" && mkdir -p "$repo/reports/search"
cp -r "reports/search/$profile" "$repo/reports/search/$profile.tmp"
rm -rf "$repo/reports/search/$profile" && mv "$repo/reports/search/$profile.tmp" "$repo/reports/search/$profile"
cp "profiles/${profile}_tuned.yaml" "$repo/profiles/"
echo "search: reports/search/$profile/ and profiles/${profile}_tuned.yaml written (${seconds} s)"
