/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Process execs and exits, and the execs tier 3 kills. Included by probe.bpf.c only (one object,
 * one skeleton). */
#ifndef MESHLOGIC_PROBE_EXEC_BPF_H
#define MESHLOGIC_PROBE_EXEC_BPF_H

/* Whether the deny_exec trie has path (a kernel string) for pod; key is scratch. */
static __always_inline bool exec_denied(struct exec_key *key, __u64 pod, const char *path)
{
	key->prefixlen = 64 + 8 * EXEC_KEY_PATH;
	__builtin_memcpy(key->pod, &pod, sizeof(pod));
	if (bpf_probe_read_kernel_str(key->path, sizeof(key->path), path) <= 0)
		return false;
	return bpf_map_lookup_elem(&deny_exec, key) != 0;
}

/* Whether the file being executed is refused by what it is rather than by its name: a denied
 * executable's inode (under any name: a hard link, merged /usr), the dynamic loader run
 * directly (`ld.so /usr/bin/id` maps the program itself, no exec names it), or, in a pod with
 * exec deny rules, a file with no name at all (memfd_create, O_TMPFILE, deleted): what runs
 * from it cannot be matched against a rule. */
static __always_inline bool exec_file_denied(__u64 pod, __u32 flags, struct file *file)
{
	struct inode *inode = BPF_CORE_READ(file, f_inode);
	struct exec_file_key key = {
		.pod = pod,
		.ino = BPF_CORE_READ(inode, i_ino),
		.dev = BPF_CORE_READ(inode, i_sb, s_dev),
	};
	if (bpf_map_lookup_elem(&deny_exec_file, &key))
		return true;
	if (!(flags & POD_EXEC_DENIED) || BPF_CORE_READ(inode, __i_nlink) != 0)
		return false;
	/* runc starts its init from a memfd copy of itself (CVE-2019-5736), possibly already in
	 * the pod's cgroup, at the node's root: not the pod's. A container cannot take that root. */
	struct task_struct *task = current_task();
	return !runtime_root || (__u64)BPF_CORE_READ(task, fs, root.dentry) != runtime_root;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(handle_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 flags = 0;
	__u64 pod = find_pod(&flags);
	if (unwatched(pod))
		return 0;
	struct scratch *s = new_event(EV_EXEC, pod);
	if (!s)
		return 0;
	struct event *e = &s->event;
	e->header.ppid = BPF_CORE_READ(p, real_parent, tgid);
	bpf_get_current_comm(e->header.comm, sizeof(e->header.comm));
	const char *filename = BPF_CORE_READ(bprm, filename);
	long n = bpf_probe_read_kernel_str(e->path, sizeof(e->path), filename);

	if (enforce && (flags & POD_ENFORCED)) {
		__u32 zero = 0;
		struct exec_key *key = bpf_map_lookup_elem(&exec_key_heap, &zero);
		struct path_buf *buf = bpf_map_lookup_elem(&path_heap, &zero);
		/* Denied by the path as passed to exec, or by the file it resolves to (through
		 * symbolic links, relative names, and for a script its interpreter). */
		bool denied = key && exec_denied(key, pod, filename);
		struct file *file = BPF_CORE_READ(bprm, file);
		if (key && buf && !denied) {
			long at = resolve_path(buf, file, p);
			if (at >= 0)
				denied = exec_denied(key, pod, &buf->data[at & (PATH_LEN - 1)]);
		}
		if (!denied)
			denied = exec_file_denied(pod, flags, file);
		if (denied) {
			/* The new image never runs a user instruction: the signal is delivered on
			 * the way back to user space. */
			bpf_send_signal(SIGKILL);
			count(C_BLOCKED_EXEC);
			e->header.kind = EV_BLOCKED_EXEC;
			emit(s, n, NO_COUNTER, true);
			return 0;
		}
	}
	if (report_exec)
		emit(s, n, C_EXEC, false);
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
	if (unwatched(pod))
		return 0;
	struct scratch *s = new_event(EV_EXIT, pod);
	if (!s)
		return 0;
	s->event.header.flags = BPF_CORE_READ(p, exit_code) >> 8;
	emit(s, 0, C_EXIT, false);
	return 0;
}

#endif
