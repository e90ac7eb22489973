#!/usr/bin/env bash
# Shoal's CPU engine vs llama.cpp on the same GGUF and thread count, in one run.
# Prints each side's numbers and ratio_* lines (ours / llama.cpp; > 1 means we are faster).
# With REPEATS=N the two sides run alternately N times (ours, peer, ours, peer, ...), so a
# change in the machine's load hits both about equally; each run's ratios are printed as
# ratio_<key>_run<i>, and ratio_<key> is then the median with ratio_<key>_range the
# spread.
#
#   [REPEATS=3] bench/cpu_vs_llamacpp.sh [MODEL.gguf] [THREADS]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model=${1:-${SHOAL_MODELS_DIR:-$HOME/.cache/shoal/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${2:-2}
repeats=${REPEATS:-1}
build_dir=${SHOAL_BUILD_DIR:-$here/build}
args=(--threads "$threads" --prompt-tokens 512 --decode-tokens 128 --streams 8 --stream-tokens 64)
keys=(prompt_tokens_per_s decode_tokens_per_s aggregate_tokens_per_s)

python=$("$here/bench/peer/setup_llamacpp.sh")
cmake --build "$build_dir" --target cpu-engine-bench >/dev/null

value() { echo "$1" | awk -v k="$2:" '$1 == k {print $2}'; }

echo "model: $model"
echo "threads: $threads"
echo "repeats: $repeats"
declare -A ratios
for ((run = 1; run <= repeats; run++)); do
  echo "load_average_1m: $(cut -d' ' -f1 /proc/loadavg)  # ratios are only meaningful on an otherwise idle machine"
  ours=$("$build_dir/bench/cpu-engine-bench" --model "$model" "${args[@]}")
  peer_log=$(mktemp)
  peer=$("$python" "$here/bench/peer/llamacpp_peer.py" --model "$model" "${args[@]}" 2>"$peer_log") ||
    { cat "$peer_log" >&2; exit 1; }
  rm -f "$peer_log"
  echo "$ours" | sed 's/^/shoal_/'
  echo "$peer" | sed 's/^/llamacpp_/'
  for key in "${keys[@]}"; do
    r=$(awk -v a="$(value "$ours" "$key")" -v b="$(value "$peer" "$key")" 'BEGIN {printf "%.2f", a / b}')
    ratios[$key]+="$r "
    if ((repeats > 1)); then echo "ratio_${key}_run${run}: $r"; fi
  done
done
for key in "${keys[@]}"; do
  sorted=$(echo "${ratios[$key]}" | tr ' ' '\n' | grep -v '^$' | sort -g)
  n=$(echo "$sorted" | wc -l)
  echo "ratio_$key: $(echo "$sorted" | sed -n "$(((n + 1) / 2))p")"
  if ((repeats > 1)); then
    echo "ratio_${key}_range: $(echo "$sorted" | head -1)-$(echo "$sorted" | tail -1)"
  fi
done
