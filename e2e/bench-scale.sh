#!/usr/bin/env bash
# `make bench-scale`: the operator at scale on kwok's fake nodes — 5,000 AgentIdentities and 5,000
# pods, from the apply to every status written: time to converge, API requests per second the
# operator makes, its peak RSS. e2e/src/bin/bench_scale.rs says what each figure is and how it
# is measured.
#
# 1. Builds (outside the cluster lock) the operator of this tree and the driver, release; with
#    BENCH_SCALE_BASELINE=<git ref>, also the operator at that ref, in a temporary worktree with
#    its own target directory ($AGENTMESH_CACHE/target-bench-scale-<commit>, kept: the next run
#    with the same ref builds nothing).
# 2. Takes the shared cluster lock ($AGENTMESH_CLUSTER_LOCK, /tmp/agentmesh-cluster.lock; waits
#    for it), starts the local cluster without a real node, with BENCH_SCALE_KWOK_NODES kwok nodes
#    and an audit policy that records the operators' requests only.
# 3. Runs the apply alone, with no operator ("apply-only": the floor under any operator's
#    convergence on this machine, BENCH_SCALE_APPLY_ONLY=0 skips it), then the scenario for the
#    baseline ("before"), then for this tree ("after", or "current" without a baseline), one
#    after the other in the same cluster, the namespaces of one run deleted before the next;
#    prints them all, `ratio (after/before)` lines and each converge time over the apply alone.
# 4. Brings the cluster down and releases the lock, on failure and Ctrl-C too.
#
# Environment: BENCH_SCALE_BASELINE (none), BENCH_SCALE_APPLY_ONLY (1), BENCH_SCALE_N (5000), BENCH_SCALE_NAMESPACES (5),
# BENCH_SCALE_KWOK_NODES (10), BENCH_SCALE_TIMEOUT (600 s to converge), BENCH_SCALE_SETTLE (30 s
# idle after convergence), BENCH_SCALE_CONCURRENCY (32 parallel creates), BENCH_SCALE_MAX_RSS_MIB
# (8192: an operator above it is stopped and its run reported as not converged).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CARGO=${CARGO:-cargo}
CACHE=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}
TARGET=${CARGO_TARGET_DIR:-$CACHE/target}
LOCK=${AGENTMESH_CLUSTER_LOCK:-/tmp/agentmesh-cluster.lock}
CLUSTER_DIR=${AGENTMESH_CLUSTER_DIR:-$CACHE/cluster}
BASELINE=${BENCH_SCALE_BASELINE:-}

log() { printf '[bench-scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/agentmesh-bench-scale.XXXXXX")
src=""        # the baseline's temporary worktree, while it exists
cluster_up=0  # whether down.sh is owed
driver_pid=""
cleanup() {
  local status=$? pid
  trap - EXIT INT TERM
  if [[ -n $driver_pid ]] && kill -0 "$driver_pid" 2>/dev/null; then
    kill -TERM "$driver_pid" 2>/dev/null || true
    wait "$driver_pid" 2>/dev/null || true
  fi
  # The operator the driver runs, when the driver was killed before it could stop it.
  if [[ -f $work/operator.pid ]]; then
    pid=$(cat "$work/operator.pid")
    if [[ "$(readlink "/proc/$pid/exe" 2>/dev/null)" == */meshlogic-operator* ]]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  if [[ $cluster_up == 1 ]]; then
    log "bringing the cluster down"
    e2e/cluster/down.sh 9>&- || status=1
  fi
  if [[ -n $src ]]; then git worktree remove --force "$src" 2>/dev/null || true; fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ builds (no lock held)
log "building the operator and the driver (release)"
"$CARGO" build --locked --release -p meshlogic-operator
"$CARGO" build --locked --release -p agentmesh-e2e --bin bench_scale
# Copies: a build in the same target directory during the run must not change what runs.
cp "$TARGET/release/meshlogic-operator" "$work/meshlogic-operator-current"
cp "$TARGET/release/bench_scale" "$work/bench_scale"
runs=()
if [[ ${BENCH_SCALE_APPLY_ONLY:-1} != 0 ]]; then runs+=(--apply-only); fi
current_label=current
if [[ -n $BASELINE ]]; then
  if ! sha=$(git rev-parse --verify --quiet "$BASELINE^{commit}"); then
    echo "bench-scale: BENCH_SCALE_BASELINE=$BASELINE is not a commit of this repository" >&2
    exit 1
  fi
  base_target=$CACHE/target-bench-scale-${sha:0:12}
  if [[ ! -x $base_target/release/meshlogic-operator || "$(cat "$base_target/.bench-scale-built" 2>/dev/null)" != "$sha" ]]; then
    log "building the baseline operator at $BASELINE ($sha) in $base_target"
    src=$work/baseline-src
    git worktree add --detach --quiet "$src" "$sha"
    (cd "$src" && CARGO_TARGET_DIR=$base_target "$CARGO" build --locked --release -p meshlogic-operator)
    git worktree remove --force "$src"
    src=""
    echo "$sha" >"$base_target/.bench-scale-built"
  else
    log "baseline operator at $BASELINE ($sha): built already in $base_target"
  fi
  cp "$base_target/release/meshlogic-operator" "$work/meshlogic-operator-baseline"
  runs+=(--run "before=$work/meshlogic-operator-baseline")
  current_label=after
  echo "bench-scale: before = $BASELINE ($sha), after = this tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ', with uncommitted changes'))"
else
  echo "bench-scale: this tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo ', with uncommitted changes')); BENCH_SCALE_BASELINE=<ref> adds a before/after comparison"
fi
runs+=(--run "$current_label=$work/meshlogic-operator-current")
e2e/cluster/build.sh >&2   # the cluster's binaries, when missing (quick when they are built)

# ------------------------------------------------------------------ the cluster (lock held)
exec 9>>"$LOCK"
if ! flock -n 9; then
  log "waiting for the cluster lock $LOCK (someone else's cluster is up)"
  flock 9
fi
"$work/bench_scale" --print-audit-policy >"$work/audit-policy.yaml"
cluster_up=1
AGENTMESH_NODE=0 AGENTMESH_KWOK_NODES=${BENCH_SCALE_KWOK_NODES:-10} \
  AGENTMESH_AUDIT_POLICY=$work/audit-policy.yaml e2e/cluster/up.sh 9>&- >&2

export E2E_KUBECONFIG=$CLUSTER_DIR/kubeconfig
export BENCH_SCALE_AUDIT_LOG=$CLUSTER_DIR/logs/audit.log
export BENCH_SCALE_WORK=$work
export CARGO_MANIFEST_DIR=$ROOT/e2e   # where the driver finds crds/
# In the background, so that a signal reaches the traps at once (they stop the driver).
"$work/bench_scale" "${runs[@]}" 9>&- &
driver_pid=$!
rc=0
wait "$driver_pid" || rc=$?
driver_pid=""
exit "$rc"
