#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds the rome-collapse program
# only (not the tests), puts it on PATH (scripts/install.sh) and runs configs/demo.json (ROME vs
# C-ROME on a random GPT-2 the tool creates itself; nothing is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target rome-collapse
bash scripts/install.sh
mkdir -p results
./build/rome-collapse edit --config configs/demo.json --out results/demo.json
