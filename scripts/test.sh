#!/usr/bin/env bash
# Install the project on CPU and run the test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
export DAGSTER_HOME="$(mktemp -d)"   # tests never touch the user's instance
.venv/bin/ruff check embed_pipeline embed_pipeline_tests benchmarks
.venv/bin/python -m pytest "$@"
