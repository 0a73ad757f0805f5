/* SPDX-License-Identifier: Apache-2.0 */
/* The layouts shared by the BPF programs and user space: the event, its kinds, the kernel
 * counters, the pod flags and every map key and value user space reads or writes. Declared
 * here only: the Rust side uses the types libbpf-cargo generates from the skeleton's BTF
 * (`crates/probe/src/kernel/skel.rs`, module `types`), so the numbers below are enums, which
 * BTF keeps, rather than macros, which it does not. */
#ifndef MESHLOGIC_PROBE_H
#define MESHLOGIC_PROBE_H

enum probe_limit {
	PATH_LEN = 256,      /* bytes of a path carried by an event (with its NUL) */
	COMM_LEN = 16,
	EXEC_KEY_PATH = 240, /* bytes of an executable path in a deny key (LPM data max is 256) */
	MAX_PORTS = 16,      /* ports in one denied-network rule */
	MAX_CGROUP_LEVEL = 16,
	CGROUP_NAME_LEN = 128, /* bytes of a cgroup directory name compared in the kernel (a power of two: indexes are masked) */
	RESOLVE_DEPTH = 32,   /* path components (and mount crossings) walked to resolve a file */
};

enum event_kind {
	EV_EXEC = 1,
	EV_EXIT = 2,
	EV_OPEN = 3,
	EV_CONNECT = 4,
	EV_BLOCKED_CONNECT = 5,
	EV_BLOCKED_EXEC = 6,
	EV_POD_CGROUP = 7, /* a pod cgroup was created and is watched from now on; path: its path */
};

/* Kernel-side counters (per-CPU array, summed in user space). */
enum counter {
	C_RINGBUF_DROPS = 0, /* bpf_ringbuf_output failed: the ring buffer was full */
	C_MUTED = 1,         /* opens dropped in the kernel by a mute path */
	C_EXEC = 2,
	C_EXIT = 3,
	C_OPEN = 4,
	C_CONNECT = 5,
	C_BLOCKED_CONNECT = 6,
	C_BLOCKED_EXEC = 7,
	C_UNWATCHED = 8, /* events of tasks outside every watched pod cgroup */
	C_OPEN_REPEATED = 9, /* opens counted in the kernel only: same pod, path and flags again */
	C_RUNTIME_SETUP = 10, /* opens of the container runtime setting a container up */
	C_COUNT = 11,
};

/* Flags of a watched pod cgroup (value of the pod_cgroups map). */
enum pod_flag {
	POD_WATCHED = 1,
	POD_ENFORCED = 2,
	POD_QUARANTINED = 4,
	POD_EXEC_DENIED = 8, /* the pod has exec deny rules: unnamed files are refused too */
};

/* What an exec_file entry is (value of the deny_exec_file map). */
enum exec_file_kind {
	EXEC_FILE_DENIED = 1, /* a denied executable, whatever name it is run by */
	EXEC_FILE_LOADER = 2, /* the dynamic loader, run directly (ld.so /usr/bin/id) */
};

/* What every event carries; the path follows it, path_len bytes. */
struct event_header {
	__u64 pod_cgroup_id; /* the watched ancestor cgroup (the pod's), 0 when none */
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	enum event_kind kind;
	__s32 flags; /* open flags; exit code for EV_EXIT */
	__u16 family; /* AF_INET or AF_INET6 for connects */
	__u16 port;   /* host byte order */
	__u8 addr[16];
	char comm[COMM_LEN];
	__u32 path_len;      /* bytes of path sent, with the NUL; 0 when none */
	__u32 reserved;      /* zero; keeps path 8-byte aligned */
};

/* An event as sent on the ring buffer, cut after path_len bytes of its path. */
struct event {
	struct event_header header;
	char path[PATH_LEN];
};

/* An open already sent in this window (a slot of open_seen). */
struct open_key {
	__u64 pod;
	__u64 path_hash; /* keyed hash of the path, its NUL included */
	__s32 flags;
	__u32 epoch;
	__u32 muted; /* the path is under a mute path: repeats are dropped, counted as muted */
	__u32 pad;
};

/* Key of the mute_paths LPM trie: a prefix length in bits, then the path. */
struct path_key {
	__u32 prefixlen;
	char path[PATH_LEN];
};

/* Key of the deny_exec LPM trie: pod cgroup id (8 bytes, native order) then the path. */
struct exec_key {
	__u32 prefixlen;
	__u8 pod[8];
	char path[EXEC_KEY_PATH];
};

/* Key of deny_exec_file: a file by its inode, as the kernel names it (i_sb->s_dev, i_ino). */
struct exec_file_key {
	__u64 pod;
	__u64 ino;
	__u32 dev; /* the kernel's dev_t: major << 20 | minor */
	__u32 pad;
};

struct net4_key {
	__u32 prefixlen;
	__u8 pod[8];
	__u8 addr[4];
};

struct net6_key {
	__u32 prefixlen;
	__u8 pod[8];
	__u8 addr[16];
};

struct net_rule {
	__u32 nports; /* 0: every port */
	__u16 ports[MAX_PORTS];
};

/* Key of allowed_dest: destinations always allowed to an enforced pod. */
struct dest_key {
	__u64 pod;
	__u8 addr[16];
	__u32 family;
	__u32 port;
};

/* A task's cgroup -> its pod cgroup (0: none) and that pod's flags, as found under
 * pods_generation (value of the cgroup_pod map). A cgroup's ancestry never changes and ids are
 * never reused, so an entry stays true until pod_cgroups changes; it saves the walk up the
 * hierarchy on every event. */
struct pod_of {
	__u64 pod;
	__u64 generation;
	__u32 flags;
	__u32 pad;
	__u64 repeated_opens; /* opens of this cgroup counted here instead of sent (cumulative) */
	__u64 dropped; /* events of this cgroup lost to a full ring buffer (cumulative) */
};

#endif
