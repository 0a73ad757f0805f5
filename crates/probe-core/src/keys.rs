//! Map keys and values as `bpf/probe.h` declares them ([`crate::layout`]), handed to libbpf as
//! their bytes.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::layout::{
    DestKey, EXEC_KEY_PATH, ExecFileKey, ExecKey, MAX_PORTS, Net4Key, Net6Key, NetRule, PATH_LEN,
    PathKey, bytes_of,
};

/// Copies a path's bytes to the start of a key's array (zeroed after them).
fn put_path(path: &mut [u8], bytes: &[u8]) {
    for (slot, byte) in path.iter_mut().zip(bytes) {
        *slot = *byte;
    }
}

/// Entries of the mute_paths trie. A mute path `/proc` mutes `/proc` itself and everything
/// under `/proc/`, not `/process`: two prefixes, the path with its NUL and the path with `/`.
pub fn mute_path_entries(paths: &[String]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut entries = Vec::new();
    for path in paths {
        let path = path.as_bytes();
        let prefixes: Vec<Vec<u8>> = if path.ends_with(b"/") {
            vec![path.to_vec()]
        } else {
            vec![[path, b"\0"].concat(), [path, b"/"].concat()]
        };
        for prefix in prefixes.iter().filter(|prefix| prefix.len() <= PATH_LEN) {
            let mut key = PathKey {
                prefixlen: (prefix.len() * 8) as u32,
                ..Default::default()
            };
            put_path(&mut key.path, prefix);
            entries.push((bytes_of(&key), vec![1u8]));
        }
    }
    entries
}

/// deny_exec key for a pod: an absolute path (matched exactly, NUL included) or a prefix
/// ended by its only `*`. `None` when the pattern cannot be matched as the operator means it
/// (`agentmesh_trust::policy::exec_pattern_ok`: too long, not absolute, a `*` before the end,
/// which the kernel would take literally).
pub fn exec_key(pod: u64, pattern: &str) -> Option<Vec<u8>> {
    if !agentmesh_api::common::exec_pattern_ok(pattern) {
        return None;
    }
    let bytes = match pattern.strip_suffix('*') {
        Some(prefix) => prefix.as_bytes().to_vec(),
        None => [pattern.as_bytes(), b"\0"].concat(),
    };
    if bytes.len() > EXEC_KEY_PATH {
        return None;
    }
    let mut key = ExecKey {
        prefixlen: (64 + bytes.len() * 8) as u32,
        pod: pod.to_ne_bytes(),
        ..Default::default()
    };
    put_path(&mut key.path, &bytes);
    Some(bytes_of(&key))
}

/// deny_exec_file key of a pod's file.
pub fn exec_file_key(pod: u64, file: crate::maps::FileId) -> Vec<u8> {
    bytes_of(&ExecFileKey {
        pod,
        ino: file.ino,
        dev: file.dev,
        pad: 0,
    })
}

/// deny_net4 or deny_net6 key of a pod's network: the pod then the network's prefix.
pub fn net_key(pod: u64, net: IpNet) -> Vec<u8> {
    let prefixlen = 64 + u32::from(net.prefix_len());
    let pod = pod.to_ne_bytes();
    match net {
        IpNet::V4(v4) => bytes_of(&Net4Key {
            prefixlen,
            pod,
            addr: v4.network().octets(),
        }),
        IpNet::V6(v6) => bytes_of(&Net6Key {
            prefixlen,
            pod,
            addr: v6.network().octets(),
        }),
    }
}

/// net_rule value: no ports means every port (at most [`MAX_PORTS`] are kept).
pub fn net_rule(ports: &BTreeSet<u16>) -> Vec<u8> {
    let mut rule = NetRule {
        nports: ports.len().min(MAX_PORTS) as u32,
        ..Default::default()
    };
    for (slot, port) in rule.ports.iter_mut().zip(ports) {
        *slot = *port;
    }
    bytes_of(&rule)
}

/// allowed_dest key: a destination always allowed to an enforced pod.
pub fn dest_key(pod: u64, ip: IpAddr, port: u16) -> Vec<u8> {
    let (family, addr) = match ip {
        IpAddr::V4(v4) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&v4.octets());
            (libc::AF_INET as u32, addr)
        }
        IpAddr::V6(v6) => (libc::AF_INET6 as u32, v6.octets()),
    };
    bytes_of(&DestKey {
        pod,
        addr,
        family,
        port: u32::from(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mute_path_is_the_path_itself_and_its_subtree() {
        let entries = mute_path_entries(&["/proc".into(), "/var/log/".into()]);
        let prefixes: Vec<(u32, Vec<u8>)> = entries
            .iter()
            .map(|(key, _)| {
                let len = u32::from_ne_bytes(key[..4].try_into().unwrap());
                (len, key[4..4 + len as usize / 8].to_vec())
            })
            .collect();
        assert_eq!(
            prefixes,
            [
                (48, b"/proc\0".to_vec()),
                (48, b"/proc/".to_vec()),
                (72, b"/var/log/".to_vec())
            ]
        );
        assert!(entries.iter().all(|(key, _)| key.len() == 4 + PATH_LEN));
    }

    #[test]
    fn exec_keys_match_exactly_or_by_prefix() {
        let exact = exec_key(7, "/usr/bin/curl").unwrap();
        assert_eq!(
            u32::from_ne_bytes(exact[..4].try_into().unwrap()),
            64 + 14 * 8
        );
        assert_eq!(&exact[4..12], &7u64.to_ne_bytes());
        assert_eq!(&exact[12..26], b"/usr/bin/curl\0");
        let prefix = exec_key(7, "/tmp/*").unwrap();
        assert_eq!(
            u32::from_ne_bytes(prefix[..4].try_into().unwrap()),
            64 + 5 * 8
        );
        assert!(exec_key(7, "curl").is_none());
        // A wildcard to the operator would be a literal `*` here.
        assert!(exec_key(7, "/usr/*/curl").is_none());
        assert!(exec_key(7, "/usr/bin/**").is_none());
        assert!(exec_key(7, &format!("/{}", "a".repeat(300))).is_none());
    }

    #[test]
    fn net_keys_and_rules_are_laid_out_as_the_kernel_reads_them() {
        let key = net_key(7, "10.1.0.0/16".parse().unwrap());
        assert_eq!(key.len(), 4 + 8 + 4);
        assert_eq!(u32::from_ne_bytes(key[..4].try_into().unwrap()), 64 + 16);
        assert_eq!(&key[4..12], &7u64.to_ne_bytes());
        assert_eq!(&key[12..], &[10, 1, 0, 0]);
        assert_eq!(net_key(7, "fd00::/8".parse().unwrap()).len(), 4 + 8 + 16);
        let rule = net_rule(&[22, 443].into_iter().collect());
        assert_eq!(rule.len(), 4 + 2 * MAX_PORTS);
        assert_eq!(u32::from_ne_bytes(rule[..4].try_into().unwrap()), 2);
        assert_eq!(
            &rule[4..8],
            &[22u16.to_ne_bytes(), 443u16.to_ne_bytes()].concat()[..]
        );
        let dest = dest_key(7, "10.0.0.1".parse().unwrap(), 8080);
        assert_eq!(dest.len(), 8 + 16 + 4 + 4);
        assert_eq!(&dest[8..12], &[10, 0, 0, 1]);
    }
}
