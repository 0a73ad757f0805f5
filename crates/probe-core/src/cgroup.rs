//! Pod cgroups in the kubelet's two layouts, under a configurable cgroup v2 root.
//!
//! - cgroupfs driver: `kubepods/[burstable|besteffort/]pod<uid>/<container>`
//! - systemd driver: `kubepods.slice/[kubepods-burstable.slice/]kubepods[-burstable]-pod<uid with
//!   _ for ->.slice/cri-containerd-<id>.scope`
//!
//! A cgroup v2 id (what `bpf_get_current_cgroup_id` returns) is the inode number of the cgroup's
//! directory, so scanning the tree gives the id of every pod cgroup.

use foldhash::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use agentmesh_api::meshlogic::CgroupDriver;

/// Directories deeper than this below the root are not scanned.
const MAX_DEPTH: usize = 10;
/// Bound on the directories visited by one scan.
const MAX_DIRS: usize = 100_000;

/// The pod UID named by one cgroup directory name, when it is a pod cgroup in `driver`'s layout.
pub fn pod_uid_of_component(name: &str, driver: CgroupDriver) -> Option<String> {
    let cgroupfs = || {
        name.strip_prefix("pod")
            .filter(|uid| is_pod_uid(uid))
            .map(str::to_string)
    };
    let systemd = || {
        let stem = name.strip_prefix("kubepods")?.strip_suffix(".slice")?;
        let (_, uid) = stem.rsplit_once("-pod")?;
        let uid = uid.replace('_', "-");
        is_pod_uid(&uid).then_some(uid)
    };
    match driver {
        CgroupDriver::Cgroupfs => cgroupfs(),
        CgroupDriver::Systemd => systemd(),
        CgroupDriver::Auto => cgroupfs().or_else(systemd),
    }
}

/// The pod UID of a cgroup path (relative to the root or absolute): its innermost pod component.
pub fn pod_uid_of_path(path: &str, driver: CgroupDriver) -> Option<String> {
    path.split('/')
        .rev()
        .find_map(|component| pod_uid_of_component(component, driver))
}

/// A UID as the API server writes it (a UUID), or a static pod's config hash (32 hex digits).
fn is_pod_uid(uid: &str) -> bool {
    let bytes = uid.as_bytes();
    match bytes.len() {
        36 => bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        32 => bytes.iter().all(u8::is_ascii_hexdigit),
        _ => false,
    }
}

/// One pod cgroup found on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub uid: String,
    pub cgroup_id: u64,
    pub path: PathBuf,
}

/// Every pod cgroup under `root`. A pod cgroup's descendants (its containers) are not listed:
/// the kernel side matches them through their ancestor.
pub fn scan(root: &Path, driver: CgroupDriver) -> std::io::Result<Vec<PodCgroup>> {
    let mut found = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    std::fs::metadata(root)?;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_DIRS {
            tracing::warn!(root = %root.display(), "cgroup scan stopped after {MAX_DIRS} directories");
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue; // removed while scanning
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(uid) = pod_uid_of_component(name, driver) {
                if let Ok(meta) = entry.metadata() {
                    found.push(PodCgroup {
                        uid,
                        cgroup_id: meta.ino(),
                        path: entry.path(),
                    });
                }
            } else if depth + 1 < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    Ok(found)
}

/// The cgroup v2 path of a process, from `/proc/<pid>/cgroup` (the `0::` line).
pub fn cgroup_path_of_process(proc_root: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_string)
}

/// Pod cgroup ids to pod UIDs, as of the last scan.
#[derive(Debug, Default, Clone)]
pub struct PodCgroups {
    pub by_id: HashMap<u64, String>,
}

impl PodCgroups {
    pub fn from_scan(found: &[PodCgroup]) -> Self {
        Self {
            by_id: found.iter().map(|p| (p.cgroup_id, p.uid.clone())).collect(),
        }
    }

    /// Cgroup ids of one pod (a pod may have more than one cgroup while it is being recreated).
    pub fn ids_of(&self, uid: &str) -> Vec<u64> {
        self.by_id
            .iter()
            .filter(|(_, u)| u.as_str() == uid)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6c1f8e-3f6a-4d38-9d0e-3f2d1c0a9b11";

    #[test]
    fn both_kubelet_layouts_give_the_pod_uid() {
        let cgroupfs = format!("/kubepods/burstable/pod{UID}/0123abcd");
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-0123.scope",
            UID.replace('-', "_")
        );
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        );
        for path in [&cgroupfs, &systemd, &guaranteed] {
            assert_eq!(
                pod_uid_of_path(path, CgroupDriver::Auto).as_deref(),
                Some(UID),
                "{path}"
            );
        }
        assert_eq!(pod_uid_of_path(&cgroupfs, CgroupDriver::Systemd), None);
        assert_eq!(pod_uid_of_path(&systemd, CgroupDriver::Cgroupfs), None);
        assert_eq!(
            pod_uid_of_path(&cgroupfs, CgroupDriver::Cgroupfs).as_deref(),
            Some(UID)
        );
        assert_eq!(
            pod_uid_of_path(&systemd, CgroupDriver::Systemd).as_deref(),
            Some(UID)
        );
    }

    #[test]
    fn other_cgroups_are_not_pods() {
        for path in [
            "/",
            "/system.slice/containerd.service",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-burstable.slice",
            "/user.slice/user-1000.slice/podman.scope",
            "/kubepods/podnot-a-uid",
        ] {
            assert_eq!(pod_uid_of_path(path, CgroupDriver::Auto), None, "{path}");
        }
        let static_pod = "/kubepods/pod6e0a7e0b7b62c6d6f0e1c7f4b4a8e1c1/abc";
        assert_eq!(
            pod_uid_of_path(static_pod, CgroupDriver::Auto).as_deref(),
            Some("6e0a7e0b7b62c6d6f0e1c7f4b4a8e1c1")
        );
    }

    #[test]
    fn a_scan_finds_pod_directories_and_their_inodes() {
        let dir = std::env::temp_dir().join(format!("meshlogic-scan-{}", std::process::id()));
        let pod = dir.join(format!("kubepods/besteffort/pod{UID}"));
        std::fs::create_dir_all(pod.join("container")).unwrap();
        std::fs::create_dir_all(dir.join("system.slice/x")).unwrap();
        let found = scan(&dir, CgroupDriver::Auto).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].uid, UID);
        assert_eq!(found[0].path, pod);
        assert!(found[0].cgroup_id > 0);
    }
}
