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
  "$CARGO" build --locked -p meshlogic-operator -p meshlogic-probe -p agentmesh-sidecar
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
"$CARGO" build --locked -p meshlogic-operator -p meshlogic-probe -p agentmesh-sidecar
e2e/cluster/build.sh
keep=1
cleanup() {
  if [[ $keep == 1 ]]; then
    AGENTMESH_KEEP_DATA=1 e2e/cluster/down.sh || true
    echo "e2e: failed; control-plane logs kept in ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/cluster/logs" >&2
  else
    e2e/cluster/down.sh
  fi
}
trap cleanup EXIT
e2e/cluster/up.sh
run_suite "$@"
keep=0
