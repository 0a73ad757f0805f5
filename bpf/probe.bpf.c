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
 * File opens are observed at the raw sys_enter tracepoint, filtered on the syscall number: on a
 * kernel without kprobes, fentry and BPF LSM it is the only hook that sees them, and its mere
 * presence puts every syscall of the node on the kernel's slow path, so it is attached only when
 * file events are wanted. Connects are observed by the cgroup connect programs instead, which
 * run on connect() alone. */
#if defined(__TARGET_ARCH_x86)
#define NR_OPEN 2
#define NR_OPENAT 257
#define NR_OPENAT2 437
#elif defined(__TARGET_ARCH_arm64)
#define NR_OPEN -1 /* no open(2) on arm64 */
#define NR_OPENAT 56
#define NR_OPENAT2 437
#else
#error "unsupported architecture"
#endif

#define AF_INET 2
#define AF_INET6 10
#define SIGKILL 9
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

/* Per-CPU scratch: the event being built, and events sent since the last wake-up. */
struct scratch {
	__u64 sent;
	struct event event;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} event_heap SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_key);
} exec_key_heap SEC(".maps");

/* Per-CPU scratch where a file's path is built backwards from its dentries. */
struct path_buf {
	char data[2 * PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_buf);
} path_heap SEC(".maps");

/* Pod cgroup id -> POD_* flags. Written by user space from the kubelet's cgroup layout. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} pod_cgroups SEC(".maps");

/* Bumped by user space whenever pod_cgroups changes. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} pods_generation SEC(".maps");

/* A task's cgroup -> its pod cgroup (0: none) and that pod's flags, as found under
 * pods_generation. A cgroup's ancestry never changes and ids are never reused, so an entry
 * stays true until pod_cgroups changes; it saves the walk up the hierarchy on every event. */
struct pod_of {
	__u64 pod;
	__u64 generation;
	__u32 flags;
	__u32 pad;
	__u64 repeated_opens; /* opens of this cgroup counted here instead of sent (cumulative) */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct pod_of);
} cgroup_pod SEC(".maps");

/* Per CPU, the cgroups lately found outside every pod, direct-mapped by id: most tasks of a node
 * are not in a pod, and this answers for them without a hash lookup. */
#define UNWATCHED_SLOTS 64
struct unwatched {
	__u64 cgroup;
	__u64 generation;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UNWATCHED_SLOTS);
	__type(key, __u32);
	__type(value, struct unwatched);
} unwatched_cgroups SEC(".maps");

/* The report window, bumped by user space as each window closes; part of open_seen's key. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} open_epoch SEC(".maps");

/* Opens sent lately, per CPU, in a direct-mapped cache: a slot holds the last open whose key
 * hashed to it. A hit needs the whole key (pod, path hash, flags, window) to match, so a
 * collision only ever costs an extra event, never a path left out of a window. */
#define OPEN_CACHE_SLOTS 4096
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, OPEN_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct open_key);
} open_seen SEC(".maps");

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

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);
	if (value)
		*value += 1;
}

/* The nearest ancestor of the current task's cgroup (itself included) that is a watched pod
 * cgroup, and its flags. Bounded loop: the verifier sees at most MAX_CGROUP_LEVEL turns. */
static __always_inline __u64 walk_to_pod(__u32 *flags)
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

/* The current task's watched pod cgroup, 0 when none; its POD_* flags in *flags, and in *entry
 * its cgroup's cache entry (NULL if it could not be kept). The task's cgroup id is read through
 * BTF pointers: no helper call and no RCU section of its own on the path every observed syscall
 * takes. */
static __always_inline __u64 find_pod_entry(__u32 *flags, struct pod_of **entry)
{
	__u32 zero = 0;
	__u64 *current = bpf_map_lookup_elem(&pods_generation, &zero);
	if (!current)
		return 0;
	__u64 generation = *current;
	struct task_struct *task = bpf_get_current_task_btf();
	__u64 cgroup = task->cgroups->dfl_cgrp->kn->id;
	__u32 slot = (__u32)cgroup & (UNWATCHED_SLOTS - 1);
	struct unwatched *outside = bpf_map_lookup_elem(&unwatched_cgroups, &slot);
	if (outside && outside->cgroup == cgroup && outside->generation == generation)
		return 0;
	struct pod_of *cached = bpf_map_lookup_elem(&cgroup_pod, &cgroup);
	if (cached && cached->generation == generation) {
		if (!cached->pod && outside) {
			outside->cgroup = cgroup;
			outside->generation = generation;
		}
		*flags = cached->flags;
		*entry = cached;
		return cached->pod;
	}
	struct pod_of found = { .generation = generation };
	if (cached)
		found.repeated_opens = cached->repeated_opens; /* user space reads it cumulatively */
	found.pod = walk_to_pod(&found.flags);
	bpf_map_update_elem(&cgroup_pod, &cgroup, &found, BPF_ANY);
	*flags = found.flags;
	*entry = bpf_map_lookup_elem(&cgroup_pod, &cgroup);
	return found.pod;
}

static __always_inline __u64 find_pod(__u32 *flags)
{
	struct pod_of *entry;
	return find_pod_entry(flags, &entry);
}

/* Keyed hash of the first n bytes of path (n <= PATH_LEN, the NUL included), a word at a time;
 * bytes after the NUL are stale and masked out. */
static __always_inline __u64 path_hash(const char *path, long n)
{
	__u64 h = hash_key ^ (__u64)n;
	for (int i = 0; i < PATH_LEN / 8; i++) {
		long at = i * 8;
		if (at >= n)
			break;
		__u64 word = *(const __u64 *)(path + at);
		long left = n - at;
		if (left < 8)
			word &= (1ULL << (left * 8)) - 1;
		h = (h ^ word) * 0x9E3779B97F4A7C15ULL;
		h ^= h >> 29;
	}
	return h;
}

static __always_inline struct scratch *new_event(__u32 kind, __u64 pod)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&event_heap, &zero);
	if (!s)
		return 0;
	struct event *e = &s->event;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	e->pod_cgroup_id = pod;
	e->pid = (__u32)pid_tgid;
	e->tgid = pid_tgid >> 32;
	e->ppid = 0;
	e->kind = kind;
	e->flags = 0;
	e->family = 0;
	e->port = 0;
	__builtin_memset(e->addr, 0, sizeof(e->addr));
	e->path_len = 0;
	e->reserved = 0;
	e->comm[0] = 0; /* filled for execs only: user space does not need it elsewhere */
	return s;
}

/* Sends the event with path_bytes of its path; counts a drop when the ring buffer is full.
 * urgent: wake the consumer now (tier 3 refusals). */
static __always_inline void emit(struct scratch *s, long path_bytes, __u32 counter, bool urgent)
{
	struct event *e = &s->event;
	if (path_bytes < 0)
		path_bytes = 0;
	if (path_bytes > PATH_LEN)
		path_bytes = PATH_LEN;
	e->path_len = path_bytes;
	__u64 size = __builtin_offsetof(struct event, path) + (__u64)path_bytes;
	if (size > sizeof(*e))
		return;
	s->sent++;
	__u64 wakeup = urgent || !(s->sent & (wakeup_every - 1)) ? BPF_RB_FORCE_WAKEUP
								  : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, size, wakeup))
		count(C_RINGBUF_DROPS);
	else
		count(counter);
}

/* The path of file as the task sees it: from its dentry up to the task's root, crossing mount
 * points, built backwards in buf so that it ends at data[PATH_LEN - 1] (its NUL). Returns the
 * offset where it starts, or -1 when it is longer than PATH_LEN or deeper than RESOLVE_DEPTH.
 * Symbolic links and relative names are gone: this is the file that is executed. */
static __always_inline long resolve_path(struct path_buf *buf, struct file *file,
					 struct task_struct *task)
{
	struct dentry *dentry = BPF_CORE_READ(file, f_path.dentry);
	struct vfsmount *vfsmnt = BPF_CORE_READ(file, f_path.mnt);
	struct mount *mnt = container_of(vfsmnt, struct mount, mnt);
	struct dentry *root = BPF_CORE_READ(task, fs, root.dentry);
	struct vfsmount *root_mnt = BPF_CORE_READ(task, fs, root.mnt);
	long pos = PATH_LEN - 1;
	buf->data[PATH_LEN - 1] = 0;
	bool done = false;
	for (int i = 0; i < RESOLVE_DEPTH; i++) {
		if (dentry == root && vfsmnt == root_mnt) {
			done = true;
			break;
		}
		if (dentry == BPF_CORE_READ(vfsmnt, mnt_root)) {
			struct mount *parent = BPF_CORE_READ(mnt, mnt_parent);
			if (parent == mnt) {
				done = true; /* the top of the mount tree */
				break;
			}
			dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
			mnt = parent;
			vfsmnt = &parent->mnt;
			continue;
		}
		struct qstr name = BPF_CORE_READ(dentry, d_name);
		long len = name.len;
		if (len <= 0 || len + 1 > pos)
			return -1;
		pos -= len;
		if (bpf_probe_read_kernel(&buf->data[pos & (PATH_LEN - 1)], len & (PATH_LEN - 1),
					  name.name))
			return -1;
		pos -= 1;
		buf->data[pos & (PATH_LEN - 1)] = '/';
		dentry = BPF_CORE_READ(dentry, d_parent);
	}
	if (!done)
		return -1;
	if (pos == PATH_LEN - 1) {
		pos -= 1;
		buf->data[pos & (PATH_LEN - 1)] = '/';
	}
	return pos;
}

/* Whether the deny_exec trie has path (a kernel string) for pod; key is scratch. */
static __always_inline bool exec_denied(struct exec_key *key, __u64 pod, const char *path)
{
	key->prefixlen = 64 + 8 * EXEC_KEY_PATH;
	__builtin_memcpy(key->pod, &pod, sizeof(pod));
	if (bpf_probe_read_kernel_str(key->path, sizeof(key->path), path) <= 0)
		return false;
	return bpf_map_lookup_elem(&deny_exec, key) != 0;
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
	struct scratch *s = new_event(EV_EXEC, pod);
	if (!s)
		return 0;
	struct event *e = &s->event;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), filename);

	if (enforce && (flags & POD_ENFORCED)) {
		__u32 zero = 0;
		struct exec_key *key = bpf_map_lookup_elem(&exec_key_heap, &zero);
		struct path_buf *buf = bpf_map_lookup_elem(&path_heap, &zero);
		/* Denied by the path as passed to exec, or by the file it resolves to (through
		 * symbolic links, relative names, and for a script its interpreter). */
		bool denied = key && exec_denied(key, pod, filename);
		if (key && buf && !denied) {
			long at = resolve_path(buf, BPF_CORE_READ(bprm, file), p);
			if (at >= 0)
				denied = exec_denied(key, pod, &buf->data[at & (PATH_LEN - 1)]);
		}
		if (denied) {
			/* The new image never runs a user instruction: the signal is delivered on
			 * the way back to user space. */
			bpf_send_signal(SIGKILL);
			count(C_BLOCKED_EXEC);
			e->kind = EV_BLOCKED_EXEC;
			emit(s, n, NO_COUNTER, true);
			return 0;
		}
	}
	if (report_exec)
		emit(s, n, C_EXEC, false);
	return 0;
}

/* Whether bytes [at, at + len) of name (n bytes with its NUL) equal word. */
static __always_inline bool bytes_at(const char *name, long at, const char *word, int len)
{
	for (int i = 0; i < len; i++) {
		long index = at + i;
		if (index < 0 || index >= CGROUP_NAME_LEN || name[index] != word[i])
			return false;
	}
	return true;
}

/* Whether a cgroup directory name is a pod cgroup's in one of the kubelet's layouts: cgroupfs
 * `pod<uid>`, systemd `kubepods[-<class>]-pod<uid with _ for ->.slice`, where uid is a UUID (36
 * bytes) or a static pod's hash (32). User space checks the uid itself and drops false ones. */
static __always_inline bool pod_cgroup_name(const char *name, long n)
{
	long len = n - 1;
	if ((len == 3 + 36 || len == 3 + 32) && bytes_at(name, 0, "pod", 3))
		return true;
	if (!bytes_at(name, 0, "kubepods", 8) || !bytes_at(name, len - 6, ".slice", 6))
		return false;
	return bytes_at(name, len - 6 - 36 - 4, "-pod", 4) || bytes_at(name, len - 6 - 32 - 4, "-pod", 4);
}

/* A pod cgroup is watched from its creation, before any process can enter it: the kernel marks
 * it here and tells user space, which learns the pod's uid from the path and checks it. */
SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(handle_cgroup_mkdir, struct cgroup *cgrp, const char *path)
{
	/* Whoever makes cgroups outside every pod is the node's own software (the kubelet, the
	 * container runtime, systemd): its root is the runtime's. Container cgroups are made just
	 * before runc's init starts, so this is known before that init opens anything. */
	if (skip_runtime_opens) {
		__u32 task_flags = 0;
		if (!find_pod(&task_flags)) {
			struct task_struct *task = bpf_get_current_task_btf();
			runtime_root = (__u64)BPF_CORE_READ(task, fs, root.dentry);
		}
	}
	char name[CGROUP_NAME_LEN];
	long n = bpf_probe_read_kernel_str(name, sizeof(name), BPF_CORE_READ(cgrp, kn, name));
	if (n <= 0 || !pod_cgroup_name(name, n))
		return 0;
	__u64 id = BPF_CORE_READ(cgrp, kn, id);
	__u32 flags = POD_WATCHED;
	bpf_map_update_elem(&pod_cgroups, &id, &flags, BPF_NOEXIST);
	struct scratch *s = new_event(EV_POD_CGROUP, id);
	if (!s)
		return 0;
	long len = bpf_probe_read_kernel_str(s->event.path, sizeof(s->event.path), path);
	emit(s, len, NO_COUNTER, true);
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
	struct scratch *s = new_event(EV_EXIT, pod);
	if (!s)
		return 0;
	s->event.flags = BPF_CORE_READ(p, exit_code) >> 8;
	emit(s, 0, C_EXIT, false);
	return 0;
}

/* A path on the stack: &prefixlen, with the path right after it, is a mute_paths key, and the
 * path is 8-byte aligned for path_hash's word reads. */
struct stack_path {
	__u32 pad;
	__u32 prefixlen;
	char path[PATH_LEN];
} __attribute__((aligned(8)));

static __always_inline int handle_open(const char *filename, __s32 open_flags)
{
	__u32 flags = 0;
	struct pod_of *entry = 0;
	__u64 pod = find_pod_entry(&flags, &entry);
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return 0;
	}
	if (skip_runtime_opens && runtime_root) {
		struct task_struct *task = bpf_get_current_task_btf();
		if ((__u64)BPF_CORE_READ(task, fs, root.dentry) == runtime_root) {
			count(C_RUNTIME_SETUP);
			return 0;
		}
	}
	/* The path is read onto the stack: the kernel checks a copy to the stack for less than one
	 * to a map value, and a repeated open never needs it anywhere else. */
	struct stack_path path;
	long n = bpf_probe_read_user_str(path.path, sizeof(path.path), filename);
	if (n <= 0) {
		path.path[0] = 0;
		n = 1;
	}
	struct open_key key = {};
	struct open_key *seen = 0;
	if (fold_repeated_opens && entry) {
		__u32 zero = 0;
		__u64 *epoch = bpf_map_lookup_elem(&open_epoch, &zero);
		key.pod = pod;
		key.path_hash = path_hash(path.path, n);
		key.flags = open_flags;
		key.epoch = epoch ? (__u32)*epoch : 0;
		__u32 slot = (__u32)(key.path_hash ^ pod) & (OPEN_CACHE_SLOTS - 1);
		seen = bpf_map_lookup_elem(&open_seen, &slot);
		if (seen && seen->pod == key.pod && seen->path_hash == key.path_hash &&
		    seen->flags == key.flags && seen->epoch == key.epoch) {
			if (seen->muted) {
				count(C_MUTED);
			} else {
				__sync_fetch_and_add(&entry->repeated_opens, 1);
				count(C_OPEN_REPEATED);
			}
			return 0;
		}
	}
	/* Mute paths: longest-prefix match of the path against the mute_paths trie. Bytes after
	 * the NUL are stale but never compared: every stored prefix ends at or before it. */
	path.prefixlen = 8 * PATH_LEN;
	key.muted = bpf_map_lookup_elem(&mute_paths, &path.prefixlen) != 0;
	if (seen)
		*seen = key;
	if (key.muted) {
		count(C_MUTED);
		return 0;
	}
	struct scratch *s = new_event(EV_OPEN, pod);
	if (!s)
		return 0;
	__builtin_memcpy(s->event.path, path.path, sizeof(path.path));
	s->event.flags = open_flags;
	emit(s, n, C_OPEN, false);
	return 0;
}

/* Registers are read in place (tp_btf gives a typed pointer): no helper call per argument. */
SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	if (id == NR_OPENAT)
		return handle_open((const char *)PT_REGS_PARM2_SYSCALL(regs),
				   (__s32)PT_REGS_PARM3_SYSCALL(regs));
	if (id == NR_OPENAT2) {
		struct open_how how = {};
		bpf_probe_read_user(&how, sizeof(how), (void *)PT_REGS_PARM3_SYSCALL(regs));
		return handle_open((const char *)PT_REGS_PARM2_SYSCALL(regs), (__s32)how.flags);
	}
	if (id == NR_OPEN)
		return handle_open((const char *)PT_REGS_PARM1_SYSCALL(regs),
				   (__s32)PT_REGS_PARM2_SYSCALL(regs));
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

/* Sends a connect (observed or refused) of the current task. */
static __always_inline void connect_event(__u32 kind, __u64 pod, __u32 family, const void *addr,
					  __u32 len, __u16 port, __u32 counter)
{
	struct scratch *s = new_event(kind, pod);
	if (!s)
		return;
	struct event *e = &s->event;
	e->family = family;
	e->port = port;
	if (len == 4)
		__builtin_memcpy(e->addr, addr, 4);
	else
		__builtin_memcpy(e->addr, addr, 16);
	emit(s, 0, counter, kind == EV_BLOCKED_CONNECT);
}

/* Whether tier 3 refuses this connect of an enforced pod. */
static __always_inline bool connect_refused(__u64 pod, __u32 flags, __u32 family, const void *addr,
					    __u32 len, __u16 port)
{
	if (!enforce || !(flags & POD_ENFORCED))
		return false;
	if (dest_allowed(pod, family, addr, len, port))
		return false;
	if (flags & POD_QUARANTINED)
		return true;
	struct net_rule *rule;
	if (len == 4) {
		struct net4_key key = { .prefixlen = 64 + 32 };
		__builtin_memcpy(key.pod, &pod, 8);
		__builtin_memcpy(key.addr, addr, 4);
		rule = bpf_map_lookup_elem(&deny_net4, &key);
	} else {
		struct net6_key key = { .prefixlen = 64 + 128 };
		__builtin_memcpy(key.pod, &pod, 8);
		__builtin_memcpy(key.addr, addr, 16);
		rule = bpf_map_lookup_elem(&deny_net6, &key);
	}
	return rule && port_denied(rule, port);
}

/* Every connect() in the cgroup tree: observed (tier 2 and 3) and refused when tier 3 says so
 * (the caller gets EPERM). Returns 1 to let the connect through, 0 to refuse it. */
static __always_inline int handle_connect(__u32 family, const void *addr, __u32 len, __u16 port)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return 1;
	}
	if (connect_refused(pod, flags, family, addr, len, port)) {
		count(C_BLOCKED_CONNECT);
		connect_event(EV_BLOCKED_CONNECT, pod, family, addr, len, port, NO_COUNTER);
		return 0;
	}
	if (observe_network)
		connect_event(EV_CONNECT, pod, family, addr, len, port, C_CONNECT);
	return 1;
}

SEC("cgroup/connect4")
int handle_connect4(struct bpf_sock_addr *ctx)
{
	__u32 ip = ctx->user_ip4;
	return handle_connect(AF_INET, &ip, 4, bpf_ntohs((__u16)ctx->user_port));
}

SEC("cgroup/connect6")
int handle_connect6(struct bpf_sock_addr *ctx)
{
	__u32 ip[4];
	ip[0] = ctx->user_ip6[0];
	ip[1] = ctx->user_ip6[1];
	ip[2] = ctx->user_ip6[2];
	ip[3] = ctx->user_ip6[3];
	return handle_connect(AF_INET6, ip, 16, bpf_ntohs((__u16)ctx->user_port));
}
