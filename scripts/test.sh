#!/usr/bin/env bash
# Runs the whole test suite the way CI does: set-up (idempotent), build, every CTest
# label that needs no GPU and no cluster, then each fuzzer for a short budget.
#
#   scripts/test.sh                 everything (unit, oracle, fuzz)
#   SHOAL_FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz budget
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${SHOAL_BUILD_DIR:-$here/build}
fuzz_seconds=${SHOAL_FUZZ_SECONDS:-20}

"$here/scripts/setup.sh"

cd "$build_dir"
ctest --output-on-failure -j "$(nproc)" -L 'unit|oracle'

if ((fuzz_seconds > 0)); then
  "$here/tests/fuzz/run.sh" "$fuzz_seconds"
fi
