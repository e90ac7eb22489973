#!/usr/bin/env bash
# Runs every GPU check from the bundle that tests/cuda/make_device_bundle.sh made, on a GPU
# machine that has a CUDA 13 driver and libraries (toolkit or NVIDIA's Python wheels) but
# none of Shoal's build dependencies:
#
#   1. finds libcudart.so.13, libcublas.so.13 and libcublasLt.so.13 (CUDA_LIB_DIR first,
#      then /usr/local/cuda*, python3's nvidia/* wheels, ldconfig, a bounded find) and
#      prints what it found; LD_LIBRARY_PATH = the bundle's libs + those;
#   2. prints nvidia-smi;
#   3. runs cuda_kernels_test (when it dies, the tensor-core attention tests alone: if they
#      end their process too, everything after runs with SHOAL_CUDA_ATTENTION_CORES=f32),
#      cuda_decoder_test, cuda_engine_test and cuda_group_test (GoogleTest XML into $OUT), the
#      decode benchmark against transformers at R1-Distill-Qwen-7B's and DeepSeek-V2-Lite's
#      shapes, then compute-sanitizer memcheck over the kernel test and part of the decoder
#      test (and racecheck and synccheck over the tensor-core attention tests, racecheck
#      over the sampling draw), when compute-sanitizer is there (a sanitizer stage cut at
#      its limit says so and fails only on errors it reported), batch-1 decode with CUDA
#      graphs (GEMV kernel; launches not overlapped, SHOAL_CUDA_PDL=0; cuBLAS for the dense
#      products), the decode kernels one by one (cuda-kernels-bench), the model with
#      attention on the f32 cores (SHOAL_CUDA_ATTENTION_CORES=f32), NCCL bus bandwidth
#      (needs 2 GPUs), then DeepSeek-V2-Lite's shape with FP8 weights (tensor-core and
#      widened GEMMs): what comes later is cut first when time is short;
#   4. writes $OUT/summary.txt and prints it last.
#
#   tests/cuda/run_device_bundle.sh [BUNDLE]     # default .devbundle at the repo root
#
# Env: OUT (default /tmp/shoal-device-out), RUN_BUDGET_S (default 420: stages that would
# run past it are cut short or skipped), CUDA_LIB_DIR (colon-separated dirs searched
# first), PYTHON (the interpreter with torch, default python3).
# Exit 0 when every stage that ran passed (tests skipped for want of a GPU count as
# passed), 1 otherwise.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bundle=$(cd "${1:-$here/.devbundle}" && pwd) || { echo "no bundle (run tests/cuda/make_device_bundle.sh)" >&2; exit 1; }
out=${OUT:-/tmp/shoal-device-out}
mkdir -p "$out"
budget=${RUN_BUDGET_S:-420}
summary=$out/summary.txt
: >"$summary"
failed=0
log() { echo "[device $((SECONDS))s] $*"; }
note() { echo "$*" | tee -a "$summary"; }

# --- 1. CUDA libraries ------------------------------------------------------------------
candidates=()
IFS=: read -r -a extra <<<"${CUDA_LIB_DIR:-}"
candidates+=("${extra[@]}")
for d in /usr/local/cuda /usr/local/cuda-13* /usr/local/cuda*; do
  candidates+=("$d/lib64" "$d/lib" "$d/targets/x86_64-linux/lib")
done
python=${PYTHON:-python3}
export PYTHON=$python
if command -v "$python" >/dev/null; then
  # nvidia is a namespace package: every site-packages that has NVIDIA wheels.
  while read -r site; do
    [[ -n $site ]] || continue
    candidates+=("$site/nvidia/cu13/lib")
    for d in "$site"/nvidia/*/lib; do candidates+=("$d"); done
  done < <("$python" -c 'import nvidia, os
for p in nvidia.__path__: print(os.path.dirname(p))' 2>/dev/null)
fi
while read -r path; do candidates+=("$(dirname "$path")"); done < <(ldconfig -p 2>/dev/null | awk '/libcublasLt\.so\.13/ { print $NF }')

find_lib() {  # prints the first candidate dir holding $1
  local d
  for d in "${candidates[@]}"; do
    [[ -n $d && -e $d/$1 ]] && { echo "$d"; return 0; }
  done
  # Last resort: a bounded search of the usual roots.
  local hit
  hit=$(timeout 60 find /usr /opt /root /home -xdev -name "$1" -print -quit 2>/dev/null)
  [[ -n $hit ]] && { dirname "$hit"; return 0; }
  return 1
}
cuda_dirs=()
for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13; do
  if d=$(find_lib "$lib"); then
    log "found $lib in $d"
    [[ " ${cuda_dirs[*]} " == *" $d "* ]] || cuda_dirs+=("$d")
  else
    note "FAIL cuda-libraries: $lib not found (set CUDA_LIB_DIR)"
    failed=1
  fi
done
# The bundle's own libraries travel compressed: unpacked once into a scratch directory.
bundle_lib=$bundle/lib
if [[ -f $bundle/lib.tar.xz ]]; then
  bundle_lib=${TMPDIR:-/tmp}/shoal-bundle-lib-$$
  mkdir -p "$bundle_lib"
  tar -C "$bundle_lib" -xJf "$bundle/lib.tar.xz" --strip-components=1 || { echo "cannot unpack lib.tar.xz" >&2; exit 1; }
fi
bin_dir=$bundle/bin
if [[ -f $bundle/bin.tar.xz ]]; then
  bin_dir=${TMPDIR:-/tmp}/shoal-bundle-bin-$$
  mkdir -p "$bin_dir"
  tar -C "$bin_dir" -xJf "$bundle/bin.tar.xz" --strip-components=1 || { echo "cannot unpack bin.tar.xz" >&2; exit 1; }
fi
lib_path=$bundle_lib
for d in "${cuda_dirs[@]}"; do lib_path+=":$d"; done
export LD_LIBRARY_PATH=$lib_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export SHOAL_SOURCE_DIR=$bundle/src
# A GPU machine's libstdc++ older than the build machine's: take the bundle's.
if ! "$bin_dir/cuda_kernels_test" --gtest_list_tests >/dev/null 2>"$out/loader.err"; then
  if grep -q 'GLIBCXX\|CXXABI\|GCC_' "$out/loader.err"; then
    log "system libstdc++ too old; using the bundle's"
    export LD_LIBRARY_PATH=$bundle_lib:$bundle/lib-fallback:${LD_LIBRARY_PATH#"$bundle_lib:"}
  else
    log "cuda_kernels_test does not start:"
    cat "$out/loader.err"
  fi
fi
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$bin_dir/cuda_decoder_test" >"$out/ldd.txt" 2>&1
if grep 'not found' "$out/ldd.txt"; then
  note "FAIL loader: libraries not found (see ldd.txt)"
  failed=1
fi

# --- 2. the GPU ---------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null; then
  timeout 30 nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
  timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv 2>&1 | tee -a "$out/nvidia-smi.txt"
else
  log "nvidia-smi: not installed"
fi
[[ -f $bundle/COMMIT ]] && log "bundle built from $(head -n 1 "$bundle/COMMIT")"

# --- 3. stages ----------------------------------------------------------------------------
# run_stage NAME TIMEOUT_S CMD...: output to $OUT/NAME.log, cut at the time left.
run_stage() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - SECONDS - 15))
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    note "SKIP $name: out of time (budget ${budget}s)"
    return 0
  fi
  rm -f "$out/$name.rc"
  log "== $name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  echo "$rc" >"$out/$name.rc"
  local secs=$((SECONDS - t0)) counts=""
  local xml=$out/$name.xml
  if [[ -f $xml ]]; then
    local tests fails skipped
    tests=$(grep -o '<testsuites [^>]*' "$xml" | grep -o ' tests="[0-9]*"' | grep -o '[0-9]*')
    fails=$(grep -o '<testsuites [^>]*' "$xml" | grep -o ' failures="[0-9]*"' | grep -o '[0-9]*')
    skipped=$(grep -c 'result="skipped"' "$xml")
    counts=" tests=$tests failures=$fails skipped=$skipped"
  fi
  if ((rc == 0)); then
    note "PASS $name (${secs}s)$counts"
  elif ((rc == 124 || rc == 137)) && [[ $name == memcheck_* || $name == racecheck_* || $name == synccheck_* ]]; then
    # A sanitizer slows the kernels many times over: reaching the limit is not a finding,
    # an error it reported before the cut is.
    local errors
    errors=$(grep -cE '^========= +(Invalid|Race|Barrier|Error|Uninitialized|Program hit|.*[Hh]azard)' "$out/$name.log")
    note "CUT $name at its limit (${secs}s): $errors errors reported before the cut"
    if ((errors > 0)); then
      failed=1
      grep -E '^=========' "$out/$name.log" | head -n 20 | sed 's/^/    /' | tee -a "$summary"
    fi
  else
    failed=1
    ((rc == 124 || rc == 137)) && counts+=" TIMED OUT"
    note "FAIL $name rc=$rc (${secs}s)$counts"
    grep -E '^\[  FAILED  \]|Failure$|error|Expected|Which is|fatal|ERROR SUMMARY|Invalid|out of bounds' "$out/$name.log" |
      head -n 40 | sed 's/^/    /' | tee -a "$summary"
  fi
  return 0
}

# run_gtest NAME TIMEOUT_S BINARY: the whole binary once; when it dies (a signal: a failed
# CUDA check aborts) or hangs, every test that did not finish runs again alone, so one
# crash does not hide the rest.
run_gtest() {
  local name=$1 limit=$2 bin=$3
  run_stage "$name" "$limit" "$bin" --gtest_output="xml:$out/$name.xml"
  local rc
  rc=$(tail -n 1 "$out/$name.rc" 2>/dev/null || echo 0)
  ((rc >= 124)) || return 0
  note "  $name died (rc=$rc): running the tests it did not finish one by one"
  local suite="" line t
  "$bin" --gtest_list_tests 2>/dev/null | while IFS= read -r line; do
    line=${line%%#*}
    line=${line%"${line##*[![:space:]]}"}
    if [[ $line != " "* ]]; then
      suite=$line
      continue
    fi
    t=$suite${line##* }
    grep -qF "[       OK ] $t " "$out/$name.log" && continue
    grep -qF "[  SKIPPED ] $t " "$out/$name.log" && continue
    local left=$((budget - SECONDS - 15))
    if ((left < 20)); then
      note "  SKIP $t: out of time"
      continue
    fi
    timeout -k 5 $((left < 60 ? left : 60)) "$bin" --gtest_filter="$t" >"$out/$name.alone.log" 2>&1
    local r=$?
    cat "$out/$name.alone.log" >>"$out/$name.isolated.log"
    if ((r == 0)); then
      note "  PASS $t (alone)"
    else
      note "  FAIL $t (alone, rc=$r)"
      grep -E 'Failure$|Expected|Which is|fatal|error' "$out/$name.alone.log" | head -n 6 | sed 's/^/      /' |
        tee -a "$summary"
    fi
  done
}

run_gtest cuda_kernels_test 120 "$bin_dir/cuda_kernels_test"
# When the kernel test died, the tensor-core attention kernels on their own: a wrong result
# fails a test, but a fault (a CUDA error ends the process) would end every model run below
# the same way, so then they run with attention on the f32 cores and the summary says so.
if (($(tail -n 1 "$out/cuda_kernels_test.rc" 2>/dev/null || echo 0) >= 124)); then
  run_stage tensor_core_attention 60 "$bin_dir/cuda_kernels_test" --gtest_brief=1 \
    --gtest_filter='CudaTensorCores.*:*TiledPromptAttention*:*MlaTiledAttention*:*PastTheSequencesLastBlock*:*PagedAttention*'
  if (($(tail -n 1 "$out/tensor_core_attention.rc" 2>/dev/null || echo 0) >= 124)); then
    export SHOAL_CUDA_ATTENTION_CORES=f32
    note "NOTE tensor-core attention ended its process: the model stages below run with SHOAL_CUDA_ATTENTION_CORES=f32"
  fi
fi
run_gtest cuda_decoder_test 240 "$bin_dir/cuda_decoder_test"
run_gtest cuda_engine_test 60 "$bin_dir/cuda_engine_test"
# Forked groups of ranks, each shard on the GPU (Gloo between them: one GPU here).
run_gtest cuda_group_test 120 "$bin_dir/cuda_group_test"
grep -hE 'weight bytes' "$out/cuda_group_test.log" 2>/dev/null | tee -a "$summary"
# The numbers the decoder test prints (relative errors per fixture).
grep -hE 'relative error|bf16:' "$out/cuda_decoder_test.log" 2>/dev/null | tee -a "$summary"
grep -hE "^skipped:" "$out/cuda_kernels_test.log" "$out/cuda_decoder_test.log" 2>/dev/null | sort -u | head -n 2

run_stage decode_bench 240 "$bundle/bench/cuda_decode_bench.sh" --bin "$bin_dir/cuda-decode-bench"
grep -hE '^(device|skipped|hf_versions|[a-z_0-9]+: [0-9.]+$)' "$out/decode_bench.log" 2>/dev/null | tee -a "$summary"

# The issue's second shape, DeepSeek-V2-Lite, before the sanitizers and the diagnostics
# below, which are cut first when time is short.
run_stage decode_bench_deepseek 200 "$bundle/bench/cuda_decode_bench.sh" --bin "$bin_dir/cuda-decode-bench" \
  --shape deepseek-v2-lite
grep -hE '^(shape|skipped|[a-z_0-9]+: [0-9.]+$)' "$out/decode_bench_deepseek.log" 2>/dev/null | tee -a "$summary"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)
if [[ -z $sanitizer && -f $bundle/sanitizer.tar.xz ]]; then  # the bundle's own, from NVIDIA's wheel
  sanitizer_dir=${TMPDIR:-/tmp}/shoal-sanitizer-$$
  mkdir -p "$sanitizer_dir"
  if tar -C "$sanitizer_dir" -xJf "$bundle/sanitizer.tar.xz"; then
    sanitizer=$sanitizer_dir/sanitizer/bin/compute-sanitizer
    export LD_LIBRARY_PATH=$sanitizer_dir/sanitizer/lib:$LD_LIBRARY_PATH
    log "compute-sanitizer: the bundle's ($("$sanitizer" --version 2>&1 | tail -n 1))"
  fi
fi
if grep -q 'skipped: no GPU' "$out/cuda_kernels_test.log" 2>/dev/null; then
  note "SKIP memcheck: no GPU"  # nothing of the tests reaches the device for it to check
elif [[ -n $sanitizer && -x $sanitizer ]]; then
  run_stage memcheck_kernels 150 "$sanitizer" --tool memcheck --error-exitcode 9 "$bin_dir/cuda_kernels_test" --gtest_brief=1
  run_stage memcheck_decoder 150 "$sanitizer" --tool memcheck --error-exitcode 9 "$bin_dir/cuda_decoder_test" \
    --gtest_brief=1 --gtest_filter='*F32LogitsMatch*/llama_tiny:*MixedBatch*/qwen2_tiny:*PipelineStages*/qwen2_tiny:CudaDecoderGguf.*:*MixedBatch*/deepseek_v3_tiny:*F32LogitsMatch*/deepseek_v2_lite_tiny'
  grep -h 'ERROR SUMMARY' "$out"/memcheck_*.log 2>/dev/null | tee -a "$summary"
  # Shared-memory races and barrier misuse in the tensor-core attention kernels, their
  # cp.async pipelines and ldmatrix reads (the emulator's two thread orders and two copy
  # timings catch the plain ones, not every interleaving).
  for tool in racecheck synccheck; do
    run_stage "${tool}_attention" 60 "$sanitizer" --tool "$tool" --error-exitcode 9 "$bin_dir/cuda_kernels_test" \
      --gtest_brief=1 \
      --gtest_filter='*TiledPromptAttention*/BF16:*MlaTiledAttention*/F16:*PastTheSequencesLastBlock*/F16:CudaTensorCores.*'
    grep -h 'ERROR SUMMARY' "$out/${tool}_attention.log" 2>/dev/null | sed "s/^/${tool}: /" | tee -a "$summary"
  done
  # The sampling kernel's shared-memory bands, candidate compaction and narrowing draw
  # (barriers between warps' writes and thread 0's reads), one row set of each path.
  run_stage racecheck_sampling 45 "$sanitizer" --tool racecheck --error-exitcode 9 "$bin_dir/cuda_kernels_test" \
    --gtest_brief=1 --gtest_filter='CudaSampling.TheDraw*'
  grep -h 'ERROR SUMMARY' "$out/racecheck_sampling.log" 2>/dev/null | sed "s/^/racecheck_sampling: /" | tee -a "$summary"
else
  note "SKIP memcheck: compute-sanitizer not found"
fi

# Batch-1 decode again with CUDA graphs (the ratio to the eager run above is their gain).
run_stage decode_bench_graphs 150 "$bin_dir/cuda-decode-bench" --cuda-graphs --batch 0
grep -hE '^(decode_b1|decode_graph)[a-z_0-9]*: [0-9.]+$' "$out/decode_bench_graphs.log" 2>/dev/null | sed 's/^/graphs_/' |
  tee -a "$summary"
# The same with every kernel launched the plain way (SHOAL_CUDA_PDL=0): what overlapping
# each kernel's launch with the previous one's tail (launch.cuh) gains.
run_stage decode_bench_graphs_no_overlap 120 env SHOAL_CUDA_PDL=0 "$bin_dir/cuda-decode-bench" --cuda-graphs --batch 0
grep -hE '^(decode_b1|decode_graph)[a-z_0-9]*: [0-9.]+$' "$out/decode_bench_graphs_no_overlap.log" 2>/dev/null |
  sed 's/^/graphs_no_overlap_/' | tee -a "$summary"
# The same with cuBLAS for the dense products instead of the GEMV kernel (which decode
# steps take by default): which of the two reads the weights faster at batch 1.
run_stage decode_bench_graphs_cublas 120 "$bin_dir/cuda-decode-bench" --cuda-graphs --batch 0 \
  --small-step-matmul cublas
grep -hE '^(decode_b1|decode_graph)[a-z_0-9]*: [0-9.]+$' "$out/decode_bench_graphs_cublas.log" 2>/dev/null |
  sed 's/^/graphs_cublas_/' | tee -a "$summary"

# The step's heaviest kernels one by one against the copy bandwidth: which of them holds
# the batch-1 fraction of the roofline down; and prompt attention on the tensor cores
# against the f32 cores and cuBLAS's GEMM rate.
run_stage kernels_bench 60 "$bin_dir/cuda-kernels-bench"
grep -hE '^(skipped|[a-z_0-9]+(_fraction_of_copy|_splits|_tflops|_fraction_of_cublas|_speedup): [0-9.]+$)' \
  "$out/kernels_bench.log" 2>/dev/null | sed 's/^/kernels_/' | tee -a "$summary"

# The whole model with attention on the f32 cores (SHOAL_CUDA_ATTENTION_CORES=f32): what
# the tensor-core attention kernels gain in prefill, batch-1 and batch-64 decode.
run_stage decode_bench_f32_attention 100 env SHOAL_CUDA_ATTENTION_CORES=f32 "$bin_dir/cuda-decode-bench" \
  --cuda-graphs --batch 64
grep -hE '^(prefill|decode)[a-z_0-9]*: [0-9.]+$' "$out/decode_bench_f32_attention.log" 2>/dev/null |
  sed 's/^/f32_attention_/' | tee -a "$summary"

# NCCL's bus bandwidth (a line saying why not on a machine with one GPU).
run_stage nccl_bench 90 "$bin_dir/cuda-nccl-bench"
grep -hE '^(skipped|gpus|allreduce|peer|ratio)' "$out/nccl_bench.log" 2>/dev/null | tee -a "$summary"

# DeepSeek-V2-Lite's shape with FP8 weights (8 of its layers, to fit): prompt and batch-64
# steps on FP8 tensor cores, then with the weights widened, side by side.
for gemm in tensor-cores exact; do
  run_stage "decode_bench_deepseek_fp8_$gemm" 120 "$bin_dir/cuda-decode-bench" --shape deepseek-v2-lite \
    --weights fp8 --fp8-gemm "$gemm" --layers 8 --batch 64
  grep -hE '^(skipped|[a-z_0-9]+: [0-9.]+$)' "$out/decode_bench_deepseek_fp8_$gemm.log" 2>/dev/null |
    sed "s/^/fp8_${gemm//-/_}_/" | tee -a "$summary"
done

# --- 4. summary ---------------------------------------------------------------------------
echo
echo "===== summary ($out/summary.txt, ${SECONDS}s) ====="
cat "$summary"
exit "$failed"
