//! The event header shared with `bpf/probe.h` (`struct event` up to its path), read in place
//! from the ring buffer; the path follows it, `path_len` bytes with its NUL.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::aggregate::{Observation, open_flags_write};

pub const EV_EXEC: u32 = 1;
pub const EV_EXIT: u32 = 2;
pub const EV_OPEN: u32 = 3;
pub const EV_CONNECT: u32 = 4;
pub const EV_BLOCKED_CONNECT: u32 = 5;
pub const EV_BLOCKED_EXEC: u32 = 6;
/// A pod cgroup created and marked watched by the kernel; the path is the cgroup's.
pub const EV_POD_CGROUP: u32 = 7;

/// Kernel counters, indexes of the `counters` per-CPU array (`enum counter` in probe.h).
pub const C_RINGBUF_DROPS: usize = 0;
pub const C_MUTED: usize = 1;
pub const C_EXEC: usize = 2;
pub const C_EXIT: usize = 3;
pub const C_OPEN: usize = 4;
pub const C_CONNECT: usize = 5;
pub const C_BLOCKED_CONNECT: usize = 6;
pub const C_BLOCKED_EXEC: usize = 7;
pub const C_UNWATCHED: usize = 8;
pub const C_OPEN_REPEATED: usize = 9;
pub const C_RUNTIME_SETUP: usize = 10;
pub const C_COUNT: usize = 11;

pub const PATH_LEN: usize = 256;
pub const EXEC_KEY_PATH: usize = 240;
pub const MAX_PORTS: usize = 16;

/// `struct pod_of` (a value of the cgroup_pod map): its size, and where its cumulative count of
/// repeated opens (a u64) lies; its pod cgroup id is its first u64.
pub const POD_OF_LEN: usize = 32;
pub const POD_OF_REPEATED_OPENS: usize = 24;

pub const POD_WATCHED: u32 = 1;
pub const POD_ENFORCED: u32 = 2;
pub const POD_QUARANTINED: u32 = 4;

/// `struct event` without its path.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EventHeader {
    pub pod_cgroup_id: u64,
    pub pid: u32,
    pub tgid: u32,
    pub ppid: u32,
    pub kind: u32,
    pub flags: i32,
    pub family: u16,
    pub port: u16,
    pub addr: [u8; 16],
    pub comm: [u8; 16],
    pub path_len: u32,
    pub reserved: u32,
}

// SAFETY: plain old data: integers and byte arrays, every bit pattern valid.
unsafe impl plain::Plain for EventHeader {}

pub const HEADER_LEN: usize = std::mem::size_of::<EventHeader>();

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
            EV_EXEC => Observation::Exec { path: &self.path },
            EV_EXIT => Observation::Exit,
            EV_OPEN => Observation::Open {
                path: &self.path,
                write: open_flags_write(self.header.flags),
            },
            EV_CONNECT => Observation::Connect {
                ip: self.ip(),
                port,
            },
            EV_BLOCKED_CONNECT => Observation::BlockedConnect {
                ip: self.ip(),
                port,
            },
            EV_BLOCKED_EXEC => Observation::BlockedExec { path: &self.path },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;
    use crate::kernel::skel::types;

    /// The mirror matches the C struct as compiled (the skeleton's BTF-generated type).
    #[test]
    fn the_header_mirrors_the_c_event() {
        assert_eq!(HEADER_LEN, offset_of!(types::event, path));
        assert_eq!(size_of::<types::event>(), HEADER_LEN + PATH_LEN);
        assert_eq!(
            offset_of!(EventHeader, pod_cgroup_id),
            offset_of!(types::event, pod_cgroup_id)
        );
        assert_eq!(
            offset_of!(EventHeader, kind),
            offset_of!(types::event, kind)
        );
        assert_eq!(
            offset_of!(EventHeader, flags),
            offset_of!(types::event, flags)
        );
        assert_eq!(
            offset_of!(EventHeader, port),
            offset_of!(types::event, port)
        );
        assert_eq!(
            offset_of!(EventHeader, addr),
            offset_of!(types::event, addr)
        );
        assert_eq!(
            offset_of!(EventHeader, path_len),
            offset_of!(types::event, path_len)
        );
        assert_eq!(size_of::<types::exec_key>(), 4 + 8 + EXEC_KEY_PATH);
        assert_eq!(size_of::<types::path_key>(), 4 + PATH_LEN);
        assert_eq!(size_of::<types::net4_key>(), 4 + 8 + 4);
        assert_eq!(size_of::<types::net6_key>(), 4 + 8 + 16);
        assert_eq!(size_of::<types::net_rule>(), 4 + 2 * MAX_PORTS);
        assert_eq!(size_of::<types::dest_key>(), 8 + 16 + 4 + 4);
        assert_eq!(size_of::<types::open_key>(), 8 + 8 + 4 + 4 + 4 + 4);
        assert_eq!(size_of::<types::pod_of>(), POD_OF_LEN);
        assert_eq!(
            offset_of!(types::pod_of, repeated_opens),
            POD_OF_REPEATED_OPENS
        );
    }

    #[test]
    fn an_event_parses_with_its_path() {
        let header = EventHeader {
            kind: EV_OPEN,
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
