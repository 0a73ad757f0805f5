//! The accept loop out of file descriptors (`EMFILE`, the error a connection flood ends in):
//! the server pauses (10 ms, doubling to 1 s) instead of retrying `accept` in a busy loop, and
//! serves the waiting connection as soon as descriptors are free again. Its own test binary:
//! it lowers the process's descriptor limit.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::Response;
use hyper::body::Bytes;

fn set_soft_limit(limit: u64) -> u64 {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) },
        0
    );
    let wanted = libc::rlimit {
        rlim_cur: limit,
        rlim_max: current.rlim_max,
    };
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) }, 0);
    current.rlim_cur
}

/// CPU time (user + system) of the whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_server_pauses_and_serves_again_when_they_are_free() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentmesh_runtime::serve(
        "test",
        listener,
        agentmesh_runtime::Plain,
        agentmesh_runtime::Limits::default(),
        |_request, _peer| async { Response::new(Full::new(Bytes::from_static(b"served"))) },
        std::future::pending(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Every descriptor taken, then one given back to a client: its connection waits in the
    // listen backlog, and the server's `accept` fails with EMFILE until descriptors are free.
    let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let previous = set_soft_limit(open + 32);
    let mut hogs = Vec::new();
    let error = loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(error) => break error,
        }
        assert!(hogs.len() < 10_000, "the descriptor limit does not hold");
    };
    assert_eq!(error.raw_os_error(), Some(libc::EMFILE), "{error}");
    hogs.pop();
    let mut client = std::net::TcpStream::connect(addr).expect("a connection in the backlog");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .unwrap();

    // A second of EMFILE: a busy loop would burn most of a core; the pauses burn nearly none.
    let (cpu, wall) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burnt = cpu_time() - cpu;
    let elapsed = wall.elapsed();
    assert!(
        burnt < elapsed / 5,
        "{burnt:?} of CPU in {elapsed:?} while accept fails: a busy loop"
    );

    // Descriptors free again: the waiting connection is served within the longest pause.
    drop(hogs);
    let started = Instant::now();
    let answer = tokio::task::spawn_blocking(move || {
        let mut answer = String::new();
        client.read_to_string(&mut answer).map(|_| answer)
    })
    .await
    .unwrap()
    .expect("an answer once descriptors are free");
    assert!(answer.ends_with("served"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    set_soft_limit(previous);
    eprintln!(
        "accept_errors: {burnt:?} of CPU in {elapsed:?} out of descriptors; served {:?} after they were freed",
        started.elapsed()
    );
}
