//! Test helpers: a loopback stand-in for the operator's trust API that records report batches
//! and serves an enforcement set, pod cgroups laid out like the kubelet's, and probe configs.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use meshlogic_probe::config::{KubeAccess, Overrides, ProbeConfig};
use meshlogic_probe::run::ProbeHandle;

pub const TOKEN: &str = "test-token";

mod trust_server;
#[allow(unused_imports)] // not every test binary merges windows
pub use trust_server::{Merged, TrustServer};

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

/// The file hook the kernel tests must find in use: `MESHLOGIC_EXPECT_FILE_HOOK` (set by `make
/// test-kernels`, which knows what each kernel allows), else the one `MESHLOGIC_FILE_HOOK`
/// forces; `None`: either may be right here.
pub fn expected_file_hook() -> Option<agentmesh_api::meshlogic::FileHook> {
    use meshlogic_probe::config::FileHookChoice;
    let parse = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|value| value.parse::<FileHookChoice>().expect(name))
    };
    match parse("MESHLOGIC_EXPECT_FILE_HOOK").or_else(|| parse("MESHLOGIC_FILE_HOOK")) {
        Some(FileHookChoice::Only(hook)) => Some(hook),
        Some(FileHookChoice::Auto) | None => None,
    }
}

/// Programs a probe with every category on loads at tier 2: exec, exit, cgroup_mkdir, the
/// cgroup connect4 and connect6, and the file hook's (sys_exit; fexit of do_filp_open and
/// do_handle_open).
pub fn tier2_programs(hook: Option<agentmesh_api::meshlogic::FileHook>) -> u32 {
    use agentmesh_api::meshlogic::FileHook;
    5 + match hook {
        Some(FileHook::SysExit) => 1,
        Some(FileHook::Fexit) => 2,
        None => 0,
    }
}

/// How long a test waits for what the probe must do: 15 s, times `MESHLOGIC_TEST_WAIT_SCALE`
/// (`make test-kernels` sets it: under emulation everything is several times slower). Nothing
/// waits a fixed time for success: a longer wait only lets a slow machine finish.
pub fn wait() -> Duration {
    let scale = std::env::var("MESHLOGIC_TEST_WAIT_SCALE")
        .map_or(Ok(1), |value| value.parse::<u32>())
        .expect("MESHLOGIC_TEST_WAIT_SCALE");
    Duration::from_secs(15) * scale.max(1)
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
            trust_api_ca: None,
            token_file: token,
            cgroup_root: Some(cgroup_root()),
            metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
            btf_path: "/sys/kernel/btf/vmlinux".into(),
            proc_root: "/proc".into(),
            report_queue: 64,
            kube: KubeAccess::Disabled,
            // `make test-kernels` runs the kernel tests with each hook the kernel has.
            file_hook: std::env::var("MESHLOGIC_FILE_HOOK")
                .map_or(Ok(Default::default()), |hook| hook.parse())
                .expect("MESHLOGIC_FILE_HOOK"),
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
        assert!(start.elapsed() < wait(), "pod cgroups never watched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Milliseconds since the Unix epoch, as telemetry windows are stamped.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Released counts whose true value is 0, and how many of them came out non-zero.
#[derive(Debug)]
pub struct ReleasedZeros {
    pub samples: usize,
    pub noised: usize,
}

/// Over telemetry windows `(windowStartMs, [execs, exits, fileOpens, connects])` released
/// while one test pod ran a file loop: the true connect count is 0 in every window (no watched
/// process connects anywhere) and all four are 0 in windows starting at or after `quiet_from`
/// (the pod has no process left). Laplace noise of scale 8 (ε 0.5) rounds to a positive count
/// with probability e^(−1/16)/2 ≈ 0.47, so no noised count among n samples has
/// probability 0.53^n; at least 25 samples are required (≈ 1e-7).
pub fn released_zeros(
    windows: impl IntoIterator<Item = (u64, [u64; 4])>,
    quiet_from: u64,
) -> ReleasedZeros {
    let mut zeros = ReleasedZeros {
        samples: 0,
        noised: 0,
    };
    for (start, counts) in windows {
        let true_zeros: &[u64] = if start >= quiet_from {
            &counts
        } else {
            &counts[3..]
        };
        zeros.samples += true_zeros.len();
        zeros.noised += true_zeros.iter().filter(|&&c| c != 0).count();
    }
    assert!(zeros.samples >= 25, "too few samples: {zeros:?}");
    zeros
}
