//! Which cgroup v2 hierarchy the probe watches.

use std::path::{Path, PathBuf};

use super::StartError;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(root: &Path) -> Result<bool, String> {
    let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|_| "contains a NUL byte".to_owned())?;
    let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed statfs to fill.
    if unsafe { libc::statfs(path.as_ptr(), &mut stats) } != 0 {
        return Err(format!(
            "{}: {}",
            root.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(stats.f_type as i64 == CGROUP2_SUPER_MAGIC)
}

/// The cgroup v2 hierarchy to watch: `root` when it is one; on a hybrid host (cgroup v1 at
/// `root`, v2 at `root/unified`, as systemd lays it out) the latter, said in the log, so that
/// the default `/sys/fs/cgroup` works on both kinds of node.
pub(super) fn resolve_cgroup_root(root: &Path) -> Result<PathBuf, StartError> {
    if is_cgroup2(root).map_err(StartError::CgroupRoot)? {
        return Ok(root.to_owned());
    }
    let unified = root.join("unified");
    if is_cgroup2(&unified).unwrap_or(false) {
        tracing::info!(
            configured = %root.display(),
            using = %unified.display(),
            "hybrid cgroup host: cgroup v2 is mounted below the configured root"
        );
        return Ok(unified);
    }
    Err(StartError::CgroupRoot(format!(
        "{} is not a cgroup v2 mount, nor is {}",
        root.display(),
        unified.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where this host mounts cgroup v2, from /proc/self/mountinfo.
    fn cgroup2_mount() -> Option<PathBuf> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .ok()?
            .lines()
            .find(|line| {
                line.split(" - ")
                    .nth(1)
                    .is_some_and(|fs| fs.starts_with("cgroup2 "))
            })
            .and_then(|line| line.split(' ').nth(4))
            .map(PathBuf::from)
    }

    #[test]
    fn the_default_root_finds_cgroup_v2_on_unified_and_hybrid_hosts() {
        let Some(mount) = cgroup2_mount() else {
            panic!("this test needs a host with cgroup v2 mounted");
        };
        // On a cgroup v2 host the default is the mount; on a hybrid one (this machine's
        // /sys/fs/cgroup is v1, v2 is at /sys/fs/cgroup/unified) the probe goes below it.
        assert_eq!(
            resolve_cgroup_root(Path::new("/sys/fs/cgroup")).unwrap(),
            mount
        );
        assert_eq!(resolve_cgroup_root(&mount).unwrap(), mount);
    }

    #[test]
    fn a_root_with_no_cgroup_v2_is_refused_naming_both_paths() {
        let dir = std::env::temp_dir();
        let error = resolve_cgroup_root(&dir).unwrap_err().to_string();
        assert!(error.contains("is not a cgroup v2 mount"), "{error}");
        assert!(
            error.contains(&dir.join("unified").display().to_string()),
            "{error}"
        );
        let missing = resolve_cgroup_root(Path::new("/nonexistent/cgroup")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/cgroup"),
            "{missing}"
        );
    }
}
