/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* File opens at the raw sys_enter tracepoint: repeats folded and mute paths dropped in the
 * kernel. Included by probe.bpf.c only (one object, one skeleton). */
#ifndef MESHLOGIC_PROBE_OPEN_BPF_H
#define MESHLOGIC_PROBE_OPEN_BPF_H

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
	if (unwatched(pod))
		return 0;
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
	s->event.header.flags = open_flags;
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

#endif
