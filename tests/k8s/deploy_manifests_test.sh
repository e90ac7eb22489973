#!/usr/bin/env bash
# deploy/: the plain manifests are the chart rendered with its defaults (no drift), the
# kustomization applies against the real apiserver, and every example DeepSeekDeployment
# passes server-side validation and is stored with its own values.
# shellcheck source=tests/k8s/lib.sh
source "$(dirname "$0")/lib.sh"

# --- deploy/operator.yaml is exactly what the chart renders ----------------------------
fresh=$("$repo_root/deploy/render.sh" --stdout)
diff -u "$repo_root/deploy/operator.yaml" <(echo "$fresh") >/dev/null ||
  fail "deploy/operator.yaml differs from the chart; run deploy/render.sh"
ok "deploy/operator.yaml matches helm template of charts/shoal"

# --- kustomize -------------------------------------------------------------------------
built=$(k kustomize "$repo_root/deploy")
for kind in CustomResourceDefinition Namespace ServiceAccount ClusterRole ClusterRoleBinding Role RoleBinding Deployment Service; do
  grep -q "^kind: $kind\$" <<<"$built" || fail "kustomize build lacks a $kind"
done
# The CRD in deploy/ is the chart's file (parsed, compared as JSON).
k create --dry-run=client -o json -f "$repo_root/charts/shoal/crds/deepseekdeployments.yaml" >"$SHOAL_K8S_DIR/chart-crd.json"
k create --dry-run=client -o json -f - <<<"$built" >"$SHOAL_K8S_DIR/kustomized.json"
python3 - "$SHOAL_K8S_DIR/chart-crd.json" "$SHOAL_K8S_DIR/kustomized.json" <<'EOF' || fail "kustomize's CRD differs from the chart's"
import json, sys
chart = json.load(open(sys.argv[1]))
# kubectl prints one JSON document per object, back to back.
text, items, pos = open(sys.argv[2]).read(), [], 0
decoder = json.JSONDecoder()
while text[pos:].strip():
    obj, end = decoder.raw_decode(text, pos)
    items.extend(obj["items"] if obj.get("kind") == "List" else [obj])
    pos = end
    while pos < len(text) and text[pos].isspace():
        pos += 1
crds = [i for i in items if i["kind"] == "CustomResourceDefinition"]
assert len(crds) == 1, f"{len(crds)} CRDs"
assert crds[0]["spec"] == chart["spec"], "spec differs"
EOF
ok "kubectl kustomize deploy/ builds the CRD, namespace, RBAC and operator"

ensure_crd
cleanup_hooks+=("k delete -f '$repo_root/deploy/operator.yaml' --wait=false >/dev/null 2>&1; k delete namespace shoal-system --wait=false >/dev/null 2>&1")
out=$(k apply -k "$repo_root/deploy" 2>&1) || fail "kubectl apply -k deploy/: $out"
grep -q 'deployment.apps/shoal-operator' <<<"$out" || fail "apply -k did not create the operator: $out"
ok "kubectl apply -k deploy/ succeeds"
# shoal-system enforces the "restricted" Pod Security Standard: the ReplicaSet can only
# create the operator pod if its security context complies.
operator_pod_created() { [[ -n $(k -n shoal-system get pods -l app.kubernetes.io/component=operator -o name) ]]; }
wait_until 60 "operator pod admitted in the restricted namespace" operator_pod_created
ok "the operator pod passes Pod Security \"restricted\" admission"

# --- examples --------------------------------------------------------------------------
new_namespace examples
for f in "$repo_root"/deploy/examples/*.yaml; do
  out=$(k -n "$ns" apply --dry-run=server -f "$f" 2>&1) || fail "$(basename "$f") fails server-side validation: $out"
  out=$(k -n "$ns" apply -f "$f" 2>&1) || fail "$(basename "$f"): $out"
done
ok "every example passes server-side validation and applies: $(cd "$repo_root/deploy/examples" && ls | tr '\n' ' ')"

# What the apiserver stored is what the examples say (nothing pruned by the schema):
# compare each example's spec with the stored spec, field by field.
for f in "$repo_root"/deploy/examples/*.yaml; do
  name=$(k create --dry-run=client -f "$f" -o jsonpath='{.metadata.name}')
  k -n "$ns" get dsd "$name" -o json >"$SHOAL_K8S_DIR/stored.json"
  k create --dry-run=client -f "$f" -o json >"$SHOAL_K8S_DIR/given.json"
  python3 - "$SHOAL_K8S_DIR/given.json" "$SHOAL_K8S_DIR/stored.json" <<'EOF' || fail "$(basename "$f"): stored spec lost fields"
import json, sys
given = json.load(open(sys.argv[1]))["spec"]
stored = json.load(open(sys.argv[2]))["spec"]
def contained(g, s, path):
    if isinstance(g, dict):
        if not isinstance(s, dict):
            sys.exit(f"{path}: stored {s!r}")
        for k, v in g.items():
            if k not in s:
                sys.exit(f"{path}.{k} was pruned")
            contained(v, s[k], f"{path}.{k}")
    elif isinstance(g, list):
        if len(g) != len(s):
            sys.exit(f"{path}: list length {len(g)} != {len(s)}")
        for i, (a, b) in enumerate(zip(g, s)):
            contained(a, b, f"{path}[{i}]")
    elif g != s:
        sys.exit(f"{path}: given {g!r}, stored {s!r}")
contained(given, stored, "spec")
EOF
done
ok "every example is stored without a field pruned or changed"

# DeepSeek-V3 example: TP8 x PP2 on 8-GPU pods = 2 pods per group, as the design defines.
read -r t p g < <(k -n "$ns" get dsd deepseek-v3 -o jsonpath='{.spec.parallelism.tensor} {.spec.parallelism.pipeline} {.spec.parallelism.gpusPerPod}'; echo)
(( t * p / g == 2 )) || fail "deepseek-v3 example is not 2 pods per group: $t x $p / $g"
ok "deepseek-v3 example: TP$t x PP$p over $((t * p / g)) pods of $g GPUs"

finish
