//! Test helpers: a loopback stand-in for the operator's trust API that records report batches
//! and serves an enforcement set, pod cgroups laid out like the kubelet's, and probe configs.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_api::wire::{EnforcementSet, PodBehavior, ReportBatch};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use meshlogic_probe::config::{KubeAccess, Overrides, ProbeConfig};
use meshlogic_probe::run::ProbeHandle;
use tokio::sync::watch;

pub const TOKEN: &str = "test-token";

/// Tests that need root and a BPF-capable kernel fail without them, unless the caller opts out
/// explicitly with MESHLOGIC_SKIP_ROOT_TESTS=1.
/// A trust API stub and a probe started against it with `spec`; `None` when root tests are
/// skipped.
pub async fn root_probe(spec: serde_json::Value) -> Option<(TrustServer, ProbeHandle)> {
    root_probe_with(spec, |_| {}).await
}

/// [`root_probe`], with the config changed by `change` first.
pub async fn root_probe_with(
    spec: serde_json::Value,
    change: impl FnOnce(&mut ProbeConfig),
) -> Option<(TrustServer, ProbeHandle)> {
    if !require_root() {
        return None;
    }
    let server = TrustServer::start().await;
    let mut config = config(&server, spec);
    change(&mut config);
    let probe = meshlogic_probe::run::start(config).await.unwrap();
    Some((server, probe))
}

pub fn require_root() -> bool {
    if std::env::var("MESHLOGIC_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("skipped: MESHLOGIC_SKIP_ROOT_TESTS=1");
        return false;
    }
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root and a BPF-capable kernel (set MESHLOGIC_SKIP_ROOT_TESTS=1 to skip)"
    );
    true
}

/// The cgroup v2 mount point: $MESHLOGIC_TEST_CGROUP_ROOT, else the first cgroup2 mount.
pub fn cgroup_root() -> PathBuf {
    if let Ok(root) = std::env::var("MESHLOGIC_TEST_CGROUP_ROOT") {
        return root.into();
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in mountinfo.lines() {
        let (left, right) = line.split_once(" - ").unwrap();
        if right.starts_with("cgroup2 ") {
            return left.split_whitespace().nth(4).unwrap().into();
        }
    }
    panic!("no cgroup2 mount on this machine");
}

/// A loopback trust API.
#[derive(Clone)]
pub struct TrustServer {
    pub url: String,
    pub batches: Arc<Mutex<Vec<ReportBatch>>>,
    pub unauthorized: Arc<AtomicUsize>,
    /// Report POSTs still to refuse with 503.
    pub fail_next: Arc<AtomicU32>,
    enforcement: watch::Sender<EnforcementSet>,
}

impl TrustServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (enforcement, _) = watch::channel(EnforcementSet {
            version: "0".into(),
            pods: vec![],
        });
        let server = Self {
            url: format!("http://{addr}"),
            batches: Arc::default(),
            unauthorized: Arc::default(),
            fail_next: Arc::default(),
            enforcement,
        };
        let state = server.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        server
    }

    async fn handle(&self, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, body: String| {
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        let authorized = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !authorized {
            self.unauthorized.fetch_add(1, Ordering::SeqCst);
            return reply(StatusCode::UNAUTHORIZED, "no token".into());
        }
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        match path.as_str() {
            "/v1/reports" => {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                if self
                    .fail_next
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return reply(StatusCode::SERVICE_UNAVAILABLE, "try later".into());
                }
                let batch: ReportBatch = serde_json::from_slice(&body).unwrap();
                self.batches.lock().unwrap().push(batch);
                reply(
                    StatusCode::ACCEPTED,
                    r#"{"accepted":0,"unknownPods":0}"#.into(),
                )
            }
            "/v1/enforcement" => {
                let since = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .unwrap_or_default()
                    .to_string();
                let mut changes = self.enforcement.subscribe();
                if changes.borrow().version == since {
                    // Long poll, shortened for tests.
                    let _ = tokio::time::timeout(Duration::from_secs(2), changes.changed()).await;
                }
                let set = changes.borrow().clone();
                reply(StatusCode::OK, serde_json::to_string(&set).unwrap())
            }
            _ => reply(StatusCode::NOT_FOUND, String::new()),
        }
    }

    pub fn set_enforcement(&self, set: EnforcementSet) {
        self.enforcement.send_replace(set);
    }

    pub fn batches(&self) -> Vec<ReportBatch> {
        self.batches.lock().unwrap().clone()
    }

    /// Every window reported so far for one pod.
    pub fn pod_windows(&self, uid: &str) -> Vec<PodBehavior> {
        self.batches()
            .into_iter()
            .flat_map(|batch| batch.pods)
            .filter(|pod| pod.pod_uid == uid)
            .collect()
    }

    /// Waits until `check` holds on the windows of `uid` (merged), or panics after `timeout`.
    pub async fn wait_for_pod(
        &self,
        uid: &str,
        timeout: Duration,
        check: impl Fn(&Merged) -> bool,
    ) -> Merged {
        let start = Instant::now();
        loop {
            let merged = Merged::of(&self.pod_windows(uid));
            if check(&merged) {
                return merged;
            }
            if start.elapsed() > timeout {
                panic!("pod {uid}: condition not met within {timeout:?}; saw {merged:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// All windows of one pod, merged.
#[derive(Debug, Default, Clone)]
pub struct Merged {
    pub execs: u64,
    pub exits: u64,
    pub file_opens: u64,
    pub connects: u64,
    pub executables: Vec<String>,
    pub read_paths: Vec<String>,
    pub written_paths: Vec<String>,
    pub destinations: Vec<SocketAddr>,
    pub blocked: Vec<agentmesh_api::wire::BlockedAction>,
}

impl Merged {
    pub fn of(windows: &[PodBehavior]) -> Self {
        let mut merged = Merged::default();
        for w in windows {
            merged.execs += w.counts.execs;
            merged.exits += w.counts.exits;
            merged.file_opens += w.counts.file_opens;
            merged.connects += w.counts.connects;
            merged.executables.extend(w.executables.iter().cloned());
            merged.read_paths.extend(w.read_paths.iter().cloned());
            merged.written_paths.extend(w.written_paths.iter().cloned());
            merged
                .destinations
                .extend(w.destinations.iter().map(|d| SocketAddr::new(d.ip, d.port)));
            merged.blocked.extend(w.blocked.iter().cloned());
        }
        merged
    }

    pub fn all_paths(&self) -> impl Iterator<Item = &String> {
        self.read_paths.iter().chain(&self.written_paths)
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The kubelet's two pod cgroup layouts.
#[derive(Debug, Clone, Copy)]
pub enum Layout {
    Cgroupfs,
    Systemd,
}

/// A pod cgroup (and one container cgroup in it) under a private test directory of the cgroup
/// v2 root; removed on drop, killing whatever still runs in it.
pub struct TestPod {
    pub uid: String,
    pub top: PathBuf,
    pub pod_dir: PathBuf,
    pub container: PathBuf,
}

impl TestPod {
    pub fn new(layout: Layout) -> Self {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let uid = format!("{pid:08x}-{n:04x}-4000-8000-{:012x}", rand_tail());
        let top = cgroup_root().join(format!("meshlogic-test-{pid}-{n}"));
        let (pod_dir, container) = match layout {
            Layout::Cgroupfs => {
                let pod = top.join(format!("kubepods/burstable/pod{uid}"));
                let container = pod.join(format!("{:064x}", n + 1));
                (pod, container)
            }
            Layout::Systemd => {
                let pod = top.join(format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                    uid.replace('-', "_")
                ));
                let container = pod.join(format!("cri-containerd-{:064x}.scope", n + 1));
                (pod, container)
            }
        };
        std::fs::create_dir_all(&container)
            .unwrap_or_else(|e| panic!("creating {}: {e}", container.display()));
        Self {
            uid,
            top,
            pod_dir,
            container,
        }
    }

    /// `bash -c script` with the shell moved into the container cgroup before it runs.
    pub fn command(&self, script: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs || exit 97\n{script}",
                self.container.display()
            ))
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, script: &str) -> ExitStatus {
        self.command(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    }
}

fn rand_tail() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    nanos & 0xffff_ffff_ffff
}

fn remove_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|p| p.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("could not remove {}", dir.display());
}

impl Drop for TestPod {
    fn drop(&mut self) {
        remove_tree(&self.top);
    }
}

/// A probe config for tests: loopback trust API, token file, no API server, 1 s windows.
pub fn config(server: &TrustServer, spec: serde_json::Value) -> ProbeConfig {
    let token = std::env::temp_dir().join(format!("meshlogic-test-token-{}", std::process::id()));
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let mut spec = spec;
    spec["customerId"] = "test".into();
    spec["reportIntervalSeconds"] = 1.into();
    let text = serde_json::json!({"agent": "meshlogic/test-agent", "spec": spec}).to_string();
    ProbeConfig::from_json(
        &text,
        Overrides {
            node_name: "test-node".into(),
            trust_api: server.url.clone(),
            token_file: token,
            cgroup_root: Some(cgroup_root()),
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            btf_path: "/sys/kernel/btf/vmlinux".into(),
            proc_root: "/proc".into(),
            report_queue: 64,
            kube: KubeAccess::Disabled,
        },
    )
    .map(|mut config| {
        // The test's "pods" are host processes at the root of the test that made their
        // cgroups, which is what the runtime's own opens look like.
        config.skip_runtime_opens = false;
        config
    })
    .unwrap()
}

/// GETs a path of the probe's metrics server.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// Waits until the probe watches these pods (its scanner found their cgroups and the kernel
/// map has them: the map is written within one drain interval after the scan).
pub async fn wait_watched(probe: &meshlogic_probe::run::ProbeHandle, pods: &[&TestPod]) {
    let start = Instant::now();
    loop {
        let known = {
            let shared = probe.shared.lock().unwrap();
            pods.iter()
                .all(|pod| shared.pod_cgroups.by_id.values().any(|uid| *uid == pod.uid))
        };
        if known {
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "pod cgroups never watched"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
