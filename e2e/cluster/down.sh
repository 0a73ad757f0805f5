#!/usr/bin/env bash
# Stop the local e2e control plane started by up.sh and remove its state directory.
#   AGENTMESH_CLUSTER_DIR / AGENTMESH_CACHE   as for up.sh
#   AGENTMESH_KEEP_DATA=1                     stop processes but keep the directory (logs)
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.sh
source "$HERE/versions.sh"
# shellcheck source=lib.sh
source "$HERE/lib.sh"

stop_all
if [[ "${AGENTMESH_KEEP_DATA:-0}" == 1 ]]; then
  log "stopped; kept $DIR"
else
  wipe_dir
  log "stopped; removed $DIR"
fi
