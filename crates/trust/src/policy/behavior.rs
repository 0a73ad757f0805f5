//! Behaviour rules over executables, files and network destinations.
//!
//! When several rules match one event, the **most specific** wins: the longest literal
//! executable pattern, the longest path prefix, the longest CIDR prefix (a rule naming ports
//! beats one that does not at equal prefix). Among equally specific rules the strictest
//! action wins (`deny` over `alert` over `allow`).

use std::net::IpAddr;

use super::pattern::Glob;
use super::spec::{BehaviorAction, FileAccess};

/// An IPv4 or IPv6 network. IPv4-mapped IPv6 addresses match IPv4 networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    v6: bool,
    network: u128,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, len) = text.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let prefix_len: u8 = len.parse().ok()?;
        let (v6, bits, max) = match addr {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        if prefix_len > max {
            return None;
        }
        Some(Self {
            v6,
            network: bits & mask(prefix_len, max),
            prefix_len,
        })
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            v4 => v4,
        };
        let (v6, bits, max) = match ip {
            IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        v6 == self.v6 && bits & mask(self.prefix_len, max) == self.network
    }
}

fn mask(prefix_len: u8, max: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        let full: u128 = if max == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        full & !((1u128 << (max - prefix_len)) - 1)
    }
}

/// Which kind of rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    Exec,
    File,
    Network,
}

impl RuleKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "behavior.exec",
            Self::File => "behavior.files",
            Self::Network => "behavior.network",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ExecRule {
    pub pattern: Glob,
    pub action: BehaviorAction,
    pub penalty: i32,
}

#[derive(Clone, Debug)]
pub(crate) struct FileRule {
    /// Without a trailing `/` (except the root), or ending in `*` for a raw prefix.
    pub prefix: Box<str>,
    pub raw_prefix: bool,
    pub access: FileAccess,
    pub action: BehaviorAction,
    pub penalty: i32,
}

#[derive(Clone, Debug)]
pub(crate) struct NetworkRule {
    pub source: Box<str>,
    pub cidr: Cidr,
    pub ports: Box<[u16]>,
    pub action: BehaviorAction,
    pub penalty: i32,
}

impl FileRule {
    pub fn new(prefix: &str, access: FileAccess, action: BehaviorAction, penalty: i32) -> Self {
        let (prefix, raw_prefix) = match prefix.strip_suffix('*') {
            Some(p) => (p, true),
            None => (
                if prefix.len() > 1 {
                    prefix.trim_end_matches('/')
                } else {
                    prefix
                },
                false,
            ),
        };
        Self {
            prefix: prefix.into(),
            raw_prefix,
            access,
            action,
            penalty,
        }
    }

    #[inline]
    pub fn matches(&self, path: &str, access: FileAccess) -> bool {
        let access_ok = match (self.access, access) {
            (FileAccess::Any, _) | (_, FileAccess::Any) => true,
            (a, b) => a == b,
        };
        access_ok && path_under(&self.prefix, self.raw_prefix, path)
    }
}

/// Whether `path` is `prefix` or under it (`/etc` covers `/etc/passwd`, not `/etcetera`).
#[inline]
pub(crate) fn path_under(prefix: &str, raw: bool, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => raw || rest.is_empty() || rest.starts_with('/') || prefix.ends_with('/'),
    }
}

impl NetworkRule {
    #[inline]
    pub fn matches(&self, ip: IpAddr, port: u16) -> bool {
        self.cidr.contains(ip) && (self.ports.is_empty() || self.ports.contains(&port))
    }
}

pub(crate) fn strictness(action: BehaviorAction) -> u8 {
    match action {
        BehaviorAction::Allow => 0,
        BehaviorAction::Alert => 1,
        BehaviorAction::Deny => 2,
    }
}

/// Pick the winner among matching rules by (specificity, strictness).
pub(crate) fn best<R>(
    rules: &[R],
    is_match: impl Fn(&R) -> bool,
    rank: impl Fn(&R) -> (usize, u8),
) -> Option<(usize, &R)> {
    let mut winner: Option<(usize, &R, (usize, u8))> = None;
    for (i, rule) in rules.iter().enumerate() {
        if is_match(rule) {
            let r = rank(rule);
            if winner.as_ref().is_none_or(|(_, _, w)| r > *w) {
                winner = Some((i, rule, r));
            }
        }
    }
    winner.map(|(i, r, _)| (i, r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let net = Cidr::parse("10.96.0.0/12").unwrap();
        assert!(net.contains("10.100.1.2".parse().unwrap()));
        assert!(!net.contains("10.112.0.0".parse().unwrap()));
        assert!(net.contains("::ffff:10.96.0.1".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("::/0")
                .unwrap()
                .contains("2001:db8::1".parse().unwrap())
        );
        assert!(
            Cidr::parse("169.254.169.254/32")
                .unwrap()
                .contains("169.254.169.254".parse().unwrap())
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0/8",
        ] {
            assert!(Cidr::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn path_prefixes() {
        assert!(path_under("/etc", false, "/etc"));
        assert!(path_under("/etc", false, "/etc/passwd"));
        assert!(!path_under("/etc", false, "/etcetera"));
        assert!(path_under("/", false, "/anything"));
        assert!(path_under("/tmp/x", true, "/tmp/xyz"));
    }
}
