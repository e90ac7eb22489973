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

# Seeds: the valid files the parsers' own tests use, so fuzzing starts deep inside them.
seed_files() {
  case $1 in
    gguf_fuzz) ls "$here"/tests/model/testdata/*.gguf ;;
    safetensors_fuzz) ls "$here"/tests/model/testdata/*.safetensors "$here"/tests/oracle/fixtures/*/config.json ;;
    tokenizer_json_fuzz) ls "$here"/tests/tokenizer/fixtures/*.tokenizer.json ;;
    openai_http_fuzz) ls "$here"/tests/router/testdata/openai_*.json ;;
  esac 2>/dev/null
}

for t in "${targets[@]}"; do
  corpus=$(mktemp -d)
  for f in $(seed_files "$t"); do cp "$f" "$corpus/"; done
  echo "fuzz: $t for ${seconds}s"
  "$build_dir/fuzz/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 "$corpus" 2>&1 | tail -n 4
  rm -rf "$corpus"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
