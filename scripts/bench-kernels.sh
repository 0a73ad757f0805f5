#!/usr/bin/env bash
# Part of `make bench-probe`: what each file hook costs, by instruction count, on Debian's stock
# kernels (scripts/kernels.sh), each booted in QEMU with `-icount shift=0` (scripts/vm.sh,
# VM_ICOUNT=1): one nanosecond of guest time per instruction, so the figures do not move with
# the host's load. Runs `meshlogic-probe-bench hooks` (crates/probe/src/bin/meshlogic-probe-bench/
# hooks.rs) in each VM.
#
#   scripts/bench-kernels.sh BENCH_BINARY           BENCH_KERNELS="6.1 newest" for a subset
set -euo pipefail
cd "$(dirname "$0")/.."
bench="${1:?usage: scripts/bench-kernels.sh path/to/meshlogic-probe-bench}"
read -r -a kernels <<<"${BENCH_KERNELS:-5.10 6.1 6.12 newest}"
scripts/kernels.sh fetch "${kernels[@]}" >/dev/null
echo
echo "file hooks by instruction count (QEMU -icount shift=0, 1 vCPU), Debian's kernels ${kernels[*]}"
status=0
for kernel in "${kernels[@]}"; do
  echo
  VM_ICOUNT=1 VM_CPUS=1 scripts/vm.sh "$kernel" -m 2048 --timeout 3600 -- "$bench" hooks ||
    { echo "bench-kernels: $kernel failed" >&2; status=1; }
done
exit "$status"
