#!/usr/bin/env bash
# Install, lint and run the whole test suite (what CI runs). Usage: bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,align
source scripts/env.sh
.venv/bin/ruff check src tests benchmarks
# Two workers (pytest-xdist), each taking whole test files (module fixtures are built once): on
# 2 cores much of the suite's time is process start-up and waiting on Flower subprocesses, which
# a second worker overlaps. One torch thread per worker, since two workers of two threads each
# made small models several times slower. FEDVPA_TEST_WORKERS=0 runs everything in this process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q -n "${FEDVPA_TEST_WORKERS:-2}" --dist loadfile "$@"
