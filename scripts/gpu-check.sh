#!/usr/bin/env bash
# The GPU half of the checks, for a CUDA machine with PyTorch (>= 2.7) and no package registry:
# builds against that PyTorch's libtorch with the Debian packages from scripts/gpu-prepare.sh, then
#   1. the golden-value tests (forward pass and the 24 ROME/C-ROME edits) on the GPU, same tolerances
#   2. CPU-vs-CUDA agreement of generate, perplexity and stats
#   3. `bench` on the GPU: optimised vs reference-equivalent path, GPT-2-XL / GPT-J-6B / Llama-2-7B shapes
#      (and GPT-2-XL with the optimised path's CUDA graphs switched off)
#   4. scripts/precision_report.py on the GPU: float32, bfloat16 and float16 against the golden values
# Every step runs even when an earlier one failed. $1 (default: $OUT, else gpu-out/) receives
# summary.txt, written as the steps finish, and logs.tar.gz with every step's log and the bench JSON.
# Usage: bash scripts/gpu-check.sh [OUT_DIR]      (after bash scripts/gpu-prepare.sh, with .gpu/ carried)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dest=${1:-${OUT:-$root/gpu-out}}
out=/tmp/rome-gpu-logs
rm -rf "$out" && mkdir -p "$out" "$dest"
trap 'cp "$out/summary.txt" "$dest/summary.txt"; tar czf "$dest/logs.tar.gz" -C /tmp rome-gpu-logs' EXIT
deps=/tmp/rome-deps
build=$root/build-gpu
shared=$root/.gpu/shared
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: runs, logs to $out/NAME.log, records the exit code
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
  cp "$out/summary.txt" "$dest/summary.txt"  # comes back even if the whole run is cut off
  [ $rc -eq 0 ] || status=1
  return $rc
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  c++ --version | head -1
  cmake --version | head -1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
  nproc
} >"$out/summary.txt" 2>&1

# Dependencies: unpacked, never installed (dpkg -x into a private prefix leaves / untouched).
rm -rf "$deps" && mkdir -p "$deps"
for deb in .gpu/debs/*.deb; do
  if command -v dpkg >/dev/null; then dpkg -x "$deb" "$deps"; else (cd "$deps" && ar p "$root/$deb" data.tar.xz | tar xJ); fi
done
[ -d /usr/local/cuda/bin ] && export PATH=$PATH:/usr/local/cuda/bin
libdir=$deps/usr/lib/x86_64-linux-gnu
cat >"$deps/pkg-config" <<EOF
#!/bin/sh
LD_LIBRARY_PATH=$libdir exec $deps/usr/bin/pkgconf "\$@"
EOF
chmod +x "$deps/pkg-config"
export PKG_CONFIG_LIBDIR=$libdir/pkgconfig:$deps/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$deps
export CMAKE_POLICY_VERSION_MINIMUM=3.5 TORCH_CUDA_ARCH_LIST=9.0
torch_prefix=${TORCH_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}
# --no-as-needed: nothing in the project names a libtorch_cuda symbol, and a linker that drops
# unreferenced libraries (Ubuntu's default) would leave a binary without CUDA.
# PyTorch >= 2.12's headers refuse C++17; the project stays on C++17 wherever they allow it.
cxx_standard=17
grep -rqs "C++20 or later" "$torch_prefix/../../include/ATen/ATen.h" && cxx_standard=20
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

step configure 240 cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$deps/usr;$torch_prefix" -DPKG_CONFIG_EXECUTABLE="$deps/pkg-config" \
  -DOPENSSL_ROOT_DIR="$deps/usr" -DROME_SHARED_DIR="$shared" -DROME_CXX_STANDARD=$cxx_standard \
  -DCMAKE_CXX_COMPILER_LAUNCHER= -DCMAKE_EXE_LINKER_FLAGS=-Wl,--no-as-needed \
  || { tail -40 "$out/configure.log" >>"$out/summary.txt"; exit 1; }
# -k 0: every compile error in one go (a GPU session gets few tries); what did build still runs.
if [ ${#generator[@]} -gt 0 ]; then keep_going=(-k 0); else keep_going=(-k); fi
step build 420 cmake --build "$build" -j "$(nproc)" --target rome-collapse test_model_forward test_rome_golden \
  -- "${keep_going[@]}" || grep -E -B2 -A6 "error" "$out/build.log" | head -80 >>"$out/summary.txt"

export LD_LIBRARY_PATH=$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ROME_SHARED=$shared
ldd "$build/rome-collapse" | grep -E "not found|torch_cuda|c10_cuda" >>"$out/summary.txt"
cli=$build/rome-collapse
export ROME_CLI=$cli

# 1. Golden values on the GPU.
ROME_TEST_DEVICE=cuda step golden_forward 180 "$build/test_model_forward"
ROME_TEST_DEVICE=cuda step golden_edits 300 "$build/test_rome_golden"
grep -hE "^\[  (PASSED|FAILED|SKIPPED) |Failure|max relative diff|CUDA graphs" "$out/golden_forward.log" \
  "$out/golden_edits.log" \
  | head -40 >>"$out/summary.txt"

# 2. CPU and CUDA agree: greedy generation, perplexity and key statistics.
# (ROME_GPU_CHECK_QUICK=1 skips steps 2 and 4, for a rerun of the timings alone.)
quick=${ROME_GPU_CHECK_QUICK:-0}
stories=$shared/models/stories260K
[ "$quick" = 1 ] || for device in cpu cuda; do
  step "generate_$device" 60 "$cli" generate --model "$stories/stories260K.bin" --tokenizer "$stories/tok512.model" \
    --max-new-tokens 200 --device "$device"
  step "perplexity_$device" 60 "$cli" perplexity --model "$shared/reference/tiny-gpt2" \
    --tokenizer "$shared/tokenizers/gpt2" --no-bos --texts "$shared/data/me-ppl/ME-PPL_50.json" --device "$device"
  step "stats_$device" 120 "$cli" stats --model "$shared/reference/tiny-llama" --tokenizer "$shared/tokenizers/gpt2" \
    --no-bos --layer 1 --corpus "$shared/data/me-ppl/ME-PPL_50.json" --device "$device" --out "/tmp/stats_$device.npz"
done
[ "$quick" = 1 ] || {
  cmp -s "$out/generate_cpu.log" "$out/generate_cuda.log" && echo "generate: cpu == cuda" || echo "generate: cpu != cuda"
  grep -H '"mean"' "$out/perplexity_cpu.log" "$out/perplexity_cuda.log"
  python3 - /tmp/stats_cpu.npz /tmp/stats_cuda.npz <<'EOF'
import sys, numpy as np
a, b = (np.load(p) for p in sys.argv[1:3])
m, n = a["mom2.mom2"].astype(np.float64), b["mom2.mom2"].astype(np.float64)
print("stats: counts", int(a["mom2.count"]), int(b["mom2.count"]),
      "max rel. diff of mom2 %.2e" % (np.abs(m - n).max() / np.abs(m).max()))
EOF
} >>"$out/summary.txt" 2>&1

# 3. Speed: the GPU target is >= 3x the paper's code on an H200 (1.8 / 5.2 / 5.9 s per edit).
step bench_gpt2 240 "$cli" bench --device cuda --shared "$shared" --models tiny-gpt2,gpt2-xl --repeats 2 \
  --out "$out/bench_gpt2.json"
step bench_7b 300 "$cli" bench --device cuda --shared "$shared" --models gptj-6b,llama2-7b --repeats 2 \
  --out "$out/bench_7b.json"
# The optimised path without CUDA graphs (eager steps), for the size of that effect alone.
ROME_CUDA_GRAPHS=0 step bench_eager 120 "$cli" bench --device cuda --shared "$shared" --models gpt2-xl --repeats 2 \
  --out "$out/bench_eager.json"
grep -hE "model|reference|optimized" "$out/bench_gpt2.log" "$out/bench_7b.log" "$out/bench_eager.log" \
  >>"$out/summary.txt"

# 4. Reduced precision on the GPU (float16 has no CPU kernels in libtorch 1.13).
[ "$quick" = 1 ] || step precision 240 python3 scripts/precision_report.py --shared "$shared" --binary "$cli" --device cuda \
  --dtypes float32,bfloat16,float16 --jobs 12
[ "$quick" = 1 ] || cat "$out/precision.log" >>"$out/summary.txt"

# 5. The same edits with bfloat16 weights (δ, v* and the update stay float32).
step bench_bf16 240 "$cli" bench --device cuda --dtype bfloat16 --shared "$shared" --models gpt2-xl,gptj-6b,llama2-7b \
  --out "$out/bench_bf16.json"
grep -hE "model|reference|optimized" "$out/bench_bf16.log" >>"$out/summary.txt"
exit $status
