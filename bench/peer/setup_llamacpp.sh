#!/usr/bin/env bash
# Builds the CPU peer, llama.cpp, from the PyPI source distribution of llama-cpp-python
# into a cached virtualenv (several minutes on 2 cores, once). Prints the venv's python.
set -euo pipefail
cache=${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}
venv=$cache/llamacpp-venv
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
if ! "$venv/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  echo "[peer] building llama-cpp-python $version (llama.cpp) into $venv" >&2
  python3 -m venv "$venv"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$venv/bin/pip" install --quiet --no-binary llama-cpp-python \
    "llama-cpp-python==$version" numpy >&2
fi
echo "$venv/bin/python"
