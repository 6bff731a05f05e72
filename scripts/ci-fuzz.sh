#!/usr/bin/env bash
# CI: builds the libFuzzer targets (fuzz/fuzz_*.cpp; clang, -fsanitize=fuzzer,address,undefined) in
# build-fuzz/ and runs each for a share of a fixed time budget, starting from seed corpora written by
# fuzz/make_seeds.py (own small files, plus a few derived from ../shared when it is there).
# Exit 0 when nothing was found. A finding leaves the crashing input in build-fuzz/artifacts/ and
# exits 1: turn it into a regression test in tests/test_regressions_fuzz.cpp (bytes embedded,
# asserting a clean rc::InputError), fix the reader, rerun.
# Environment: ROME_FUZZ_SECONDS (total budget, default 64), ROME_FUZZ_TARGETS (space-separated
# subset), ROME_FUZZ_JOBS (build parallelism, default nproc), ROME_SHARED (default ../shared).
# Reproduce a finding: build-fuzz/fuzz_<target> build-fuzz/artifacts/<file>
set -euo pipefail
cd "$(dirname "$0")/.."
budget="${ROME_FUZZ_SECONDS:-64}"
jobs="${ROME_FUZZ_JOBS:-$(nproc)}"
shared="${ROME_SHARED:-$(cd .. && pwd)/shared}"
clangxx="${ROME_FUZZ_CXX:-$(command -v clang++ || true)}"
if [ -z "$clangxx" ]; then
  echo "ci-fuzz: clang++ not found (libFuzzer needs clang; apt-get install clang)" >&2
  exit 1
fi

start=$(date +%s)
cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER="$clangxx" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
      -DROME_BUILD_TESTS=OFF -DROME_BUILD_FUZZERS=ON >/dev/null
cmake --build build-fuzz --target rome_fuzzers -j"$jobs"
built=$(date +%s)
echo "ci-fuzz: build took $((built - start)) s"

targets="${ROME_FUZZ_TARGETS:-$(cd fuzz && ls fuzz_*.cpp | sed 's/\.cpp$//' | tr '\n' ' ')}"
count=$(echo $targets | wc -w)
per=$(( budget / count )); [ "$per" -lt 1 ] && per=1
rm -rf build-fuzz/seeds && python3 fuzz/make_seeds.py build-fuzz/seeds "$shared"
rm -rf build-fuzz/artifacts && mkdir -p build-fuzz/artifacts
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
failed=()
for target in $targets; do
  seeds="build-fuzz/seeds/${target#fuzz_}"
  corpus="build-fuzz/corpus/${target#fuzz_}"
  mkdir -p "$corpus" "$seeds"
  echo "ci-fuzz: $target for ${per} s"
  # -rss_limit_mb / -malloc_limit_mb: an absurd declared size must be refused, not allocated.
  # -dict: JSON tokens, deep nesting among them, for the JSON readers (harmless for the others).
  if ! "build-fuzz/$target" -max_total_time="$per" -timeout=20 -rss_limit_mb=3072 -malloc_limit_mb=1024 \
        -dict=fuzz/json.dict \
        -max_len=8192 -print_final_stats=0 -artifact_prefix="build-fuzz/artifacts/${target}-" \
        "$corpus" "$seeds" > "build-fuzz/$target.log" 2>&1; then
    failed+=("$target")
    tail -n 60 "build-fuzz/$target.log"
  else
    grep -E "^#[0-9]+.*DONE" "build-fuzz/$target.log" | tail -n 1 || true
  fi
done
echo "ci-fuzz: fuzzing took $(( $(date +%s) - built )) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "ci-fuzz: findings in: ${failed[*]} (inputs in build-fuzz/artifacts/)" >&2
  ls -l build-fuzz/artifacts >&2
  exit 1
fi
echo "ci-fuzz: no findings"
