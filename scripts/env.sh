# Environment for Flower and the offline model loading (sourced by the scripts and CI).
# The venv first on PATH: `flwr run` starts flower-superlink / flower-superexec by name. The
# repository is found from this file, so `source /path/to/fedvpa/scripts/env.sh` works from any
# directory (bash and zsh; plain sh falls back to the current directory).
_fedvpa_root="$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." 2>/dev/null && pwd)"
[ -f "$_fedvpa_root/scripts/env.sh" ] || _fedvpa_root="$(pwd)"
export PATH="$_fedvpa_root/.venv/bin:$PATH"
unset _fedvpa_root
export FLWR_TELEMETRY_ENABLED=0
export FLWR_DISABLE_UPDATE_CHECK=1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TOKENIZERS_PARALLELISM=false
export FEDVPA_CACHE="${FEDVPA_CACHE:-$HOME/.cache/fedvpa}"
export FLWR_HOME="${FLWR_HOME:-$FEDVPA_CACHE/flwr-home}"
mkdir -p "$FEDVPA_CACHE" "$FLWR_HOME"
export RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
