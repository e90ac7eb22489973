#!/usr/bin/env bash
# The cuda tests on a GPU machine that has a CUDA toolkit and a host compiler but none of
# Shoal's other build dependencies (no gRPC, no Debian packages): compiles the CUDA
# kernels, the CPU kernels they are checked against and cuda_kernels_test with nvcc
# directly, runs the test, then runs it again under compute-sanitizer memcheck. GoogleTest
# is compiled from its sources (Debian's /usr/src/googletest, copied next to the tree and
# carried to the GPU machine when it has none).
#
#   tests/kernels/cuda_device_check.sh [GTEST_SRC]     # logs and results go to $OUT (or /tmp)
#
# Without a GPU the test reports "skipped: no GPU" and the script still exits 0, so it can
# be tried anywhere the toolkit is (here: CUDAToolkit_ROOT from scripts/setup_cuda.sh).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
gtest=${1:-${GTEST_SRC:-/usr/src/googletest}}
out=${OUT:-/tmp}
cuda=${CUDAToolkit_ROOT:-$(dirname "$(dirname "$(command -v nvcc)")")}
nvcc=$cuda/bin/nvcc
arch=${CUDA_ARCH:-90}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[[ -x $nvcc ]] || { echo "no nvcc (set CUDAToolkit_ROOT)" >&2; exit 1; }
[[ -f $gtest/googletest/src/gtest-all.cc ]] || { echo "no GoogleTest sources in $gtest" >&2; exit 1; }

log=$out/cuda_device_check.log
{
  echo "nvcc: $("$nvcc" --version | tail -n 1)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  host_flags="-O2 -march=x86-64-v3 -Wall"
  # The CPU reference kernels are C++20: the host compiler builds them.
  objs=()
  for f in "$here"/worker/kernels/cpu/*.cc; do
    o=$work/$(basename "$f").o
    g++ -std=c++20 -O3 $host_flags -I"$here" -c "$f" -o "$o" &
    objs+=("$o")
  done
  g++ -std=c++20 -O2 $host_flags -I"$here" -I"$gtest/googletest/include" -I"$gtest/googletest" -I"$cuda/include" \
    -c "$here/tests/kernels/cuda_kernels_test.cc" -o "$work/test.o" &
  g++ -std=c++17 -O2 -I"$gtest/googletest/include" -I"$gtest/googletest" -c "$gtest/googletest/src/gtest-all.cc" \
    -o "$work/gtest-all.o" &
  g++ -std=c++17 -O2 -I"$gtest/googletest/include" -c "$gtest/googletest/src/gtest_main.cc" -o "$work/gtest_main.o" &
  for f in "$here"/worker/kernels/cuda/*.cc; do
    g++ -std=c++20 -O2 $host_flags -I"$here" -I"$cuda/include" -c "$f" -o "$work/$(basename "$f").o" &
  done
  for f in "$here"/worker/kernels/cuda/*.cu "$here"/tests/kernels/*.cu; do
    "$nvcc" -std=c++17 -O3 -arch="sm_$arch" -I"$here" -c "$f" -o "$work/$(basename "$f").o" &
  done
  wait
  g++ -o "$work/cuda_kernels_test" "$work"/*.o -L"$cuda/lib64" -L"$cuda/lib" -Wl,-rpath,"$cuda/lib64:$cuda/lib" \
    -lcudart -ldl -lpthread
  echo "== cuda_kernels_test"
  "$work/cuda_kernels_test" --gtest_output="xml:$out/cuda_kernels_test.xml"
  if command -v compute-sanitizer >/dev/null || [[ -x $cuda/bin/compute-sanitizer ]]; then
    sanitizer=$(command -v compute-sanitizer || echo "$cuda/bin/compute-sanitizer")
    echo "== compute-sanitizer --tool memcheck"
    "$sanitizer" --tool memcheck --error-exitcode 9 "$work/cuda_kernels_test" --gtest_brief=1
  else
    echo "== compute-sanitizer: not installed here, memcheck not run"
  fi
} 2>&1 | tee "$log"
