#!/usr/bin/env bash
# Installs the MCP SDK test fixtures described in e2e/mcp/README.md:
#   - node_modules from e2e/mcp/package-lock.json (npm ci):
#     @modelcontextprotocol/sdk and @modelcontextprotocol/server-everything
#   - a Python venv from e2e/mcp/requirements.txt (mcp and its pinned closure)
# into ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/mcp/<key>, where <key> is a short
# hash of the three committed lock files. Same locks: nothing to do (quiet, well
# under a second). Changed locks: a new <key>, installed from scratch.
#
# It also points e2e/mcp/node_modules (git-ignored symlink) at the cache, so
# `node e2e/mcp/client.mjs` and `node e2e/mcp/everything.mjs` resolve the SDK.
#
# The last line on stdout is always the fixture directory. Progress of a cold
# install goes to stderr. Safe to run concurrently (flock on <key>.lock).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$repo/e2e/mcp
python=${PYTHON:-python3}
lockfiles=(package.json package-lock.json requirements.txt)

base=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/mcp
key=$(cd "$src" && sha256sum "${lockfiles[@]}" | sha256sum | cut -c1-12)
dir=$base/$key
stamp=$dir/.installed

# What the installed tree depends on besides the locks: a venv is bound to its
# interpreter, and node_modules to node's major version.
toolchain() {
    printf 'python=%s node=%s\n' \
        "$("$python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
        "$(node -p 'process.versions.node.split(".")[0]')"
}

link_node_modules() {
    local link=$src/node_modules
    if [[ -L $link || ! -e $link ]]; then
        ln -sfn "$dir/node_modules" "$link"
    else
        echo "mcp-fixtures: $link is a real directory, not replacing it" >&2
    fi
}

want=$(toolchain)
if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    link_node_modules
    echo "$dir"
    exit 0
fi

mkdir -p "$base"
exec 9>"$base/$key.lock"
flock 9
# Another run may have finished the install while this one waited.
if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
    link_node_modules
    echo "$dir"
    exit 0
fi

start=$(date +%s.%N)
echo "mcp-fixtures: installing into $dir" >&2
rm -rf "$dir"
mkdir -p "$dir"
for f in "${lockfiles[@]}"; do cp "$src/$f" "$dir/$f"; done

(
    cd "$dir"
    npm ci --no-audit --no-fund --loglevel=error >&2
    "$python" -m venv venv
    # Wheels only: nothing gets compiled here, and a missing wheel fails loudly.
    venv/bin/python -m pip install --quiet --disable-pip-version-check \
        --only-binary=:all: -r requirements.txt >&2
    venv/bin/python -c 'import mcp, mcp.client.streamable_http, mcp.server.mcpserver' >&2
    node -e 'require.resolve("@modelcontextprotocol/sdk/package.json"); require.resolve("@modelcontextprotocol/server-everything/package.json")' >&2
)

printf '%s\n' "$want" >"$stamp"
link_node_modules
echo "mcp-fixtures: installed in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s" >&2
echo "$dir"
