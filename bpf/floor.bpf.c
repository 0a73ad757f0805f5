// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Empty programs at the probe's file hooks: what attaching there costs before any work is done.
 * `make bench-probe` measures them next to the probe, as the floor of each way of observing file
 * opens: the raw sys_exit tracepoint (which every system call of the node pays) and fexit of the
 * kernel's open functions (which only opens pay, where the kernel allows fexit). The probe loads
 * the fexit pair first, to learn whether they attach and fire here (kernel/floor.rs). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set by user space after load: the process whose opens are counted in `fired`. */
__u32 probe_tgid = 0;
__u64 fired = 0;

static __always_inline void saw_open(void)
{
	if (probe_tgid && (bpf_get_current_pid_tgid() >> 32) == probe_tgid)
		__sync_fetch_and_add(&fired, 1);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(empty_sys_exit, struct pt_regs *regs, long ret)
{
	return 0;
}

/* do_file_open from 7.0: user space sets the target it finds. */
SEC("fexit/do_filp_open")
int BPF_PROG(empty_filp_open_exit, int dfd, struct filename *pathname,
	     const struct open_flags *op, struct file *file)
{
	saw_open();
	return 0;
}

SEC("fexit/do_handle_open")
int BPF_PROG(empty_by_handle_exit, int mountdirfd, void *ufh, int open_flag, long ret)
{
	saw_open();
	return 0;
}
