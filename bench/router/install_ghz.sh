#!/usr/bin/env bash
# Installs ghz (the gRPC load tool the router benchmark drives) into the Shoal cache and
# prints its path. Built from the Go module proxy with CGO off; when no Go >= 1.23 is on
# PATH (a fresh Debian 12 has none), a Go toolchain is fetched from the module proxy
# (golang.org/toolchain) first. Everything lives under $SHOAL_CACHE_DIR (~/.cache/shoal),
# so a second run does nothing.
#
#   bench/router/install_ghz.sh        -> prints .../go/bin/ghz
set -euo pipefail

cache=${SHOAL_CACHE_DIR:-$HOME/.cache/shoal}
ghz_version=v0.121.0
go_toolchain=1.23.4   # ghz v0.121.0 declares go 1.23.0
export GOPATH=$cache/go
export GOBIN=$cache/go/bin
export GOCACHE=$cache/go/build-cache
export GOMODCACHE=$cache/go/pkg/mod
export GOTOOLCHAIN=local
export GOFLAGS=-modcacherw
ghz=$GOBIN/ghz
# `go install` leaves ghz's own --version at "dev": a stamp says which version is there.
stamp=$GOBIN/ghz.version

if [[ -x $ghz && -f $stamp && $(cat "$stamp") == "$ghz_version" ]]; then
  echo "$ghz"
  exit 0
fi

# A go at least 1.23: PATH, /usr/local/go, or our cached toolchain.
go_ok() {
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  v=${v#go}
  local major=${v%%.*} rest=${v#*.}
  local minor=${rest%%.*}
  ((major > 1 || (major == 1 && minor >= 23)))
}
go_bin=
for candidate in "$(command -v go || true)" /usr/local/go/bin/go "$cache/go-toolchain/go$go_toolchain/bin/go"; do
  if [[ -n $candidate && -x $candidate ]] && go_ok "$candidate"; then
    go_bin=$candidate
    break
  fi
done
if [[ -z $go_bin ]]; then
  dir=$cache/go-toolchain
  mkdir -p "$dir"
  zip=$dir/go$go_toolchain.zip
  echo "install_ghz: fetching Go $go_toolchain from the module proxy" >&2
  curl -fsSL -o "$zip.part" \
    "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$go_toolchain.linux-amd64.zip"
  mv "$zip.part" "$zip"
  rm -rf "$dir/unpack" "$dir/go$go_toolchain"
  unzip -q "$zip" -d "$dir/unpack"
  mv "$dir/unpack/golang.org/toolchain@v0.0.1-go$go_toolchain.linux-amd64" "$dir/go$go_toolchain"
  rm -rf "$dir/unpack" "$zip"
  # Module zips carry no file modes.
  chmod +x "$dir/go$go_toolchain/bin/"* "$dir/go$go_toolchain/pkg/tool/"*/*
  go_bin=$dir/go$go_toolchain/bin/go
fi

echo "install_ghz: building ghz $ghz_version with $("$go_bin" version)" >&2
mkdir -p "$GOBIN"
CGO_ENABLED=0 nice -n 10 "$go_bin" install "github.com/bojand/ghz/cmd/ghz@$ghz_version" >&2
echo "$ghz_version" >"$stamp"
echo "$ghz"
