#!/usr/bin/env bash
# Build the local e2e control plane from Go modules (no Docker, no release downloads):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kubelet, kube-proxy                                               (e2e/k8s,  k8s.io/kubernetes)
#   etcd, etcdctl                                                     (e2e/etcd, go.etcd.io/etcd)
#   kwok + kwok-stages.yaml                                           (e2e/kwok, sigs.k8s.io/kwok)
# into ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/k8s/<k8s version>/bin/.
#
# Idempotent: each group is rebuilt only if a binary is missing or its stamp (versions +
# hash of the wrapper's go.mod/go.sum) changed. FORCE=1 rebuilds everything.
# Needs only a Go toolchain (PATH, or /usr/local/go/bin) and access to the Go module proxy.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E=$(dirname "$HERE")
# shellcheck source=versions.sh
source "$HERE/versions.sh"

CACHE=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}
BIN=${AGENTMESH_BIN_DIR:-$CACHE/k8s/$K8S_VERSION/bin}
FORCE=${FORCE:-0}

if ! command -v go >/dev/null 2>&1; then
  if [[ -x /usr/local/go/bin/go ]]; then
    export PATH=$PATH:/usr/local/go/bin
  else
    echo "build.sh: no Go toolchain found (need go >= 1.24 in PATH or /usr/local/go/bin)" >&2
    exit 1
  fi
fi

# Static binaries, like upstream's release builds (hack/lib/golang.sh).
export CGO_ENABLED=0
GOBUILD_FLAGS=(-trimpath)

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

check_pin() { # module-dir module version
  local got
  got=$(cd "$1" && go list -m -f '{{.Version}}' "$2")
  if [[ "$got" != "$3" ]]; then
    echo "build.sh: $1 resolves $2 to $got but versions.sh says $3" >&2
    exit 1
  fi
}

stamp_of() { # module-dir extra...
  local dir=$1; shift
  printf '%s\n' "$*"
  cat "$dir/go.mod" "$dir/go.sum" | sha256sum | cut -d' ' -f1
}

up_to_date() { # stamp-name expected-stamp binaries...
  local name=$1 want=$2; shift 2
  [[ "$FORCE" == 1 ]] && return 1
  [[ -f "$BIN/.$name.stamp" ]] || return 1
  [[ "$(cat "$BIN/.$name.stamp")" == "$want" ]] || return 1
  local b
  for b in "$@"; do [[ -x "$BIN/$b" ]] || return 1; done
  return 0
}

# go build's default output name for a main package: the last path element, skipping a
# major-version suffix (go.etcd.io/etcd/server/v3 -> "server").
go_bin_name() {
  local p=$1 last=${1##*/}
  if [[ "$last" =~ ^v[0-9]+$ ]]; then p=${p%/*}; last=${p##*/}; fi
  printf '%s' "$last"
}

# build_group group module-dir stamp "name=importpath ..." [go build flags...]
build_group() {
  local name=$1 dir=$2 stamp=$3 specs=$4; shift 4
  local spec bins=() pkgs=()
  for spec in $specs; do bins+=("${spec%%=*}"); pkgs+=("${spec#*=}"); done
  if up_to_date "$name" "$stamp" "${bins[@]}"; then
    log "$name: up to date (${bins[*]})"
    return 0
  fi
  log "$name: building ${bins[*]} ..."
  local t0=$SECONDS tmp i
  tmp=$(mktemp -d "$BIN/.build-$name.XXXXXX")
  (cd "$dir" && go build "${GOBUILD_FLAGS[@]}" "$@" -o "$tmp/" "${pkgs[@]}")
  for i in "${!bins[@]}"; do
    mv -f "$tmp/$(go_bin_name "${pkgs[$i]}")" "$BIN/${bins[$i]}"
  done
  rm -rf "$tmp"
  printf '%s\n' "$stamp" >"$BIN/.$name.stamp"
  log "$name: built in $(fmt_secs $((SECONDS - t0)))"
}

mkdir -p "$BIN"
T0=$SECONDS
log "go: $(go version)"
log "target: $BIN"

# ---------------------------------------------------------------- kubernetes
check_pin "$E2E/k8s" k8s.io/kubernetes "$K8S_VERSION"
check_pin "$E2E/k8s" k8s.io/client-go "v0${K8S_VERSION#v1}"
K8S_MINOR=${K8S_VERSION#v1.}; K8S_MINOR=${K8S_MINOR%%.*}
VERSION_LDFLAGS=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  VERSION_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$K8S_MINOR"
  VERSION_LDFLAGS+=" -X $pkg.gitTreeState=clean"
done
build_group kubernetes "$E2E/k8s" "$(stamp_of "$E2E/k8s" "k8s=$K8S_VERSION")" \
  "kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver
   kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager
   kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler
   kubectl=k8s.io/kubernetes/cmd/kubectl
   kubelet=k8s.io/kubernetes/cmd/kubelet
   kube-proxy=k8s.io/kubernetes/cmd/kube-proxy" \
  -tags selinux,notest,grpcnotrace -ldflags "-s -w$VERSION_LDFLAGS"

# ---------------------------------------------------------------- etcd
check_pin "$E2E/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
build_group etcd "$E2E/etcd" "$(stamp_of "$E2E/etcd" "etcd=$ETCD_VERSION")" \
  "etcd=go.etcd.io/etcd/server/v3 etcdctl=go.etcd.io/etcd/etcdctl/v3" \
  -ldflags "-s -w"

# ---------------------------------------------------------------- kwok
check_pin "$E2E/kwok" sigs.k8s.io/kwok "$KWOK_VERSION"
build_group kwok "$E2E/kwok" "$(stamp_of "$E2E/kwok" "kwok=$KWOK_VERSION")" \
  "kwok=sigs.k8s.io/kwok/cmd/kwok" \
  -ldflags "-s -w"

# ---------------------------------------------------------------- node runtime
# containerd, its runc shim, ctr, crictl and the CNI plugins of the real node (up.sh). runc itself
# comes from Debian (scripts/node-deps.sh): it needs cgo and libseccomp.
check_pin "$E2E/node" github.com/containerd/containerd/v2 "$CONTAINERD_VERSION"
check_pin "$E2E/node" github.com/containernetworking/plugins "$CNI_PLUGINS_VERSION"
CONTAINERD_LDFLAGS="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
CONTAINERD_LDFLAGS+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
build_group node "$E2E/node" "$(stamp_of "$E2E/node" "containerd=$CONTAINERD_VERSION cni=$CNI_PLUGINS_VERSION")" \
  "containerd=github.com/containerd/containerd/v2/cmd/containerd
   ctr=github.com/containerd/containerd/v2/cmd/ctr
   containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
   bridge=github.com/containernetworking/plugins/plugins/main/bridge
   host-local=github.com/containernetworking/plugins/plugins/ipam/host-local
   loopback=github.com/containernetworking/plugins/plugins/main/loopback
   crictl=sigs.k8s.io/cri-tools/cmd/crictl" \
  -tags no_btrfs,no_devmapper,no_zfs,no_aufs -ldflags "-s -w $CONTAINERD_LDFLAGS"

# ---------------------------------------------------------------- cluster DNS
check_pin "$E2E/dns" github.com/coredns/coredns "$COREDNS_VERSION"
build_group dns "$E2E/dns" "$(stamp_of "$E2E/dns" "coredns=$COREDNS_VERSION")" \
  "coredns=github.com/coredns/coredns" \
  -ldflags "-s -w"

# kwok needs Stage definitions (how fake nodes/pods progress). Take the same defaults
# kwokctl uses (node-initialize, node-heartbeat-with-lease, pod fast stages) from the
# exact kwok module version that was built.
KWOK_DIR=$(cd "$E2E/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
if [[ -z "$KWOK_DIR" || ! -d "$KWOK_DIR" ]]; then
  (cd "$E2E/kwok" && go mod download sigs.k8s.io/kwok)
  KWOK_DIR=$(cd "$E2E/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
fi
{
  echo "# Generated by e2e/cluster/build.sh from sigs.k8s.io/kwok@$KWOK_VERSION kustomize/stage"
  for f in node/fast/node-initialize.yaml \
           node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    echo "---"
    cat "$KWOK_DIR/kustomize/stage/$f"
  done
} >"$BIN/kwok-stages.yaml.tmp"
mv -f "$BIN/kwok-stages.yaml.tmp" "$BIN/kwok-stages.yaml"

cat >"$BIN/VERSIONS" <<EOF
kubernetes=$K8S_VERSION
etcd=$ETCD_VERSION
kwok=$KWOK_VERSION
containerd=$CONTAINERD_VERSION
cni-plugins=$CNI_PLUGINS_VERSION
coredns=$COREDNS_VERSION
EOF

log "versions: $("$BIN/kubectl" version --client 2>/dev/null | head -1); etcd $("$BIN/etcd" --version | head -1 | awk '{print $3}'); kwok $("$BIN/kwok" --version 2>/dev/null | awk '{print $3}')"
log "sizes:"
(cd "$BIN" && du -h kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd etcdctl kwok | sed 's/^/    /')
log "done in $(fmt_secs $((SECONDS - T0)))"
