#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit (nvcc, runtime, cuBLAS, NCCL) from NVIDIA's PyPI wheels
# under ~/.cache/shoal/cuda/13.0 and prints its root. No GPU, driver or root needed: it is
# what compiles worker/kernels/cuda and the NCCL communicator on a CPU-only machine (the
# GPU machines' driver is CUDA 13.0, hence the pinned 13.0 set). Idempotent.
#
#   scripts/setup_cuda.sh            -> prints the toolkit root (CUDAToolkit_ROOT)
#
# The wheels lack what nvcc and CMake's FindCUDAToolkit expect of an installed toolkit, so
# this adds: lib64 -> lib, targets/x86_64-linux/{include,lib}, unversioned libX.so links,
# and NCCL's header and library beside the toolkit's.
set -euo pipefail

cache=${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}
root=$cache/cuda/13.0
wheels=$cache/wheels/cuda-13.0
packages=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3 nvidia-nccl-cu13==2.28.9
)
stamp=$root/.shoal-cuda-packages
log() { printf '[setup-cuda] %s\n' "$*" >&2; }

if [[ -x $root/bin/nvcc && -f $stamp && $(<"$stamp") == "${packages[*]}" ]]; then
  echo "$root"
  exit 0
fi

log "fetching ${#packages[@]} CUDA wheels into $wheels"
mkdir -p "$wheels"
python3 -m pip download --quiet --no-deps --dest "$wheels" "${packages[@]}" >&2

log "assembling the toolkit in $root"
mkdir -p "$cache/cuda"
tmp=$(mktemp -d "$cache/cuda/.assemble-XXXX")
trap 'rm -rf "$tmp"' EXIT
for p in "${packages[@]}"; do
  name=${p%%==*}
  version=${p##*==}
  wheel=$(ls "$wheels"/"${name//-/_}"-"$version"-*.whl)
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp/unpacked"
done
cu=$tmp/unpacked/nvidia/cu13
nccl=$tmp/unpacked/nvidia/nccl
chmod +x "$cu"/bin/* "$cu"/bin/crt/* "$cu"/nvvm/bin/* 2>/dev/null || true
ln -s lib "$cu/lib64"
mkdir -p "$cu/targets/x86_64-linux"
ln -s ../../include "$cu/targets/x86_64-linux/include"
ln -s ../../lib "$cu/targets/x86_64-linux/lib"
cp -r "$nccl"/include/* "$cu/include/"
cp "$nccl"/lib/libnccl.so.* "$cu/lib/"
# Unversioned names for the linker (libcublas.so -> libcublas.so.13, ...).
for f in "$cu"/lib/*.so.*; do
  base=${f%%.so.*}.so
  [[ -e $base ]] || ln -s "$(basename "$f")" "$base"
done
rm -rf "$root"
mkdir -p "$(dirname "$root")"
mv "$cu" "$root"
echo "${packages[*]}" >"$stamp"
"$root/bin/nvcc" --version | tail -n 2 >&2
echo "$root"
