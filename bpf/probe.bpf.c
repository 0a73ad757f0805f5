// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* meshlogic-probe: what processes in watched pod cgroups exec, open and connect to, filtered in
 * the kernel (watched cgroups, mute paths), and at safety tier 3 what they are refused. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "probe.h"

/* tp_btf programs attach through BTF, with no need for tracefs (often not mounted on nodes).
 * File opens are observed at fexit of the kernel's open functions where the kernel allows it
 * (only opens pay), else at the raw sys_exit tracepoint, filtered on the syscall number: on a
 * kernel without fentry/fexit (lockdown), kprobes and BPF LSM it is the only hook that sees them,
 * and its mere presence puts every syscall of the node on the kernel's slow path, so it is
 * attached only when file events are wanted. At the exit rather than the entry, an open that
 * succeeded is named by the file it opened, not by the text it was asked with. Connects are
 * observed by the cgroup connect programs instead, which run on connect() alone. */
#if defined(__TARGET_ARCH_x86)
#define NR_OPEN 2
#define NR_CREAT 85
#define NR_OPEN_BY_HANDLE_AT 304
#define NR_OPENAT 257
#define NR_OPENAT2 437
#define SYSCALL_NR(regs) ((regs)->orig_ax)
/* The 32-bit entry (int 0x80, sysenter; also open to a 64-bit process) numbers them otherwise:
 * a rule kept to the 64-bit numbers would be walked around by a 32-bit open. */
#define IA32_OPEN 5
#define IA32_CREAT 8
#define IA32_OPENAT 295
#define IA32_OPEN_BY_HANDLE_AT 342
#define IA32_OPENAT2 437
#define TS_COMPAT 0x0002 /* thread_info.status: in a 32-bit system call */
#elif defined(__TARGET_ARCH_arm64)
#define NR_OPEN -1 /* no open(2) or creat(2) on arm64 */
#define NR_CREAT -1
#define NR_OPEN_BY_HANDLE_AT 265
#define NR_OPENAT 56
#define NR_OPENAT2 437
#define SYSCALL_NR(regs) ((regs)->syscallno)
#else
#error "unsupported architecture"
#endif

#define AF_INET 2
#define AF_INET6 10
#define SIGKILL 9
/* creat(2) is open(2) with these flags. */
#define CREAT_FLAGS (00000100 /* O_CREAT */ | 00000001 /* O_WRONLY */ | 00001000 /* O_TRUNC */)
/* emit() counts nothing (refusals are counted whether or not their event fits). */
#define NO_COUNTER C_COUNT

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set before load. */
const volatile bool filter_pods = true; /* only tasks under a watched pod cgroup */
const volatile bool enforce = false;    /* tier 3: kill denied execs, refuse denied connects */
const volatile bool report_exec = true; /* false: exec is loaded for tier 3 only, not observed */
const volatile bool observe_network = true; /* false: connects are refused at tier 3, not observed */
/* Wake the consumer once per this many events (a power of two) sent from one CPU; it also drains
 * every few milliseconds. A wake-up per event would cost more than the event itself. */
const volatile __u64 wakeup_every = 256;
/* Repeated opens (same pod, path and flags in one window) are counted in the kernel, not sent. */
const volatile bool fold_repeated_opens = true;
/* Opens of pod tasks whose root directory is the container runtime's are the runtime setting a
 * container up (runc's init before pivot_root writes /etc/hosts, /etc/resolv.conf and
 * /dev/termination-log into the rootfs by their node paths): not the pod's, not counted. The
 * runtime's root is learnt from whoever creates cgroups outside every pod (the kubelet, the
 * runtime, systemd: the node's root).
 * A process of a container cannot take that root without the node's privileges. */
const volatile bool skip_runtime_opens = false;
__u64 runtime_root = 0; /* the creator's root dentry, as an address */
/* Secret key of the path hash (random per load), so that paths cannot be crafted to collide. */
const volatile __u64 hash_key = 0;

/* Keeps the event layout in the skeleton's BTF: user space reads events through the Rust type
 * libbpf-cargo generates from it (and the enum types through the fields that use them). */
struct event event_layout = {};
enum counter counter_layout = C_COUNT;
enum pod_flag pod_flag_layout = POD_WATCHED;
enum exec_file_kind exec_file_kind_layout = EXEC_FILE_DENIED;
enum probe_limit probe_limit_layout = PATH_LEN;

_Static_assert((CGROUP_NAME_LEN & (CGROUP_NAME_LEN - 1)) == 0, "CGROUP_NAME_LEN is a power of two");

/* The current task, read through BPF_CORE_READ. Not bpf_get_current_task_btf(), whose pointer
 * could be dereferenced directly: it needs 5.11, and Amazon Linux 2's 5.10 refuses the whole
 * object for it (`invalid func unknown#158`). The hot paths need no task: the cgroup comes from
 * bpf_get_current_cgroup_id(). */
static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

/* By concern, in dependency order. */
#include "probe/maps.bpf.h"
#include "probe/emit.bpf.h"
#include "probe/pods.bpf.h"
#include "probe/paths.bpf.h"
#include "probe/exec.bpf.h"
#include "probe/open.bpf.h"
#include "probe/connect.bpf.h"
