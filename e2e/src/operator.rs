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
    pub namespace: String,
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
            // TLS: the serving certificate is valid for 127.0.0.1.
            .env("MESHLOGIC_TRUST_API_URL", format!("https://{trust_api}"))
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
            namespace: namespace.to_owned(),
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

    /// The CA bundle (PEM) of this operator's certificate Secret (the default
    /// `agentmesh-webhook-tls` of its namespace), once its leader has written it.
    pub fn ca_bundle(&self) -> String {
        let started = Instant::now();
        loop {
            let output = cluster().kubectl(&[
                "get",
                "secret",
                "agentmesh-webhook-tls",
                "-n",
                &self.namespace,
                "-o",
                r"jsonpath={.data.ca\.crt}",
            ]);
            use base64::Engine;
            if let Ok(pem) = base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&output.stdout).trim())
                && !pem.is_empty()
            {
                return String::from_utf8(pem).unwrap();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "operator {}: no CA bundle written within 30 s:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
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

/// A minimal HTTP/1.0 request: the status code and the body. A path under `/v1/` is the trust
/// API's, which answers over TLS only: it is sent over TLS, the server's certificate checked
/// against the CA bundles of the operators in the cluster ([`trust_roots`]).
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
    let tls = path.starts_with("/v1/");
    let answer = request_over(tls, addr, method, path, token, headers, body);
    if tls && answer.is_none() {
        // Perhaps an operator started since the roots were read: read them again, once.
        forget_trust_roots();
        return request_over(tls, addr, method, path, token, headers, body);
    }
    answer
}

/// [`http_request_with`] over plain HTTP whatever the path: what a client that does not speak
/// TLS gets from the trust API.
pub fn plain_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Option<(u16, String)> {
    request_over(false, addr, method, path, token, &[], body)
}

fn request_over(
    tls: bool,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .ok()?;
    let mut stream: Box<dyn ReadWrite> = if tls {
        let connection = rustls::ClientConnection::new(trust_roots(), server_name(addr)).ok()?;
        Box::new(rustls::StreamOwned::new(connection, stream))
    } else {
        Box::new(stream)
    };
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
    let mut response = Vec::new();
    // A TLS server may close without close_notify after an HTTP/1.0 answer: keep what came.
    let read = stream.read_to_end(&mut response);
    if read.is_err() && response.is_empty() {
        return None;
    }
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// The name the trust API's certificate is checked for: 127.0.0.1 for an operator run as a
/// host process (its certificate is made for it), the chart's Service name for a replica
/// reached at its pod IP (every replica serves the certificate of `agentmesh.agentmesh.svc`).
fn server_name(addr: SocketAddr) -> rustls::pki_types::ServerName<'static> {
    if addr.ip().is_loopback() {
        rustls::pki_types::ServerName::IpAddress(addr.ip().into())
    } else {
        rustls::pki_types::ServerName::try_from("agentmesh.agentmesh.svc")
            .expect("a DNS name")
            .to_owned()
    }
}

static TRUST_ROOTS: std::sync::Mutex<Option<std::sync::Arc<rustls::ClientConfig>>> =
    std::sync::Mutex::new(None);

fn forget_trust_roots() {
    *TRUST_ROOTS.lock().unwrap() = None;
}

/// TLS that trusts the CA bundles (`ca.crt`) of every certificate Secret the operators of the
/// cluster have written (labelled `app.kubernetes.io/managed-by: meshlogic-operator`), and
/// nothing else: read once, and again after a failed request.
pub fn trust_roots() -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut cached = TRUST_ROOTS.lock().unwrap();
    if let Some(config) = cached.as_ref() {
        return config.clone();
    }
    let output = cluster().kubectl(&[
        "get",
        "secrets",
        "-A",
        "-l",
        "app.kubernetes.io/managed-by=meshlogic-operator",
        "-o",
        r#"jsonpath={range .items[*]}{.data.ca\.crt}{"\n"}{end}"#,
    ]);
    let mut roots = rustls::RootCertStore::empty();
    for encoded in String::from_utf8_lossy(&output.stdout).lines() {
        use base64::Engine;
        let Ok(pem) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            continue;
        };
        for certificate in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(certificate);
        }
    }
    let config = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    *cached = Some(config.clone());
    config
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
