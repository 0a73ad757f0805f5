#!/usr/bin/env bash
# Installs moto's server mode (PyPI `moto[server]`, pinned below) into a venv under
# ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/moto-<version>, and prints the path of its
# `moto_server` as the last line on stdout. Already installed: nothing to do, well under a
# second. Safe to run concurrently (flock).
#
# moto is the one stand-in of the test suite: it plays DynamoDB (and STS's
# AssumeRoleWithWebIdentity, for IRSA) for the probe's telemetry sink, because AWS's own
# DynamoDB Local cannot be used here (its licence). See the README.
set -euo pipefail

MOTO_VERSION=5.2.5
dir=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/moto-$MOTO_VERSION
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if [[ ! -x $dir/bin/moto_server ]]; then
  echo "moto: installing moto[server]==$MOTO_VERSION into $dir" >&2
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi
echo "$dir/bin/moto_server"
