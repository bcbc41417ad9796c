#!/usr/bin/env bash
# Idempotent setup for a fresh Debian machine with Python 3.11: Fashion-MNIST from Debian's package,
# a virtual environment in .venv with the project, its test extra, and the torch build pip finds locally.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the dataset, and PostgreSQL for the team-server tests (they start their own
# throw-away cluster on 127.0.0.1; the package's own cluster is not used).
APT_PACKAGES=""
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || APT_PACKAGES="dataset-fashion-mnist"
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || APT_PACKAGES="$APT_PACKAGES postgresql"
if [ -n "$APT_PACKAGES" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $APT_PACKAGES
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import pipeline, torch, torchvision, lightly, pytorch_metric_learning, flask_wtf, psycopg, onnxruntime, faiss" \
     2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1" -e ".[test]"
  touch .venv/.installed
fi
