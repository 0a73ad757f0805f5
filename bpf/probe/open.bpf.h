/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* File opens at the raw sys_exit tracepoint or at fexit of the kernel's open functions, named by
 * the file opened: repeats folded and mute paths dropped in the kernel. Included by probe.bpf.c
 * only (one object, one skeleton). */
#ifndef MESHLOGIC_PROBE_OPEN_BPF_H
#define MESHLOGIC_PROBE_OPEN_BPF_H

/* A path on the stack: &prefixlen, with the path right after it, is a mute_paths key, and the
 * path is 8-byte aligned for path_hash's word reads. */
struct stack_path {
	__u32 pad;
	__u32 prefixlen;
	char path[PATH_LEN];
} __attribute__((aligned(8)));

/* The file of descriptor fd of task, NULL when there is none. */
static __always_inline struct file *fd_file(struct task_struct *task, long fdnum)
{
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fdnum < 0 || fdnum >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **table = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &table[fdnum]);
	return file;
}

/* The text an open asked for, into dst (PATH_LEN bytes): its length with the NUL, or <= 0. */
static __always_inline long read_name(char *dst, const char *name, bool kernel_name)
{
	if (!name)
		return 0;
	if (kernel_name)
		return bpf_probe_read_kernel_str(dst, PATH_LEN, name);
	return bpf_probe_read_user_str(dst, PATH_LEN, name);
}

/* The task's root directory, as an address. A BTF pointer's fields are read directly where the
 * kernel has bpf_get_current_task_btf (5.11): a load each, not a helper call each; CO-RE drops
 * the branch the kernel cannot take before the verifier sees it (5.10 would refuse the helper). */
static __always_inline __u64 task_root_dentry(void)
{
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf))
		return (__u64)bpf_get_current_task_btf()->fs->root.dentry;
	return (__u64)BPF_CORE_READ(current_task(), fs, root.dentry);
}

/* An open: the text it asked for (name: a user address, or with kernel_name the kernel's copy),
 * its flags, and what it returned (a descriptor or -errno), or instead the file it opened as a
 * BTF pointer (an fexit argument), whose fields are read directly. A file opened is named by its path from
 * the task's root, resolved from its dentries: a relative name, `..`, /proc/self/cwd/x, a
 * symbolic link or a path through a descriptor all name the file itself. A failed open
 * (nothing opened) is named by the text it asked for, as is a file too deep to resolve. */
static __always_inline int handle_open(const char *name, bool kernel_name, __s32 open_flags,
				       long ret, struct file *btf_file)
{
	__u32 flags = 0;
	struct pod_of *entry = 0;
	__u64 pod = find_pod_entry(&flags, &entry);
	if (unwatched(pod))
		return 0;
	if (skip_runtime_opens && runtime_root && task_root_dentry() == runtime_root) {
		count(C_RUNTIME_SETUP);
		return 0;
	}
	struct task_struct *task = current_task();
	/* The file opened, NULL when the open failed: the fexit hook is given it (a BTF pointer,
	 * read directly), the others find it by the descriptor returned. */
	struct file *file = btf_file;
	if (!btf_file)
		file = ret >= 0 ? fd_file(task, ret) : 0;
	/* The path is read onto the stack: the kernel checks a copy to the stack for less than one
	 * to a map value, and a repeated open never needs it anywhere else. */
	struct stack_path path;
	long n = 0;
	/* What makes a repeat: the file opened (its dentry, whatever text named it: another
	 * directory, a swapped link or a rename is another dentry), or for a failed open the text
	 * asked for. Repeats, most opens, skip the walk up the file's dentries below. */
	__u64 identity;
	if (btf_file) {
		/* Read directly, scalars only (the verifier allows no arithmetic on a BTF pointer):
		 * the dentry as its name (hash and length), its directory's inode and its own inode.
		 * Another name, another directory or another file is another identity, as another
		 * dentry is; a freed dentry reused for another file does not pass for it. */
		struct dentry *dentry = btf_file->f_path.dentry;
		__u64 ino = btf_file->f_inode->i_ino;
		__u64 name_hash = ((__u64)dentry->d_name.len << 32) | dentry->d_name.hash;
		__u64 dir = dentry->d_parent->d_inode->i_ino;
		identity = hash_key ^ (((ino << 17) ^ name_hash) * 0x9E3779B97F4A7C15ULL);
		identity = (identity ^ dir) * 0x9E3779B97F4A7C15ULL;
	} else if (file) {
		/* The inode number too: a freed dentry reused for another file within the window
		 * does not pass for it. */
		__u64 dentry = (__u64)BPF_CORE_READ(file, f_path.dentry);
		__u64 ino = BPF_CORE_READ(file, f_inode, i_ino);
		identity = hash_key ^ ((dentry ^ (ino << 17)) * 0x9E3779B97F4A7C15ULL);
	} else {
		n = read_name(path.path, name, kernel_name);
		if (n <= 0) {
			path.path[0] = 0;
			n = 1;
		}
		identity = path_hash(path.path, n);
	}
	struct open_key key = {};
	struct open_key *seen = 0;
	if (fold_repeated_opens && entry) {
		__u32 zero = 0;
		__u64 *epoch = bpf_map_lookup_elem(&open_epoch, &zero);
		key.pod = pod;
		key.path_hash = identity;
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
	/* A file opened is named by its path from the task's root; one too deep to resolve keeps
	 * the text asked for. */
	if (file) {
		__u32 zero = 0;
		struct path_buf *buf = bpf_map_lookup_elem(&path_heap, &zero);
		long at = buf ? resolve_path(buf, file, task) : -1;
		if (at >= 0)
			n = bpf_probe_read_kernel_str(path.path, sizeof(path.path),
						      &buf->data[at & (PATH_LEN - 1)]);
		if (n <= 0)
			n = read_name(path.path, name, kernel_name);
		if (n <= 0) {
			path.path[0] = 0;
			n = 1;
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

/* Every open-like system call: open, openat, openat2, creat, open_by_handle_at (which names no
 * path: only its file does). The arguments are still in the saved registers at the exit, read
 * in place (tp_btf gives a typed pointer): no helper call per argument. */
/* The path and flags of an open-like system call `id` (64-bit arguments: rdi, rsi, rdx; in a
 * 32-bit call, ebx, ecx, edx, 32 bits each); false for any other call. open_by_handle_at names
 * no path: only the file it opened does. */
static __always_inline bool open_args(struct pt_regs *regs, long id, bool ia32,
				      const char **filename, __s32 *open_flags)
{
	__u64 arg1 = PT_REGS_PARM1_SYSCALL(regs), arg2 = PT_REGS_PARM2_SYSCALL(regs);
	__u64 arg3 = PT_REGS_PARM3_SYSCALL(regs);
	long nr_open = NR_OPEN, nr_creat = NR_CREAT, nr_openat = NR_OPENAT;
	long nr_openat2 = NR_OPENAT2, nr_by_handle = NR_OPEN_BY_HANDLE_AT;
#if defined(__TARGET_ARCH_x86)
	if (ia32) {
		arg1 = regs->bx & 0xffffffff;
		arg2 = regs->cx & 0xffffffff;
		arg3 = regs->dx & 0xffffffff;
		nr_open = IA32_OPEN;
		nr_creat = IA32_CREAT;
		nr_openat = IA32_OPENAT;
		nr_openat2 = IA32_OPENAT2;
		nr_by_handle = IA32_OPEN_BY_HANDLE_AT;
	}
#endif
	if (id == nr_openat) {
		*filename = (const char *)arg2;
		*open_flags = (__s32)arg3;
	} else if (id == nr_open) {
		*filename = (const char *)arg1;
		*open_flags = (__s32)arg2;
	} else if (id == nr_creat) {
		*filename = (const char *)arg1;
		*open_flags = CREAT_FLAGS;
	} else if (id == nr_openat2) {
		struct open_how how = {};
		bpf_probe_read_user(&how, sizeof(how), (void *)arg3);
		*filename = (const char *)arg2;
		*open_flags = (__s32)how.flags;
	} else if (id == nr_by_handle) {
		*filename = 0;
		*open_flags = (__s32)arg3;
	} else {
		return false;
	}
	return true;
}

/* Every open-like system call: open, openat, openat2, creat, open_by_handle_at, from the 64-bit
 * and (x86) the 32-bit entry, which numbers them otherwise. The arguments are still in the
 * saved registers at the exit, read in place (tp_btf gives a typed pointer): no helper call per
 * argument. One call site of handle_open: the verifier walks it once. */
SEC("tp_btf/sys_exit")
int BPF_PROG(handle_sys_exit, struct pt_regs *regs, long ret)
{
	long id = SYSCALL_NR(regs);
	bool ia32 = false;
#if defined(__TARGET_ARCH_x86)
	/* Every other system call leaves at the comparisons (this runs on all of the node's). */
	if (id != NR_OPENAT && id != NR_OPEN && id != NR_OPENAT2 && id != NR_CREAT &&
	    id != NR_OPEN_BY_HANDLE_AT && id != IA32_OPEN && id != IA32_CREAT &&
	    id != IA32_OPENAT && id != IA32_OPEN_BY_HANDLE_AT)
		return 0;
	struct task_struct *task = current_task();
	ia32 = BPF_CORE_READ(task, thread_info.status) & TS_COMPAT;
#endif
	const char *filename = 0;
	__s32 open_flags = 0;
	if (!open_args(regs, id, ia32, &filename, &open_flags))
		return 0;
	if (!filename && ret < 0)
		return 0; /* a failed open_by_handle_at: no file, no path */
	return handle_open(filename, false, open_flags, ret, 0);
}

/* The cheaper hook, where the kernel lets fexit programs attach (not under lockdown): the same
 * opens, seen at the exit of the kernel's open functions, so that no other system call pays
 * anything. do_filp_open (do_file_open from 7.0: user space sets the target) serves open,
 * openat, openat2 and creat from both the 64-bit and the 32-bit entry, and io_uring's openat,
 * which sys_exit never saw; its arguments and result are BTF pointers, read directly: the
 * kernel's copy of the name, the flags, the file opened. do_handle_open serves
 * open_by_handle_at. User space loads these or handle_sys_exit, never both (kernel/load.rs). */
#define OPEN_FLAG_EXEC 0x20 /* __FMODE_EXEC: exec and uselib opening the file they map */
#define MAX_ERRNO 4095

SEC("fexit/do_filp_open")
int BPF_PROG(handle_filp_open_exit, int dfd, struct filename *pathname,
	     const struct open_flags *op, struct file *file)
{
	__s32 open_flags = op->open_flag;
	if (open_flags & OPEN_FLAG_EXEC)
		return 0; /* not an open of the task's: an exec's */
	if ((__u64)file >= (__u64)-MAX_ERRNO)
		return handle_open(pathname->name, true, open_flags, -1, 0); /* failed: its text */
	return handle_open(pathname->name, true, open_flags, 0, file);
}

SEC("fexit/do_handle_open")
int BPF_PROG(handle_by_handle_exit, int mountdirfd, void *ufh, int open_flag, long ret)
{
	if (ret < 0)
		return 0; /* no file, no path */
	return handle_open(0, false, open_flag, ret, 0);
}

#endif
