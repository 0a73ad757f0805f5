//! `make bench-sidecar`: what the sidecar adds to an MCP `tools/call`, against baselines
//! measured in the same run, everything on 127.0.0.1.
//!
//! - **upstream**: a minimal hyper HTTP/1 keep-alive server (one thread of this process)
//!   answering every POST with the same JSON-RPC `tools/call` result;
//! - **direct**: the load generator straight to the upstream;
//! - **bare**: a pass-through proxy (hyper server + hyper-util legacy client) that reads the
//!   request body, forwards it, streams the answer back and parses nothing: what any proxy
//!   costs. It is this binary re-executed (`--bare-proxy`), so that it runs like the sidecar: its
//!   own process, a `#[tokio::main]` runtime, the same socket options;
//! - **sidecar**: the real `agentmesh-sidecar` release binary (next to this one) with
//!   `AGENTMESH_UPSTREAMS` at the upstream and a policy file (standard preset, three
//!   `tools.deny`, a `tools.rules` rate limit of 1,000,000 calls/s matching the tool called).
//!
//! The request is a 1 KiB `tools/call` of `search_docs` with the headers an MCP client sends;
//! every answer is checked (a denial or an error stops the bench). The load generator is a
//! hyper HTTP/1 client (`client::conn`, no pool) on a single-threaded runtime on the main
//! thread. Its CPU time is printed per variant ("client busy"): it does the same work per
//! request whatever it talks to, reaches the direct rate, and stays well below one core
//! against the proxies, so it is not what limits them.
//!
//! Each round measures latency (closed loop, one keep-alive connection: `LATENCY_BLOCKS`
//! blocks per variant, alternating, a new connection each) then throughput (`CONNECTIONS`
//! keep-alive connections for `THROUGHPUT_SECONDS` per variant, back to back); the variants'
//! order rotates every round. The summary is the median over the rounds of each round's ratio:
//! the machine is shared and its speed drifts. CPU per request comes from `schedstat` of the
//! processes' threads. Then a fresh sidecar is driven open-loop at `RSS_RATE` requests/s for
//! `RSS_SECONDS` while its VmRSS is sampled; its VmHWM is read at the end.
//!
//! Knobs (environment): `SIDECAR_BENCH_ROUNDS`, `SIDECAR_BENCH_REQUESTS`,
//! `SIDECAR_BENCH_CONNECTIONS`, `SIDECAR_BENCH_SECONDS`, `SIDECAR_BENCH_RSS_SECONDS`.
//! `SIDECAR_BENCH_PROFILE=<seconds>` only drives the sidecar (`SIDECAR_BENCH_PROFILE_TARGET=bare`:
//! the bare proxy) at full load for that long, printing its pid, e.g. for
//! `perf record -F 4000 --call-graph dwarf -p <pid> -- sleep 10`.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ROUNDS: usize = 5;
const LATENCY_REQUESTS: usize = 20_000;
const WARMUP_REQUESTS: usize = 2_000;
/// Latency is measured in blocks of `requests / LATENCY_BLOCKS` per variant, alternating.
const LATENCY_BLOCKS: usize = 10;
const BLOCK_WARMUP: usize = 100;
const CONNECTIONS: usize = 16;
const THROUGHPUT_SECONDS: f64 = 3.0;
const RSS_RATE: u64 = 1_000;
const RSS_SECONDS: u64 = 10;

const BODY_SIZE: usize = 1024;
/// The upstream's answer (a `tools/call` result, 200-odd bytes).
const ANSWER: &[u8] = br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"Found 3 documents matching the query: operator-guide.md (score 0.91), sidecar.md (score 0.87), trust-policy.md (score 0.80)."}],"isError":false}}"#;
const SESSION: &str = "7f1c2a9e-4b3d-4e8a-9c61-2d5f0b8e3a17";
/// Routed path on the sidecar; the upstream and the bare proxy see `/mcp`.
const SIDECAR_PATH: &str = "/servers/search/mcp";
const POLICY: &str = "\
preset: standard
tools:
  deny: [delete_*, send_email, get_env]
  rules:
  - tool: search_*
    rateLimit: {requests: 1000000, periodSeconds: 1}
";

/// PIDs of the sidecars started, killed on SIGINT/SIGTERM too.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 1 KiB `tools/call` body: valid JSON-RPC, the argument padded to the size.
fn request_body() -> Bytes {
    let head = r#"{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_docs","arguments":{"query":"how does the sidecar judge tool calls","limit":5,"filter":""#;
    let tail = r#""}}}"#;
    let pad = BODY_SIZE - head.len() - tail.len();
    let filter: String = "lorem ipsum dolor sit amet "
        .chars()
        .cycle()
        .take(pad)
        .collect();
    let body = format!("{head}{filter}{tail}");
    assert_eq!(body.len(), BODY_SIZE);
    serde_json::from_str::<serde_json::Value>(&body).expect("the request body is JSON");
    Bytes::from(body)
}

// ---- upstream and bare proxy (in this process, each on its own runtime) ----

async fn upstream(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                let _ = request.into_body().collect().await;
                let mut response = Response::new(Full::new(Bytes::from_static(ANSWER)));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A pass-through proxy: the request read whole and forwarded, the answer streamed back.
/// Sockets as the sidecar sets them: `TCP_NODELAY` towards the upstream, defaults on accept.
async fn bare_proxy(listener: TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let authority: hyper::http::uri::Authority = upstream.to_string().parse().unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (client, authority) = (client.clone(), authority.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                forward(client.clone(), authority.clone(), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn forward(
    client: Client<HttpConnector, Full<Bytes>>,
    authority: hyper::http::uri::Authority,
    request: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let (mut parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut uri = parts.uri.into_parts();
    uri.scheme = Some(hyper::http::uri::Scheme::HTTP);
    uri.authority = Some(authority);
    parts.uri = hyper::Uri::from_parts(uri)?;
    Ok(client
        .request(Request::from_parts(parts, Full::new(body)))
        .await?)
}

fn bind() -> (std::net::TcpListener, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding on loopback");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

// ---- child processes: the sidecar, and the bare proxy (this binary, `--bare-proxy`) ----

/// A child process, killed when dropped.
struct Sidecar {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        CHILDREN
            .lock()
            .unwrap()
            .retain(|pid| *pid != self.child.id());
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sidecar_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench's own path");
    let path = exe.with_file_name("agentmesh-sidecar");
    if !path.exists() {
        eprintln!(
            "agentmesh-sidecar-bench: no {} (build it: cargo build --release --locked -p agentmesh-sidecar --bins)",
            path.display()
        );
        std::process::exit(2);
    }
    path
}

fn start_sidecar(upstream: SocketAddr, tag: &str) -> Sidecar {
    let dir = std::env::temp_dir().join(format!(
        "agentmesh-sidecar-bench-{}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("policy.yaml"), POLICY).unwrap();
    let key = agentmesh_identity::SigningKey::from_bytes(&[7; 32]);
    let pem = agentmesh_identity::keys::private_key_to_pem(&key).unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let child = Command::new(sidecar_binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AGENTMESH_SIDECAR_PROXY_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "AGENTMESH_SIDECAR_METRICS_ADDR",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("AGENTMESH_SIDECAR_HEALTHY_FILE", dir.join("healthy"))
        .env("AGENTMESH_AGENT_PRIVATE_KEY", pem)
        .env("AGENTMESH_UPSTREAMS", format!("search=http://{upstream}"))
        .env("AGENTMESH_SIDECAR_POLICY_FILE", dir.join("policy.yaml"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("sidecar.log")).unwrap(),
        ))
        .spawn()
        .expect("starting agentmesh-sidecar");
    CHILDREN.lock().unwrap().push(child.id());
    let mut sidecar = Sidecar {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    };
    // Serving once /health says the key is loaded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = sidecar.child.try_wait() {
            let log = std::fs::read_to_string(sidecar.dir.join("sidecar.log")).unwrap_or_default();
            panic!("agentmesh-sidecar exited ({status}):\n{log}");
        }
        if http_get_status(sidecar.addr, "/health") == Some(200) {
            return sidecar;
        }
        assert!(
            Instant::now() < deadline,
            "agentmesh-sidecar not healthy after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The bare proxy in its own process, like the sidecar (same process topology, same
/// `#[tokio::main]` runtime: one worker per CPU).
fn start_bare(upstream: SocketAddr) -> Sidecar {
    let port = free_port();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--bare-proxy",
            &format!("127.0.0.1:{port}"),
            &upstream.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the bare proxy");
    CHILDREN.lock().unwrap().push(child.id());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "the bare proxy does not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    Sidecar {
        child,
        addr,
        dir: PathBuf::new(),
    }
}

#[tokio::main]
async fn bare_proxy_main(listen: SocketAddr, upstream: SocketAddr) {
    let listener = TcpListener::bind(listen)
        .await
        .expect("binding the bare proxy");
    bare_proxy(listener, upstream).await;
}

fn http_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

/// `VmRSS` and `VmHWM` of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU time (ns, from `schedstat`) of the threads of `pid` whose name starts with `prefix`.
fn cpu_ns(pid: &str, prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with(prefix))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn own_thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

// ---- the load generator ----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Direct,
    Bare,
    Sidecar,
}

const VARIANTS: [Variant; 3] = [Variant::Direct, Variant::Bare, Variant::Sidecar];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Bare => "bare",
            Variant::Sidecar => "sidecar",
        }
    }
}

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    path: &'static str,
    body: Bytes,
}

impl Target {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = hyper::Uri::from_static(self.path);
        let headers = request.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        headers.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-06-18"),
        );
        headers.insert("mcp-session-id", HeaderValue::from_static(SESSION));
        request
    }
}

async fn connect(target: &Target) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(target.addr).await.expect("connecting");
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    sender
}

/// One call; panics unless the upstream's answer comes back (a denial or an error would make
/// the numbers meaningless).
async fn call(sender: &mut SendRequest<Full<Bytes>>, target: &Target, check_body: bool) {
    sender.ready().await.expect("connection ready");
    let response = sender
        .send_request(target.request())
        .await
        .expect("request sent");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("answer read")
        .to_bytes();
    if status != StatusCode::OK || body.len() != ANSWER.len() || (check_body && body != ANSWER) {
        panic!(
            "unexpected answer from {:?}: {status} {}",
            target.addr,
            String::from_utf8_lossy(&body)
        );
    }
}

struct Latency {
    p50: f64,
    p99: f64,
}

/// Closed loop on one connection: `requests` call durations (ns) after `warmup` calls.
async fn closed_loop(target: &Target, warmup: usize, requests: usize, samples: &mut Vec<u64>) {
    let mut sender = connect(target).await;
    call(&mut sender, target, true).await;
    for _ in 0..warmup {
        call(&mut sender, target, false).await;
    }
    for _ in 0..requests {
        let start = Instant::now();
        call(&mut sender, target, false).await;
        samples.push(start.elapsed().as_nanos() as u64);
    }
}

/// One round of latency: `LATENCY_BLOCKS` blocks, each a fresh connection per variant, the
/// variants alternating (so that a slow moment of the machine, or where the proxies' tasks
/// happened to land on their two workers, is shared rather than pinned on one variant);
/// p50 and p99 (µs) over the round's calls.
async fn latency_round(targets: &[Target; 3], order: [usize; 3], requests: usize) -> [Latency; 3] {
    let mut samples: [Vec<u64>; 3] = Default::default();
    let per_block = requests.div_ceil(LATENCY_BLOCKS);
    for _ in 0..LATENCY_BLOCKS {
        for i in order {
            closed_loop(&targets[i], BLOCK_WARMUP, per_block, &mut samples[i]).await;
        }
    }
    samples.map(|mut samples| {
        samples.sort_unstable();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)] as f64 / 1e3;
        Latency {
            p50: at(50),
            p99: at(99),
        }
    })
}

struct Throughput {
    rps: f64,
    /// CPU per request, µs: the load generator, the upstream, the proxy.
    client_us: f64,
    upstream_us: f64,
    proxy_us: f64,
    /// Share of one core the load generator used.
    client_busy: f64,
}

/// `connections` closed loops in parallel for `seconds`.
async fn throughput(
    target: &Target,
    connections: usize,
    seconds: f64,
    proxy: Option<(&str, &str)>,
) -> Throughput {
    let mut senders = Vec::new();
    for _ in 0..connections {
        let mut sender = connect(target).await;
        for _ in 0..50 {
            call(&mut sender, target, false).await;
        }
        senders.push(sender);
    }
    let proxy_cpu = || proxy.map_or(0, |(pid, prefix)| cpu_ns(pid, prefix));
    let (client0, upstream0, proxy0) = (
        own_thread_cpu_ns(),
        cpu_ns("self", "bench-upstream"),
        proxy_cpu(),
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    call(&mut sender, &target, false).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for task in tasks {
        done += task.await.expect("a load task");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (client1, upstream1, proxy1) = (
        own_thread_cpu_ns(),
        cpu_ns("self", "bench-upstream"),
        proxy_cpu(),
    );
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / 1e3 / done as f64;
    Throughput {
        rps: done as f64 / elapsed,
        client_us: per(client0, client1),
        upstream_us: per(upstream0, upstream1),
        proxy_us: per(proxy0, proxy1),
        client_busy: (client1 - client0) as f64 / 1e9 / elapsed,
    }
}

/// Open loop at `rate`/s for `seconds` through a pooled client; samples the sidecar's memory
/// every 100 ms. Returns (calls answered, p50 µs, p99 µs, peak sampled VmRSS KiB).
async fn open_loop(target: &Target, rate: u64, seconds: u64, pid: u32) -> (usize, f64, f64, u64) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let url: hyper::Uri = format!("http://{}{}", target.addr, target.path)
        .parse()
        .unwrap();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                peak.fetch_max(memory_kib(pid).0, Ordering::Relaxed);
            }
        })
    };
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = Vec::with_capacity((rate * seconds) as usize);
    for _ in 0..rate * seconds {
        tick.tick().await;
        let (client, url, target) = (client.clone(), url.clone(), target.clone());
        calls.push(tokio::spawn(async move {
            let mut request = target.request();
            *request.uri_mut() = url;
            let start = Instant::now();
            let response = client.request(request).await.ok()?;
            let ok = response.status() == StatusCode::OK;
            let body = response.into_body().collect().await.ok()?.to_bytes();
            (ok && body == ANSWER).then(|| start.elapsed().as_nanos() as u64)
        }));
    }
    let mut samples = Vec::new();
    for call in calls {
        if let Some(ns) = call.await.unwrap() {
            samples.push(ns);
        }
    }
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed).max(memory_kib(pid).0);
    samples.sort_unstable();
    let at = |q: usize| {
        samples
            .get(samples.len() * q / 100)
            .map_or(f64::NAN, |ns| *ns as f64 / 1e3)
    };
    (samples.len(), at(50), at(99), peak)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

fn kill_children_on_signal() {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        });
        for pid in CHILDREN.lock().unwrap().iter() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        std::process::exit(130);
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--bare-proxy" {
        bare_proxy_main(args[2].parse().unwrap(), args[3].parse().unwrap());
        return;
    }
    let rounds = knob("SIDECAR_BENCH_ROUNDS", ROUNDS);
    let requests = knob("SIDECAR_BENCH_REQUESTS", LATENCY_REQUESTS);
    let warmup = WARMUP_REQUESTS.min(requests);
    let connections = knob("SIDECAR_BENCH_CONNECTIONS", CONNECTIONS);
    let seconds = knob("SIDECAR_BENCH_SECONDS", THROUGHPUT_SECONDS);
    let rss_seconds = knob("SIDECAR_BENCH_RSS_SECONDS", RSS_SECONDS);
    let profile: u64 = knob("SIDECAR_BENCH_PROFILE", 0);
    let sidecar_path = sidecar_binary();
    kill_children_on_signal();

    // Upstream: one thread. Bare proxy: two workers.
    let (upstream_listener, upstream_addr) = bind();
    std::thread::Builder::new()
        .name("bench-upstream".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                upstream(TcpListener::from_std(upstream_listener).unwrap()).await
            });
        })
        .unwrap();
    let bare = start_bare(upstream_addr);
    let (bare_addr, bare_pid) = (bare.addr, bare.child.id().to_string());
    let sidecar = start_sidecar(upstream_addr, "rounds");
    let sidecar_pid = sidecar.child.id().to_string();
    let (idle_rss, _) = memory_kib(sidecar.child.id());

    // The load generator: this thread.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = request_body();
    let rounds_sidecar = sidecar.addr;
    let target_at = |variant: Variant, sidecar: SocketAddr| Target {
        addr: match variant {
            Variant::Direct => upstream_addr,
            Variant::Bare => bare_addr,
            Variant::Sidecar => sidecar,
        },
        path: if variant == Variant::Sidecar {
            SIDECAR_PATH
        } else {
            "/mcp"
        },
        body: body.clone(),
    };
    let target = |variant: Variant| target_at(variant, rounds_sidecar);

    if profile > 0 {
        let (variant, proxy) = match std::env::var("SIDECAR_BENCH_PROFILE_TARGET").as_deref() {
            Ok("bare") => (Variant::Bare, (bare_pid.as_str(), "")),
            _ => (Variant::Sidecar, (sidecar_pid.as_str(), "")),
        };
        println!(
            "profiling {}: pid {} under {connections} connections for {profile} s",
            variant.name(),
            proxy.0
        );
        let t = client.block_on(throughput(
            &target(variant),
            connections,
            profile as f64,
            Some(proxy),
        ));
        println!(
            "{:.0} requests/s, {} CPU {:.1} us/request",
            t.rps,
            variant.name(),
            t.proxy_us
        );
        return;
    }

    println!(
        "agentmesh-sidecar bench: tools/call of {BODY_SIZE} bytes, {}-byte JSON answer, HTTP/1.1 keep-alive on 127.0.0.1, {} CPUs",
        ANSWER.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "direct = client to upstream; bare = pass-through hyper proxy (this binary --bare-proxy, pid {}); sidecar = {} (pid {})",
        bare_pid,
        sidecar_path.display(),
        sidecar.child.id()
    );
    println!(
        "policy: standard preset, tools.deny [delete_*, send_email, get_env], tools.rules search_* at 1,000,000 calls/s"
    );
    println!(
        "{rounds} rounds, variants back to back in a rotated order; summary: the median over the rounds of each round's value (each quotient taken within its round)"
    );
    println!();
    println!(
        "latency: closed loop on 1 connection, {requests} calls per variant and round in {LATENCY_BLOCKS} alternating blocks (a new connection each, {BLOCK_WARMUP} calls warm-up), after {warmup} warm-up calls; throughput: {connections} connections x {seconds} s"
    );
    println!(
        "{:<6} {:>16} {:>16} {:>16} {:>14} {:>14} {:>8} | {:>8} {:>8} {:>8} {:>8} {:>13} {:>13}",
        "round",
        "direct p50/p99",
        "bare p50/p99",
        "sidecar p50/p99",
        "bare +p50/+p99",
        "side +p50/+p99",
        "sc/bare",
        "rps dir",
        "rps bare",
        "rps side",
        "side/dir",
        "cpu/req bare",
        "cpu/req side"
    );

    let targets = VARIANTS.map(target);
    for target in &targets {
        let mut ignored = Vec::new();
        client.block_on(closed_loop(target, warmup, 0, &mut ignored));
    }
    let mut lat: Vec<[Latency; 3]> = Vec::new();
    let mut thr: Vec<[Throughput; 3]> = Vec::new();
    for round in 0..rounds {
        let order = [round % 3, (round + 1) % 3, (round + 2) % 3];
        let l = client.block_on(latency_round(&targets, order, requests));
        let mut t: [Option<Throughput>; 3] = Default::default();
        for k in 0..3 {
            let i = (round + k) % 3;
            let proxy = match VARIANTS[i] {
                Variant::Direct => None,
                Variant::Bare => Some((bare_pid.as_str(), "")),
                Variant::Sidecar => Some((sidecar_pid.as_str(), "")),
            };
            t[i] = Some(client.block_on(throughput(
                &target(VARIANTS[i]),
                connections,
                seconds,
                proxy,
            )));
        }
        let t = t.map(Option::unwrap);
        let [d, b, s] = &l;
        println!(
            "{:<6} {:>7.1}/{:<8.1} {:>7.1}/{:<8.1} {:>7.1}/{:<8.1} {:>6.1}/{:<7.1} {:>6.1}/{:<7.1} {:>8.2} | {:>8.0} {:>8.0} {:>8.0} {:>8.2} {:>11.1}us {:>11.1}us",
            round + 1,
            d.p50,
            d.p99,
            b.p50,
            b.p99,
            s.p50,
            s.p99,
            b.p50 - d.p50,
            b.p99 - d.p99,
            s.p50 - d.p50,
            s.p99 - d.p99,
            (s.p50 - d.p50) / (b.p50 - d.p50),
            t[0].rps,
            t[1].rps,
            t[2].rps,
            t[2].rps / t[0].rps,
            t[1].proxy_us,
            t[2].proxy_us,
        );
        lat.push(l);
        thr.push(t);
    }
    let (rounds_rss, rounds_hwm) = memory_kib(sidecar.child.id());
    drop(sidecar);
    drop(bare);

    let m = |f: &dyn Fn(&[Latency; 3]) -> f64| median(lat.iter().map(f).collect());
    let n = |f: &dyn Fn(&[Throughput; 3]) -> f64| median(thr.iter().map(f).collect());
    println!();
    println!("medians over {rounds} rounds:");
    for (i, variant) in VARIANTS.iter().enumerate() {
        println!(
            "  {:<8} latency p50 {:>7.1} us  p99 {:>7.1} us   added over direct p50 {:>+7.1} us  p99 {:>+7.1} us",
            variant.name(),
            m(&|l| l[i].p50),
            m(&|l| l[i].p99),
            m(&|l| l[i].p50 - l[0].p50),
            m(&|l| l[i].p99 - l[0].p99),
        );
    }
    for (i, variant) in VARIANTS.iter().enumerate() {
        println!(
            "  {:<8} {:>8.0} requests/s   CPU per request: client {:>5.1} us, upstream {:>5.1} us, proxy {:>5.1} us   client busy {:>3.0}% of a core",
            variant.name(),
            n(&|t| t[i].rps),
            n(&|t| t[i].client_us),
            n(&|t| t[i].upstream_us),
            n(&|t| t[i].proxy_us),
            n(&|t| t[i].client_busy * 100.0),
        );
    }
    println!(
        "  sidecar memory: {:.1} MiB RSS idle after start; after the rounds VmRSS {:.1} MiB, VmHWM {:.1} MiB ({connections} connections)",
        idle_rss as f64 / 1024.0,
        rounds_rss as f64 / 1024.0,
        rounds_hwm as f64 / 1024.0
    );

    // Memory under a steady open-loop load, on a fresh sidecar so VmHWM is this load's.
    let sidecar = start_sidecar(upstream_addr, "rss");
    let (start_rss, _) = memory_kib(sidecar.child.id());
    let started = Instant::now();
    let (answered, p50, p99, peak_sampled) = client.block_on(open_loop(
        &target_at(Variant::Sidecar, sidecar.addr),
        RSS_RATE,
        rss_seconds,
        sidecar.child.id(),
    ));
    let achieved = answered as f64 / started.elapsed().as_secs_f64();
    let (rss, hwm) = memory_kib(sidecar.child.id());
    drop(sidecar);
    println!(
        "  fresh sidecar, open loop {RSS_RATE}/s for {rss_seconds} s: {answered} answered ({achieved:.0}/s), p50 {p50:.1} us, p99 {p99:.1} us; \
         VmRSS {:.1} MiB at start, {:.1} MiB peak sampled, {:.1} MiB at the end; VmHWM {:.1} MiB",
        start_rss as f64 / 1024.0,
        peak_sampled.max(rss) as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    assert_eq!(
        answered as u64,
        RSS_RATE * rss_seconds,
        "every open-loop call must be answered"
    );

    let latency_ratio = m(&|l| (l[2].p50 - l[0].p50) / (l[1].p50 - l[0].p50));
    let latency_ratio_p99 = m(&|l| (l[2].p99 - l[0].p99) / (l[1].p99 - l[0].p99));
    let rps_ratio = n(&|t| t[2].rps / t[0].rps);
    let bare_rps_ratio = n(&|t| t[1].rps / t[0].rps);
    let side_bare_rps = n(&|t| t[2].rps / t[1].rps);
    let cpu_ratio = n(&|t| t[2].proxy_us / t[1].proxy_us);
    let hwm_mib = hwm as f64 / 1024.0;
    println!();
    println!(
        "sidecar latency ratio, added p50 sidecar / bare: {latency_ratio:.2} (goal <= 1.5): {}",
        verdict(latency_ratio <= 1.5)
    );
    println!("sidecar latency ratio, added p99 sidecar / bare: {latency_ratio_p99:.2}");
    println!(
        "sidecar throughput ratio, rps sidecar / direct: {rps_ratio:.2} (goal >= 0.8): {}; bare / direct: {bare_rps_ratio:.2}; sidecar / bare: {side_bare_rps:.2}",
        verdict(rps_ratio >= 0.8)
    );
    println!("sidecar CPU per request ratio, sidecar / bare proxy: {cpu_ratio:.2}");
    println!(
        "sidecar memory at {RSS_RATE} requests/s: VmHWM {hwm_mib:.1} MiB (goal <= 16 MiB): {}",
        verdict(hwm_mib <= 16.0)
    );
}
