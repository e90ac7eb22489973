#!/usr/bin/env bash
# Runs the whole test suite the way CI does: set-up (idempotent), build, every CTest
# label that needs no GPU, the Kubernetes tests against a real control plane, then each
# fuzzer for a short budget.
#
#   scripts/test.sh                 everything (unit, oracle, k8s, fuzz)
#   SHOAL_FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz budget
#   SHOAL_SKIP_K8S=1 scripts/test.sh       skip the Kubernetes step
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${SHOAL_BUILD_DIR:-$here/build}
fuzz_seconds=${SHOAL_FUZZ_SECONDS:-20}

"$here/scripts/setup.sh"

cd "$build_dir"
ctest --output-on-failure -j "$(nproc)" -L 'unit|oracle|multiproc'

# --- Kubernetes (label k8s) -------------------------------------------------------------
# tests/k8s/install.sh builds etcd, the control plane, kwok and helm from the Go module
# proxy into ~/.cache/shoal/k8s (cold: 17 CPU-minutes, ~10 min on 2 idle cores; warm: 0.03 s); the k8s_cluster
# CTest fixture starts the control plane and stops it at the end.
if [[ ${SHOAL_SKIP_K8S:-0} != 1 ]]; then
  "$here/tests/k8s/install.sh"
  ctest --output-on-failure -j "$(nproc)" -L k8s
fi

if ((fuzz_seconds > 0)); then
  "$here/tests/fuzz/run.sh" "$fuzz_seconds"
fi
