#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole test suite (CTest + GoogleTest).
# Tests read ../shared (golden values, models, data) and skip with a message where it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/build.sh
ctest --test-dir build --output-on-failure -j"$(nproc)"
