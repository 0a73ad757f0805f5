#!/usr/bin/env bash
# Runs a command of this host under one of Debian's stock kernels (scripts/kernels.sh) in a QEMU
# VM, for `make test-kernels`:
#
#   scripts/vm.sh NAME [-m MEM] [--append KERNEL_ARGS] [--timeout SECONDS] -- COMMAND [ARG...]
#
# No root filesystem is built: an initramfs (busybox-static and the kernel's own 9p and virtio
# modules) mounts this host's / read-only over virtio-9p and runs COMMAND in a chroot of it,
# as root, in the current directory, with the environment variables named in VM_ENV
# (space-separated), fresh proc, sys, dev, cgroup2 (at /sys/fs/cgroup), bpffs, tracefs,
# debugfs and securityfs, and tmpfs on /tmp and /run. COMMAND's output is copied to stdout; the
# script exits with COMMAND's status (125 when the VM never ran it, or stopped before it ended).
#
# Emulated (TCG): this host's /dev/kvm cannot run stock kernels. Time inside the VM is no
# measure of speed (±25 %); `-icount shift=0` (VM_ICOUNT=1) counts instructions instead.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
AGENTMESH_CACHE="${AGENTMESH_CACHE:-$HOME/.cache/agentmesh}"
export AGENTMESH_CACHE

die() { echo "vm: $*" >&2; exit 125; }

(($# >= 1)) || die "usage: scripts/vm.sh NAME [-m MEM] [--append ARGS] [--timeout S] -- COMMAND..."
name="$1"
shift
memory=2048 append="" timeout=900
while (($#)); do
  case "$1" in
    -m) memory="$2"; shift 2 ;;
    --append) append="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    --) shift; break ;;
    *) die "unknown option $1" ;;
  esac
done
(($#)) || die "no command"

read -r _ release dir < <("$ROOT/scripts/kernels.sh" fetch "$name" | tail -n1)
[[ -s "$dir/vmlinux" ]] || die "no kernel $name"

# The modules that mount the host (and their dependencies, in load order), uncompressed: busybox's
# insmod reads plain .ko files only.
initramfs="$dir/initramfs-$(sha256sum "$0" | cut -c1-12).cpio.gz"
if [[ ! -s "$initramfs" ]]; then
  work="$(mktemp -d "$dir/.initramfs.XXXXXX")"
  mkdir -p "$work"/{bin,proc,sys,dev,host,modules}
  cp /bin/busybox "$work/bin/busybox"
  : >"$work/modules/order"
  while read -r verb path _; do
    [[ $verb == insmod ]] || continue
    base="$(basename "$path")"
    case "$base" in
      *.ko.xz) xz -dc "$path" >"$work/modules/${base%.xz}"; base="${base%.xz}" ;;
      *.ko.zst) zstd -qdc "$path" >"$work/modules/${base%.zst}"; base="${base%.zst}" ;;
      *.ko.gz) gzip -dc "$path" >"$work/modules/${base%.gz}"; base="${base%.gz}" ;;
      *) cp "$path" "$work/modules/$base" ;;
    esac
    grep -qx "$base" "$work/modules/order" || echo "$base" >>"$work/modules/order"
  done < <(for module in virtio_pci 9pnet_virtio 9p; do
    modprobe -d "$dir/modules" -S "$release" --show-depends "$module" 2>/dev/null || true
  done)
  grep -q '^9p.ko$' "$work/modules/order" || die "$name: no 9p module in $dir/modules"
  cat >"$work/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules/order); do insmod "/modules/$module" 2>/dev/null; done
msize=512000
ip link set lo up
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=$msize,cache=loose host /host || { echo "vm: cannot mount the host"; poweroff -f; }
mkdir -p /oldtmp
mount --bind /host/tmp /oldtmp
mount -t tmpfs tmp /host/tmp
mkdir -p /host/tmp/vm-out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=$msize out /host/tmp/vm-out
# The host directories under /tmp the command needs (its working directory, e.g. a CI clone
# there), seen through the fresh /tmp (read-only, as the rest of the host).
for keep in $(cat /host/tmp/vm-out/keep 2>/dev/null); do
  mkdir -p "/host$keep" && mount --bind "/oldtmp${keep#/tmp}" "/host$keep"
done
mount -t tmpfs run /host/run
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
mount -t bpf bpf /host/sys/fs/bpf
mount -t tracefs tracefs /host/sys/kernel/tracing
mount -t debugfs debugfs /host/sys/kernel/debug
mount -t securityfs securityfs /host/sys/kernel/security
chroot /host /bin/sh /tmp/vm-out/run.sh >/host/tmp/vm-out/output 2>&1
echo $? >/host/tmp/vm-out/status
sync
poweroff -f
INIT
  chmod +x "$work/init"
  (cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$initramfs.tmp"
  mv "$initramfs.tmp" "$initramfs"
  rm -rf "$work"
fi

out="$(mktemp -d "${TMPDIR:-/tmp}/agentmesh-vm.XXXXXX")"
trap 'rm -rf "$out"' EXIT
case "$PWD/" in /tmp/*) echo "$PWD" >"$out/keep" ;; esac
{
  echo ": >/tmp/vm-out/started" # the command was reached: a crash after this is not retried
  echo "cd $(printf '%q' "$PWD") || exit 125"
  echo "export PATH=$(printf '%q' "$PATH") HOME=$(printf '%q' "$HOME")"
  for variable in ${VM_ENV:-}; do
    [[ -n "${!variable+set}" ]] && echo "export $variable=$(printf '%q' "${!variable}")"
  done
  printf 'exec'
  printf ' %q' "$@"
  echo
} >"$out/run.sh"

accel=(-accel tcg,thread=multi)
[[ "${VM_ICOUNT:-0}" == 1 ]] && accel=(-accel tcg -icount shift=0)
boot() {
  timeout --foreground "$timeout" qemu-system-x86_64 "${accel[@]}" -cpu max -smp "${VM_CPUS:-2}" -m "$memory" \
    -machine q35 -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$dir/vmlinux" -initrd "$initramfs" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init $append" \
    -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$out,mount_tag=out,security_model=none" \
    >"$out/console" 2>&1
}
status=0
boot || status=$?
# Under emulation a boot fails now and then before the command runs: QEMU 7.2's TCG has crashed
# (SIGSEGV), and 6.12 has panicked in an interrupt (a fatal exception at 1.5 s), each once in a
# few dozen boots. A boot that did not reach the command, other than by the timeout, is tried
# twice more (never one that did: the command runs once).
for retry in 1 2; do
  [[ ! -e "$out/started" ]] && ((status != 124)) || break
  echo "vm: $name did not reach the command (qemu exit $status; console: $(grep -m1 -E 'panic|BUG|Oops' "$out/console" || echo -)); booting again ($retry/2)" >&2
  status=0
  boot || status=$?
done
if [[ ! -s "$out/status" ]]; then
  if [[ -e "$out/started" ]]; then
    echo "vm: $name ($release) stopped before the command finished (qemu exit $status; 124: the timeout); its output so far:" >&2
    cat "$out/output" >&2
  else
    echo "vm: $name ($release) did not run the command (qemu exit $status)" >&2
  fi
  echo "vm: its console:" >&2
  tail -n 40 "$out/console" >&2
  exit 125
fi
cat "$out/output"
exit "$(cat "$out/status")"
