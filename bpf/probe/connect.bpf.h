/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Connects seen by the cgroup connect programs, and those tier 3 refuses. Included by probe.bpf.c
 * only (one object, one skeleton). */
#ifndef MESHLOGIC_PROBE_CONNECT_BPF_H
#define MESHLOGIC_PROBE_CONNECT_BPF_H

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
	e->header.family = family;
	e->header.port = port;
	if (len == 4)
		__builtin_memcpy(e->header.addr, addr, 4);
	else
		__builtin_memcpy(e->header.addr, addr, 16);
	emit(s, 0, counter, kind == EV_BLOCKED_CONNECT);
}

/* Whether an IPv6 address is IPv4-mapped (::ffff:a.b.c.d). */
static __always_inline bool v4_mapped(const __u32 *ip6)
{
	return ip6[0] == 0 && ip6[1] == 0 && ip6[2] == bpf_htonl(0xffff);
}

/* Whether tier 3 refuses this connect of an enforced pod. */
static __always_inline bool connect_refused(__u64 pod, __u32 flags, __u32 family, const void *addr,
					    __u32 len, __u16 port)
{
	if (!enforce || !(flags & POD_ENFORCED))
		return false;
	/* A dual-stack socket's connect to ::ffff:a.b.c.d is a connect to a.b.c.d, as the trust
	 * rules read it: the IPv4 rules and allowed destinations apply to it, the IPv6 ones do
	 * not (a rule denying ::/0 must not refuse IPv4 connects). */
	if (len == 16 && v4_mapped(addr)) {
		family = AF_INET;
		addr = (const __u32 *)addr + 3;
		len = 4;
	}
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
	if (unwatched(pod))
		return 1;
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

#endif
