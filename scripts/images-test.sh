#!/usr/bin/env bash
# `make images-test` (part of `make test`): builds the images twice and checks
# - the same digests (and byte-identical archives) both times;
# - each archive: one image, named in full in index.json (OCI ref name and containerd's name);
#   one layer holding exactly the binary (root-owned, 0555, dated 1970), the same binary that
#   runs `--help`; the entrypoint, the user (non-root for the operator and the sidecar, root for
#   the probe), the OCI labels;
# - `podman load` of each archive (a throw-away store under /tmp) gives the image its name and
#   digest;
# - with containerd and ctr found (CONTAINERD_BIN_DIR, PATH, or the local cluster's build),
#   `ctr -n k8s.io images import` into a throw-away containerd on its own socket and directories
#   (no CRI, no NRI, no unpacking) gives the same names and digests (skipped otherwise);
# - `make images-push` to Debian's docker-registry on 127.0.0.1:<free port> (own config and
#   storage under /tmp, stopped at the end) keeps each digest, as `skopeo inspect` shows.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export AGENTMESH_CACHE="${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}"
IMAGES_DIR="${AGENTMESH_IMAGES_DIR:-$AGENTMESH_CACHE/images}"
VERSION="$(sed -n '/^\[workspace\.package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml")"

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "images-test: ok   $*"; }
fail() { failed=$((failed + 1)); echo "images-test: FAIL $*" >&2; }
expect() { # expect DESCRIPTION ACTUAL WANTED
  if [[ "$2" == "$3" ]]; then ok "$1"; else fail "$1: got '$2', want '$3'"; fi
}

for package in podman docker-registry; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    echo "images-test: installing $package" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  fi
done

WORK="$(mktemp -d /tmp/agentmesh-images-test.XXXXXX)"
REGISTRY_PID=""
CONTAINERD_PID=""
cleanup() {
  if [[ -n "$REGISTRY_PID" ]]; then kill "$REGISTRY_PID" 2>/dev/null || true; wait "$REGISTRY_PID" 2>/dev/null || true; fi
  if [[ -n "$CONTAINERD_PID" ]]; then kill "$CONTAINERD_PID" 2>/dev/null || true; wait "$CONTAINERD_PID" 2>/dev/null || true; fi
  podman_ system reset --force >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
podman_() {
  podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --storage-driver vfs "$@"
}

# --- twice the same -------------------------------------------------------------------------
for run in 1 2; do
  start=$(date +%s)
  "$ROOT/scripts/images.sh" build >"$WORK/build-$run.log" 2>&1 || { cat "$WORK/build-$run.log" >&2; fail "build $run"; exit 1; }
  echo "images-test: build $run took $(($(date +%s) - start)) s"
  cp "$IMAGES_DIR/images.txt" "$WORK/images-$run.txt"
  while read -r archive _ _; do sha256sum "$archive"; done <"$IMAGES_DIR/images.txt" >"$WORK/archives-$run.sha256"
done
cat "$WORK/build-2.log"
expect "two builds list the same images and digests" "$(cat "$WORK/images-1.txt")" "$(cat "$WORK/images-2.txt")"
expect "two builds write byte-identical archives" "$(cat "$WORK/archives-1.sha256")" "$(cat "$WORK/archives-2.sha256")"
expect "four image names" "$(wc -l <"$IMAGES_DIR/images.txt")" 4

# --- each archive ---------------------------------------------------------------------------
blob() { tar --extract --to-stdout --file "$1" "blobs/${2/://}"; }
while read -r archive ref digest; do
  name="$(basename "$archive" .oci.tar)"
  case "$name" in
    server | meshlogic-operator) binary=meshlogic-operator user=65532:65532 ;;
    sidecar) binary=agentmesh-sidecar user=1000:1000 ;;
    meshlogic-agent) binary=meshlogic-probe user="" ;;
    *) fail "$archive: unexpected image"; continue ;;
  esac
  index="$(tar --extract --to-stdout --file "$archive" index.json)"
  expect "$name: one manifest in index.json" "$(jq '.manifests | length' <<<"$index")" 1
  expect "$name: OCI ref name" "$(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"]' <<<"$index")" "$ref"
  expect "$name: containerd image name" "$(jq -r '.manifests[0].annotations["io.containerd.image.name"]' <<<"$index")" "$ref"
  expect "$name: digest in images.txt" "$(jq -r '.manifests[0].digest' <<<"$index")" "$digest"
  manifest="$(blob "$archive" "$digest")"
  expect "$name: manifest bytes match their digest" \
    "sha256:$(tar --extract --to-stdout --file "$archive" "blobs/sha256/${digest#sha256:}" | sha256sum | cut -c1-64)" "$digest"
  expect "$name: one layer" "$(jq '.layers | length' <<<"$manifest")" 1
  config="$(blob "$archive" "$(jq -r '.config.digest' <<<"$manifest")")"
  expect "$name: entrypoint" "$(jq -c '.config.Entrypoint' <<<"$config")" "[\"/$binary\"]"
  expect "$name: no cmd" "$(jq -c '.config.Cmd' <<<"$config")" null
  expect "$name: user" "$(jq -r '.config.User // ""' <<<"$config")" "$user"
  expect "$name: created at the epoch" "$(jq -r '.created' <<<"$config")" 1970-01-01T00:00:00Z
  expect "$name: platform" "$(jq -r '.os + "/" + .architecture' <<<"$config")" linux/amd64
  expect "$name: version label" "$(jq -r '.config.Labels["org.opencontainers.image.version"]' <<<"$config")" "$VERSION"
  expect "$name: title label" "$(jq -r '.config.Labels["org.opencontainers.image.title"]' <<<"$config")" "$binary"
  expect "$name: source label" "$(jq -r '.config.Labels["org.opencontainers.image.source"] | length > 0' <<<"$config")" true
  layer="$(jq -r '.layers[0].digest' <<<"$manifest")"
  blob "$archive" "$layer" >"$WORK/layer"
  expected_layer="-r-xr-xr-x 0/0 1970-01-01 00:00:00 $binary"
  if [[ "$binary" == agentmesh-sidecar ]]; then
    # And /bin/cat, a link to it, for the seed's liveness probe.
    expected_layer="$(printf '%s\n' "$expected_layer" "drwxr-xr-x 0/0 1970-01-01 00:00:00 bin/" \
      "lrwxrwxrwx 0/0 1970-01-01 00:00:00 bin/cat -> ../agentmesh-sidecar")"
  fi
  expect "$name: the layer holds only the binary" \
    "$(tar --list --verbose --numeric-owner --full-time --file "$WORK/layer" |
      awk '{ line = $1 " " $2; for (i = 4; i <= NF; i++) line = line " " $i; print line }' | sort -k5)" \
    "$(sort -k5 <<<"$expected_layer")"
  mkdir -p "$WORK/rootfs-$name"
  tar --extract --file "$WORK/layer" --directory "$WORK/rootfs-$name"
  expect "$name: the binary is the one built" \
    "$(sha256sum <"$WORK/rootfs-$name/$binary")" "$(sha256sum <"$IMAGES_DIR/context/$binary/$binary")"
  if file -b "$WORK/rootfs-$name/$binary" | grep -Eq 'statically linked|static-pie linked'; then
    ok "$name: static binary"
  else
    fail "$name: not static: $(file -b "$WORK/rootfs-$name/$binary")"
  fi
  if [[ "$binary" == agentmesh-sidecar ]]; then
    if chroot "$WORK/rootfs-$name" /bin/cat /agentmesh-sidecar >/dev/null 2>&1 &&
      ! chroot "$WORK/rootfs-$name" /bin/cat /var/run/agentmesh/healthy >/dev/null 2>&1; then
      ok "$name: /bin/cat prints a file that exists and fails on one that does not"
    else
      fail "$name: /bin/cat does not behave as the liveness probe needs"
    fi
  fi
  if chroot "$WORK/rootfs-$name" "/$binary" --help >/dev/null 2>&1; then
    ok "$name: /$binary --help runs in the image's root file system alone"
  else
    fail "$name: /$binary --help fails in the image's root file system"
  fi
done <"$IMAGES_DIR/images.txt"

# --- podman load ----------------------------------------------------------------------------
while read -r archive ref digest; do
  name="$(basename "$archive" .oci.tar)"
  if podman_ load --quiet --input "$archive" >"$WORK/podman-load.log" 2>&1; then
    ok "$name: podman load"
  else
    fail "$name: podman load: $(cat "$WORK/podman-load.log")"
    continue
  fi
  expect "$name: podman names the image $ref with its digest" \
    "$(podman_ image inspect --format '{{.Digest}}' "$ref" 2>&1)" "$digest"
done <"$IMAGES_DIR/images.txt"

# --- containerd (when it is there) ----------------------------------------------------------
# CONTAINERD_BIN_DIR, else PATH, else the local cluster's build ($AGENTMESH_CACHE/k8s/<version>/bin).
find_tool() {
  local candidate
  if [[ -n "${CONTAINERD_BIN_DIR:-}" ]]; then
    [[ -x "$CONTAINERD_BIN_DIR/$1" ]] && echo "$CONTAINERD_BIN_DIR/$1"
    return 0
  fi
  if command -v "$1"; then return 0; fi
  for candidate in $(ls -d "$AGENTMESH_CACHE"/k8s/*/bin 2>/dev/null | sort -V -r); do
    if [[ -x "$candidate/$1" ]]; then echo "$candidate/$1"; return 0; fi
  done
}
CONTAINERD="$(find_tool containerd)"
CTR="$(find_tool ctr)"
if [[ -n "$CONTAINERD" && -n "$CTR" && $EUID -eq 0 ]]; then
  socket="$WORK/containerd/containerd.sock"
  mkdir -p "$WORK/containerd"
  cat >"$WORK/containerd/config.toml" <<EOF
version = 3
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.nri.v1.nri"]
[grpc]
  address = "$socket"
[ttrpc]
  address = "$socket.ttrpc"
EOF
  "$CONTAINERD" --config "$WORK/containerd/config.toml" >"$WORK/containerd/log" 2>&1 &
  CONTAINERD_PID=$!
  for _ in $(seq 100); do [[ -S "$socket" ]] && "$CTR" --address "$socket" version >/dev/null 2>&1 && break; sleep 0.1; done
  while read -r archive ref digest; do
    name="$(basename "$archive" .oci.tar)"
    # The transfer service's import (ctr's default, as a node's import does); no unpacking, so
    # that the test mounts nothing on the host.
    if "$CTR" --address "$socket" -n k8s.io images import --no-unpack "$archive" >"$WORK/ctr.log" 2>&1; then
      expect "$name: ctr images import names it $ref" \
        "$("$CTR" --address "$socket" -n k8s.io images ls 2>/dev/null | awk -v ref="$ref" '$1 == ref {print $3}')" "$digest"
    else
      fail "$name: ctr images import: $(cat "$WORK/ctr.log")"
    fi
  done <"$IMAGES_DIR/images.txt"
else
  echo "images-test: skipped the containerd import (no containerd and ctr: PATH, CONTAINERD_BIN_DIR, $AGENTMESH_CACHE/k8s/*/bin)"
fi

# --- push to a loopback registry ------------------------------------------------------------
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$WORK/registry/storage"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
if make -C "$ROOT" --no-print-directory images-push REGISTRY="127.0.0.1:$port" >"$WORK/push.log" 2>&1; then
  ok "make images-push REGISTRY=127.0.0.1:$port"
  grep "^127.0.0.1:$port/" "$WORK/push.log"
else
  fail "make images-push: $(tail -20 "$WORK/push.log") $(tail -5 "$WORK/registry/log")"
fi
while read -r archive ref digest; do
  name="$(basename "$archive" .oci.tar)"
  expect "$name: the registry serves 127.0.0.1:$port/${ref#*/} with the same digest" \
    "$(skopeo inspect --tls-verify=false --format '{{.Digest}}' "docker://127.0.0.1:$port/${ref#*/}" 2>&1)" "$digest"
done <"$IMAGES_DIR/images.txt"

echo "images-test: $passed passed, $failed failed"
((failed == 0))
