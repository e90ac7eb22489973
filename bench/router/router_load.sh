#!/usr/bin/env bash
# Router overhead under a real gRPC load tool (ghz), in one run:
#   1. fixed-QPS Generate streams straight at a synthetic group, then the same load through
#      shoal-router in front of that group: the router's added p50/p99 latency;
#   2. closed-loop load (no rate limit) both ways: the max sustained QPS, and errors.
# The group is shoal-synthetic-worker: a fixed-rate synthetic engine (no model; N tokens
# per stream, one every T µs), so what differs between the runs is the router alone.
# Builds nothing; needs shoal-router and shoal-synthetic-worker in the build tree, and
# installs ghz (bench/router/install_ghz.sh) when missing.
#
#   bench/router/router_load.sh [--qps 1000] [--seconds 10] [--tokens 4] [--token-interval-us 100]
#   SHOAL_BUILD_DIR=build-x bench/router/router_load.sh
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${SHOAL_BUILD_DIR:-$here/build}
qps=1000
seconds=10
tokens=4
interval_us=100
max_seconds=5
concurrency=64
while (($#)); do
  case $1 in
    --qps) qps=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --token-interval-us) interval_us=$2; shift 2 ;;
    --max-seconds) max_seconds=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

router_bin=$build/bin/shoal-router
synthetic_bin=$build/tests/shoal-synthetic-worker
for b in "$router_bin" "$synthetic_bin"; do
  [[ -x $b ]] || { echo "missing $b: build shoal-router and shoal-synthetic-worker in $build" >&2; exit 1; }
done
ghz=$("$here/bench/router/install_ghz.sh")

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a server in the background and sets `port` from its "listening grpc=" line.
port=
start() {
  local log=$1
  shift
  "$@" >/dev/null 2>"$log" &
  pids+=($!)
  for _ in $(seq 1 200); do
    if grep -qs "listening" "$log"; then
      port=$(grep -o 'grpc=[^ ]*' "$log" | head -n1 | sed 's/.*://')
      return
    fi
    sleep 0.05
  done
  echo "server did not start: $*" >&2
  cat "$log" >&2
  exit 1
}

start "$work/group.log" "$synthetic_bin" --port 0 --model synthetic --token-interval-us "$interval_us"
group_port=$port
# CPU seconds (user + system) a process has used so far.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

start "$work/router.log" "$router_bin" --host 127.0.0.1 --port 0 --http-port -1 --metrics-port -1 \
  --upstream "127.0.0.1:$group_port" --health-interval-ms 500 --log-level warn
router_port=$port
router_pid=${pids[-1]}
sleep 1  # the router's first health round

request="{\"model\": \"synthetic\", \"prompt\": \"router bench\", \"max_tokens\": $tokens}"
run_ghz() {  # name port extra-flags...
  local name=$1 port=$2
  shift 2
  "$ghz" --insecure --proto "$here/proto/shoal/v1/generate.proto" --import-paths "$here/proto" \
    --call shoal.v1.Generation.Generate -d "$request" --format json "$@" \
    "127.0.0.1:$port" >"$work/$name.json" 2>"$work/$name.err" || true
  [[ -s $work/$name.json ]] || { echo "ghz failed ($name):" >&2; cat "$work/$name.err" >&2; exit 1; }
}

# Validate: a routed stream carries the group's tokens.
run_ghz validate "$router_port" -n 5 -c 1 --connections 1
python3 - "$work/validate.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
ok = r.get("statusCodeDistribution", {}).get("OK", 0)
if ok != 5:
    sys.exit(f"validation failed: {r.get('statusCodeDistribution')} {r.get('errorDistribution')}")
EOF

run_ghz warmup "$router_port" -z 2s --rps "$qps" -c 50 --connections 4
run_ghz direct "$group_port" -z "${seconds}s" --rps "$qps" -c 50 --connections 4
cpu_before=$(cpu_seconds "$router_pid")
run_ghz router "$router_port" -z "${seconds}s" --rps "$qps" -c 50 --connections 4
cpu_after=$(cpu_seconds "$router_pid")
run_ghz direct_max "$group_port" -z "${max_seconds}s" -c "$concurrency" --connections 4
run_ghz router_max "$router_port" -z "${max_seconds}s" -c "$concurrency" --connections 4

python3 - "$work" "$qps" "$tokens" "$interval_us" "$concurrency" "$(nproc)" "$cpu_before" "$cpu_after" <<'EOF'
import json, sys
work, qps, tokens, interval_us, concurrency, cores, cpu_before, cpu_after = sys.argv[1:]
def load(name):
    r = json.load(open(f"{work}/{name}.json"))
    pct = {int(d["percentage"]): d["latency"] / 1e6 for d in r.get("latencyDistribution") or []}
    # ghz closes its connections when its duration ends, failing the calls still open on
    # its side: not errors of the server.
    errors = sum(n for what, n in (r.get("errorDistribution") or {}).items()
                 if not any(c in what for c in client_side))
    return r, pct, errors
client_side = ("the client connection is closing", "use of closed network connection")
print(f"engine: shoal-synthetic-worker (synthetic, no model: {tokens} tokens per stream, one every {interval_us} us)")
print(f"cores: {cores}")
print(f"target_qps: {qps}")
rows = {}
for name in ("direct", "router", "direct_max", "router_max"):
    r, pct, errors = load(name)
    rows[name] = (r, pct, errors)
def print_errors(name, r, errors):
    print(f"{name}_errors: {errors}")
    if errors:
        for what, n in (r.get("errorDistribution") or {}).items():
            if not any(c in what for c in client_side):
                print(f"  {n} x {what}")
for name in ("direct", "router"):
    r, pct, errors = rows[name]
    print(f"{name}_achieved_qps: {r['rps']:.1f}")
    print(f"{name}_p50_ms: {pct.get(50, float('nan')):.3f}")
    print(f"{name}_p99_ms: {pct.get(99, float('nan')):.3f}")
    print_errors(name, r, errors)
router_ok = (rows["router"][0].get("statusCodeDistribution") or {}).get("OK", 0)
cpu_us = (float(cpu_after) - float(cpu_before)) * 1e6 / max(router_ok, 1)
# CPU per stream is what the router costs whatever else the machine runs; the machine's
# cores divided by it bound the QPS the router alone could sustain.
print(f"router_cpu_us_per_stream: {cpu_us:.1f}")
print(f"router_cpu_bound_qps_on_{cores}_cores: {int(cores) * 1e6 / cpu_us:.0f}")
added50 = rows["router"][1][50] - rows["direct"][1][50]
added99 = rows["router"][1][99] - rows["direct"][1][99]
print(f"router_added_p50_ms: {added50:.3f}")
print(f"router_added_p99_ms: {added99:.3f}")
for name in ("direct_max", "router_max"):
    r, pct, errors = rows[name]
    print(f"{name}_qps: {r['rps']:.1f}   (closed loop, {concurrency} concurrent streams)")
    print(f"{name}_p99_ms: {pct.get(99, float('nan')):.3f}")
    print_errors(name, r, errors)
print(f"ratio_router_vs_direct_max_qps: {rows['router_max'][0]['rps'] / rows['direct_max'][0]['rps']:.3f}")
met = added99 < 1.0 and rows["router"][2] == 0 and rows["router"][0]["rps"] >= 0.95 * float(qps)
print(f"target_p99_added_below_1ms_at_{qps}_qps: {'met' if met else 'missed'}")
EOF
