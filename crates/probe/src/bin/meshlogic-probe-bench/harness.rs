//! The probe under test (the real binary), the trust API stub it reports to, its metrics, and
//! the cgroups the bench moves between.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// (open events delivered, ring-buffer drops) from the probe's /metrics.
pub(crate) fn scrape(addr: SocketAddr) -> (f64, f64) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let value = |prefix: &str| {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("meshlogic_probe_events_total{kind=\"open\"}"),
        value("meshlogic_probe_ring_buffer_drops_total"),
    )
}

/// Starts the real probe binary in the original cgroup, with `ebpf` as its spec's `ebpf` (JSON);
/// waits for its /ready.
/// A loopback server that accepts connects and closes them at once: the connect loops' target.
pub(crate) fn connect_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // A deep accept queue: with std's 128, a moment without the accept thread on a CPU drops
    // SYNs, and their 1 s retransmits would show up as connect wall time.
    // SAFETY: listen(2) on a listening socket only changes its backlog.
    unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 4096) };
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    target
}

/// [`start_probe`] told `ebpf.enableFile: false` (no file hook at all).
pub(crate) fn start_probe_without_files(
    root: &Path,
    original: &Path,
    trust: &SocketAddr,
) -> (Child, SocketAddr) {
    start_probe(root, original, trust, r#"{"enableFile":false}"#, None)
}

pub(crate) fn start_probe(
    root: &Path,
    original: &Path,
    trust: &SocketAddr,
    ebpf: &str,
    file_hook: Option<&str>,
) -> (Child, SocketAddr) {
    let dir = std::env::temp_dir().join(format!("meshlogic-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"agent":"bench/bench","spec":{{"customerId":"bench","reportIntervalSeconds":1,"ebpf":{ebpf}}}}}"#
        ),
    )
    .unwrap();
    let token = dir.join("token");
    std::fs::write(&token, "bench").unwrap();
    let metrics: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let binary = std::env::current_exe()
        .unwrap()
        .with_file_name("meshlogic-probe");
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec \"$0\" \"$@\"",
            original.display()
        ))
        .arg(&binary)
        .args([
            "--config",
            config.to_str().unwrap(),
            "--node-name",
            "bench",
            "--no-kube",
        ])
        .args([
            "--trust-api",
            &format!("http://{trust}"),
            "--token-file",
            token.to_str().unwrap(),
        ])
        .args([
            "--cgroup-root",
            root.to_str().unwrap(),
            "--metrics-addr",
            &metrics.to_string(),
        ])
        .env("AGENTMESH_LOG_LEVEL", "warn")
        .env("MESHLOGIC_FILE_HOOK", file_hook.unwrap_or("auto"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
    let start = Instant::now();
    loop {
        if let Ok(mut stream) = TcpStream::connect(metrics) {
            let _ =
                stream.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut text = String::new();
            let _ = stream.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                assert!(
                    text.contains(r#""tier":2"#),
                    "the probe is not at tier 2: {text}"
                );
                break;
            }
        }
        // Long enough for a VM under emulation (bench-kernels) to verify the programs.
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the probe did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The pod cgroup is picked up by the next scan.
    std::thread::sleep(Duration::from_millis(1200));
    (child, metrics)
}

pub(crate) fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

pub(crate) fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A trust API that accepts every report.
pub(crate) fn trust_stub() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_request| async {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(202)
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
                                .unwrap(),
                        )
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    addr
}

pub(crate) fn cgroup2_root() -> PathBuf {
    if let Ok(root) = std::env::var("MESHLOGIC_CGROUP_ROOT") {
        return root.into();
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).unwrap().into())
        })
        .expect("no cgroup2 mount")
}

pub(crate) fn own_cgroup(root: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no cgroup v2 line");
    root.join(relative.trim_start_matches('/'))
}

pub(crate) fn move_to(cgroup: &Path) {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .unwrap_or_else(|e| panic!("moving into {}: {e}", cgroup.display()));
}

pub(crate) fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir)
}
