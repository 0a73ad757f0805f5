#!/usr/bin/env bash
# `make demo`: AgentMesh on a local cluster with a real node, and scripted agents whose trust
# moves. Does its own set-up: the tools `make test` installs (scripts/setup.sh, Helm), the
# product's images (`make images`), the local cluster's binaries (e2e/cluster/build.sh); then
# starts the cluster, runs the story (e2e/src/bin/demo.rs) and stops the cluster.
#
#   demo/run.sh [--duration SECONDS] [--check]
#
#   DEMO_CHECK=1   the story as a test: bounded (240 s), exit 1 when an outcome did not happen
#   DEMO_KEEP=1    leave the cluster running afterwards (KUBECONFIG printed); `make cluster-down` stops it
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO=${CARGO:-cargo}
export AGENTMESH_CACHE=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$AGENTMESH_CACHE/target}
started=$(date +%s)
log() { echo "demo: [$(($(date +%s) - started)) s] $*" >&2; }
die() { echo "demo: $*" >&2; exit 1; }

[[ $EUID == 0 ]] || die "run as root: the local node runs a kubelet, containerd and the eBPF probe"
kubeconfig="$AGENTMESH_CACHE/cluster/kubeconfig"
# shellcheck source=../e2e/cluster/versions.sh
source e2e/cluster/versions.sh
kubectl="$AGENTMESH_CACHE/k8s/$K8S_VERSION/bin/kubectl"
if [[ -f $kubeconfig && -x $kubectl ]] && "$kubectl" --kubeconfig "$kubeconfig" --request-timeout=3s get --raw /readyz >/dev/null 2>&1; then
  die "a local cluster is already running ($kubeconfig); stop it first: make cluster-down"
fi

log "tools: Helm and the chart tools (cached under $AGENTMESH_CACHE/chart-tools)"
eval "$(scripts/chart-tools.sh)"
export HELM
log "building the CLI and the demo's driver"
"$CARGO" build --locked -p agentmesh-cli -p agentmesh-e2e --bin agentmesh --bin demo
log "building the product's images (make images)"
CARGO="$CARGO" scripts/images.sh build >/dev/null
log "building the local cluster's binaries (once; cached)"
e2e/cluster/build.sh
log "starting the local cluster: API server, etcd, a real node (kubelet, containerd); the demo's images loaded"
AGENTMESH_KWOK_NODES=0 e2e/cluster/up.sh
stop_cluster() {
  local status=$?
  if [[ ${DEMO_KEEP:-0} == 1 ]]; then
    log "the cluster keeps running: export KUBECONFIG=$kubeconfig; stop it with: make cluster-down"
  else
    log "stopping the local cluster"
    e2e/cluster/down.sh >/dev/null 2>&1 || e2e/cluster/down.sh
  fi
  log "done"
  exit $status
}
trap stop_cluster EXIT
export KUBECONFIG=$kubeconfig
log "cluster up; the story starts"
"$CARGO_TARGET_DIR/debug/demo" "$@"
