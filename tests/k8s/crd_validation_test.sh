#!/usr/bin/env bash
# The DeepSeekDeployment CRD against a real kube-apiserver: a minimal object gets the
# defaults DESIGN.md promises; objects that are wrong in ways knowable at admission are
# rejected with a message naming the field; edge cases that are right are accepted.
# shellcheck source=tests/k8s/lib.sh
source "$(dirname "$0")/lib.sh"

ensure_crd
new_namespace crd
tmp=$(mktemp -d)
cleanup_hooks+=("rm -rf $tmp")

# dsd NAME SPEC-YAML (indented by 2) > file: a DeepSeekDeployment manifest.
dsd() {
  printf 'apiVersion: shoal.dev/v1alpha1\nkind: DeepSeekDeployment\nmetadata:\n  name: %s\nspec:\n%s\n' "$1" "$2" >"$tmp/$1.yaml"
  echo "$tmp/$1.yaml"
}
model='  model: {uri: "file:///models/m.gguf"}'

# --- defaults --------------------------------------------------------------------------
k -n "$ns" apply -f "$(dsd minimal "$model")" >/dev/null
got=$(k -n "$ns" get dsd minimal -o json)
jq_check() { # jq_check EXPR EXPECTED
  local v
  v=$(python3 -c 'import json,sys; o=json.load(sys.stdin); print(json.dumps(eval(sys.argv[1], {"o": o})))' "$1" <<<"$got")
  [[ $v == "$2" ]] || fail "default $1: expected $2, got $v"
}
jq_check 'o["spec"]["parallelism"]' '{"gpusPerPod": 0, "pipeline": 1, "tensor": 1}'
jq_check 'o["spec"]["replicas"]' '1'
jq_check 'o["spec"]["model"]["dtype"]' '"auto"'
jq_check 'o["spec"]["model"]["maxModelLen"]' '8192'
jq_check 'sorted(o["spec"]["autoscaling"].items())' \
  '[["enabled", false], ["initialCooldownSeconds", 300], ["maxReplicas", 8], ["minReplicas", 1], ["scaleDownStabilizationSeconds", 300], ["scaleUpStabilizationSeconds", 0], ["targetKVCacheUtilization", 0], ["targetQPSPerReplica", 5], ["targetQueueDepthPerReplica", 0]]'
jq_check 'sorted(o["spec"]["engine"].items())' \
  '[["enablePrefixCaching", true], ["kvCacheMemoryFraction", 0.9], ["maxNumBatchedTokens", 8192], ["maxNumSeqs", 256]]'
jq_check 'o["spec"]["rollout"]' '{"maxSurgeGroups": 0, "maxUnavailableGroups": 1, "partition": 0}'
jq_check 'o["spec"]["router"]' '{"replicas": 1, "serviceType": "ClusterIP"}'
jq_check 'o["spec"]["restartPolicy"]' '"RecreateGroupOnPodRestart"'
jq_check 'o["spec"]["maxGroupRestarts"]' '5'
ok "a minimal DeepSeekDeployment gets every documented default"

# Unknown fields: kubectl's strict field validation makes the apiserver refuse them
# (the schema is structural, so it knows every field); without it they are pruned.
expect_rejected "$ns" "$(dsd typo "$model
  replica: 3")" 'unknown field "spec.replica"'
k -n "$ns" apply --validate=false -f "$(dsd pruned "$model
  notAField: 3")" >/dev/null || fail "non-strict apply failed"
[[ -z $(k -n "$ns" get dsd pruned -o jsonpath='{.spec.notAField}') ]] || fail "unknown field spec.notAField was stored"
ok "unknown fields are refused (strict) or pruned, never stored"

# --- rejected at admission -------------------------------------------------------------
expect_rejected "$ns" "$(dsd tp0 "$model
  parallelism: {tensor: 0}")" "spec.parallelism.tensor" "should be greater than or equal to 1"
ok "tensor 0 rejected"

expect_rejected "$ns" "$(dsd pp0 "$model
  parallelism: {pipeline: 0}")" "spec.parallelism.pipeline" "should be greater than or equal to 1"
ok "pipeline 0 rejected"

expect_rejected "$ns" "$(dsd gpus-not-dividing "$model
  parallelism: {tensor: 3, pipeline: 2, gpusPerPod: 4}")" \
  "spec.parallelism.gpusPerPod" "parallelism.gpusPerPod must divide tensor*pipeline"
ok "gpusPerPod not dividing tensor*pipeline rejected"

expect_rejected "$ns" "$(dsd gpus-above-ranks "$model
  parallelism: {tensor: 2, pipeline: 1, gpusPerPod: 8}")" "parallelism.gpusPerPod must divide tensor*pipeline"
ok "gpusPerPod above tensor*pipeline rejected"

expect_rejected "$ns" "$(dsd min-above-max "$model
  autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}")" \
  "spec.autoscaling.minReplicas" "autoscaling.minReplicas must be <= autoscaling.maxReplicas"
ok "minReplicas > maxReplicas rejected"

expect_rejected "$ns" "$(dsd no-trigger "$model
  autoscaling: {enabled: true, targetQPSPerReplica: 0}")" \
  "autoscaling.enabled needs at least one trigger > 0"
ok "autoscaling without a trigger rejected"

expect_rejected "$ns" "$(dsd rollout-stuck "$model
  rollout: {maxUnavailableGroups: 0, maxSurgeGroups: 0}")" \
  "rollout.maxUnavailableGroups and rollout.maxSurgeGroups cannot both be 0"
ok "a rollout that can never progress rejected"

expect_rejected "$ns" "$(dsd batch-below-seqs "$model
  engine: {maxNumSeqs: 64, maxNumBatchedTokens: 32}")" \
  "spec.engine.maxNumBatchedTokens" "engine.maxNumBatchedTokens must be >= engine.maxNumSeqs"
ok "maxNumBatchedTokens < maxNumSeqs rejected"

expect_rejected "$ns" "$(dsd bad-uri '  model: {uri: "s3://bucket/m"}')" \
  "spec.model.uri" "model.uri must be file:///<path>, pvc://<claim>/<path> or hf://<org>/<name>"
ok "an unsupported model URI rejected"

expect_rejected "$ns" "$(dsd no-model '  replicas: 1')" "spec.model: Required value"
ok "a missing model rejected"

expect_rejected "$ns" "$(dsd bad-dtype '  model: {uri: "file:///m", dtype: int3}')" \
  "spec.model.dtype" 'Unsupported value: "int3"'
ok "an unknown dtype rejected"

expect_rejected "$ns" "$(dsd bad-policy "$model
  restartPolicy: Never")" "spec.restartPolicy" 'Unsupported value: "Never"'
ok "an unknown restartPolicy rejected"

expect_rejected "$ns" "$(dsd kv-fraction "$model
  engine: {kvCacheMemoryFraction: 1.5}")" "spec.engine.kvCacheMemoryFraction" "less than or equal to 1"
ok "kvCacheMemoryFraction > 1 rejected"

expect_rejected "$ns" "$(dsd negative-replicas "$model
  replicas: -1")" "spec.replicas" "greater than or equal to 0"
ok "negative replicas rejected"

# An update is validated too: a valid object cannot be edited into an invalid one.
if out=$(k -n "$ns" patch dsd minimal --type=merge -p '{"spec":{"parallelism":{"tensor":4,"gpusPerPod":3}}}' 2>&1); then
  fail "patch to gpusPerPod 3 with tensor 4 was accepted: $out"
fi
[[ $out == *"parallelism.gpusPerPod must divide tensor*pipeline"* ]] || fail "patch rejection lacks the message: $out"
ok "an invalid update is rejected with the same message"

# --- accepted edge cases ---------------------------------------------------------------
k -n "$ns" apply -f "$(dsd tp8-pp2 "$model
  parallelism: {tensor: 8, pipeline: 2, gpusPerPod: 8}")" >/dev/null || fail "TP8xPP2 on 8-GPU pods rejected"
k -n "$ns" apply -f "$(dsd one-pod-all-ranks "$model
  parallelism: {tensor: 4, pipeline: 2, gpusPerPod: 8}")" >/dev/null || fail "gpusPerPod == tensor*pipeline rejected"
k -n "$ns" apply -f "$(dsd zero-replicas "$model
  replicas: 0
  autoscaling: {enabled: true, minReplicas: 0, maxReplicas: 3, targetQPSPerReplica: 0, targetKVCacheUtilization: 0.8}")" \
  >/dev/null || fail "replicas 0 with a KV-cache trigger rejected"
for uri in "pvc://models/DeepSeek-V3" "hf://deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"; do
  k -n "$ns" apply -f "$(dsd "uri-$(echo "$uri" | cut -d: -f1)" "  model: {uri: \"$uri\"}")" >/dev/null ||
    fail "model.uri $uri rejected"
done
ok "valid edge cases accepted (TP8xPP2, one pod for all ranks, 0 replicas, pvc:// and hf:// URIs)"

finish
