#!/usr/bin/env bash
# Packs everything the GPU checks need into one folder, .devbundle/ at the repo root, so a
# GPU machine with a CUDA 13 driver and toolkit but none of Shoal's build dependencies
# (no gRPC, Abseil, fmt, spdlog) runs them with tests/cuda/run_device_bundle.sh:
#
#   bin.tar.xz the cuda test binaries, cuda-decode-bench and cuda-kernels-bench, stripped
#              (xz: their CUDA fat binaries shrink 44 MB -> 3 MB)
#   lib.tar.xz every shared library they load that is not glibc, libstdc++/libgcc or CUDA
#              (xz: ICU's data alone is 31 MB; run_device_bundle.sh unpacks it)
#              (found with ldd: Abseil, fmt, ...)
#   lib-fallback/  this machine's libstdc++ and libgcc_s, used only where the GPU
#              machine's are older than the binaries need
#   src/       the oracle fixtures the tests read, at their repo paths (SHOAL_SOURCE_DIR)
#   bench/     the transformers peer and the wrapper printing ratios
#   sanitizer.tar.xz  compute-sanitizer from NVIDIA's PyPI wheel (memcheck, for a GPU
#              machine without a toolkit; run_device_bundle.sh prefers an installed one)
#
#   tests/cuda/make_device_bundle.sh [BUILD_DIR]     # default build-cuda; builds shoal_cuda
#
# The CUDA libraries stay out: cuBLAS alone is ~700 MB, and the GPU machine's own match
# its driver. The bundle must stay small (it travels with the working tree).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$here/build-cuda}
bundle=$here/.devbundle
binaries=(tests/cuda_kernels_test tests/cuda_decoder_test tests/cuda_engine_test tests/cuda_group_test bench/cuda-decode-bench
          bench/cuda-kernels-bench bench/cuda-nccl-bench)
fixtures=(llama-tiny llama3-rope-tiny qwen2-tiny deepseek-v2-tiny deepseek-v2-lite-tiny deepseek-v3-tiny fp8_llama_tiny
          fp8_deepseek_v3_tiny)

[[ -f $build/CMakeCache.txt ]] || {
  echo "no CMake tree in $build: configure it with -DCUDAToolkit_ROOT=\$(scripts/setup_cuda.sh) first" >&2
  exit 1
}
flock /tmp/shoal-cpu.lock cmake --build "$build" --target shoal_cuda -j "$(nproc)"

rm -rf "$bundle"
mkdir -p "$bundle"/{bin,lib,lib-fallback,bench,src/tests/oracle/fixtures}
for b in "${binaries[@]}"; do
  [[ -x $build/$b ]] || { echo "missing $build/$b" >&2; exit 1; }
  strip --strip-unneeded -o "$bundle/bin/$(basename "$b")" "$build/$b"
done

# What the loader resolves for each binary, minus what the GPU machine brings itself.
system='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnvidia|libnvrtc|libnccl)[.-]'
for b in "${binaries[@]}"; do
  ldd "$build/$b" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
done | sort -u | while read -r name path; do
  if [[ $name =~ $system ]]; then continue; fi
  cp -L "$path" "$bundle/lib/$name"
done
if ldd "$build/${binaries[0]}" | grep -q 'not found'; then
  echo "unresolved libraries:" >&2
  ldd "$build/${binaries[0]}" | grep 'not found' >&2
  exit 1
fi
for name in libstdc++.so.6 libgcc_s.so.1; do
  path=$(ldd "$build/${binaries[0]}" | awk -v n="$name" '$1 == n { print $3 }')
  [[ -n $path ]] && cp -L "$path" "$bundle/lib-fallback/$name"
done

for f in "${fixtures[@]}"; do
  cp -r "$here/tests/oracle/fixtures/$f" "$bundle/src/tests/oracle/fixtures/"
done
cp "$here/bench/cuda_decode_hf.py" "$here/bench/cuda_decode_bench.sh" "$bundle/bench/"
# The libraries and binaries compressed (53 MB -> 14 MB, 44 MB -> 3 MB): the bundle must
# travel in under 64 MiB.
tar -C "$bundle" -cJf "$bundle/lib.tar.xz" lib
tar -C "$bundle" -cJf "$bundle/bin.tar.xz" bin
rm -rf "$bundle/lib" "$bundle/bin"
# compute-sanitizer 13.0 as NVIDIA's wheel lays it out (bin/ and lib/), xz -9: its two
# copies of the 12 MB collection library share one window (28 MB -> 4.5 MB).
cache=${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}
sanitizer_pkg=nvidia-cuda-sanitizer-api==13.0.85
wheels=$cache/wheels/cuda-13.0
if ! ls "$wheels"/nvidia_cuda_sanitizer_api-13.0.85-*.whl >/dev/null 2>&1; then
  mkdir -p "$wheels"
  python3 -m pip download --quiet --no-deps --dest "$wheels" "$sanitizer_pkg" >&2
fi
staging=$(mktemp -d)
python3 - "$(ls "$wheels"/nvidia_cuda_sanitizer_api-13.0.85-*.whl | head -n 1)" "$staging/sanitizer" <<'PY'
import os, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
for info in zipfile.ZipFile(wheel).infolist():
    for part in ("bin", "lib"):
        prefix = f"nvidia/cu13/{part}/"
        if info.filename.startswith(prefix) and not info.filename.endswith("/"):
            dst = os.path.join(out, part, info.filename[len(prefix):])
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with zipfile.ZipFile(wheel).open(info) as src, open(dst, "wb") as f:
                shutil.copyfileobj(src, f)
            os.chmod(dst, 0o755)
PY
XZ_OPT=-9 tar -C "$staging" -cJf "$bundle/sanitizer.tar.xz" sanitizer
rm -rf "$staging"
git -C "$here" rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || true
git -C "$here" status --porcelain >>"$bundle/COMMIT" 2>/dev/null || true

echo "bundle: $bundle"
(cd "$bundle" && find . -type f -printf '%s\t%p\n' | sort -k2 | awk -F'\t' '{ printf "  %9.1f KiB  %s\n", $1 / 1024, $2 }')
total=$(du -sb "$bundle" | cut -f1)
echo "bundle_bytes: $total ($(du -sh "$bundle" | cut -f1))"
if ((total > 60 * 1024 * 1024)); then
  echo "the bundle is over 60 MiB" >&2
  exit 1
fi
