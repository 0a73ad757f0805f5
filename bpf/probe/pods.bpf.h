/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Which pod a task belongs to: the watched pod cgroups, the per-cgroup cache, and pod cgroups
 * marked as the kubelet makes them. Included by probe.bpf.c only (one object, one skeleton). */
#ifndef MESHLOGIC_PROBE_PODS_BPF_H
#define MESHLOGIC_PROBE_PODS_BPF_H

/* struct cgroup up to 5.18: the ids of its ancestors by level (from 5.19, ancestors[] holds
 * pointers). CO-RE finds out which the kernel has. */
struct cgroup___ancestor_ids {
	int level;
	__u64 ancestor_ids[];
} __attribute__((preserve_access_index));

/* The nearest ancestor of the current task's cgroup (itself included) that is a watched pod
 * cgroup, and its flags. Bounded loop: the verifier sees at most MAX_CGROUP_LEVEL turns.
 * bpf_get_current_ancestor_cgroup_id() is for tracing programs only from 5.16 or so (5.10
 * refuses it: `unknown func bpf_get_current_ancestor_cgroup_id#123`); a kernel that still has
 * ancestor_ids is read directly instead, so the helper is used only where the field is gone. */
static __always_inline bool pod_cgroup(__u64 id, __u32 *flags)
{
	__u32 *found = bpf_map_lookup_elem(&pod_cgroups, &id);
	if (found)
		*flags = *found;
	return found;
}

static __always_inline __u64 walk_to_pod(__u32 *flags)
{
	/* Two loops, not one with a test inside: clang would hoist the relocated offset of
	 * ancestor_ids out of the loop onto the helper's path too, where the kernel has no such
	 * field and libbpf poisons the instruction. */
	if (bpf_core_field_exists(struct cgroup___ancestor_ids, ancestor_ids)) {
		struct cgroup___ancestor_ids *cgrp =
			(void *)BPF_CORE_READ(current_task(), cgroups, dfl_cgrp);
		int depth = BPF_CORE_READ(cgrp, level);
		for (int level = 1; level <= MAX_CGROUP_LEVEL && level <= depth; level++) {
			__u64 id = 0;
			bpf_probe_read_kernel(&id, sizeof(id), &cgrp->ancestor_ids[level]);
			if (!id)
				break;
			if (pod_cgroup(id, flags))
				return id;
		}
		return 0;
	}
	for (int level = 1; level <= MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			break;
		if (pod_cgroup(id, flags))
			return id;
	}
	return 0;
}

/* The current task's watched pod cgroup, 0 when none; its POD_* flags in *flags, and in *entry
 * its cgroup's cache entry (NULL if it could not be kept). */
static __always_inline __u64 find_pod_entry(__u32 *flags, struct pod_of **entry)
{
	__u32 zero = 0;
	__u64 *current = bpf_map_lookup_elem(&pods_generation, &zero);
	if (!current)
		return 0;
	__u64 generation = *current;
	/* The task's cgroup v2 id (task->cgroups->dfl_cgrp->kn->id), by the helper every kernel
	 * since 4.18 has. */
	__u64 cgroup = bpf_get_current_cgroup_id();
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
	if (cached) {
		/* user space reads them cumulatively */
		found.repeated_opens = cached->repeated_opens;
		found.dropped = cached->dropped;
	}
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

/* Whether the current task's event is left out, outside every watched pod (and counted). */
static __always_inline bool unwatched(__u64 pod)
{
	if (filter_pods && !pod) {
		count(C_UNWATCHED);
		return true;
	}
	return false;
}

/* Whether bytes [at, at + len) of name (n bytes with its NUL) equal word. */
static __always_inline bool bytes_at(const char *name, long at, const char *word, int len)
{
	for (int i = 0; i < len; i++) {
		__u64 index = (__u64)(at + i); /* a negative one wraps, and is refused below */
		if (index >= CGROUP_NAME_LEN)
			return false;
		/* Masked as well: once clang folds the check above with the offsets, the 6.1 verifier
		 * loses the bound (`R2 invalid mem access 'scalar'` at name[index]); a mask it keeps. */
		barrier_var(index);
		if (name[index & (CGROUP_NAME_LEN - 1)] != word[i])
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
			struct task_struct *task = current_task();
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

#endif
