#!/usr/bin/env bash
# Runs the whole test suite the way CI does: set-up (idempotent), build, every CTest
# label that needs no GPU, the Kubernetes tests against a real control plane, the CUDA
# sources compiled (their tests run where a GPU is, and on the SIMT emulator everywhere),
# then each fuzzer for a short budget.
#
#   scripts/test.sh                 everything (unit, oracle, k8s, fuzz)
#   SHOAL_FUZZ_SECONDS=0 scripts/test.sh   skip the fuzz budget
#   SHOAL_SKIP_K8S=1 scripts/test.sh       skip the Kubernetes step
#   SHOAL_SKIP_CUDA=1 scripts/test.sh      skip compiling the CUDA sources
#   SHOAL_SIMT_ASAN=1 scripts/test.sh      the emulated cuda tests under AddressSanitizer
#   SHOAL_SIMT_GPU_ARITHMETIC=0 scripts/test.sh   skip the emulated cuda tests' second run,
#                                   with a GPU's arithmetic (tests/simt)
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

# --- CUDA (label cuda) -------------------------------------------------------------------
# Compiles every CUDA source (target shoal_cuda) against CUDA 13.0 assembled from PyPI by
# scripts/setup_cuda.sh, in its own tree; without a GPU the cuda tests report
# "skipped: no GPU". On a GPU machine the same commands run them for real.
if [[ ${SHOAL_SKIP_CUDA:-0} != 1 ]]; then
  cuda_root=$("$here/scripts/setup_cuda.sh")
  cuda_build=${SHOAL_CUDA_BUILD_DIR:-$here/build-cuda}
  cmake -S "$here" -B "$cuda_build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUDAToolkit_ROOT="$cuda_root" >/dev/null
  cmake --build "$cuda_build" --target shoal_cuda -j "$(nproc)"
  (cd "$cuda_build" && ctest --output-on-failure -L cuda)

  # The same CUDA sources and cuda tests again, built for the SIMT emulator
  # (tests/simt): the kernels run on the CPU, so the tests run without a GPU.
  # SHOAL_SIMT_ASAN=1 builds that tree with AddressSanitizer instead (build-simt-asan/):
  # out-of-bounds device reads and writes then stop the test, as compute-sanitizer's
  # memcheck would on a GPU (several times slower, so not the default).
  # run_simt BUILD_DIR [CMAKE_FLAGS...]: configures, builds and runs the emulated tests.
  run_simt() {
    local build=$1
    shift
    cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHOAL_SIMT_EMULATION=ON \
      -DCUDAToolkit_ROOT="$cuda_root" "$@" >/dev/null
    cmake --build "$build" --target shoal_cuda -j "$(nproc)"
    (cd "$build" && env "${simt_env[@]}" ctest --output-on-failure -j "$(nproc)" -L 'cuda|simt')
  }
  simt_env=()
  if [[ ${SHOAL_SIMT_ASAN:-0} == 1 ]]; then
    simt_env=(ASAN_OPTIONS=detect_leaks=0)
    run_simt "${SHOAL_SIMT_BUILD_DIR:-$here/build-simt-asan}" -DCMAKE_CXX_FLAGS="-fsanitize=address -fno-omit-frame-pointer" \
      -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=address -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=address
  else
    run_simt "${SHOAL_SIMT_BUILD_DIR:-$here/build-simt}"
    # Then with a GPU's arithmetic (fused multiply-adds, approximate exp and rsqrt, cuBLAS's
    # chunked sums), so a test whose margin holds only under the host's roundings fails
    # here rather than in a short GPU run. It needs the host's FMA instructions.
    if [[ ${SHOAL_SIMT_GPU_ARITHMETIC:-1} != 1 ]]; then
      echo "simt with a GPU's arithmetic: skipped (SHOAL_SIMT_GPU_ARITHMETIC=0)"
    elif ! grep -qw fma /proc/cpuinfo; then
      echo "simt with a GPU's arithmetic: skipped (this CPU has no FMA instructions)"
    else
      run_simt "$here/build-simt-gpu-arith" -DSHOAL_SIMT_GPU_ARITHMETIC=ON
    fi
  fi
fi

if ((fuzz_seconds > 0)); then
  "$here/tests/fuzz/run.sh" "$fuzz_seconds"
fi
