#!/usr/bin/env bash
# Create .venv and install the project on CPU. Sourced by demo.sh and test.sh.
# torch is installed first, pinned to the CPU build, so the project's `torch` requirement pulls no CUDA packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
quiet_pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet_pip install -q --upgrade pip
quiet_pip install -q "torch==2.13.0"
# The k8s extra (dagster-k8s, the kubernetes client; no torch, no CUDA) so that the k8s-mode tests run too.
quiet_pip install -q -e ".[dev,k8s]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.dagster}"
mkdir -p "$DAGSTER_HOME"
[ -e "$DAGSTER_HOME/dagster.yaml" ] || cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
