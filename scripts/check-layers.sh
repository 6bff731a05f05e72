#!/usr/bin/env bash
# The layers of src/ and include/rome_collapse/, lowest first. A file may include its own layer
# and the layers below it, never one above: a lower layer that includes a higher one fails here
# (and so in CI, and as the CTest test `layers`). The README's "Code map" says what each holds.
# Usage: scripts/check-layers.sh [ROOT]   (ROOT: a source tree, default this checkout)
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
layers=(util io text model eval rome experiment analysis cli)

rank() {  # the position of layer $1 in the list, or -1
  local i
  for i in "${!layers[@]}"; do [[ "${layers[$i]}" == "$1" ]] && { echo "$i"; return; }; done
  echo -1
}

status=0
dirs=()
for dir in "$root/src" "$root/include/rome_collapse"; do [[ -d "$dir" ]] && dirs+=("$dir"); done
[[ ${#dirs[@]} -gt 0 ]] || { echo "$root: neither src/ nor include/rome_collapse/ is there"; exit 2; }
while IFS= read -r -d '' file; do
  rel="${file#"$root"/}"
  case "$rel" in
    src/*) own="${rel#src/}" ;;
    include/rome_collapse/*) own="${rel#include/rome_collapse/}" ;;
  esac
  own="${own%%/*}"
  own_rank=$(rank "$own")
  if [[ $own_rank -lt 0 ]]; then
    echo "$rel: folder '$own' is not a layer (layers, lowest first: ${layers[*]})"; status=1; continue
  fi
  while IFS=: read -r line used; do
    used_rank=$(rank "$used")
    if [[ $used_rank -lt 0 ]]; then
      echo "$rel:$line: includes rome_collapse/$used/, which is not a layer"; status=1
    elif [[ $used_rank -gt $own_rank ]]; then
      echo "$rel:$line: layer '$own' includes rome_collapse/$used/ from the higher layer '$used'"; status=1
    fi
  done < <(grep -no '#include "rome_collapse/[a-z_0-9]*/' "$file" | sed -E 's|^([0-9]+):#include "rome_collapse/([a-z_0-9]+)/|\1:\2|')
done < <(find "${dirs[@]}" -mindepth 2 -type f \( -name '*.h' -o -name '*.cpp' \) -print0 | sort -z)

if [[ $status -eq 0 ]]; then echo "layers: every include goes down (${layers[*]})"; fi
exit $status
