#!/usr/bin/env bash
# Install, lint and run the whole test suite (what CI runs). Usage: bash scripts/test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,align
source scripts/env.sh
.venv/bin/ruff check src tests benchmarks
# Two workers (pytest-xdist), each taking whole test files (module fixtures are built once), in
# collection order (tests/conftest.py puts the files with slow tests first): in one process the
# suite used about 0.7 of the 2 cores, waiting on subprocesses, Ray and client timeouts, which a
# second worker overlaps. Not three: a localhost deployment's ClientApps then started too slowly
# for its client timeout. One torch thread per worker, since workers of two threads each made
# small models several times slower. FEDVPA_TEST_WORKERS=0 runs everything in this process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q -n "${FEDVPA_TEST_WORKERS:-2}" --dist loadfile \
  --no-loadscope-reorder "$@"
