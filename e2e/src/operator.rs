//! The operator under test, run as a host process against the cluster (pods do not really run
//! on the local control plane). Each test runs its own, scoped to its namespace with
//! `MESHLOGIC_WATCH_NAMESPACE`, on free loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster;

/// The `meshlogic-operator` binary: `E2E_OPERATOR_BIN`, else the debug build in the target dir
/// (`make e2e` builds it first).
pub fn operator_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("E2E_OPERATOR_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    target.join("debug/meshlogic-operator")
}

/// A free port on 127.0.0.1 (bound, read and released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct OperatorProcess {
    child: Child,
    pub name: String,
    pub trust_api: SocketAddr,
    pub metrics: SocketAddr,
    pub webhook: SocketAddr,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Starts an operator replica named `name` watching `namespace` (its own namespace too),
    /// with extra environment, and waits for `/health`.
    pub fn start(namespace: &str, name: &str, env: &[(&str, &str)]) -> Self {
        Self::start_binary(&operator_binary(), namespace, Some(namespace), name, env)
    }

    /// [`Self::start`] of the given binary (a benchmark compares two), in `namespace`, watching
    /// `watch`: every namespace when `None`, as a cluster-wide installation does.
    pub fn start_binary(
        binary: &std::path::Path,
        namespace: &str,
        watch: Option<&str>,
        name: &str,
        env: &[(&str, &str)],
    ) -> Self {
        assert!(
            binary.exists(),
            "{} is not built: run `cargo build -p meshlogic-operator` (make e2e does)",
            binary.display()
        );
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (trust_api, metrics, webhook) =
            (addr(free_port()), addr(free_port()), addr(free_port()));
        let log = std::env::temp_dir().join(format!("agentmesh-e2e-{namespace}-{name}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(binary);
        command
            .env("KUBECONFIG", &cluster().kubeconfig)
            .env("POD_NAMESPACE", namespace)
            .env("POD_NAME", name)
            .env("MESHLOGIC_TRUST_API_ADDR", trust_api.to_string())
            .env("MESHLOGIC_METRICS_ADDR", metrics.to_string())
            .env("MESHLOGIC_WEBHOOK_ADDR", webhook.to_string())
            // The API server is a host process here: it reaches the webhook on loopback.
            .env("MESHLOGIC_WEBHOOK_URL", format!("https://{webhook}/inject"))
            .env("MESHLOGIC_TRUST_API_URL", format!("http://{trust_api}"))
            .env("AGENTMESH_LOG_FORMAT", "text")
            .env("AGENTMESH_LOG_LEVEL", "debug")
            .env("RUST_LOG", "info,meshlogic_operator=debug")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        match watch {
            Some(watch) => command.env("MESHLOGIC_WATCH_NAMESPACE", watch),
            None => command.env_remove("MESHLOGIC_WATCH_NAMESPACE"),
        };
        // MeshLogicAgents are honoured where the test watches (a test of the refusal says
        // otherwise in `env`).
        command.env("MESHLOGIC_AGENT_NAMESPACES", watch.unwrap_or("*"));
        command.env(
            "MESHLOGIC_PROBE_CLUSTER_ROLE",
            crate::E2E_PROBE_CLUSTER_ROLE,
        );
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let mut process = Self {
            child,
            name: name.to_owned(),
            trust_api,
            metrics,
            webhook,
            log,
        };
        process.wait_until(Duration::from_secs(30), "/health to answer", |p| {
            p.get("/health").is_some()
        });
        process
    }

    /// `GET` on the trust API; the body when the status is 2xx.
    pub fn get(&self, path: &str) -> Option<String> {
        http_get(self.trust_api, path)
    }

    /// The replica's Prometheus metrics, as text.
    pub fn metrics_text(&self) -> String {
        http_get(self.metrics, "/metrics").unwrap_or_default()
    }

    /// The value of the sample `line_prefix` (`name{labels}`) in the metrics, if exposed.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        self.metrics_text().lines().find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|value| value.trim().parse().ok())
        })
    }

    /// Whether this replica says it leads (`/ready`).
    pub fn is_leader(&self) -> bool {
        self.get("/ready")
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|ready| ready["leader"] == true)
    }

    /// The process's output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Polls until `ready` holds; panics with the operator's logs after `timeout`.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&mut Self) -> bool,
    ) {
        let start = Instant::now();
        loop {
            if ready(self) {
                return;
            }
            if !self.is_running() {
                panic!(
                    "operator {} exited while waiting for {what}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "operator {}: timed out waiting for {what}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 request on loopback: the status code and the body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    http_request_with(addr, method, path, token, &[], body)
}

/// [`http_request`] with extra headers.
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .ok()?;
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    request.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A minimal HTTP/1.0 GET on loopback; the body of a 2xx answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    (200..300).contains(&status).then(|| body.to_owned())
}
