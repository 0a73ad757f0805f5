//! Tier 1, user mode: no BPF. `/proc` is polled: processes are attributed to pods through
//! their cgroup (`/proc/<pid>/cgroup`); a process first seen counts as an exec of its
//! executable, and so does a known process whose executable changed (an exec in place, as a
//! shell's `exec` does: the process keeps its pid and start time); one that disappeared as an
//! exit; its open files (`/proc/<pid>/fd`) as file opens
//! and its TCP sockets with a peer (`/proc/<pid>/net/tcp{,6}`) as connects, each once per
//! process. Anything that starts and ends between two polls is not seen: tier 1 is a sampling
//! fallback, not a substitute for the kernel programs.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agentmesh_api::meshlogic::CgroupDriver;

use crate::aggregate::{Observation, open_flags_write};
use crate::cgroup::{cgroup_path_of_process, pod_uid_of_path};
use crate::counters::EventCounters;
use crate::shared::{Shared, lock};

#[derive(Debug, Clone)]
pub struct UserModeOptions {
    pub proc_root: PathBuf,
    pub driver: CgroupDriver,
    pub enable_process: bool,
    pub enable_file: bool,
    pub enable_network: bool,
    pub mute_paths: Vec<String>,
}

#[derive(Debug)]
struct Process {
    start_time: u64,
    pod_uid: String,
    /// Its executable when last polled (with `enable_process`).
    exe: String,
    paths: HashSet<String>,
    sockets: HashSet<u64>,
}

#[derive(Debug)]
enum Seen {
    Exec(String),
    Exit,
    Open(String, bool),
    Connect(IpAddr, u16),
}

/// Polls `/proc`; state carries over between polls.
#[derive(Debug)]
pub struct UserModePoller {
    options: UserModeOptions,
    processes: HashMap<u32, Process>,
}

impl UserModePoller {
    pub fn new(options: UserModeOptions) -> Self {
        Self {
            options,
            processes: HashMap::new(),
        }
    }

    /// One pass over `/proc`, recorded into the aggregator.
    pub fn poll(&mut self, shared: &Mutex<Shared>, counters: &EventCounters) {
        let mut seen: Vec<(String, Seen)> = Vec::new();
        let mut alive = HashSet::new();
        let Ok(entries) = std::fs::read_dir(&self.options.proc_root) else {
            tracing::warn!(proc = %self.options.proc_root.display(), "cannot read /proc");
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Some(start_time) = start_time(&self.options.proc_root, pid) else {
                continue;
            };
            let known = self
                .processes
                .get(&pid)
                .is_some_and(|process| process.start_time == start_time);
            if known && self.options.enable_process {
                let exe = self.exe(pid);
                if let Some(process) = self.processes.get_mut(&pid)
                    && !exe.is_empty()
                    && exe != process.exe
                {
                    seen.push((process.pod_uid.clone(), Seen::Exec(exe.clone())));
                    process.exe = exe;
                }
            }
            if !known {
                if let Some(old) = self.processes.remove(&pid) {
                    seen.push((old.pod_uid, Seen::Exit)); // pid reused
                }
                let Some(pod_uid) = cgroup_path_of_process(&self.options.proc_root, pid)
                    .and_then(|path| pod_uid_of_path(&path, self.options.driver))
                else {
                    continue;
                };
                let mut exe = String::new();
                if self.options.enable_process {
                    exe = self.exe(pid);
                    seen.push((pod_uid.clone(), Seen::Exec(exe.clone())));
                }
                self.processes.insert(
                    pid,
                    Process {
                        start_time,
                        pod_uid,
                        exe,
                        paths: HashSet::new(),
                        sockets: HashSet::new(),
                    },
                );
            }
            alive.insert(pid);
            if self.options.enable_file || self.options.enable_network {
                self.poll_files(pid, &mut seen);
            }
        }
        let gone: Vec<u32> = self
            .processes
            .keys()
            .filter(|pid| !alive.contains(pid))
            .copied()
            .collect();
        for pid in gone {
            if let Some(process) = self.processes.remove(&pid)
                && self.options.enable_process
            {
                seen.push((process.pod_uid, Seen::Exit));
            }
        }
        let mut shared = lock(shared);
        for (uid, event) in &seen {
            let observation = match event {
                Seen::Exec(path) => Observation::Exec { path },
                Seen::Exit => Observation::Exit,
                Seen::Open(path, write) => Observation::Open {
                    path,
                    write: *write,
                },
                Seen::Connect(ip, port) => Observation::Connect {
                    ip: *ip,
                    port: *port,
                },
            };
            counters.event(observation.kind());
            shared.aggregator.record(uid, observation);
        }
    }

    /// The process's executable; empty when it cannot be read (gone, a kernel thread).
    fn exe(&self, pid: u32) -> String {
        std::fs::read_link(self.proc(pid).join("exe"))
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn proc(&self, pid: u32) -> PathBuf {
        self.options.proc_root.join(pid.to_string())
    }

    fn poll_files(&mut self, pid: u32, seen: &mut Vec<(String, Seen)>) {
        let dir = self.proc(pid);
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            return;
        };
        let mut new_sockets = Vec::new();
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
            {
                if self.options.enable_network && !process.sockets.contains(&inode) {
                    new_sockets.push(inode);
                }
                continue;
            }
            if !self.options.enable_file || !target.starts_with('/') {
                continue;
            }
            if muted(&target, &self.options.mute_paths) || process.paths.contains(target.as_ref()) {
                continue;
            }
            let flags = std::fs::read_to_string(dir.join("fdinfo").join(fd.file_name()))
                .ok()
                .and_then(|info| {
                    info.lines()
                        .find_map(|line| line.strip_prefix("flags:"))
                        .and_then(|flags| i32::from_str_radix(flags.trim(), 8).ok())
                })
                .unwrap_or(0);
            process.paths.insert(target.to_string());
            seen.push((
                process.pod_uid.clone(),
                Seen::Open(target.into_owned(), open_flags_write(flags)),
            ));
        }
        if new_sockets.is_empty() {
            return;
        }
        let peers = tcp_peers(&dir);
        for inode in new_sockets {
            if let Some((ip, port)) = peers.get(&inode) {
                process.sockets.insert(inode);
                seen.push((process.pod_uid.clone(), Seen::Connect(*ip, *port)));
            }
        }
    }
}

fn muted(path: &str, mute_paths: &[String]) -> bool {
    mute_paths.iter().any(|prefix| {
        let prefix = prefix.trim_end_matches('/');
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Start time of a process in clock ticks (field 22 of `stat`), to tell reused pids apart.
fn start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Socket inode -> remote address of the TCP sockets of a process's network namespace that
/// have a peer (not listening).
fn tcp_peers(proc_dir: &Path) -> HashMap<u64, (IpAddr, u16)> {
    let mut peers = HashMap::new();
    for file in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_dir.join(file)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] == "0A" {
                continue;
            }
            let (Some((ip, port)), Ok(inode)) =
                (parse_address(fields[2]), fields[9].parse::<u64>())
            else {
                continue;
            };
            if port != 0 && inode != 0 {
                peers.insert(inode, (ip, port));
            }
        }
    }
    peers
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:port` (IPv6): 32-bit words in host order.
fn parse_address(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_addresses_parse() {
        assert_eq!(
            parse_address("0100007F:1F90"),
            Some(("127.0.0.1".parse().unwrap(), 8080))
        );
        assert_eq!(
            parse_address("00000000000000000000000001000000:01BB"),
            Some(("::1".parse().unwrap(), 443))
        );
        assert_eq!(parse_address("zz:1"), None);
    }

    #[test]
    fn mute_paths_match_whole_components() {
        let mute = vec!["/proc".to_string(), "/dev/".to_string()];
        assert!(muted("/proc", &mute));
        assert!(muted("/proc/1/status", &mute));
        assert!(muted("/dev/null", &mute));
        assert!(!muted("/process", &mute));
        assert!(!muted("/etc/passwd", &mute));
    }

    #[test]
    fn our_own_start_time_is_readable() {
        assert!(start_time(Path::new("/proc"), std::process::id()).is_some());
    }
}
