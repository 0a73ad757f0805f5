// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* meshlogic-probe: what processes in watched pod cgroups exec, open and connect to, filtered in
 * the kernel (watched cgroups, mute paths), and at safety tier 3 what they are refused. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "probe.h"

/* tp_btf programs attach through BTF, with no need for tracefs (often not mounted on nodes);
 * syscalls are observed at the raw sys_enter tracepoint, filtered on the syscall number. */
#if defined(__TARGET_ARCH_x86)
#define NR_OPEN 2
#define NR_CONNECT 42
#define NR_OPENAT 257
#define NR_OPENAT2 437
#elif defined(__TARGET_ARCH_arm64)
#define NR_OPEN -1 /* no open(2) on arm64 */
#define NR_CONNECT 203
#define NR_OPENAT 56
#define NR_OPENAT2 437
#else
#error "unsupported architecture"
#endif

#define AF_INET 2
#define AF_INET6 10
#define SIGKILL 9

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Set before load. */
const volatile bool filter_pods = true; /* only tasks under a watched pod cgroup */
const volatile bool enforce = false;    /* tier 3: kill denied execs */
const volatile bool report_exec = true; /* false: exec is loaded for tier 3 only, not observed */
const volatile bool observe_file = true;
/* Wake the consumer only once this much data waits (it also drains every few milliseconds):
 * a wake-up per event would cost more than the event itself. */
const volatile __u64 wakeup_bytes = 1 << 18;
const volatile bool observe_network = true;

/* Keeps the event layout in the skeleton's BTF so that a Rust test can check its mirror. */
struct event event_layout = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20); /* replaced by ringBufferSize before load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} event_heap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_key);
} exec_key_heap SEC(".maps");

/* Pod cgroup id -> POD_* flags. Written by user space from the kubelet's cgroup layout. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} pod_cgroups SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 256);
	__type(key, struct path_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} mute_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 8192);
	__type(key, struct exec_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} deny_exec SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 8192);
	__type(key, struct net4_key);
	__type(value, struct net_rule);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} deny_net4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 8192);
	__type(key, struct net6_key);
	__type(value, struct net_rule);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} deny_net6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct dest_key);
	__type(value, __u8);
} allowed_dest SEC(".maps");

static __always_inline __u64 wakeup_flag(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									     : BPF_RB_NO_WAKEUP;
}

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);
	if (value)
		*value += 1;
}

/* The nearest ancestor of the current task's cgroup (itself included) that is a watched pod
 * cgroup; its flags in *flags. Bounded loop: the verifier sees at most MAX_CGROUP_LEVEL turns. */
static __always_inline __u64 find_pod(__u32 *flags)
{
	for (int level = 1; level <= MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		__u32 *found = bpf_map_lookup_elem(&pod_cgroups, &id);
		if (found) {
			*flags = *found;
			return id;
		}
	}
	return 0;
}

static __always_inline struct event *new_event(__u32 kind, __u64 pod)
{
	__u32 zero = 0;
	struct event *e = bpf_map_lookup_elem(&event_heap, &zero);
	if (!e)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->pod_cgroup_id = pod;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->pid = (__u32)pid_tgid;
	e->tgid = pid_tgid >> 32;
	e->ppid = 0;
	e->kind = kind;
	e->flags = 0;
	e->family = 0;
	e->port = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	e->path_len = 0;
	e->lpm_prefixlen = 0;
	e->comm[0] = 0; /* filled for execs only: user space does not need it elsewhere */
	return e;
}

/* Sends the event with path_bytes of its path; counts a drop when the ring buffer is full. */
static __always_inline void emit(struct event *e, long path_bytes, __u32 counter)
{
	if (path_bytes < 0)
		path_bytes = 0;
	if (path_bytes > PATH_LEN)
		path_bytes = PATH_LEN;
	e->path_len = path_bytes;
	__u64 size = __builtin_offsetof(struct event, path) + (__u64)path_bytes;
	if (size > sizeof(*e))
		return;
	if (bpf_ringbuf_output(&events, e, size, wakeup_flag()))
		count(C_RINGBUF_DROPS);
	else
		count(counter);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return 0;
	}
	struct event *e = new_event(EV_EXEC, pod);
	if (!e)
		return 0;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), filename);

	if (enforce && (flags & POD_ENFORCED)) {
		__u32 zero = 0;
		struct exec_key *key = bpf_map_lookup_elem(&exec_key_heap, &zero);
		if (key) {
			key->prefixlen = 64 + 8 * EXEC_KEY_PATH;
			__builtin_memcpy(key->pod, &pod, sizeof(pod));
			bpf_probe_read_kernel_str(key->path, sizeof(key->path), filename);
			if (bpf_map_lookup_elem(&deny_exec, key)) {
				/* The new image never runs a user instruction: the signal is delivered
				 * on the way back to user space. */
				bpf_send_signal(SIGKILL);
				e->kind = EV_BLOCKED_EXEC;
				emit(e, n, C_BLOCKED_EXEC);
				return 0;
			}
		}
	}
	if (report_exec)
		emit(e, n, C_EXEC);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(handle_exit, struct task_struct *p)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if ((__u32)pid_tgid != (pid_tgid >> 32))
		return 0; /* a thread, not the process */
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return 0;
	}
	struct event *e = new_event(EV_EXIT, pod);
	if (!e)
		return 0;
	e->flags = BPF_CORE_READ(p, exit_code) >> 8;
	emit(e, 0, C_EXIT);
	return 0;
}

static __always_inline int handle_open(const char *filename, __s32 open_flags)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return 0;
	}
	struct event *e = new_event(EV_OPEN, pod);
	if (!e)
		return 0;
	long n = bpf_probe_read_user_str(e->path, sizeof(e->path), filename);
	if (n <= 0) {
		e->path[0] = 0;
		n = 1;
	}
	/* Mute paths: longest-prefix match of the path against the mute_paths trie. Bytes after
	 * the NUL are stale but never compared: every stored prefix ends at or before it. */
	e->lpm_prefixlen = 8 * PATH_LEN;
	if (bpf_map_lookup_elem(&mute_paths, &e->lpm_prefixlen)) {
		count(C_MUTED);
		return 0;
	}
	e->lpm_prefixlen = 0;
	e->flags = open_flags;
	emit(e, n, C_OPEN);
	return 0;
}

static __always_inline int handle_connect(const void *uaddr)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return 0;
	}
	__u16 family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr))
		return 0;
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct event *e = new_event(EV_CONNECT, pod);
	if (!e)
		return 0;
	e->family = family;
	if (family == AF_INET) {
		struct sockaddr_in sa = {};
		bpf_probe_read_user(&sa, sizeof(sa), uaddr);
		e->port = bpf_ntohs(sa.sin_port);
		__builtin_memcpy(e->addr, &sa.sin_addr.s_addr, 4);
	} else {
		struct sockaddr_in6 sa = {};
		bpf_probe_read_user(&sa, sizeof(sa), uaddr);
		e->port = bpf_ntohs(sa.sin6_port);
		__builtin_memcpy(e->addr, &sa.sin6_addr, 16);
	}
	emit(e, 0, C_CONNECT);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	if (observe_file) {
		if (id == NR_OPENAT)
			return handle_open((const char *)PT_REGS_PARM2_CORE_SYSCALL(regs),
					   (__s32)PT_REGS_PARM3_CORE_SYSCALL(regs));
		if (id == NR_OPENAT2) {
			struct open_how how = {};
			bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_CORE_SYSCALL(regs));
			return handle_open((const char *)PT_REGS_PARM2_CORE_SYSCALL(regs), (__s32)how.flags);
		}
		if (id == NR_OPEN)
			return handle_open((const char *)PT_REGS_PARM1_CORE_SYSCALL(regs),
					   (__s32)PT_REGS_PARM2_CORE_SYSCALL(regs));
	}
	if (observe_network && id == NR_CONNECT)
		return handle_connect((const void *)PT_REGS_PARM2_CORE_SYSCALL(regs));
	return 0;
}

static __always_inline bool port_denied(const struct net_rule *rule, __u16 port)
{
	if (rule->nports == 0)
		return true;
	for (int i = 0; i < MAX_PORTS; i++) {
		if (i >= rule->nports)
			break;
		if (rule->ports[i] == port)
			return true;
	}
	return false;
}

static __always_inline bool dest_allowed(__u64 pod, __u32 family, const void *addr, __u32 len,
					 __u16 port)
{
	struct dest_key key = {};
	key.pod = pod;
	key.family = family;
	key.port = port;
	if (len == 4)
		__builtin_memcpy(key.addr, addr, 4);
	else
		__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&allowed_dest, &key) != 0;
}

static __always_inline int refuse(__u64 pod, __u32 family, const void *addr, __u32 len, __u16 port)
{
	count(C_BLOCKED_CONNECT);
	struct event *e = new_event(EV_BLOCKED_CONNECT, pod);
	if (!e)
		return 0;
	e->family = family;
	e->port = port;
	if (len == 4)
		__builtin_memcpy(e->addr, addr, 4);
	else
		__builtin_memcpy(e->addr, addr, 16);
	if (bpf_ringbuf_output(&events, e, __builtin_offsetof(struct event, path), BPF_RB_FORCE_WAKEUP))
		count(C_RINGBUF_DROPS);
	return 0; /* connect() fails with EPERM */
}

SEC("cgroup/connect4")
int enforce_connect4(struct bpf_sock_addr *ctx)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (!pod || !(flags & POD_ENFORCED))
		return 1;
	__u32 ip = ctx->user_ip4;
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (dest_allowed(pod, AF_INET, &ip, 4, port))
		return 1;
	if (flags & POD_QUARANTINED)
		return refuse(pod, AF_INET, &ip, 4, port);
	struct net4_key key = { .prefixlen = 64 + 32 };
	__builtin_memcpy(key.pod, &pod, 8);
	__builtin_memcpy(key.addr, &ip, 4);
	struct net_rule *rule = bpf_map_lookup_elem(&deny_net4, &key);
	if (rule && port_denied(rule, port))
		return refuse(pod, AF_INET, &ip, 4, port);
	return 1;
}

SEC("cgroup/connect6")
int enforce_connect6(struct bpf_sock_addr *ctx)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (!pod || !(flags & POD_ENFORCED))
		return 1;
	__u32 ip[4];
	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	__u16 port = bpf_ntohs((__u16)ctx->user_port);
	if (dest_allowed(pod, AF_INET6, ip, 16, port))
		return 1;
	if (flags & POD_QUARANTINED)
		return refuse(pod, AF_INET6, ip, 16, port);
	struct net6_key key = { .prefixlen = 64 + 128 };
	__builtin_memcpy(key.pod, &pod, 8);
	__builtin_memcpy(key.addr, ip, 16);
	struct net_rule *rule = bpf_map_lookup_elem(&deny_net6, &key);
	if (rule && port_denied(rule, port))
		return refuse(pod, AF_INET6, ip, 16, port);
	return 1;
}
