# Shared helpers for up.sh / down.sh. Expects versions.sh to be sourced first.
# shellcheck shell=bash

CACHE=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}
# shellcheck disable=SC2034  # used by up.sh
BIN=$(realpath -m "${AGENTMESH_BIN_DIR:-$CACHE/k8s/$K8S_VERSION/bin}")
DIR=$(realpath -m "${AGENTMESH_CLUSTER_DIR:-$CACHE/cluster}")
MARKER=.agentmesh-e2e-cluster
# start order; stopped in reverse
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok containerd kubelet kube-proxy coredns)
STARTED=()

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Print the tail of a component's log.
log_tail() {
  local name=$1 n=${2:-40}
  if [[ -s "$DIR/logs/$name.log" ]]; then
    printf -- '----- last %d lines of %s -----\n' "$n" "$DIR/logs/$name.log" >&2
    tail -n "$n" "$DIR/logs/$name.log" >&2
  fi
}

# Fail loudly: message, log tails of the started components, stop them (the data dir
# with all logs is kept for inspection).
die() {
  trap - ERR
  log "ERROR: $*"
  local c
  for c in "${STARTED[@]}"; do log_tail "$c" 25; done
  if [[ ${#STARTED[@]} -gt 0 ]]; then
    log "stopping the components started so far; logs kept in $DIR/logs"
    stop_all
  fi
  exit 1
}

pid_of() { [[ -f "$DIR/pids/$1.pid" ]] && cat "$DIR/pids/$1.pid"; }

# Is pid alive and one of ours (its command line references $DIR)?
ours() {
  local pid=$1
  [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$DIR/"
}

start() {
  local name=$1; shift
  log "starting $name"
  printf '%q ' "$@" >"$DIR/logs/$name.cmdline"
  echo >>"$DIR/logs/$name.cmdline"
  # New session, no controlling terminal, no inherited stdio: the process outlives
  # this script and the calling shell/job.
  setsid "$@" </dev/null >"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name.pid"
  STARTED+=("$name")
  sleep 0.3
  check_alive
}

# Die if any started component has exited.
check_alive() {
  local c pid
  for c in "${STARTED[@]}"; do
    pid=$(pid_of "$c")
    if ! kill -0 "$pid" 2>/dev/null; then
      local rc=""
      wait "$pid" 2>/dev/null || rc=$?
      die "$c (pid $pid) exited${rc:+ with status $rc}; see $DIR/logs/$c.log"
    fi
  done
}

# wait_for DESCRIPTION TIMEOUT_SECONDS CMD...: retry CMD until it succeeds.
wait_for() {
  local what=$1 timeout=$2; shift 2
  local t0=$SECONDS out
  while true; do
    if out=$("$@" 2>&1); then
      log "ok: $what ($((SECONDS - t0))s)"
      return 0
    fi
    check_alive
    if ((SECONDS - t0 >= timeout)); then
      die "timed out after ${timeout}s waiting for: $what; last output: $(tail -n 5 <<<"$out")"
    fi
    sleep 0.5
  done
}

# Stop our processes: those recorded in $DIR/pids, plus any process whose command
# line references $DIR (stale run whose pid files are gone). Never matches by name.
stop_all() {
  local pids=() c pid i
  # The node first: its pods are removed through containerd while it still runs.
  node_down
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    c=${COMPONENTS[$i]}
    pid=$(pid_of "$c" || true)
    if ours "$pid"; then pids+=("$pid"); fi
  done
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [[ "$pid" == "$$" || "$pid" == "$BASHPID" ]] && continue
    case "$(readlink "/proc/$pid/exe" 2>/dev/null)" in
      */etcd | */kube-apiserver | */kube-controller-manager | */kube-scheduler | */kwok | */containerd | */kubelet | */kube-proxy | */coredns) ;;
      *) continue ;;
    esac
    if ours "$pid" && [[ " ${pids[*]} " != *" $pid "* ]]; then pids+=("$pid"); fi
  done
  [[ ${#pids[@]} -eq 0 ]] && return 0
  log "stopping pids ${pids[*]}"
  # Two phases: everything that talks to etcd first, then etcd. SIGTERM, then SIGKILL
  # after AGENTMESH_STOP_GRACE seconds (state is disposable anyway).
  local etcd_pids=() other_pids=() exe
  for pid in "${pids[@]}"; do
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
    if [[ "$exe" == */etcd ]]; then etcd_pids+=("$pid"); else other_pids+=("$pid"); fi
  done
  terminate "${other_pids[@]}"
  terminate "${etcd_pids[@]}"
  # reap if they were our children
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -f "$DIR"/pids/*.pid "$DIR/ready" 2>/dev/null || true
}

# terminate PIDS...: SIGTERM, wait up to AGENTMESH_STOP_GRACE (3) seconds, SIGKILL.
terminate() {
  [[ $# -eq 0 ]] && return 0
  local pid alive grace=${AGENTMESH_STOP_GRACE:-3}
  kill -TERM "$@" 2>/dev/null || true
  for _ in $(seq 1 $((grace * 10))); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 0 ]] && return 0
    sleep 0.1
  done
  for pid in "$@"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ($(readlink "/proc/$pid/exe" 2>/dev/null)) still running after ${grace}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

# Remove $DIR, but only if it is ours (marker file) or empty.
wipe_dir() {
  [[ -e "$DIR" ]] || return 0
  if [[ "$DIR" == "/" || "$DIR" == "$HOME" ]]; then
    echo "refusing to remove $DIR" >&2; exit 1
  fi
  if [[ -f "$DIR/$MARKER" ]] || [[ -z "$(ls -A "$DIR")" ]]; then
    rm -rf "$DIR"
  else
    echo "refusing to remove $DIR: not created by up.sh (no $MARKER); set AGENTMESH_CLUSTER_DIR" >&2
    exit 1
  fi
}

port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

port_owner() {
  if command -v ss >/dev/null 2>&1; then ss -Hltnp "sport = :$1" 2>/dev/null | head -3; fi
}

# shellcheck source=node.sh
source "$(dirname "${BASH_SOURCE[0]}")/node.sh"
