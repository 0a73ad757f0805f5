//! The files an enforced pod's exec deny rules name, found in its containers' own root file
//! systems, so that the kernel refuses them by inode whatever name runs them (a hard link, a
//! merged /usr's other spelling, a symbolic link), and the pod's dynamic loaders, which run a
//! program without an exec naming it (`ld-linux-x86-64.so.2 /usr/bin/id`).
//!
//! A container's root is reached through `/proc/<pid>/root` of one of its processes (this needs
//! CAP_SYS_PTRACE, which the probe has), and every path is resolved with `openat2`'s
//! `RESOLVE_IN_ROOT`: a symbolic link in the image cannot lead the probe out of the container.
//! Until a container has a process the probe can read, its files are matched by path only.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use meshlogic_probe_core::maps::{FileId, PodFiles};
use rustix::fs::{Mode, OFlags, ResolveFlags};

/// Directories where images keep their dynamic loader (glibc's multiarch and FHS places,
/// musl's), read in each container root.
const LOADER_DIRS: &[&str] = &[
    "/lib",
    "/lib64",
    "/usr/lib",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
];
/// Bounds the cgroups visited and the container roots read for one pod.
const MAX_CGROUPS: usize = 64;
const MAX_ROOTS: usize = 16;

/// What `patterns` (the exact ones) name in the containers under the pod cgroup `pod_dir`, and
/// their dynamic loaders.
pub fn pod_files(pod_dir: &Path, proc_root: &Path, patterns: &BTreeSet<&str>) -> PodFiles {
    let mut files = PodFiles::default();
    let mut roots_seen = BTreeSet::new();
    for pid in one_pid_per_cgroup(pod_dir) {
        if roots_seen.len() >= MAX_ROOTS {
            break;
        }
        let Ok(root) = open_dir(&proc_root.join(pid.to_string()).join("root")) else {
            continue; // gone, or not ours to read
        };
        // Processes of one container share its root: read it once.
        let Some(root_id) = file_id(&root) else {
            continue;
        };
        if !roots_seen.insert(root_id) {
            continue;
        }
        for pattern in patterns.iter().filter(|p| !p.ends_with('*')) {
            if let Some(id) = resolve_in(&root, pattern).as_ref().and_then(file_id) {
                files
                    .denied
                    .entry(pattern.to_string())
                    .or_default()
                    .insert(id);
            }
        }
        files.loaders.extend(loaders_in(&root));
    }
    files
}

/// One process of each cgroup at or below `dir` that has one (a container's processes share
/// its root; its first is enough).
fn one_pid_per_cgroup(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    let mut visited = 0;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > MAX_CGROUPS {
            break;
        }
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs"))
            && let Some(pid) = procs.lines().find_map(|line| line.trim().parse().ok())
        {
            pids.push(pid);
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

fn open_dir(path: &Path) -> rustix::io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// `path` resolved inside `root` as the container sees it (symbolic links followed, none
/// leaving the root), opened with `flags`.
fn open_in(root: &OwnedFd, path: &str, flags: OFlags) -> Option<OwnedFd> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    rustix::fs::openat2(
        root.as_fd(),
        relative,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()
}

/// [`open_in`] for a file's identity only (`O_PATH`: nothing is read).
fn resolve_in(root: &OwnedFd, path: &str) -> Option<OwnedFd> {
    open_in(root, path, OFlags::PATH)
}

fn file_id(fd: &OwnedFd) -> Option<FileId> {
    let stat = rustix::fs::fstat(fd).ok()?;
    Some(FileId::from_stat(stat.st_dev, stat.st_ino))
}

/// The regular files named `ld-linux*`, `ld-musl-*` or `ld64.so*` in the loader directories of
/// a root.
fn loaders_in(root: &OwnedFd) -> BTreeSet<FileId> {
    let mut found = BTreeSet::new();
    for dir in LOADER_DIRS {
        let Some(dir_fd) = open_in(root, dir, OFlags::RDONLY | OFlags::DIRECTORY) else {
            continue;
        };
        let Ok(entries) = rustix::fs::Dir::read_from(&dir_fd) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_bytes();
            if !(name.starts_with(b"ld-linux")
                || name.starts_with(b"ld-musl-")
                || name.starts_with(b"ld64.so"))
            {
                continue;
            }
            let Ok(name) = std::str::from_utf8(name) else {
                continue;
            };
            if let Some(file) = resolve_in(root, &format!("{dir}/{name}"))
                && rustix::fs::fstat(&file)
                    .is_ok_and(|s| rustix::fs::FileType::from_raw_mode(s.st_mode).is_file())
                && let Some(id) = file_id(&file)
            {
                found.insert(id);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_path_is_resolved_inside_its_root_and_named_as_the_kernel_names_it() {
        let dir = std::env::temp_dir().join(format!("meshlogic-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
        std::fs::write(dir.join("usr/bin/tool"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
        // An absolute link stays in the root: it names the root's /usr/bin/tool.
        std::os::unix::fs::symlink("/usr/bin/tool", dir.join("usr/bin/alias")).unwrap();
        std::fs::hard_link(dir.join("usr/bin/tool"), dir.join("hard")).unwrap();
        let root = open_dir(&dir).unwrap();
        let meta = std::fs::metadata(dir.join("usr/bin/tool")).unwrap();
        let want = FileId::from_stat(meta.dev(), meta.ino());
        for path in ["/usr/bin/tool", "/bin/tool", "/usr/bin/alias", "/hard"] {
            let got = resolve_in(&root, path).as_ref().and_then(file_id);
            assert_eq!(got, Some(want), "{path}");
        }
        // `..` cannot climb out of the root.
        std::os::unix::fs::symlink("../../../../etc/passwd", dir.join("escape")).unwrap();
        assert!(resolve_in(&root, "/escape").is_none());
        assert!(resolve_in(&root, "/../../etc/passwd").is_none());

        // The loader, under both of its names, once; other libraries are not loaders.
        std::fs::create_dir_all(dir.join("lib64")).unwrap();
        std::fs::create_dir_all(dir.join("usr/lib")).unwrap();
        std::fs::write(dir.join("lib64/ld-linux-x86-64.so.2"), b"y").unwrap();
        std::fs::write(dir.join("lib64/libc.so.6"), b"z").unwrap();
        std::os::unix::fs::symlink(
            "/lib64/ld-linux-x86-64.so.2",
            dir.join("usr/lib/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        let meta = std::fs::metadata(dir.join("lib64/ld-linux-x86-64.so.2")).unwrap();
        let loader = FileId::from_stat(meta.dev(), meta.ino());
        assert_eq!(loaders_in(&root), [loader].into());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_kernels_device_number_splits_major_and_minor_as_the_kernel_does() {
        // makedev(8, 1) is 0x801 in user space; the kernel's dev_t is 8 << 20 | 1.
        assert_eq!(FileId::from_stat(0x801, 5).dev, (8 << 20) | 1);
        // Large minors and majors use the high bits of user space's encoding.
        let dev = libc::makedev(259, 300);
        assert_eq!(FileId::from_stat(dev, 5).dev, (259 << 20) | 300);
    }
}
