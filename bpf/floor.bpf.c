// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* An empty program at the raw sys_exit tracepoint: what attaching there costs before any work
 * is done. `make bench-probe` measures it next to the probe, as the floor of observing file
 * opens on a kernel where that tracepoint is the only hook that sees them. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tp_btf/sys_exit")
int BPF_PROG(empty_sys_exit, struct pt_regs *regs, long ret)
{
	return 0;
}
