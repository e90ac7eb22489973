#!/usr/bin/env bash
# cuda-decode-bench (Shoal's CUDA model) and bench/cuda_decode_hf.py (Hugging Face
# transformers) on the same GPU and workload, then ratio_* lines: Shoal over transformers.
#
#   bench/cuda_decode_bench.sh [--bin PATH] [--context 1024] [--decode-steps 64] [--batch 64] [--batch-steps 32]
#
# PATH defaults to build-cuda/bench/cuda-decode-bench. PYTHON picks the interpreter with
# torch (default python3). Without a GPU both sides print "skipped: ..." and this exits 0.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$here/../build-cuda/bench/cuda-decode-bench
args=()
while (($#)); do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
python=${PYTHON:-python3}

shoal_out=$(mktemp)
hf_out=$(mktemp)
trap 'rm -f "$shoal_out" "$hf_out"' EXIT
echo "== shoal: $bin ${args[*]}"
"$bin" "${args[@]}" | tee "$shoal_out"
rc=${PIPESTATUS[0]}
# A failed Shoal run still gets the peer's numbers: they are what the next run compares to.
((rc != 0)) && echo "cuda-decode-bench failed (exit $rc)" >&2
if ((rc == 0)) && grep -q '^skipped:' "$shoal_out"; then exit 0; fi
echo "== transformers: $python $here/cuda_decode_hf.py ${args[*]}"
"$python" "$here/cuda_decode_hf.py" "${args[@]}" | tee "$hf_out"
if grep -q '^skipped:' "$hf_out"; then exit "$rc"; fi

value() { awk -F': ' -v k="$2" '$1 == k { print $2 }' "$1"; }
for key in $(awk -F': ' '/^(prefill|decode)_b[0-9]+_tokens_per_s:/ { print $1 }' "$shoal_out"); do
  s=$(value "$shoal_out" "$key")
  h=$(value "$hf_out" "hf_$key")
  [[ -n $s && -n $h ]] || continue
  awk -v k="$key" -v s="$s" -v h="$h" 'BEGIN { if (h > 0) printf "ratio_%s_shoal_vs_hf: %.2f\n", k, s / h }'
done
f=$(value "$shoal_out" decode_b1_fraction_of_roofline)
[[ -n $f ]] && echo "ratio_decode_b1_vs_roofline: $f"
exit "$rc"
