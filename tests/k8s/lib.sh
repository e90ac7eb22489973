# shellcheck shell=bash disable=SC2034
# Shared by the tests in tests/k8s: sourced, never run. Each test talks to the control
# plane started by control_plane.sh (the CTest fixture does that), works in a namespace of
# its own that it deletes on exit, and fails with the first unmet expectation.
set -euo pipefail

k8s_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$k8s_here/../.." && pwd)
eval "$("$k8s_here/control_plane.sh" env)"
helm=$SHOAL_K8S_BIN/helm
kubectl=$SHOAL_K8S_BIN/kubectl
[[ -x $kubectl ]] || kubectl=$(command -v kubectl)
# Helm keeps its own caches and repositories; keep them out of the home directory.
export HELM_CACHE_HOME=$SHOAL_K8S_DIR/helm/cache HELM_CONFIG_HOME=$SHOAL_K8S_DIR/helm/config
export HELM_DATA_HOME=$SHOAL_K8S_DIR/helm/data

test_name=$(basename "$0" .sh)
checks=0

# set -e stops at the first failing command; say which, so no failure is silent.
trap 'echo "FAIL [$test_name]: line $LINENO: $BASH_COMMAND exited with $?" >&2' ERR
fail() { echo "FAIL [$test_name]: $*" >&2; exit 1; }
ok() { checks=$((checks + 1)); echo "ok - $*"; }
k() { "$kubectl" "$@"; }

# new_namespace PREFIX: sets $ns to a fresh namespace, deleted when the test exits.
new_namespace() {
  ns="$1-$(printf '%04x%04x' $RANDOM $RANDOM)"
  k create namespace "$ns" >/dev/null
  cleanup_namespaces+=("$ns")
  # Pods are rejected until the namespace's default ServiceAccount exists.
  wait_until 30 "default ServiceAccount in $ns" k -n "$ns" get serviceaccount default
}
cleanup_namespaces=()
cleanup_hooks=()
trap cleanup EXIT
cleanup() {
  local h ns
  for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done
  for ns in "${cleanup_namespaces[@]}"; do k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true; done
}

# expect_rejected NS FILE MESSAGE...: applying FILE must fail and the apiserver's answer
# must contain every MESSAGE (the text users see).
expect_rejected() {
  local ns=$1 file=$2 out; shift 2
  if out=$(k -n "$ns" apply -f "$file" 2>&1); then
    fail "apiserver accepted $(basename "$file"): $out"
  fi
  for m in "$@"; do
    [[ $out == *"$m"* ]] || fail "rejection of $(basename "$file") lacks \"$m\"; got: $out"
  done
}

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds.
wait_until() {
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  fail "timed out after ${secs}s waiting for: $what"
}

crd_established() {
  [[ $(k get crd deepseekdeployments.shoal.dev \
    -o jsonpath='{.status.conditions[?(@.type=="Established")].status}' 2>/dev/null) == True ]]
}

# ensure_crd: the DeepSeekDeployment CRD from the chart, applied and Established.
ensure_crd() {
  k apply --server-side --force-conflicts --field-manager=shoal-tests \
    -f "$repo_root/charts/shoal/crds/deepseekdeployments.yaml" >/dev/null
  wait_until 30 "CRD Established" crd_established
}

finish() { echo "PASS [$test_name]: $checks checks"; }
