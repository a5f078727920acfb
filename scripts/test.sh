#!/usr/bin/env bash
# Install, lint and run the whole test suite (what CI runs). Usage: bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,align
source scripts/env.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
