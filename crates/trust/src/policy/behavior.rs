//! Behaviour rules over executables, files and network destinations.
//!
//! When several rules match one event, the **most specific** wins: the longest literal
//! executable pattern, the longest path prefix, the longest CIDR prefix (a rule naming ports
//! beats one that does not at equal prefix). Among equally specific rules the strictest
//! action wins (`deny` over `alert` over `allow`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::pattern::Glob;
use super::spec::{BehaviorAction, FileAccess};

/// An IPv4 or IPv6 network, the one CIDR type of the trust rules, the wire (enforcement sets)
/// and the probe's kernel maps. IPv4-mapped IPv6 addresses match IPv4 networks.
///
/// Parsed strictly, the same everywhere: `address/prefix`, nothing around it; the address as
/// the standard library reads it (no leading zeros in IPv4 octets, which other parsers read as
/// octal); the prefix 1 to 3 decimal digits, no sign; host bits cleared (`10.1.2.3/8` is
/// `10.0.0.0/8`). A bare address is not a network, and an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is refused: it would match nothing here (mapped destinations are
/// IPv4) while the kernel would refuse connects to it; write the IPv4 network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(IpNet);

impl Cidr {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, len) = text.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            return None;
        }
        let net = IpNet::new(addr, len.parse().ok()?).ok()?;
        Some(Self(net.trunc()))
    }

    /// The network (host bits cleared).
    pub fn net(&self) -> IpNet {
        self.0
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }

    /// Whether every address of `other` is in this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        self.0.contains(&other.0)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text).ok_or_else(|| CidrError(text.to_owned()))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A text that is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 or IPv6 CIDR such as 10.0.0.0/8")]
pub struct CidrError(pub String);

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

    /// The cases where this parser and the probe's old one disagreed, and the neighbours
    /// where lax parsers differ (leading zeros, signs, spaces, mapped addresses).
    #[test]
    fn cidrs_are_parsed_strictly_and_canonically() {
        let canonical = |text: &str| Cidr::parse(text).map(|c| c.to_string());
        assert_eq!(canonical("10.1.2.3/8").as_deref(), Some("10.0.0.0/8"));
        assert_eq!(canonical("fd12::1/8").as_deref(), Some("fd00::/8"));
        assert_eq!(canonical("10.0.0.0/008").as_deref(), Some("10.0.0.0/8"));
        for bad in [
            "10.0.0.1",
            "fd00::1",
            "10.0.0.0/+8",
            "10.0.0.0/-8",
            "10.0.0.0/0008",
            "010.0.0.0/8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0.0/ 8",
            "10.0.0.0 /8",
            "::ffff:10.0.0.0/104",
            "::ffff:0:0/96",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        let wide = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(wide.covers(&Cidr::parse("10.1.0.0/16").unwrap()));
        assert!(!Cidr::parse("10.1.0.0/16").unwrap().covers(&wide));
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
