#!/usr/bin/env bash
# The paper's Experiment 5 side by side: the first token's key in a causal decoder (the reference tiny
# GPT-2) and in a bidirectional encoder (the reference T5 v1.0 and v1.1), with the same 12 requests,
# layer and 20 prefixes (configs/experiment5-*.json). Runs `keys` and `check` on each model and prints
# one Markdown table from their JSON. Usage: scripts/experiment5.sh [OUT_DIR] (default results/experiment5).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ROME_BIN:-build/rome-collapse}
out=${1:-results/experiment5}
mkdir -p "$out"
for model in gpt2 t5-v1_0 t5-v1_1; do
  "$bin" keys --config "configs/experiment5-$model.json" --out "$out/keys-$model.npz" --json "$out/keys-$model.json" >/dev/null
  status=0
  "$bin" check --config "configs/experiment5-$model.json" --json "$out/check-$model.json" >/dev/null || status=$?
  if [ "$status" -gt 1 ]; then exit "$status"; fi  # 1 is a check verdict, not an error
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
print("| model | keys of | subjects | relative distance of kᵘ (median) | cos(kᵘ, k̄) (median) | share of prefixed keys closer to k̄ (median) | ROME/C-ROME denominator ratio (min) | `check` fails |")
print("|---|---|---|---|---|---|---|---|")
for model in ["gpt2", "t5-v1_0", "t5-v1_1"]:
    keys = json.load(open(f"{out}/keys-{model}.json"))
    check = json.load(open(f"{out}/check-{model}.json"))
    for group, first in [("subject_first", True), ("subject_later", False)]:
        s = keys["summary"][group]
        rows = [r for r in check["requests"] if r["subject_first"] == first]
        failed = sum(not r["passed"] for r in rows)
        print(f"| {model} | `{keys['provenance']['rewrite_weight']}` | {'first' if first else 'later'} ({s['requests']}) "
              f"| {s['relative_distance']['median']:.2f} | {s['cos_unprefixed_prefixed']['median']:.3f} "
              f"| {s['cloud_share_closer']['median']:.2f} | {min(r['ratio'] for r in rows):.3f} | {failed} of {len(rows)} |")
PY
