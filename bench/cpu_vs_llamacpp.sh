#!/usr/bin/env bash
# Shoal's CPU engine vs llama.cpp on the same GGUF and thread count, in one run.
# Prints each side's numbers and ratio_* lines (ours / llama.cpp; > 1 means we are faster).
#
#   bench/cpu_vs_llamacpp.sh [MODEL.gguf] [THREADS]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-${SHOAL_MODELS_DIR:-$HOME/.cache/shoal/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${2:-2}
build_dir=${SHOAL_BUILD_DIR:-$here/build}
args=(--threads "$threads" --prompt-tokens 512 --decode-tokens 128 --streams 8 --stream-tokens 64)

python=$("$here/bench/peer/setup_llamacpp.sh")
cmake --build "$build_dir" --target cpu-engine-bench >/dev/null

echo "model: $model"
echo "threads: $threads"
echo "load_average_1m: $(cut -d' ' -f1 /proc/loadavg)  # ratios are only meaningful on an otherwise idle machine"
ours=$("$build_dir/bench/cpu-engine-bench" --model "$model" "${args[@]}")
peer_log=$(mktemp)
peer=$("$python" "$here/bench/peer/llamacpp_peer.py" --model "$model" "${args[@]}" 2>"$peer_log") ||
  { cat "$peer_log" >&2; exit 1; }
rm -f "$peer_log"
echo "$ours" | sed 's/^/shoal_/'
echo "$peer" | sed 's/^/llamacpp_/'
for key in prompt_tokens_per_s decode_tokens_per_s aggregate_tokens_per_s; do
  a=$(echo "$ours" | awk -v k="$key:" '$1 == k {print $2}')
  b=$(echo "$peer" | awk -v k="$key:" '$1 == k {print $2}')
  awk -v k="$key" -v a="$a" -v b="$b" 'BEGIN {printf "ratio_%s: %.2f\n", k, a / b}'
done
