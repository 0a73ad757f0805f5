//! Test harness: the official MCP SDK fixtures (`e2e/mcp`, installed by
//! `scripts/mcp-fixtures.sh` into `~/.cache/agentmesh/mcp`), the upstream servers they provide,
//! and the real `agentmesh-sidecar` binary in front of them. Everything listens on 127.0.0.1.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The fixture directory (installs on first use; a fraction of a second once installed).
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new(repo().join("scripts/mcp-fixtures.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/mcp-fixtures.sh runs");
        assert!(out.status.success(), "scripts/mcp-fixtures.sh failed");
        let text = String::from_utf8(out.stdout).unwrap();
        PathBuf::from(text.lines().last().expect("the fixture dir").trim())
    })
}

pub fn python() -> PathBuf {
    fixtures().join("venv/bin/python")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether process `pid` itself holds a listening TCP socket on each of `ports` (a connect
/// alone cannot tell: between `free_port` and the bind, another test's server may take the
/// port, and the connect then reaches that server while ours has exited).
fn listens(pid: u32, ports: &[u16]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: std::collections::HashSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut listening = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A"
                && inodes.contains(*inode)
                && let Some(port) = port
            {
                listening.insert(port);
            }
        }
    }
    ports.iter().all(|p| listening.contains(p))
}

/// Starts a server on a free port, waiting until it listens. A server that exits first (its
/// port taken in between by another test's server) is started again on another port; one that
/// never listens fails the test with its log.
fn spawn_listening(name: &str, command: impl Fn(u16) -> Command) -> (Running, u16) {
    let (running, port, _) = spawn_listening_on(name, |port| (command(port), Vec::new()));
    (running, port)
}

/// [`spawn_listening`] for a server that also listens on the `extra` ports its command names
/// (each attempt picks its own).
fn spawn_listening_on(
    name: &str,
    command: impl Fn(u16) -> (Command, Vec<u16>),
) -> (Running, u16, Vec<u16>) {
    let log = std::env::temp_dir().join(format!(
        "agentmesh-sidecar-test-{name}-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    for _ in 0..3 {
        let port = free_port();
        let (mut command, extra) = command(port);
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if listens(child.id(), &[&[port], extra.as_slice()].concat()) {
                return (Running(child), port, extra);
            }
            if child.try_wait().unwrap().is_some() {
                break; // exited: try another port
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{name} never listened on 127.0.0.1:{port}:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!(
        "{name} exited three times:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `@modelcontextprotocol/server-everything` in `streamableHttp` or `sse` mode.
pub fn everything(mode: &str) -> (Running, u16) {
    // Installs the fixtures and links e2e/mcp/node_modules, which everything.mjs resolves the
    // server from (on a fresh cache, a test that only runs this server must not start first).
    fixtures();
    spawn_listening("server-everything", |port| {
        let mut command = Command::new("node");
        command.arg(repo().join("e2e/mcp/everything.mjs")).args([
            mode,
            "--port",
            &port.to_string(),
        ]);
        command
    })
}

/// The Python SDK server speaking 2026-07-28 (and 2025 on the same endpoint).
pub fn server_2026() -> (Running, u16) {
    server_2026_with(&[])
}

/// [`server_2026`] with more arguments (`--otlp <endpoint>`).
pub fn server_2026_with(extra: &[&str]) -> (Running, u16) {
    spawn_listening("server_2026", |port| {
        let mut command = Command::new(python());
        command
            .arg(repo().join("e2e/mcp/server_2026.py"))
            .args(["--port", &port.to_string(), "--any-host"])
            .args(extra);
        command
    })
}

pub struct Sidecar {
    pub process: Running,
    pub port: u16,
    pub metrics_port: u16,
    pub dir: PathBuf,
}

impl Sidecar {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
    }

    /// The value of one sample line of `/metrics` (0 when absent).
    pub fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

/// A test key: the seed's inline PEM form.
pub fn key_pem() -> String {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    agentmesh_identity::keys::private_key_to_pem(&key).unwrap()
}

/// Starts the real sidecar binary with `upstreams` (`name=url,...`) and a policy file.
pub fn sidecar(upstreams: &str, policy_yaml: Option<&str>, extra_env: &[(&str, &str)]) -> Sidecar {
    let dir = std::env::temp_dir().join(format!(
        "agentmesh-sidecar-test-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(policy) = policy_yaml {
        std::fs::write(dir.join("policy.yaml"), policy).unwrap();
    }
    let (process, port, extra) = spawn_listening_on("agentmesh-sidecar", |port| {
        let metrics_port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_agentmesh-sidecar"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AGENTMESH_SIDECAR_PROXY_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "AGENTMESH_SIDECAR_METRICS_ADDR",
                format!("127.0.0.1:{metrics_port}"),
            )
            .env("AGENTMESH_SIDECAR_HEALTHY_FILE", dir.join("healthy"))
            .env("AGENTMESH_AGENT_PRIVATE_KEY", key_pem())
            .env("AGENTMESH_UPSTREAMS", upstreams)
            .env("AGENTMESH_LOG_FORMAT", "text")
            .env("AGENTMESH_SIDECAR_DRAIN_SECONDS", "5");
        if policy_yaml.is_some() {
            command.env("AGENTMESH_SIDECAR_POLICY_FILE", dir.join("policy.yaml"));
        }
        for (k, v) in extra_env {
            command.env(k, v);
        }
        (command, vec![metrics_port])
    });
    let metrics_port = extra[0];
    Sidecar {
        process,
        port,
        metrics_port,
        dir,
    }
}

/// Runs an SDK client: `py` (Python `mcp`) or `ts` (TypeScript SDK); returns `steps`.
pub fn client(lang: &str, url: &str, transport: &str, steps: &Value, extra: &[&str]) -> Vec<Value> {
    let mut command = match lang {
        "py" => {
            let mut c = Command::new(python());
            c.arg(repo().join("e2e/mcp/client.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(repo().join("e2e/mcp/client.mjs"));
            c
        }
    };
    command
        .args(["--url", url, "--transport", transport])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("the client starts");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(steps.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{lang} client output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    parsed["steps"].as_array().cloned().unwrap_or_default()
}

/// A plain HTTP/1.1 GET on loopback; the body.
pub fn http_get(port: u16, path: &str) -> String {
    raw(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"),
    )
    .1
}

/// Sends raw bytes; returns (status, body).
pub fn raw(port: u16, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The text of a `POST` with a JSON body and extra headers, as MCP clients send it.
fn post_request(path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

/// A POST with JSON body and headers; returns (status, body).
pub fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let request = post_request(path, headers, body);
    raw(port, &request)
}

/// Names in a `tools/list` (or prompts, resources) step result.
pub fn names(step: &Value, key: &str, field: &str) -> Vec<String> {
    step["ok"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {step}"))
        .iter()
        .filter_map(|t| t[field].as_str().map(str::to_owned))
        .collect()
}

/// An HTTP/1.1 exchange read as it arrives: (status, headers text, [(elapsed, bytes)]) until the
/// connection closes or `until` is seen.
pub fn post_streaming(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    until: &str,
) -> (u16, String, Vec<(Duration, String)>) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let request = post_request(path, headers, body);
    let started = Instant::now();
    stream.write_all(request.as_bytes()).unwrap();
    let mut all = String::new();
    let mut chunks = Vec::new();
    let mut buffer = [0u8; 65536];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                all.push_str(&text);
                chunks.push((started.elapsed(), text));
                if all.contains(until) {
                    break;
                }
            }
        }
    }
    let status = all
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let head = all.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    (status, head, chunks)
}

/// A session with a 2025 Streamable HTTP server through `path`: initialize and
/// `notifications/initialized`; the `Mcp-Session-Id`.
pub fn open_session(port: u16, path: &str, version: &str) -> String {
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}});
    let (status, head, chunks) = post_streaming(port, path, &[], &init.to_string(), "\"result\"");
    let body: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(status, 200, "{head}\n{body}");
    let session = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_owned())
        })
        .expect("a session id");
    let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _) = post(
        port,
        path,
        &[
            ("Mcp-Session-Id", &session),
            ("MCP-Protocol-Version", version),
        ],
        initialized,
    );
    assert_eq!(status, 202);
    session
}
