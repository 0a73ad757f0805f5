/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* The maps: the ring buffer, the counters, per-CPU scratch, the pods watched and their caches,
 * and the tier 3 rules written by user space. Included by probe.bpf.c only (one object, one
 * skeleton). */
#ifndef MESHLOGIC_PROBE_MAPS_BPF_H
#define MESHLOGIC_PROBE_MAPS_BPF_H

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
	/* resolve_path's position in data, kept here rather than in a register: the verifier
	 * tracks no map value, so every step of the walk starts from the same state and the
	 * 6.1 verifier prunes it (with pos in a register, each of the RESOLVE_DEPTH steps and
	 * both of their branches was another state: over a million instructions, refused). */
	__s64 pos;
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

/* Denied executables and dynamic loaders of enforced pods, by inode: a hard link, another
 * name of the same file (a merged /usr's /bin/id and /usr/bin/id) or a bind mount of it is
 * the same key. Value: enum exec_file_kind. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct exec_file_key);
	__type(value, __u8);
} deny_exec_file SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, struct dest_key);
	__type(value, __u8);
} allowed_dest SEC(".maps");

#endif
