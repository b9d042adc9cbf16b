#!/usr/bin/env bash
# The main job on the embedded default: offline, CPU, demo corpus built from Python stdlib docstrings.
# Installs what is needed, registers the corpus, materializes every asset, prints base vs fine-tuned.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
CORPUS=${CORPUS:-stdlib_docs}
.venv/bin/embed-pipeline demo-corpus --name "$CORPUS"
.venv/bin/dagster asset materialize -m embed_pipeline --select '*' --partition "$CORPUS"
.venv/bin/embed-pipeline report "$CORPUS"
