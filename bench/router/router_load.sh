#!/usr/bin/env bash
# Router overhead under a real gRPC load tool (ghz), in one run:
#   1. fixed-QPS Generate streams straight at a synthetic group, then the same load through
#      shoal-router in front of that group: the router's added p50/p99 latency;
#   2. closed-loop load (no rate limit) both ways: the max sustained QPS, and errors.
# The group is shoal-synthetic-worker: a fixed-rate synthetic engine (no model; N tokens
# per stream, one every T µs), so what differs between the runs is the router alone. The
# same fixed-QPS load also runs through grpc-proxy-floor, a bare async gRPC proxy (no
# routing at all): its added latency and CPU are what any gRPC proxy costs on this machine,
# so the router's own share is what it adds above that floor. The fixed-QPS runs go in
# rounds (direct, floor, router, direct, ...) and report the median over rounds, so a
# burst of other work on the machine does not land on one of them alone.
# Builds nothing; needs shoal-router and shoal-synthetic-worker in the build tree, and
# installs ghz (bench/router/install_ghz.sh) when missing.
#
#   bench/router/router_load.sh [--qps 1000] [--seconds 10] [--rounds 3] [--tokens 4] [--token-interval-us 100]
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
rounds=3
while (($#)); do
  case $1 in
    --qps) qps=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --token-interval-us) interval_us=$2; shift 2 ;;
    --max-seconds) max_seconds=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done

router_bin=$build/bin/shoal-router
synthetic_bin=$build/tests/shoal-synthetic-worker
floor_bin=$build/bench/grpc-proxy-floor
for b in "$router_bin" "$synthetic_bin" "$floor_bin"; do
  [[ -x $b ]] || { echo "missing $b: build shoal-router, shoal-synthetic-worker and grpc-proxy-floor in $build" >&2; exit 1; }
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
start "$work/floor.log" "$floor_bin" --upstream "127.0.0.1:$group_port" --threads "$(nproc)"
floor_port=$port
floor_pid=${pids[-1]}
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
run_ghz warmup_floor "$floor_port" -z 1s --rps "$qps" -c 50 --connections 4
for round in $(seq 1 "$rounds"); do
  run_ghz "direct_$round" "$group_port" -z "${seconds}s" --rps "$qps" -c 50 --connections 4
  for proxy in floor router; do
    pid_var=${proxy}_pid
    port_var=${proxy}_port
    before=$(cpu_seconds "${!pid_var}")
    run_ghz "${proxy}_$round" "${!port_var}" -z "${seconds}s" --rps "$qps" -c 50 --connections 4
    echo "$before $(cpu_seconds "${!pid_var}")" >"$work/${proxy}_$round.cpu"
  done
done
run_ghz direct_max "$group_port" -z "${max_seconds}s" -c "$concurrency" --connections 4
run_ghz router_max "$router_port" -z "${max_seconds}s" -c "$concurrency" --connections 4

python3 - "$work" "$qps" "$tokens" "$interval_us" "$concurrency" "$(nproc)" "$rounds" <<'EOF'
import json, statistics, sys
work, qps, tokens, interval_us, concurrency, cores, rounds = sys.argv[1:]
rounds = int(rounds)
client_side = ("the client connection is closing", "use of closed network connection")
def load(name):
    r = json.load(open(f"{work}/{name}.json"))
    pct = {int(d["percentage"]): d["latency"] / 1e6 for d in r.get("latencyDistribution") or []}
    # ghz closes its connections when its duration ends, failing the calls still open on
    # its side: not errors of the server.
    errors = {what: n for what, n in (r.get("errorDistribution") or {}).items()
              if not any(c in what for c in client_side)}
    return r, pct, errors
def print_errors(name, errors):
    print(f"{name}_errors: {sum(errors.values())}")
    for what, n in errors.items():
        print(f"  {n} x {what}")
print(f"engine: shoal-synthetic-worker (synthetic, no model: {tokens} tokens per stream, one every {interval_us} us)")
print(f"cores: {cores}")
print(f"target_qps: {qps}")
print(f"rounds: {rounds} (each figure below is the median over rounds)")
summary = {}
for name in ("direct", "floor", "router"):
    runs = [load(f"{name}_{i}") for i in range(1, rounds + 1)]
    p50 = statistics.median(p.get(50, float("nan")) for _, p, _ in runs)
    p99 = statistics.median(p.get(99, float("nan")) for _, p, _ in runs)
    achieved = statistics.median(r["rps"] for r, _, _ in runs)
    errors = {}
    for _, _, e in runs:
        for what, n in e.items():
            errors[what] = errors.get(what, 0) + n
    cpu_us = None
    if name != "direct":
        per_round = []
        for i, (r, _, _) in enumerate(runs, start=1):
            before, after = map(float, open(f"{work}/{name}_{i}.cpu").read().split())
            per_round.append((after - before) * 1e6 / max((r.get("statusCodeDistribution") or {}).get("OK", 0), 1))
        cpu_us = statistics.median(per_round)
    summary[name] = (achieved, p50, p99, sum(errors.values()), cpu_us)
    by_round = " ".join(f"{p.get(99, float('nan')):.2f}" for _, p, _ in runs)
    print(f"{name}_achieved_qps: {achieved:.1f}")
    print(f"{name}_p50_ms: {p50:.3f}")
    print(f"{name}_p99_ms: {p99:.3f}   (rounds: {by_round})")
    print_errors(name, errors)
for name in ("floor", "router"):
    _, p50, p99, _, cpu_us = summary[name]
    # CPU per stream is what the proxy costs whatever else the machine runs; the machine's
    # cores divided by it bound the QPS the proxy alone could sustain.
    print(f"{name}_cpu_us_per_stream: {cpu_us:.1f}")
    print(f"{name}_cpu_bound_qps_on_{cores}_cores: {int(cores) * 1e6 / cpu_us:.0f}")
    print(f"{name}_added_p50_ms: {p50 - summary['direct'][1]:.3f}")
    print(f"{name}_added_p99_ms: {p99 - summary['direct'][2]:.3f}")
print(f"router_cpu_us_per_stream_above_floor: {summary['router'][4] - summary['floor'][4]:.1f}")
print(f"router_p99_ms_above_floor: {summary['router'][2] - summary['floor'][2]:.3f}")
for name in ("direct_max", "router_max"):
    r, pct, errors = load(name)
    print(f"{name}_qps: {r['rps']:.1f}   (closed loop, {concurrency} concurrent streams)")
    print(f"{name}_p99_ms: {pct.get(99, float('nan')):.3f}")
    print_errors(name, errors)
print(f"ratio_router_vs_direct_max_qps: {load('router_max')[0]['rps'] / load('direct_max')[0]['rps']:.3f}")
added99 = summary["router"][2] - summary["direct"][2]
met = added99 < 1.0 and summary["router"][3] == 0 and summary["router"][0] >= 0.95 * float(qps)
print(f"target_p99_added_below_1ms_at_{qps}_qps: {'met' if met else 'missed'}")
EOF
