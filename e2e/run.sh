#!/usr/bin/env bash
# `make e2e`: the end-to-end suite against a real Kubernetes API server.
# `e2e/run.sh --bench`: the operator's ingest benchmark (`make bench-operator`) on the same set-up.
#
# With E2E_KUBECONFIG set, against that cluster (kind, k3d, a real one) and nothing else.
# Otherwise: build the local control plane if its binaries are not cached yet
# (e2e/cluster/build.sh), start it (e2e/cluster/up.sh), run the suite, stop it. When a test
# fails, the control plane's logs are kept under $AGENTMESH_CACHE/cluster/logs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CARGO=${CARGO:-cargo}

mode=suite
if [[ "${1:-}" == --bench ]]; then mode=bench; shift; fi

run_suite() {
  # The components under test run as host processes; build them first.
  "$CARGO" build --locked -p meshlogic-operator -p meshlogic-probe -p agentmesh-sidecar -p agentmesh-cli
  if [[ $mode == bench ]]; then
    "$CARGO" build --locked --release -p meshlogic-operator
    export E2E_OPERATOR_BIN="${CARGO_TARGET_DIR:-target}/release/meshlogic-operator"
    "$CARGO" run --locked --release -p agentmesh-e2e --bin bench_ingest -- "$@"
  else
    "$CARGO" test --locked -p agentmesh-e2e -- "$@"
  fi
}

if [[ -n "${E2E_KUBECONFIG:-}" ]]; then
  echo "e2e: against the cluster of $E2E_KUBECONFIG" >&2
  run_suite "$@"
  exit
fi

# Compile the suite before starting the control plane: a compile error should not cost a
# cluster start, and the build should not compete with the API server for the CPU.
"$CARGO" test --locked -p agentmesh-e2e --no-run
"$CARGO" build --locked -p meshlogic-operator -p meshlogic-probe -p agentmesh-sidecar -p agentmesh-cli
e2e/cluster/build.sh
# The real node runs the product's images (make images) beside two kwok nodes for the tests
# whose pods are only objects (they select `type: kwok`).
export AGENTMESH_KWOK_NODES=${AGENTMESH_KWOK_NODES:-2}
state_dir=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/host-state
mkdir -p "$state_dir"
e2e/cluster/host-state.sh >"$state_dir/before"
keep=1
cleanup() {
  local status=$?
  if [[ $keep == 1 ]]; then
    AGENTMESH_KEEP_DATA=1 e2e/cluster/down.sh || true
    echo "e2e: failed; cluster logs kept in ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/cluster/logs" >&2
  else
    e2e/cluster/down.sh
  fi
  # down.sh must leave the host as up.sh found it.
  e2e/cluster/host-state.sh >"$state_dir/after"
  if ! diff -u "$state_dir/before" "$state_dir/after" >&2; then
    echo "e2e: FAILED: the host differs after down.sh from before up.sh (diff above)" >&2
    status=1
  else
    echo "e2e: down.sh left the host as it was (mounts, links, routes, iptables, sysctls, processes)" >&2
  fi
  exit $status
}
trap cleanup EXIT
e2e/cluster/up.sh
run_suite "$@"
keep=0
