#!/usr/bin/env bash
# The kernels of `make test-kernels`: Debian's stock amd64 kernels, downloaded with a private apt
# configuration (the host's sources, lists and dpkg database are never touched) and unpacked,
# never installed.
#
#   scripts/kernels.sh fetch [NAME...]   download and unpack the kernels (all when none is named)
#   scripts/kernels.sh list              the names and the suites they come from
#
# fetch prints one line per kernel: `<name> <release> <dir>`, where <dir> holds
#   vmlinux      the uncompressed kernel (an ELF with a PVH entry: QEMU boots it directly,
#                skipping the slow decompressor of vmlinuz under emulation)
#   vmlinuz      the kernel as Debian ships it
#   modules/     lib/modules/<release> with modules.dep (`depmod -b`)
#   config       the kernel's build configuration
# under $AGENTMESH_CACHE/kernels/<name>/<release>. The meta-package linux-image-amd64 of each
# suite is followed (the ABI versions move); a release already unpacked is not downloaded again.
set -euo pipefail

AGENTMESH_CACHE="${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}"
KERNELS_DIR="$AGENTMESH_CACHE/kernels"
MIRROR="${AGENTMESH_DEBIAN_MIRROR:-http://deb.debian.org}"

STARTED=$SECONDS
log() { echo "kernels: [$((SECONDS - STARTED)) s] $*" >&2; }
die() { echo "kernels: $*" >&2; exit 1; }

# name -> the apt sources it comes from (the kernels users run: Amazon Linux 2's 5.10, Debian 12
# and Amazon Linux 2023's 6.1, Debian 13's 6.12, and the newest Debian has).
declare -A SOURCES=(
  [5.10]="debian bullseye main|debian-security bullseye-security main"
  [6.1]="debian bookworm main|debian bookworm-updates main|debian-security bookworm-security main"
  [6.12]="debian trixie main|debian trixie-updates main|debian-security trixie-security main"
  [newest]="debian sid main"
)
NAMES=(5.10 6.1 6.12 newest)

# shellcheck source=scripts/apt.sh
source "$(dirname "$0")/apt.sh"
setup() {
  apt_ensure zstd xz-utils kmod cpio busybox-static qemu-system-x86
}

# apt-get/apt-cache with a private state under $1 (lists, archives, an empty dpkg status) and
# the host's keyrings (Debian's archive keys, which sign every suite above).
private_apt() {
  local dir="$1" tool="$2"
  shift 2
  "$tool" -q \
    -o Dir::Etc="$dir/etc" \
    -o Dir::Etc::SourceList="$dir/etc/sources.list" \
    -o Dir::Etc::SourceParts="$dir/etc/sources.list.d" \
    -o Dir::Etc::Preferences="$dir/etc/preferences" \
    -o Dir::Etc::PreferencesParts="$dir/etc/preferences.d" \
    -o Dir::Etc::TrustedParts=/etc/apt/trusted.gpg.d \
    -o Dir::Etc::Trusted=/etc/apt/trusted.gpg \
    -o Dir::State="$dir/state" \
    -o Dir::State::status="$dir/state/status" \
    -o Dir::Cache="$dir/cache" \
    -o APT::Architecture=amd64 \
    -o APT::Architectures=amd64 \
    -o Acquire::Languages=none \
    -o Debug::NoLocking=true \
    -o APT::Sandbox::User=root \
    "$@"
}

# The uncompressed kernel inside a bzImage: the first compressed stream (zstd, xz or gzip) that
# decompresses to an ELF, as the kernel's own scripts/extract-vmlinux finds it.
extract_vmlinux() {
  local image="$1" out="$2" offset magic tool
  for pair in "28b52ffd:zstdcat" "fd377a585a00:xzcat" "1f8b0800:zcat"; do
    magic="${pair%%:*}" tool="${pair#*:}"
    local pattern
    pattern="$(sed 's/../\\x&/g' <<<"$magic")"
    for offset in $(LC_ALL=C grep -obUaP "$pattern" "$image" | cut -d: -f1); do
      tail -c +"$((offset + 1))" "$image" | "$tool" 2>/dev/null >"$out.tmp" || true
      if [[ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" == 7f454c46 ]]; then
        mv "$out.tmp" "$out"
        return 0
      fi
    done
  done
  rm -f "$out.tmp"
  return 1
}

fetch_one() {
  local name="$1" apt_dir="$KERNELS_DIR/apt/$name" line archive suite components meta image release dir work
  [[ -n "${SOURCES[$name]:-}" ]] || die "no kernel named $name (scripts/kernels.sh list)"
  mkdir -p "$apt_dir/etc/sources.list.d" "$apt_dir/etc/preferences.d" "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
  : >"$apt_dir/state/status"
  : >"$apt_dir/etc/sources.list"
  IFS='|' read -r -a lines <<<"${SOURCES[$name]}"
  for line in "${lines[@]}"; do
    read -r archive suite components <<<"$line"
    echo "deb $MIRROR/$archive $suite $components" >>"$apt_dir/etc/sources.list"
  done
  private_apt "$apt_dir" apt-get update -qq >/dev/null || die "$name: apt-get update failed ($apt_dir/etc/sources.list)"
  # linux-image-amd64 -> linux-image-<release> (a signed image on every suite here).
  meta="$(private_apt "$apt_dir" apt-cache depends linux-image-amd64 |
    awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')"
  [[ -n "$meta" ]] || die "$name: linux-image-amd64 names no kernel"
  release="${meta#linux-image-}"
  release="${release%-unsigned}"
  dir="$KERNELS_DIR/$name/$release"
  if [[ -s "$dir/vmlinux" && -f "$dir/modules/lib/modules/$release/modules.dep" ]]; then
    echo "$name $release $dir"
    return
  fi
  # The image package, and from 7.x the binary and modules packages it depends on.
  local packages=("$meta") dep
  while read -r dep; do packages+=("$dep"); done < <(
    private_apt "$apt_dir" apt-cache depends "$meta" |
      awk -v r="$release" '$1 ~ /Depends:$/ && $2 ~ /^linux-/ && index($2, r) {print $2}' | sort -u)
  log "$name: downloading ${packages[*]}"
  work="$KERNELS_DIR/$name/.work"
  rm -rf "$work" && mkdir -p "$work/debs" "$work/root"
  (cd "$work/debs" && private_apt "$apt_dir" apt-get download -qq "${packages[@]}" 2>&1 |
    grep -v '^W: Download is performed unsandboxed' || true)
  ls "$work"/debs/*.deb >/dev/null 2>&1 || die "$name: nothing downloaded"
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  local modules vmlinuz config
  modules="$(find "$work/root/lib/modules" "$work/root/usr/lib/modules" -maxdepth 1 -name "$release" -print -quit 2>/dev/null || true)"
  [[ -n "$modules" ]] || die "$name: no modules for $release"
  # /boot/vmlinuz-<release> and /boot/config-<release>; from 7.x in the modules directory.
  vmlinuz="$work/root/boot/vmlinuz-$release" config="$work/root/boot/config-$release"
  [[ -f "$vmlinuz" ]] || vmlinuz="$modules/vmlinuz"
  [[ -f "$config" ]] || config="$modules/config"
  [[ -f "$vmlinuz" && -f "$config" ]] || die "$name: no kernel image or config for $release in ${packages[*]}"
  rm -rf "$dir" && mkdir -p "$dir/modules/lib/modules"
  cp "$vmlinuz" "$dir/vmlinuz"
  cp "$config" "$dir/config"
  mv "$modules" "$dir/modules/lib/modules/$release"
  depmod -b "$dir/modules" "$release"
  extract_vmlinux "$dir/vmlinuz" "$dir/vmlinux" || die "$name: no ELF kernel inside $dir/vmlinuz"
  rm -rf "$work"
  log "$name: $release in $dir"
  echo "$name $release $dir"
}

case "${1:-fetch}" in
  fetch)
    shift || true
    setup
    names=("$@")
    ((${#names[@]})) || names=("${NAMES[@]}")
    for name in "${names[@]}"; do fetch_one "$name"; done
    ;;
  list)
    for name in "${NAMES[@]}"; do echo "$name: ${SOURCES[$name]}"; done
    ;;
  *) die "usage: scripts/kernels.sh [fetch [NAME...] | list]" ;;
esac
