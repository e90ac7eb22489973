#!/usr/bin/env bash
# The Helm chart: lints clean, renders for both watch modes, installs against the real
# control plane (CRD Established, operator Deployment available on a fake node), grants
# the operator exactly what it reconciles (checked with `kubectl auth can-i` as its
# ServiceAccount), and uninstalls cleanly.
# shellcheck source=tests/k8s/lib.sh
source "$(dirname "$0")/lib.sh"

chart=$repo_root/charts/shoal

out=$("$helm" lint --strict "$chart" 2>&1) || fail "helm lint: $out"
ok "helm lint --strict"
out=$("$helm" lint --strict "$chart" --set watchNamespace=team-a --set leaderElection.enabled=false \
  --set metrics.serviceMonitor.enabled=true 2>&1) || fail "helm lint (namespaced): $out"
ok "helm lint --strict with watchNamespace, no leader election"

rendered=$("$helm" template shoal "$chart" -n shoal-system --set watchNamespace=team-a)
grep -q '^kind: RoleBinding' <<<"$rendered" || fail "watchNamespace must bind with a RoleBinding"
grep -q '^kind: ClusterRoleBinding' <<<"$rendered" && fail "watchNamespace must not bind cluster-wide"
grep -q -- '--namespace=team-a' <<<"$rendered" || fail "watchNamespace not passed to the operator"
ok "watchNamespace renders a RoleBinding in that namespace and --namespace"

# Every object the chart renders passes server-side validation (the CRD is in crds/).
ensure_crd
new_namespace helm
release=shoal-$ns
"$helm" template "$release" "$chart" -n "$ns" | k apply --dry-run=server -n "$ns" -f - >/dev/null ||
  fail "rendered chart fails server-side validation"
ok "rendered chart passes server-side dry-run"

# A CPU node so the operator pod can be scheduled (kwok marks it Ready; no container runs).
"$k8s_here/control_plane.sh" nodes 1 0 >/dev/null

cleanup_hooks+=("'$helm' uninstall '$release' -n '$ns' >/dev/null 2>&1")
out=$("$helm" install "$release" "$chart" -n "$ns" --wait --timeout 120s 2>&1) || fail "helm install: $out"
grep -q 'STATUS: deployed' <<<"$out" || fail "helm install did not report deployed: $out"
grep -q 'kubectl get dsd' <<<"$out" || fail "NOTES.txt not shown"
ok "helm install --wait: deployed"

crd_established || fail "CRD not Established after install"
ok "CRD deepseekdeployments.shoal.dev Established"

op=$release-operator
[[ $(k -n "$ns" get deployment "$op" -o jsonpath='{.status.availableReplicas}') == 1 ]] ||
  fail "operator Deployment not available"
args=$(k -n "$ns" get deployment "$op" -o jsonpath='{.spec.template.spec.containers[0].args}')
for a in --metrics-addr=:8080 --health-addr=:8081 --leader-elect=true "--leader-election-namespace=$ns"; do
  [[ $args == *"\"$a\""* ]] || fail "operator args lack $a: $args"
done
ok "operator Deployment available with metrics, health and leader-election flags"

# --- least privilege, asked of the apiserver as the operator's ServiceAccount ---------
# A SubjectAccessReview names group and resource exactly (kubectl auth can-i mangles
# resources whose CRD is not installed, such as Volcano's PodGroups).
sa=system:serviceaccount:$ns:$op
can() { # can VERB GROUP RESOURCE [NAMESPACE] -> true/false
  k create -o jsonpath='{.status.allowed}' -f - <<EOF
apiVersion: authorization.k8s.io/v1
kind: SubjectAccessReview
spec:
  user: $sa
  groups: [system:serviceaccounts, "system:serviceaccounts:$ns", system:authenticated]
  resourceAttributes: {verb: $1, group: "$2", resource: "$3", namespace: "${4:-some-namespace}"}
EOF
}
allowed=("watch shoal.dev deepseekdeployments" "patch shoal.dev deepseekdeployments/status"
  "update shoal.dev deepseekdeployments/scale" "create apps statefulsets" "delete apps statefulsets"
  "patch apps deployments" "create '' services" "create '' configmaps" "delete '' pods" "list '' pods"
  "create '' events" "create scheduling.volcano.sh podgroups" "create scheduling.x-k8s.io podgroups"
  "update coordination.k8s.io leases $ns")
for q in "${allowed[@]}"; do
  eval "set -- $q"
  [[ $(can "$@") == true ]] || fail "operator cannot: $q"
done
ok "operator may do what it reconciles (dsd, status, scale, statefulsets, services, pods, leases, podgroups)"
denied=("get '' secrets" "list '' secrets $ns" "create '' pods" "delete '' nodes"
  "create rbac.authorization.k8s.io clusterroles" "delete shoal.dev deepseekdeployments"
  "update coordination.k8s.io leases default" "create '' serviceaccounts" "create '' pods/exec")
for q in "${denied[@]}"; do
  eval "set -- $q"
  [[ $(can "$@") == false ]] || fail "operator must not: $q"
done
ok "operator may not read secrets, create pods, touch nodes/RBAC or leases outside its namespace"

# An upgrade with changed values rolls the Deployment; uninstall removes what install made.
"$helm" upgrade "$release" "$chart" -n "$ns" --set logLevel=debug --wait --timeout 120s >/dev/null ||
  fail "helm upgrade"
k -n "$ns" get deployment "$op" -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -q -- '--log-level=debug' ||
  fail "upgrade did not change the args"
ok "helm upgrade applies new values"

"$helm" uninstall "$release" -n "$ns" --wait >/dev/null || fail "helm uninstall"
k get clusterrole "$op" >/dev/null 2>&1 && fail "ClusterRole left after uninstall"
k -n "$ns" get deployment "$op" >/dev/null 2>&1 && fail "Deployment left after uninstall"
crd_established || fail "uninstall must keep the CRD (and every DeepSeekDeployment)"
ok "helm uninstall removes the operator and keeps the CRD"

finish
