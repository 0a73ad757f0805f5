/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Paths: the keyed hash of an open's path, and a file's path resolved from its dentries. Included
 * by probe.bpf.c only (one object, one skeleton). */
#ifndef MESHLOGIC_PROBE_PATHS_BPF_H
#define MESHLOGIC_PROBE_PATHS_BPF_H

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
	buf->pos = PATH_LEN - 1;
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
		long pos = buf->pos;
		if (len <= 0 || len + 1 > pos)
			return -1;
		pos -= len;
		if (bpf_probe_read_kernel(&buf->data[pos & (PATH_LEN - 1)], len & (PATH_LEN - 1),
					  name.name))
			return -1;
		pos -= 1;
		buf->data[pos & (PATH_LEN - 1)] = '/';
		buf->pos = pos;
		dentry = BPF_CORE_READ(dentry, d_parent);
	}
	if (!done)
		return -1;
	long pos = buf->pos;
	if (pos == PATH_LEN - 1) {
		pos -= 1;
		buf->data[pos & (PATH_LEN - 1)] = '/';
	}
	return pos;
}

#endif
