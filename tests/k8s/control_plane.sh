#!/usr/bin/env bash
# A real Kubernetes control plane on this machine for tests: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok (fake nodes whose pods become Ready
# without containers). Binaries come from tests/k8s/install.sh.
#
#   control_plane.sh start               start everything (no-op when already up); prints env
#   control_plane.sh env                 print `export KUBECONFIG=…` etc. for eval
#   control_plane.sh status              exit 0 when the apiserver answers /readyz
#   control_plane.sh stop                stop every process (logs stay in the work dir)
#   control_plane.sh clean               stop and delete the work dir
#   control_plane.sh stop-apiserver      kill kube-apiserver only (SIGKILL; etcd keeps the data)
#   control_plane.sh start-apiserver     start it again on the same port, wait for /readyz
#   control_plane.sh restart-apiserver   both of the above
#   control_plane.sh nodes CPU GPU [GPUS_PER_NODE]   create fake nodes (idempotent)
#
# Work dir: $SHOAL_K8S_DIR (default ${TMPDIR:-/tmp}/shoal-k8s-$UID). Ports are picked free
# at start and kept in <dir>/ports.env, so restarts reuse them. A start on a dir whose
# processes are gone starts from an empty etcd.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${SHOAL_K8S_DIR:-${TMPDIR:-/tmp}/shoal-k8s-$(id -u)}
bin=${SHOAL_K8S_BIN:-$("$here/install.sh" --print)}
kwok_stages=$(dirname "$bin")/share/kwok-stages-v0.8.0.yaml
kubectl=${KUBECTL:-$bin/kubectl}
[[ -x $kubectl ]] || kubectl=$(command -v kubectl || echo "$bin/kubectl")
ready_timeout=${SHOAL_K8S_READY_TIMEOUT:-120}

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Each process: <dir>/<name>.pid, <dir>/logs/<name>.log, argv in <dir>/<name>.args.
alive() { [[ -f $dir/$1.pid ]] && kill -0 "$(<"$dir/$1.pid")" 2>/dev/null; }

launch() { # launch NAME ARGV...: start detached in its own session
  local name=$1; shift
  printf '%q ' "$@" >"$dir/$name.args"
  setsid "$@" >>"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/$name.pid"
}

any_alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }

halt() { # halt SIGNAL NAME...: stop these processes together, SIGKILL after 5 s
  local sig=$1 name pid i pids=(); shift
  for name in "$@"; do
    if alive "$name"; then
      pid=$(<"$dir/$name.pid")
      kill "-$sig" "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$dir/$name.pid"
  done
  for ((i = 0; i < 50; i++)); do
    any_alive "${pids[@]}" || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

advertise_ip() { # the apiserver rejects loopback as --advertise-address
  local ip
  ip=$(hostname -I 2>/dev/null | tr ' ' '\n' | grep -E '^[0-9]+\.' | grep -v '^127\.' | head -n1 || true)
  echo "${ip:-192.0.2.1}"
}

api_ready() {
  curl -fsS --max-time 3 --cacert "$dir/pki/ca.crt" -H "Authorization: Bearer $(<"$dir/pki/admin.token")" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

wait_for() { # wait_for WHAT SECONDS COMMAND...
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what not ready after ${secs}s; logs in $dir/logs"
}

print_env() {
  echo "export KUBECONFIG=$dir/kubeconfig"
  echo "export SHOAL_K8S_DIR=$dir"
  echo "export SHOAL_K8S_API=https://127.0.0.1:$API_PORT"
  echo "export SHOAL_K8S_TOKEN_FILE=$dir/pki/admin.token"
  echo "export SHOAL_K8S_CA_FILE=$dir/pki/ca.crt"
  echo "export SHOAL_K8S_BIN=$bin"
  echo "export PATH=$bin:\$PATH"
}

# --- certificates, keys, token, kubeconfig ---------------------------------------------
make_pki() {
  local pki=$dir/pki ip=$1
  mkdir -p "$pki"
  if [[ ! -f $pki/ca.crt ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=shoal-test-ca" \
      -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    openssl rand -hex 24 >"$pki/admin.token"
    # system:masters bypasses RBAC: used by us, the controllers and the tests.
    echo "$(<"$pki/admin.token"),admin,admin,system:masters" >"$pki/tokens.csv"
  fi
  # The serving certificate names the advertise address, which may change between runs.
  if [[ ! -f $pki/apiserver.crt || $(<"$pki/apiserver.ip" 2>/dev/null) != "$ip" ]]; then
    printf '%s\n' "subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1,IP:$ip" \
      "extendedKeyUsage=serverAuth" >"$pki/apiserver.ext"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
      -CAcreateserial -days 3650 -extfile "$pki/apiserver.ext" -out "$pki/apiserver.crt" 2>/dev/null
    echo "$ip" >"$pki/apiserver.ip"
  fi
}

write_kubeconfig() {
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: shoal-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 <"$dir/pki/ca.crt")
users:
- name: admin
  user:
    token: $(<"$dir/pki/admin.token")
contexts:
- name: shoal-test
  context: {cluster: shoal-test, user: admin, namespace: default}
current-context: shoal-test
EOF
  chmod 600 "$dir/kubeconfig"
}

# --- processes ---------------------------------------------------------------------------
start_apiserver() {
  alive kube-apiserver && return 0
  local ip
  ip=$(<"$dir/pki/apiserver.ip")
  launch kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=127.0.0.1 --secure-port="$API_PORT" --advertise-address="$ip" \
    --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" --cert-dir="$dir/apiserver-certs" \
    --token-auth-file="$dir/pki/tokens.csv" --authorization-mode=RBAC \
    --service-cluster-ip-range=10.0.0.0/24 \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --allow-privileged=true --profiling=false --v=1
  wait_for kube-apiserver "$ready_timeout" api_ready
}

start_all() {
  mkdir -p "$dir/logs"
  for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    [[ -x $bin/$b ]] || die "$bin/$b missing: run tests/k8s/install.sh"
  done
  [[ -s $kwok_stages ]] || die "$kwok_stages missing: run tests/k8s/install.sh"
  if [[ -f $dir/ports.env ]] && alive etcd && alive kube-apiserver; then
    # shellcheck source=/dev/null
    source "$dir/ports.env"
    if api_ready; then
      log "already running in $dir"
      for p in kube-controller-manager kube-scheduler kwok; do alive "$p" || start_component "$p"; done
      print_env
      return 0
    fi
  fi
  stop_all
  rm -rf "$dir/etcd-data" "$dir/apiserver-certs"
  cat >"$dir/ports.env" <<EOF
ETCD_PORT=$(free_port)
ETCD_PEER_PORT=$(free_port)
API_PORT=$(free_port)
KCM_PORT=$(free_port)
SCHED_PORT=$(free_port)
KWOK_PORT=$(free_port)
EOF
  # shellcheck source=/dev/null
  source "$dir/ports.env"
  make_pki "$(advertise_ip)"
  write_kubeconfig

  launch etcd "$bin/etcd" --name=shoal-test --data-dir="$dir/etcd-data" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="shoal-test=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --quota-backend-bytes=1073741824 --log-level=warn
  wait_for etcd 30 curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" -o /dev/null

  start_apiserver
  for p in kube-controller-manager kube-scheduler kwok; do start_component "$p"; done
  # The ServiceAccount admission plugin rejects pods until the namespace's "default"
  # ServiceAccount exists; the controller-manager creates it.
  wait_for "default ServiceAccount" 60 "$kubectl" --kubeconfig "$dir/kubeconfig" get serviceaccount default -o name
  log "up in $dir (apiserver https://127.0.0.1:$API_PORT)"
  print_env
}

start_component() {
  local kc=$dir/kubeconfig
  case $1 in
    kube-controller-manager)
      launch kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
        --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --leader-elect=false \
        --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
        --use-service-account-credentials=false --controllers='*' \
        --node-monitor-grace-period=60s ${SHOAL_K8S_KCM_QPS:+--kube-api-qps=$SHOAL_K8S_KCM_QPS --kube-api-burst=$((2 * SHOAL_K8S_KCM_QPS))} --v=1 ;;
    kube-scheduler)
      launch kube-scheduler "$bin/kube-scheduler" --kubeconfig="$kc" \
        --authentication-kubeconfig="$kc" --authorization-kubeconfig="$kc" \
        --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --v=1 ;;
    kwok)
      launch kwok "$bin/kwok" --kubeconfig="$kc" -c "$kwok_stages" \
        --manage-all-nodes=false --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
        --cidr=10.244.0.1/16 --node-ip=10.244.0.1 --server-address="127.0.0.1:$KWOK_PORT" \
        --node-lease-duration-seconds=40 ;;
  esac
}

stop_all() {
  # Clients first, etcd last, so nothing logs a storm of connection errors.
  halt TERM kwok kube-scheduler kube-controller-manager
  halt TERM kube-apiserver
  halt TERM etcd
}

load_ports() {
  [[ -f $dir/ports.env ]] || die "no control plane in $dir: run '$0 start'"
  # shellcheck source=/dev/null
  source "$dir/ports.env"
}

# --- fake nodes ------------------------------------------------------------------------
make_nodes() { # make_nodes CPU_NODES GPU_NODES GPUS_PER_NODE
  local cpu=${1:-2} gpu=${2:-0} per=${3:-8} i
  {
    for ((i = 0; i < cpu; i++)); do node_yaml "shoal-cpu-$i" ""; done
    for ((i = 0; i < gpu; i++)); do node_yaml "shoal-gpu-$i" "$per"; done
  } | "$kubectl" --kubeconfig "$dir/kubeconfig" apply -f - >/dev/null
  wait_for "fake nodes" 60 nodes_ready "$((cpu + gpu))"
  log "$cpu CPU and $gpu GPU fake nodes ready"
}

nodes_ready() {
  local n
  n=$("$kubectl" --kubeconfig "$dir/kubeconfig" get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null |
    grep -c '^True$' || true)
  ((n >= $1))
}

node_yaml() { # node_yaml NAME GPUS ("" = CPU node)
  local name=$1 gpus=$2
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
EOF
  [[ -n $gpus ]] && cat <<EOF
    nvidia.com/gpu.present: "true"
    nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3
EOF
  cat <<EOF
spec:
EOF
  [[ -n $gpus ]] && cat <<EOF
  taints:
  - {key: nvidia.com/gpu, value: present, effect: NoSchedule}
EOF
  cat <<EOF
status:
  allocatable: &res
    cpu: "64"
    memory: 512Gi
    pods: "110"
    ephemeral-storage: 1Ti
EOF
  [[ -n $gpus ]] && echo "    nvidia.com/gpu: \"$gpus\""
  echo "  capacity: *res"
}

cmd=${1:-}
case $cmd in
  start) start_all ;;
  env) load_ports; print_env ;;
  status) load_ports; api_ready ;;
  stop) [[ -d $dir ]] && stop_all; log "stopped" ;;
  clean) [[ -d $dir ]] && stop_all; rm -rf "$dir"; log "removed $dir" ;;
  stop-apiserver) load_ports; halt KILL kube-apiserver; log "kube-apiserver stopped" ;;
  start-apiserver) load_ports; start_apiserver; log "kube-apiserver ready" ;;
  restart-apiserver) load_ports; halt KILL kube-apiserver; start_apiserver; log "kube-apiserver restarted" ;;
  nodes) load_ports; shift; make_nodes "$@" ;;
  *) sed -n '2,18p' "$0" >&2; exit 2 ;;
esac
