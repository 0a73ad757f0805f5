//! The loops measured: execs, opens (repeated and of new paths), connects, and the open
//! generator of the zero-drop rate search.

use std::ffi::CString;
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use super::GENERATORS;

pub(crate) fn exec_loop(n: usize) {
    for _ in 0..n {
        let status = Command::new("/bin/true").status().unwrap();
        assert!(status.success());
    }
}

pub(crate) fn open_loop(n: usize) {
    open_path_loop("/etc/hostname", n);
}

/// open+close of `path`, n times.
pub(crate) fn open_path_loop(path: &str, n: usize) {
    let path = CString::new(path).unwrap();
    for _ in 0..n {
        // SAFETY: a valid C string; the descriptor is closed at once.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            assert!(fd >= 0);
            libc::close(fd);
        }
    }
}

pub(crate) fn connect_loop(target: SocketAddr, n: usize) {
    for _ in 0..n {
        let stream = TcpStream::connect(target).unwrap();
        // Reset instead of TIME_WAIT, so thousands of connects do not exhaust ports.
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: a valid socket and a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&stream),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// Opens of a path never opened before (`/nonexistent-meshlogic-bench/<n>`): each fails with
/// ENOENT, and each is an event the kernel sends.
pub(crate) fn open_distinct_loop(n: usize) {
    let mut path = *b"/nonexistent-meshlogic-bench/0000000000\0";
    let digits = path.len() - 11..path.len() - 1;
    for _ in 0..n {
        next_name(&mut path[digits.clone()]);
        // SAFETY: a NUL-terminated path; the open fails.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
        }
    }
}

/// Counts up in ASCII decimal digits, in place.
pub(crate) fn next_name(digits: &mut [u8]) {
    for digit in digits.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return;
        }
    }
}

/// Opens at `rate` per second (u64::MAX: as fast as possible) from GENERATORS threads, each of
/// a path not opened before, so that each is an event (repeats would be counted in the kernel).
pub(crate) fn generate(rate: u64, duration: Duration) -> Duration {
    let start = Instant::now();
    let threads: Vec<_> = (0..GENERATORS)
        .map(|thread| {
            let per_thread = rate / GENERATORS as u64;
            std::thread::spawn(move || {
                let mut path = *b"/nonexistent-meshlogic-bench/0-0000000000\0";
                path[29] = b'0' + thread as u8;
                let digits = path.len() - 11..path.len() - 1;
                let begun = Instant::now();
                let mut done = 0u64;
                while begun.elapsed() < duration {
                    for _ in 0..256 {
                        next_name(&mut path[digits.clone()]);
                        // SAFETY: a NUL-terminated path; the open fails.
                        unsafe {
                            libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC);
                        }
                    }
                    done += 256;
                    if per_thread != u64::MAX / GENERATORS as u64 {
                        let due = Duration::from_secs_f64(done as f64 / per_thread as f64);
                        if let Some(ahead) = due.checked_sub(begun.elapsed()) {
                            std::thread::sleep(ahead);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    start.elapsed()
}
