#!/usr/bin/env bash
# The main job on the embedded default: offline, CPU, demo corpus built from Python stdlib docstrings.
# Installs what is needed, registers the corpus, materializes every asset (train, evaluate, export, deploy),
# prints base vs fine-tuned and the URL of the deployed /v1/embeddings service.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
CORPUS=${CORPUS:-stdlib_docs}
# 30 modules (22 documents after the size filter, 221 test queries) ran in 5 minutes on 2 CPU cores;
# DEMO_DOCS=0 builds all of them (80 documents, 549 test queries: 12 minutes). benchmarks/RESULTS.md has both.
DEMO_DOCS=${DEMO_DOCS:-30}
.venv/bin/embed-pipeline demo-corpus --name "$CORPUS" $([ "$DEMO_DOCS" != 0 ] && echo --max-docs "$DEMO_DOCS")
.venv/bin/dagster asset materialize -m embed_pipeline --select '*' --partition "$CORPUS"
.venv/bin/embed-pipeline report "$CORPUS"
# embedding_service left the model serving (that is its job); `embed-pipeline service stop "$CORPUS"` stops it.
