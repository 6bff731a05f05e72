#!/usr/bin/env bash
# Run here, on a Debian machine that reaches the package registry, before scripts/gpu-check.sh runs
# on a GPU machine that reaches nothing. Gathers into .gpu/ (git-ignored):
#   .gpu/debs/    the Debian packages of every build dependency except libtorch (the GPU machine
#                 builds against its own PyTorch's libtorch); gpu-check.sh unpacks them into /tmp
#   .gpu/shared/  the parts of ../shared that the golden tests and the benchmarks read (~45 MB)
# Usage: bash scripts/gpu-prepare.sh [SHARED_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared}
[ -f "$shared/reference/golden_reference.json" ] || { echo "gpu-prepare: $shared is not the shared/ folder" >&2; exit 2; }

rm -rf .gpu
mkdir -p .gpu/debs .gpu/shared/reference .gpu/shared/tokenizers .gpu/shared/data .gpu/shared/models
# Headers, CMake/pkg-config files and the shared libraries they link (zlib and bzip2 are on every
# Ubuntu/Debian image and are left out); pkgconf because the GPU image may have no pkg-config.
(cd .gpu/debs && apt-get download -q \
  libeigen3-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libgtest-dev \
  libpcre2-dev libpcre2-8-0 libzip-dev libzip4 libsentencepiece-dev libsentencepiece0 libssl-dev libssl3 \
  libyaml-cpp-dev libyaml-cpp0.7 libicu-dev libicu72 \
  pkgconf-bin libpkgconf3 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
ls .gpu/debs/*.deb >/dev/null

cp -r "$shared/reference/tiny-gpt2" "$shared/reference/tiny-llama" "$shared/reference/tiny-gptj" \
      "$shared/reference/golden_reference.json" .gpu/shared/reference/
cp -r "$shared/tokenizers/gpt2" .gpu/shared/tokenizers/
cp -r "$shared/data/me-ppl" .gpu/shared/data/
rm -f .gpu/shared/data/me-ppl/ME-PPL.json  # 2 MB the checks do not read
cp -r "$shared/models/stories260K" .gpu/shared/models/
chmod -R u+w .gpu
du -sh .gpu .gpu/*
