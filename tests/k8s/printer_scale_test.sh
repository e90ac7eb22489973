#!/usr/bin/env bash
# `kubectl get dsd` shows the printer columns with the values in spec and status, and the
# scale subresource (what `kubectl scale`, HPA and KEDA use) reads and writes
# spec.replicas and reports status.replicas and status.selector.
# shellcheck source=tests/k8s/lib.sh
source "$(dirname "$0")/lib.sh"

ensure_crd
new_namespace printer

k -n "$ns" apply -f - >/dev/null <<'EOF'
apiVersion: shoal.dev/v1alpha1
kind: DeepSeekDeployment
metadata:
  name: cols
spec:
  model: {uri: "file:///models/m.gguf", servedName: tiny}
  parallelism: {tensor: 4, pipeline: 2, gpusPerPod: 4}
  replicas: 3
EOF
# Status is a subresource: only a status write can set it (as the operator does).
k -n "$ns" patch dsd cols --subresource=status --type=merge \
  -p '{"status":{"replicas":3,"readyReplicas":2,"currentQPS":7.5,"selector":"shoal.dev/deployment=cols"}}' >/dev/null
if k -n "$ns" patch dsd cols --type=merge -p '{"status":{"readyReplicas":9}}' >/dev/null 2>&1 &&
  [[ $(k -n "$ns" get dsd cols -o jsonpath='{.status.readyReplicas}') == 9 ]]; then
  fail "a write to the main resource changed status: the status subresource is not enabled"
fi
ok "status is written only through the status subresource"

# Columns: the header names them, the row carries spec/status values.
table=$(k -n "$ns" get dsd)
header=$(head -n1 <<<"$table" | tr -s ' ')
[[ $header == "NAME REPLICAS READY QPS AGE" ]] || fail "header: '$header'"
row=$(grep '^cols ' <<<"$table" | tr -s ' ' | cut -d' ' -f1-4)
[[ $row == "cols 3 2 7.5" ]] || fail "row: '$row' (table: $table)"
ok "kubectl get dsd shows NAME REPLICAS READY QPS AGE = $row"

wide=$(k -n "$ns" get dsd -o wide)
header=$(head -n1 <<<"$wide" | tr -s ' ')
[[ $header == "NAME REPLICAS READY QPS MODEL TP PP AGE" ]] || fail "wide header: '$header'"
row=$(grep '^cols ' <<<"$wide" | tr -s ' ' | cut -d' ' -f5-7)
[[ $row == "tiny 4 2" ]] || fail "wide row: '$row'"
ok "kubectl get dsd -o wide adds MODEL TP PP"

# The short name and the category resolve.
k -n "$ns" get deepseekdeployments.shoal.dev cols >/dev/null || fail "full resource name"
k -n "$ns" get shoal -o name | grep -qx 'deepseekdeployment.shoal.dev/cols' || fail "category 'shoal'"
ok "short name dsd and category shoal resolve"

# --- scale subresource ---------------------------------------------------------------
k -n "$ns" scale dsd cols --replicas=5 >/dev/null
[[ $(k -n "$ns" get dsd cols -o jsonpath='{.spec.replicas}') == 5 ]] || fail "kubectl scale did not set spec.replicas"
ok "kubectl scale dsd --replicas=5 sets spec.replicas"

scale=$(k get --raw "/apis/shoal.dev/v1alpha1/namespaces/$ns/deepseekdeployments/cols/scale")
read -r kind spec_r status_r selector < <(python3 -c '
import json,sys; s=json.load(sys.stdin)
print(s["kind"], s["spec"]["replicas"], s["status"]["replicas"], s["status"]["selector"])' <<<"$scale")
[[ "$kind $spec_r $status_r $selector" == "Scale 5 3 shoal.dev/deployment=cols" ]] ||
  fail "scale subresource: $kind $spec_r $status_r $selector"
ok "GET /scale: spec.replicas 5, status.replicas 3, selector from status"

# Conditional scaling: the precondition guards against racing writers.
if k -n "$ns" scale dsd cols --current-replicas=4 --replicas=1 >/dev/null 2>&1; then
  fail "scale with a wrong --current-replicas succeeded"
fi
k -n "$ns" scale dsd cols --current-replicas=5 --replicas=2 >/dev/null
[[ $(k -n "$ns" get dsd cols -o jsonpath='{.spec.replicas}') == 2 ]] || fail "conditional scale"
ok "kubectl scale --current-replicas is honoured"

# The apiserver validates writes through /scale against the CRD schema too (kubectl
# scale itself refuses -1, so write the Scale object directly).
if out=$(k -n "$ns" patch dsd cols --subresource=scale --type=merge -p '{"spec":{"replicas":-1}}' 2>&1); then
  fail "scale to -1 accepted"
fi
[[ $out == *"spec.replicas"* && $out == *"greater than or equal to 0"* ]] || fail "scale to -1: $out"
ok "a /scale write of -1 replicas is rejected by the schema"

# A HorizontalPodAutoscaler can target it through the scale subresource.
k -n "$ns" apply -f - >/dev/null <<'EOF'
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: cols
spec:
  scaleTargetRef: {apiVersion: shoal.dev/v1alpha1, kind: DeepSeekDeployment, name: cols}
  minReplicas: 1
  maxReplicas: 4
  metrics:
    - type: Pods
      pods:
        metric: {name: shoal_router_requests_per_second}
        target: {type: AverageValue, averageValue: "5"}
EOF
# The controller-manager's HPA controller resolves the target via /scale; with no metrics
# API it reports that it cannot fetch metrics, but it must have found the target.
hpa_found_target() {
  local c
  c=$(k -n "$ns" get hpa cols -o jsonpath='{.status.conditions[?(@.type=="AbleToScale")].status}')
  [[ $c == True ]]
}
wait_until 60 "HPA AbleToScale (target found through /scale)" hpa_found_target
ok "an HPA finds the DeepSeekDeployment through the scale subresource"

finish
