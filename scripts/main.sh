#!/usr/bin/env bash
# Install, then run the main job: FedVPA-GP on the embedded synthetic data next to FedAvg-BT.
# Usage: bash scripts/main.sh [extra `fedvpa run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,align
source scripts/env.sh
.venv/bin/fedvpa run "$@"
