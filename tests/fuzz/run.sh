#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (own build tree) and runs each for a budget of
# seconds (default 20) from its seed corpus. A crash, leak or sanitizer report fails.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
seconds=${1:-20}
build_dir=${SHOAL_FUZZ_BUILD_DIR:-$here/build-fuzz}

CC=clang CXX=clang++ cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSHOAL_BUILD_FUZZERS=ON -DSHOAL_BUILD_TESTS=OFF >/dev/null
targets=()
for src in "$here"/tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$src" .cc)"); done
cmake --build "$build_dir" -j "$(nproc)" --target "${targets[@]}"

for t in "${targets[@]}"; do
  corpus=$(mktemp -d)
  seeds=$here/tests/fuzz/corpus/${t%_fuzz}
  [[ -d $seeds ]] && cp -r "$seeds"/. "$corpus"/
  echo "fuzz: $t for ${seconds}s"
  "$build_dir/fuzz/$t" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -n 4
  rm -rf "$corpus"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
