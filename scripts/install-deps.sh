#!/usr/bin/env bash
# Installs the Debian 12 packages rome-collapse builds and tests with (skips apt when all are present).
set -euo pipefail
packages=(build-essential cmake pkg-config ccache
          libtorch-dev libopenblas0-openmp libeigen3-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libyaml-cpp-dev
          libgtest-dev libsentencepiece-dev libpcre2-dev libicu-dev libzip-dev libssl-dev
          python3 python3-numpy python3-matplotlib
          clang libclang-rt-14-dev)  # clang + libFuzzer: scripts/ci-fuzz.sh
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
