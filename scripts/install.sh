#!/usr/bin/env bash
# Puts rome-collapse on PATH as a symbolic link to build/rome-collapse: in /usr/local/bin when that
# is writable (root), else in ~/.local/bin. The link follows every rebuild, and the binary finds its
# SentencePiece shim beside itself in build/. For a copy instead (packaging, another prefix):
#   cmake --install build --prefix /usr/local     # bin/rome-collapse and lib/librome_sentencepiece_shim.so
set -euo pipefail
cd "$(dirname "$0")/.."
binary="$(pwd)/build/rome-collapse"
[ -x "$binary" ] || { echo "install.sh: $binary is not built yet (bash scripts/build.sh)" >&2; exit 2; }
if [ -w /usr/local/bin ]; then
  bin_dir=/usr/local/bin
else
  bin_dir="$HOME/.local/bin"
  mkdir -p "$bin_dir"
fi
ln -sfn "$binary" "$bin_dir/rome-collapse"
echo "rome-collapse -> $bin_dir/rome-collapse"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "note: $bin_dir is not on PATH; add it: export PATH=\"$bin_dir:\$PATH\"" ;;
esac
