/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Counting and sending events: the per-CPU event being built, and the ring buffer output with
 * batched wake-ups. Included by probe.bpf.c only (one object, one skeleton). */
#ifndef MESHLOGIC_PROBE_EMIT_BPF_H
#define MESHLOGIC_PROBE_EMIT_BPF_H

static __always_inline void count(__u32 which)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &which);
	if (value)
		*value += 1;
}

static __always_inline struct scratch *new_event(__u32 kind, __u64 pod)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&event_heap, &zero);
	if (!s)
		return 0;
	struct event_header *e = &s->event.header;
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
	e->header.path_len = path_bytes;
	__u64 size = __builtin_offsetof(struct event, path) + (__u64)path_bytes;
	if (size > sizeof(*e))
		return;
	s->sent++;
	__u64 wakeup = urgent || !(s->sent & (wakeup_every - 1)) ? BPF_RB_FORCE_WAKEUP
								  : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events, e, size, wakeup)) {
		count(C_RINGBUF_DROPS);
		/* Also by cgroup, so that the pod's report says what it lost (rare: the lookup is
		 * paid on a drop only). */
		__u64 cgroup = bpf_get_current_cgroup_id();
		struct pod_of *entry = bpf_map_lookup_elem(&cgroup_pod, &cgroup);
		if (entry)
			__sync_fetch_and_add(&entry->dropped, 1);
	} else {
		count(counter);
	}
}

#endif
