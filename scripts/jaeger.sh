#!/usr/bin/env bash
# Builds Jaeger (v2, the OpenTelemetry collector with Jaeger's storage and query) from its Go
# module, pinned by e2e/jaeger/go.mod (`go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@v1.76.0`),
# into ${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/jaeger-<version>/jaeger, and prints that
# path as the last line on stdout. Built: nothing to do. A cold build takes about 5 minutes
# (10 under load). Safe to run concurrently (flock). The tests start it with
# e2e/jaeger/config.yaml: OTLP/gRPC in, memory storage, the query API on loopback.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
module=$repo/e2e/jaeger
version=$(cd "$module" && go list -m -f '{{.Version}}' github.com/jaegertracing/jaeger)
dir=${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}/jaeger-$version
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
if [[ ! -x $dir/jaeger ]]; then
  echo "jaeger: building $version into $dir" >&2
  (cd "$module" && CGO_ENABLED=0 go build -trimpath -o "$dir/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger)
  mv "$dir/jaeger.tmp" "$dir/jaeger"
fi
echo "$dir/jaeger"
