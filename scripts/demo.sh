#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and runs configs/demo.json
# (ROME vs C-ROME on a random GPT-2 the tool creates itself; nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
mkdir -p results
./build/rome-collapse edit --config configs/demo.json --out results/demo.json
