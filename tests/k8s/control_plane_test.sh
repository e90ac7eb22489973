#!/usr/bin/env bash
# The test control plane itself does what the operator's tests rely on: the controllers
# run (a Deployment gets pods), the scheduler places pods on kwok nodes by resources and
# taints, kwok makes them Ready, and the apiserver can be killed and restarted with the
# data kept in etcd.
# shellcheck source=tests/k8s/lib.sh
source "$(dirname "$0")/lib.sh"

[[ $(k version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') == v1.32.* ]] ||
  fail "server is not Kubernetes v1.32"
ok "kube-apiserver reports $(k version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

"$k8s_here/control_plane.sh" nodes 2 1 8 >/dev/null
[[ $(k get node shoal-gpu-0 -o jsonpath='{.status.allocatable.nvidia\.com/gpu}') == 8 ]] ||
  fail "GPU node does not advertise nvidia.com/gpu"
ok "fake nodes Ready; shoal-gpu-0 advertises 8 nvidia.com/gpu with a NoSchedule taint"

new_namespace cp
# A Deployment: the controller-manager makes a ReplicaSet and pods, the scheduler binds
# them, kwok reports them Running and Ready.
k -n "$ns" create deployment web --image=registry.invalid/none:1 --replicas=3 >/dev/null
deployment_ready() { [[ $(k -n "$ns" get deployment web -o jsonpath='{.status.readyReplicas}') == 3 ]]; }
wait_until 60 "3 ready pods of Deployment web" deployment_ready
ok "a Deployment's 3 pods are scheduled and Ready"

gpu_pod() { # gpu_pod NAME TOLERATE(yes|no) GPUS
  local tol=""
  [[ $2 == yes ]] && tol='  tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]'
  k -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
$tol
  containers:
  - name: w
    image: registry.invalid/none:1
    resources: {limits: {nvidia.com/gpu: "$3"}}
EOF
}
gpu_pod fits yes 8
gpu_pod untolerated no 1
gpu_pod too-big yes 9
pod_ready() { [[ $(k -n "$ns" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; }
wait_until 60 "GPU pod Ready" pod_ready fits
[[ $(k -n "$ns" get pod fits -o jsonpath='{.spec.nodeName}') == shoal-gpu-0 ]] || fail "GPU pod not on the GPU node"
unschedulable() { [[ $(k -n "$ns" get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="PodScheduled")].reason}') == Unschedulable ]]; }
wait_until 30 "untolerated GPU pod Unschedulable" unschedulable untolerated
wait_until 30 "9-GPU pod Unschedulable" unschedulable too-big
ok "GPU pods: 8 GPUs with the toleration run on the GPU node; no toleration or 9 GPUs stay Pending"

# Deleting a pod: kwok finishes it, the ReplicaSet replaces it.
victim=$(k -n "$ns" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
k -n "$ns" delete pod "$victim" --wait=true --timeout=30s >/dev/null || fail "pod deletion did not finish"
wait_until 60 "Deployment back to 3 ready" deployment_ready
ok "a deleted pod is gone and replaced"

# --- apiserver kill and restart ------------------------------------------------------
k -n "$ns" create configmap survives --from-literal=k=v >/dev/null
"$k8s_here/control_plane.sh" stop-apiserver >/dev/null 2>&1
if k get namespace "$ns" --request-timeout=3s >/dev/null 2>&1; then fail "apiserver still answers after stop"; fi
ok "stop-apiserver: the API is down"
"$k8s_here/control_plane.sh" start-apiserver >/dev/null 2>&1 || fail "start-apiserver"
[[ $(k -n "$ns" get configmap survives -o jsonpath='{.data.k}') == v ]] || fail "data lost across restart"
ok "start-apiserver: the API is back on the same address with the data intact"
"$k8s_here/control_plane.sh" restart-apiserver >/dev/null 2>&1 || fail "restart-apiserver"
# Watchers reconnect: the controllers still work after the restart.
k -n "$ns" scale deployment web --replicas=4 >/dev/null
four_ready() { [[ $(k -n "$ns" get deployment web -o jsonpath='{.status.readyReplicas}') == 4 ]]; }
wait_until 90 "4 ready after apiserver restart" four_ready
ok "after restart-apiserver the controllers, scheduler and kwok reconnect (scale to 4 done)"

finish
