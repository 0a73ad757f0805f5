#!/usr/bin/env bash
# The product images: meshlogic-operator, agentmesh-sidecar and meshlogic-probe, each a static
# binary alone on an empty base (images/<binary>/Containerfile).
#
#   scripts/images.sh [build]         build the binaries and images (`make images`)
#   scripts/images.sh e2e             build the local cluster's and the e2e suite's images
#   scripts/images.sh push HOST:PORT  push the built images to a registry (`make images-push`)
#   scripts/images.sh setup           only install what is missing (buildah, skopeo, musl, ...)
#
# build: cargo builds each binary (release profile, static: musl for the operator and the sidecar
# (glibc with +crt-static if rustup cannot fetch the musl target),
# glibc with +crt-static for the probe, whose libbpf/libelf/zlib come from the crate's `static`
# feature), checks that it is static and that it runs alone in an empty root, and copies it alone
# into a build context $AGENTMESH_CACHE/images/context/<binary>/. Buildah (Debian's, vfs storage
# under $AGENTMESH_CACHE/containers) builds the Containerfile with --timestamp 0, so the same
# binary gives the same image digest, and writes one OCI archive per image name:
# $AGENTMESH_CACHE/images/<name>.oci.tar, whose index.json names the image in full
# (org.opencontainers.image.ref.name and containerd's io.containerd.image.name), so that
# `ctr -n k8s.io images import`, `podman load` and `docker load` all give it that name. The
# archives are themselves reproducible (sorted tar, fixed dates and owners).
# $AGENTMESH_CACHE/images/images.txt lists `<archive> <image reference> <manifest digest>`, one
# image a line.
set -euo pipefail
# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
AGENTMESH_CACHE="${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$AGENTMESH_CACHE/target}"
CARGO="${CARGO:-cargo}"
IMAGES_DIR="${AGENTMESH_IMAGES_DIR:-$AGENTMESH_CACHE/images}"
STORAGE_DIR="$AGENTMESH_CACHE/containers"
MUSL_TARGET=x86_64-unknown-linux-musl
GNU_TARGET=x86_64-unknown-linux-gnu
export AGENTMESH_CACHE CARGO_TARGET_DIR

STARTED=$SECONDS
log() { echo "images: [$((SECONDS - STARTED)) s] $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }

# Debian packages, installed only when missing: buildah builds the images, skopeo pushes them,
# musl-tools compiles ring's C for the musl target, jq edits index.json, file checks binaries.
# libelf-dev and zlib1g-dev (static libelf.a, libz.a for the probe) come with scripts/setup.sh.
setup() {
  apt_ensure buildah skopeo musl-tools jq file binutils libelf-dev zlib1g-dev
  if ! rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then
    log "installing the Rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET" ||
      log "warning: no $MUSL_TARGET (rustup could not fetch it): the operator and the sidecar are built static against glibc instead"
  fi
}

# The operator and the sidecar: musl when rustup has the target, else glibc with +crt-static
# (also static; the probe is always built that way).
operator_target() {
  if rustup target list --installed 2>/dev/null | grep -qx "$MUSL_TARGET"; then echo "$MUSL_TARGET"; else echo "$GNU_TARGET"; fi
}

# Values from the sources, so that image names never drift from what the operator deploys.
workspace_field() {
  sed -n '/^\[workspace\.package\]/,/^\[/ s/^'"$1"' = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1
}
names_const() {
  sed -n 's/.*pub const '"$1"': &str = "\(.*\)";/\1/p' "$ROOT/crates/api/src/names.rs" | head -n1
}
VERSION="$(workspace_field version)"
SOURCE="$(workspace_field repository)"
SIDECAR_IMAGE="$(names_const SIDECAR_IMAGE)"                   # agentmesh/sidecar:1.0.0-alpha1
PROBE_REPOSITORY="$(names_const PROBE_IMAGE_REPOSITORY)"       # registry.meshlogic.ai/meshlogic/agent
[[ -n "$VERSION" && -n "$SOURCE" && -n "$SIDECAR_IMAGE" && -n "$PROBE_REPOSITORY" ]] ||
  die "cannot read the version, repository or image names from Cargo.toml and crates/api/src/names.rs"
SEED_TAG="${SIDECAR_IMAGE##*:}"

# A short name as Docker and the CRI read it: docker.io/ for a first component that is no host.
full_ref() {
  local ref="$1" first="${1%%/*}"
  if [[ "$ref" != */* ]]; then
    echo "docker.io/library/$ref"
  elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
    echo "$ref"
  else
    echo "docker.io/$ref"
  fi
}

# <archive name> <binary> <image reference>, one image a line. The operator has two names: the
# seed deployment guide's agentmesh/server and its own.
image_table() {
  cat <<EOF
server meshlogic-operator $(full_ref "agentmesh/server:$SEED_TAG")
meshlogic-operator meshlogic-operator $(full_ref "agentmesh/meshlogic-operator:$VERSION")
sidecar agentmesh-sidecar $(full_ref "$SIDECAR_IMAGE")
meshlogic-agent meshlogic-probe $(full_ref "$PROBE_REPOSITORY:$VERSION")
EOF
}

buildah_() {
  buildah --root "$STORAGE_DIR/storage" --runroot "$STORAGE_DIR/run" --storage-driver vfs "$@"
}

# Flags for the static release builds. The cargo home and the target directory are remapped so
# that their paths do not end up in the binaries (cargo names the workspace's own sources
# relative to it already; the probe's build.rs does the same for its BPF sources), so the
# images do not depend on where the clone or the caches are. The clone's path is deliberately
# not in these flags: they would then differ between clones and rebuild every dependency.
# Release profile without debuginfo, symbols kept (readable backtraces).
rustflags() {
  local flags=(
    "--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"
    "--remap-path-prefix=$CARGO_TARGET_DIR=/target"
    "$@"
  )
  local IFS=$'\x1f'
  echo "${flags[*]}"
}

build_binaries() {
  cd "$ROOT"
  export CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo
  local target static=()
  target="$(operator_target)"
  [[ "$target" == "$GNU_TARGET" ]] && static=(-Ctarget-feature=+crt-static)
  log "cargo build --release --target $target (meshlogic-operator, agentmesh-sidecar)"
  CARGO_ENCODED_RUSTFLAGS="$(rustflags "${static[@]}")" CC_x86_64_unknown_linux_musl=musl-gcc \
    nice -n 10 "$CARGO" build --release --locked --target "$target" \
    -p meshlogic-operator -p agentmesh-sidecar --bin meshlogic-operator --bin agentmesh-sidecar
  # libbpf-sys's `static` feature links libelf.a and libz.a by name: tell it where Debian has them.
  local static_libs
  static_libs="$(dirname "$(gcc -print-file-name=libelf.a)")"
  [[ -f "$static_libs/libelf.a" && -f "$static_libs/libz.a" ]] ||
    die "no static libelf.a/libz.a (Debian's libelf-dev, zlib1g-dev)"
  log "cargo build --release --target $GNU_TARGET +crt-static --features static (meshlogic-probe)"
  LIBBPF_SYS_LIBRARY_PATH_x86_64_unknown_linux_gnu="$static_libs" \
    CARGO_ENCODED_RUSTFLAGS="$(rustflags -Ctarget-feature=+crt-static)" \
    nice -n 10 "$CARGO" build --release --locked --target "$GNU_TARGET" \
    -p meshlogic-probe --features static --bin meshlogic-probe
}

binary_path() {
  case "$1" in
    meshlogic-probe) echo "$CARGO_TARGET_DIR/$GNU_TARGET/release/$1" ;;
    *) echo "$CARGO_TARGET_DIR/$(operator_target)/release/$1" ;;
  esac
}

# Static (no interpreter, no shared library), and runs `--help` with nothing else around it:
# chrooted into its build context (as the empty image would run it) when we are root.
check_binary() {
  local binary="$1" context="$2" name
  name="$(basename "$binary")"
  file -b "$binary" | grep -Eq 'statically linked|static-pie linked' ||
    die "$binary is not static: $(file -b "$binary")"
  if readelf -lW "$binary" | grep -q 'INTERP' || readelf -dW "$binary" | grep -q '(NEEDED)'; then
    die "$binary needs a dynamic loader or shared libraries"
  fi
  if ((EUID == 0)); then
    chroot "$context" "/$name" --help >/dev/null || die "/$name --help failed in an empty root"
  else
    env -i "$binary" --help >/dev/null || die "$binary --help failed"
  fi
}

# Writes the image (already built, by id) as an OCI archive named $ref, reproducibly.
write_archive() {
  local id="$1" ref="$2" archive="$3" work
  work="$(mktemp -d "$IMAGES_DIR/.work.XXXXXX")"
  buildah_ push --quiet "$id" "oci:$work/layout:$ref" >/dev/null
  jq --arg ref "$ref" --sort-keys \
    '.manifests |= map(.annotations["io.containerd.image.name"] = $ref)' \
    "$work/layout/index.json" >"$work/index.json"
  mv "$work/index.json" "$work/layout/index.json"
  (cd "$work/layout" && tar --create --file "$work/archive.tar" --sort=name --format=ustar \
    --mtime=@0 --owner=0 --group=0 --numeric-owner --mode=u+rw,go+r,go-w oci-layout index.json blobs)
  if cmp -s "$work/archive.tar" "$archive"; then
    rm -rf "$work"
  else
    mv "$work/archive.tar" "$archive"
    rm -rf "$work"
  fi
}

archive_digest() {
  tar --extract --to-stdout --file "$1" index.json | jq -r '.manifests[0].digest'
}

build() {
  setup
  build_binaries
  mkdir -p "$IMAGES_DIR" "$STORAGE_DIR"
  rm -rf "$IMAGES_DIR"/.work.*
  local list="$IMAGES_DIR/.images.txt.new" name binary ref source context id previous=""
  : >"$list"
  while read -r name binary ref; do
    source="$(binary_path "$binary")"
    context="$IMAGES_DIR/context/$binary"
    if [[ "$binary" != "$previous" ]]; then
      if [[ -n "${id:-}" ]]; then buildah_ rmi --force "$id" >/dev/null; fi
      rm -rf "$context" && mkdir -p "$context"
      install -m 0555 "$source" "$context/$binary"
      if [[ "$binary" == agentmesh-sidecar ]]; then
        # /bin/cat is the sidecar itself (it prints files when called so): the seed's liveness
        # probe is `cat /var/run/agentmesh/healthy`, and the image has nothing else to run it.
        mkdir -p "$context/bin"
        ln -s ../agentmesh-sidecar "$context/bin/cat"
        touch -h -d @0 "$context/bin/cat" "$context/bin"
      fi
      check_binary "$context/$binary" "$context"
      id="$(buildah_ bud --quiet --timestamp 0 --identity-label=false --format oci --isolation chroot \
        --build-arg "VERSION=$VERSION" --build-arg "SOURCE=$SOURCE" \
        --file "$ROOT/images/$binary/Containerfile" "$context" | tail -n1)"
      previous="$binary"
    fi
    write_archive "$id" "$ref" "$IMAGES_DIR/$name.oci.tar"
    echo "$IMAGES_DIR/$name.oci.tar $ref $(archive_digest "$IMAGES_DIR/$name.oci.tar")" >>"$list"
  done < <(image_table)
  if [[ -n "${id:-}" ]]; then buildah_ rmi --force "$id" >/dev/null; fi
  mv "$list" "$IMAGES_DIR/images.txt"

  local archive digest
  while read -r archive ref digest; do
    printf '%-48s %s %5.1f MiB  %s\n' "$ref" "$digest" \
      "$(awk -v bytes="$(stat -c %s "$archive")" 'BEGIN { print bytes / 1048576 }')" "$archive"
  done <"$IMAGES_DIR/images.txt"
  log "list: $IMAGES_DIR/images.txt"
}

# Pushes every image of images.txt to REGISTRY (host:port), under its name without its own
# registry host: $REGISTRY/agentmesh/sidecar:1.0.0-alpha1, $REGISTRY/meshlogic/agent:0.1.0, ...
# The digest must stay the same. A loopback registry is spoken to over plain HTTP.
push() {
  local registry="${1:-}" archive ref digest dest tls=true pushed
  [[ -n "$registry" ]] || die "usage: scripts/images.sh push HOST:PORT"
  [[ -f "$IMAGES_DIR/images.txt" ]] || die "no $IMAGES_DIR/images.txt: run make images first"
  command -v skopeo >/dev/null || setup
  case "$registry" in
    127.* | localhost | localhost:* | \[::1\]*) tls=false ;;
  esac
  tls="${REGISTRY_TLS_VERIFY:-$tls}"
  pushed="$(mktemp)"
  while read -r archive ref digest; do
    dest="$registry/${ref#*/}"
    skopeo copy --quiet --preserve-digests --dest-tls-verify="$tls" --digestfile "$pushed" \
      "oci-archive:$archive" "docker://$dest"
    [[ "$(cat "$pushed")" == "$digest" ]] || die "$dest: pushed digest $(cat "$pushed"), expected $digest"
    echo "$dest $digest"
  done <"$IMAGES_DIR/images.txt"
  rm -f "$pushed"
}

# The images of the local cluster and the e2e suite (e2e/images/<name>/Containerfile), never
# pushed: the node's sandbox image, the test pods' busybox, an MCP server, Redis and make demo's agents. Written to
# $IMAGES_DIR/e2e/<name>.oci.tar and listed in $IMAGES_DIR/e2e-images.txt (loaded into the
# local node by e2e/cluster/up.sh, which calls this). Each build context is assembled here:
e2e_context() {
  local name="$1" context="$2" node lib fixtures debs target
  case "$name" in
    pause) gcc -static -O2 -Wall -o "$context/pause" "$ROOT/e2e/node/pause.c" ;;
    tools) install -m 0555 /bin/busybox "$context/busybox" ;;
    mcp-everything | demo-agent)
      fixtures="$("$ROOT/scripts/mcp-fixtures.sh" | tail -n1)"
      node="$(readlink -f "$(command -v node)")"
      mkdir -p "$context/rootfs/usr/bin" "$context/rootfs/app"
      install -m 0555 "$node" "$context/rootfs/usr/bin/node"
      # The machine's Node.js and the shared libraries it loads, at the same paths.
      for lib in $(ldd "$node" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        mkdir -p "$context/rootfs$(dirname "$lib")"
        cp -L "$lib" "$context/rootfs$lib"
      done
      cp -a "$fixtures/node_modules" "$context/rootfs/app/node_modules"
      install -m 0444 "$ROOT/e2e/mcp/everything.mjs" "$context/rootfs/app/everything.mjs"
      if [[ $name == demo-agent ]]; then
        # make demo's scripted agents, and the executable the demo's policy denies (busybox
        # under another name: it only has to be exec'd).
        install -m 0444 "$ROOT/demo/agent.mjs" "$context/rootfs/app/agent.mjs"
        mkdir -p "$context/rootfs/bin" "$context/rootfs/usr/local/bin"
        install -m 0555 /bin/busybox "$context/rootfs/bin/busybox"
        install -m 0555 /bin/busybox "$context/rootfs/usr/local/bin/miner"
      fi
      ;;
    redis)
      # Debian's packages, downloaded and unpacked (never installed: no service starts).
      debs="$IMAGES_DIR/debs/redis" && mkdir -p "$debs"
      if ! ls "$debs"/redis-tools_*.deb >/dev/null 2>&1; then
        [[ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ]] || apt-get update -qq
        (cd "$debs" && apt-get download -qq redis-tools libjemalloc2 liblzf1 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
      fi
      mkdir -p "$context/unpacked" "$context/rootfs/usr/bin"
      for deb in "$debs"/*.deb; do dpkg-deb -x "$deb" "$context/unpacked"; done
      install -m 0555 "$context/unpacked/usr/bin/redis-check-rdb" "$context/rootfs/usr/bin/redis-server"
      for lib in $(LD_LIBRARY_PATH="$context/unpacked/usr/lib/x86_64-linux-gnu" ldd "$context/rootfs/usr/bin/redis-server" \
          | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
        target="${lib#"$context/unpacked"}"
        mkdir -p "$context/rootfs$(dirname "$target")"
        cp -L "$lib" "$context/rootfs$target"
      done
      mkdir -p "$context/rootfs/data" "$context/rootfs/tmp"
      ;;
    *) die "no build context for the e2e image $name" ;;
  esac
}

e2e_images() {
  command -v buildah >/dev/null || setup
  [[ -x /bin/busybox ]] || die "/bin/busybox missing (Debian's busybox-static, scripts/setup.sh)"
  mkdir -p "$IMAGES_DIR/e2e" "$STORAGE_DIR"
  local list="$IMAGES_DIR/.e2e-images.txt.new" name ref context id archive
  : >"$list"
  for name in pause tools mcp-everything redis demo-agent; do
    ref="$(sed -n '1s/^# \([^ ]*:[^ ]*\) — .*/\1/p' "$ROOT/e2e/images/$name/Containerfile")"
    [[ -n "$ref" ]] || die "e2e/images/$name/Containerfile does not name its image on its first line"
    context="$IMAGES_DIR/context/e2e-$name"
    rm -rf "$context" && mkdir -p "$context"
    e2e_context "$name" "$context"
    id="$(buildah_ bud --quiet --timestamp 0 --identity-label=false --format oci --isolation chroot \
      --file "$ROOT/e2e/images/$name/Containerfile" "$context" | tail -n1)"
    archive="$IMAGES_DIR/e2e/$name.oci.tar"
    write_archive "$id" "$ref" "$archive"
    buildah_ rmi --force "$id" >/dev/null
    echo "$archive $ref $(archive_digest "$archive")" >>"$list"
  done
  mv "$list" "$IMAGES_DIR/e2e-images.txt"
  log "list: $IMAGES_DIR/e2e-images.txt"
}

case "${1:-build}" in
  build) build ;;
  e2e) e2e_images ;;
  push) push "${2:-}" ;;
  setup) setup ;;
  *) die "usage: scripts/images.sh [build | e2e | push HOST:PORT | setup]" ;;
esac
