#!/usr/bin/env bash
# Installs what a fresh machine lacks for `make test` and `make demo`. Idempotent: when nothing
# is missing it only checks, in well under a second. Caches live under $AGENTMESH_CACHE
# (default ~/.cache/agentmesh), never inside the clone.
set -euo pipefail

AGENTMESH_CACHE="${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}"
mkdir -p "$AGENTMESH_CACHE"

# Debian packages, installed only when missing. The probe's BPF toolchain: clang compiles
# bpf/*.bpf.c (libbpf-cargo), libelf/zlib/pkg-config build the vendored libbpf (libbpf-sys).
# The local cluster's node (e2e/cluster/node.sh): runc (cgo + libseccomp, so not built from Go
# modules like the rest), iptables and conntrack for kube-proxy, a static busybox for the test
# pods' image, gcc to build the sandbox image's program statically. The audit stores' servers
# (Redis, PostgreSQL): the tests start their own on loopback, never the packages' services.
APT_PACKAGES=(clang llvm libelf-dev zlib1g-dev pkg-config make runc iptables conntrack busybox-static gcc libc6-dev redis-server postgresql)

# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"
apt_ensure "${APT_PACKAGES[@]}"

# The Rust toolchain comes with the machine (rustup); rustfmt and clippy must be there.
for tool in cargo rustfmt cargo-clippy; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "setup: $tool is missing; install it with rustup (rustup component add rustfmt clippy)" >&2
    exit 1
  fi
done
