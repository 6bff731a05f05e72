#!/usr/bin/env bash
# Regenerates the README's figures (docs/figures/*.png) and the `keys` table's numbers from the
# reference tiny GPT-2 and stories260K in ../shared: check, keys and the stories260K batch, then
# scripts/figures.py. Everything else lands in results/readme/ (JSON, .npz, the PDF figures).
set -euo pipefail
cd "$(dirname "$0")/.."
tool=./build/rome-collapse
out=results/readme
python=python3
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null && python=/usr/bin/python3  # Debian's, with python3-matplotlib
mkdir -p "$out" docs/figures
for run in tiny-gpt2:configs/tiny-gpt2-reference.json stories260K:configs/stories260k_tinystories.json; do
  name=${run%%:*} config=${run#*:}
  "$tool" check --config "$config" --json "$out/check-$name.json" || [ $? -eq 1 ]  # 1: a request failed the guard
  "$tool" keys --config "$config" --out "$out/keys-$name.npz" --json "$out/keys-$name.json"
done
"$tool" batch --config configs/stories260k_tinystories.json --out "$out/batch-stories260K"
"$python" scripts/figures.py denominators "$out/check-tiny-gpt2.json" "$out/check-stories260K.json" --out "$out/denominators"
"$python" scripts/figures.py pca "$out/keys-tiny-gpt2.json" --out "$out/pca-tiny-gpt2"
"$python" scripts/figures.py pca "$out/keys-stories260K.json" --out "$out/pca-stories260K"
"$python" scripts/figures.py ppl "$out/batch-stories260K/results.jsonl" --out "$out/ppl-vs-update-norm-stories260K"
for figure in denominators pca-tiny-gpt2 pca-stories260K ppl-vs-update-norm-stories260K; do
  cp "$out/$figure.png" docs/figures/
done
echo "figures in docs/figures; JSON and PDFs in $out"
