//! Events as read in place from the ring buffer: `struct event_header` of `bpf/probe.h`, through
//! the type the skeleton generates from it, then `path_len` bytes of path with its NUL.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use super::skel::types::{
    counter as Counter, event_header as EventHeader, event_kind as EventKind, pod_flag as PodFlag,
    probe_limit as Limit,
};
use crate::aggregate::{Observation, open_flags_write};

pub const HEADER_LEN: usize = std::mem::size_of::<EventHeader>();
/// Bytes of a path in an event and in a mute path key, its NUL included.
pub const PATH_LEN: usize = Limit::PATH_LEN.0 as usize;
/// Bytes of an executable path in a deny_exec key.
pub const EXEC_KEY_PATH: usize = Limit::EXEC_KEY_PATH.0 as usize;
/// Ports of one net_rule.
pub const MAX_PORTS: usize = Limit::MAX_PORTS.0 as usize;
/// Kernel counters, the length of the `counters` per-CPU array.
pub const COUNTERS: usize = Counter::C_COUNT.0 as usize;

/// One event as read from the ring buffer, borrowing its bytes.
#[derive(Debug)]
pub struct RawEvent<'a> {
    pub header: &'a EventHeader,
    pub path: Cow<'a, str>,
}

impl<'a> RawEvent<'a> {
    pub fn parse(data: &'a [u8]) -> Option<Self> {
        let header: &EventHeader = plain::from_bytes(data.get(..HEADER_LEN)?).ok()?;
        let rest = &data[HEADER_LEN..];
        let len = (header.path_len as usize).min(rest.len());
        let bytes = &rest[..len];
        let bytes = match bytes.iter().position(|b| *b == 0) {
            Some(nul) => &bytes[..nul],
            None => bytes,
        };
        Some(Self {
            header,
            path: String::from_utf8_lossy(bytes),
        })
    }

    fn ip(&self) -> IpAddr {
        let addr = self.header.addr;
        if self.header.family == libc::AF_INET6 as u16 {
            IpAddr::V6(Ipv6Addr::from(addr))
        } else {
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
        }
    }

    pub fn observation(&self) -> Option<Observation<'_>> {
        let port = self.header.port;
        Some(match self.header.kind {
            EventKind::EV_EXEC => Observation::Exec { path: &self.path },
            EventKind::EV_EXIT => Observation::Exit,
            EventKind::EV_OPEN => Observation::Open {
                path: &self.path,
                write: open_flags_write(self.header.flags),
            },
            EventKind::EV_CONNECT => Observation::Connect {
                ip: self.ip(),
                port,
            },
            EventKind::EV_BLOCKED_CONNECT => Observation::BlockedConnect {
                ip: self.ip(),
                port,
            },
            EventKind::EV_BLOCKED_EXEC => Observation::BlockedExec { path: &self.path },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::kernel::skel::types;

    /// The event is its header then its path, with no padding between that user space would
    /// have to know of.
    #[test]
    fn the_path_follows_the_header() {
        assert_eq!(offset_of!(types::event, path), HEADER_LEN);
        assert_eq!(size_of::<types::event>(), HEADER_LEN + PATH_LEN);
        assert_eq!(HEADER_LEN % 8, 0, "the path is 8-byte aligned");
    }

    #[test]
    fn an_event_parses_with_its_path() {
        let header = EventHeader {
            kind: EventKind::EV_OPEN,
            flags: libc::O_WRONLY,
            path_len: 5,
            ..Default::default()
        };
        #[repr(C, align(8))]
        struct Buffer([u8; HEADER_LEN + 8]);
        let mut buffer = Buffer([0; HEADER_LEN + 8]);
        // SAFETY: EventHeader is plain old data.
        let bytes = unsafe { plain::as_bytes(&header) };
        buffer.0[..HEADER_LEN].copy_from_slice(bytes);
        buffer.0[HEADER_LEN..HEADER_LEN + 5].copy_from_slice(b"/tmp\0");
        let event = RawEvent::parse(&buffer.0[..HEADER_LEN + 5]).unwrap();
        match event.observation().unwrap() {
            Observation::Open { path, write } => assert_eq!((path, write), ("/tmp", true)),
            other => panic!("{other:?}"),
        }
        assert!(RawEvent::parse(&buffer.0[..HEADER_LEN - 1]).is_none());
    }
}
