#!/usr/bin/env bash
# Install, then run the main job: FedVPA-GP on the embedded synthetic data next to FedAvg-BT.
# Usage: bash scripts/main.sh [extra `fedvpa run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,align
source scripts/env.sh
# 10 clients per simulated node: one message per node and phase instead of one per client;
# every client trains and is scored exactly as with one node each (README, "Two commands")
.venv/bin/fedvpa run --set clients-per-node=10 "$@"
