#!/usr/bin/env bash
# Operator at scale on the real control plane of tests/k8s/: 1,000 kwok nodes, 100
# DeepSeekDeployments × 4 groups (tensor 2: 800 worker pods + 100 router pods).
# Validates first (every deployment Available with 4 ready groups), then prints:
#   converge_seconds              create of all 100 → all Available (bounded by the control
#                                 plane: controller-manager creates pods at its --kube-api-qps)
#   children_created_seconds      first CR → last StatefulSet/Deployment the operator created
#   operator_rss_mb / peak        VmRSS / VmHWM of shoal-operator when converged
#   apiserver_requests            requests the operator sent until converged (watches included)
#   reconciles                    reconciles it ran
#   requests_per_reconcile
#   idle_requests_per_minute      requests during 60 s with nothing changing (hot-loop check)
#   ratio_converge_vs_target_60s, ratio_rss_vs_target_100mb
# Usage: bench/operator_scale.sh [BUILD_DIR]
#   env: DEPLOYMENTS=100 GROUPS_PER_DEPLOYMENT=4 NODES=1000 SHOAL_K8S_KCM_QPS=200
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
operator=$build/bin/shoal-operator
deployments=${DEPLOYMENTS:-100}
groups=${GROUPS_PER_DEPLOYMENT:-4}
nodes=${NODES:-1000}
ns=shoal-scale-bench
[[ -x $operator ]] || { echo "no $operator: build the shoal-operator target" >&2; exit 1; }

"$root/tests/k8s/install.sh" >/dev/null
# kube-controller-manager's client defaults to 20 requests/s, which alone makes creating
# 800 pods take 40 s on any machine; clusters of this size run it higher. The bench runs
# it at SHOAL_K8S_KCM_QPS (200) and restarts a running one that has another setting.
export SHOAL_K8S_KCM_QPS=${SHOAL_K8S_KCM_QPS:-200}
if pgrep -f 'bin/kube-controller-manager' >/dev/null && ! pgrep -f "kube-api-qps=$SHOAL_K8S_KCM_QPS " >/dev/null; then
  pkill -f 'bin/kube-controller-manager' || true
  sleep 1
fi
eval "$("$root/tests/k8s/control_plane.sh" start)"
k() { kubectl --kubeconfig "$KUBECONFIG" "$@"; }
# Creating 1,000 nodes takes minutes on a small machine: only when they are not there yet.
if (($(k get nodes -l type=kwok --no-headers 2>/dev/null | wc -l) < nodes)); then
  "$root/tests/k8s/control_plane.sh" nodes "$nodes" 0 >/dev/null
fi
k apply --server-side --force-conflicts -f "$root/charts/shoal/crds/deepseekdeployments.yaml" >/dev/null
k delete namespace "$ns" --ignore-not-found --wait=true >/dev/null
k create namespace "$ns" >/dev/null

metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
health_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp /tmp/operator-scale-XXXX.log)
"$operator" --kubeconfig="$KUBECONFIG" --namespace="$ns" --leader-elect=false \
  --metrics-addr="127.0.0.1:$metrics_port" --health-addr="127.0.0.1:$health_port" --workers=${OPERATOR_WORKERS:-8} \
  --log-level=warn 2>"$log" &
op_pid=$!
trap 'kill $op_pid 2>/dev/null || true; wait $op_pid 2>/dev/null || true; k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$health_port/readyz" >/dev/null && break; sleep 0.1; done

metric() { curl -fs "http://127.0.0.1:$metrics_port/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d\n", s}'; }

manifest=$(mktemp /tmp/operator-scale-XXXX.yaml)
for ((i = 0; i < deployments; i++)); do
  cat <<YAML
---
apiVersion: shoal.dev/v1alpha1
kind: DeepSeekDeployment
metadata: {name: ds-$i, namespace: $ns}
spec:
  model: {uri: "file:///models/m.gguf", servedName: m}
  parallelism: {tensor: 2, pipeline: 1, gpusPerPod: 0}
  replicas: $groups
  worker: {image: "shoal-worker:bench", resources: {requests: {cpu: 10m}}}
YAML
done >"$manifest"

requests_before=$(metric shoal_operator_apiserver_requests_total)
start=$(date +%s.%N)
k apply -f "$manifest" >/dev/null
available() {
  k get dsd -n "$ns" -o jsonpath='{range .items[*]}{.status.readyReplicas}/{range .status.conditions[?(@.type=="Available")]}{.status}{end}{"\n"}{end}' |
    grep -c "^$groups/True$" || true
}
while :; do
  n=$(available)
  now=$(date +%s.%N)
  if ((n >= deployments)); then break; fi
  if (($(echo "$now - $start > 900" | bc))); then echo "not converged after 900 s: $n/$deployments Available" >&2; exit 1; fi
  sleep 1
done
converge=$(echo "$now - $start" | bc)
# The operator's own share: from the first CR created to the last child it created.
children_seconds=$(k get dsd,sts,deploy -n "$ns" -o json | python3 -c '
import json, sys, datetime
items = json.load(sys.stdin)["items"]
t = lambda o: datetime.datetime.fromisoformat(o["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp()
crs = [t(o) for o in items if o["kind"] == "DeepSeekDeployment"]
kids = [t(o) for o in items if o["kind"] != "DeepSeekDeployment"]
print(max(kids) - min(crs))')
requests=$(( $(metric shoal_operator_apiserver_requests_total) - requests_before ))
reconciles=$(metric shoal_operator_reconcile_total)
rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$op_pid/status)
hwm_kb=$(awk '/VmHWM/ {print $2}' /proc/$op_pid/status)
idle_before=$(metric shoal_operator_apiserver_requests_total)
reconciles_idle_before=$reconciles
sleep 60
idle_requests=$(( $(metric shoal_operator_apiserver_requests_total) - idle_before ))
idle_reconciles=$(( $(metric shoal_operator_reconcile_total) - reconciles_idle_before ))

echo "deployments: $deployments"
echo "groups_per_deployment: $groups"
echo "worker_pods: $((deployments * groups * 2))"
echo "nodes: $nodes"
echo "kube_controller_manager_api_qps: $SHOAL_K8S_KCM_QPS"
printf 'converge_seconds: %.1f\n' "$converge"
echo "children_created_seconds: $children_seconds"
printf 'operator_rss_mb: %.1f\n' "$(echo "$rss_kb / 1024" | bc -l)"
printf 'operator_peak_rss_mb: %.1f\n' "$(echo "$hwm_kb / 1024" | bc -l)"
echo "apiserver_requests: $requests"
echo "reconciles: $reconciles"
printf 'requests_per_reconcile: %.2f\n' "$(echo "$requests / $reconciles" | bc -l)"
echo "idle_requests_per_minute: $idle_requests"
echo "idle_reconciles_per_minute: $idle_reconciles"
printf 'ratio_converge_vs_target_60s: %.2f\n' "$(echo "$converge / 60" | bc -l)"
printf 'ratio_rss_vs_target_100mb: %.2f\n' "$(echo "$hwm_kb / 1024 / 100" | bc -l)"
