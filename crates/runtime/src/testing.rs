//! Jaeger for tests (feature `testing`): scripts/jaeger.sh builds it from its Go module; it
//! runs on loopback with e2e/jaeger/config.yaml (OTLP/gRPC in, memory storage, query API).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository: the first directory holding `scripts/jaeger.sh` above the running test's
/// manifest directory (any crate of the workspace), else above this crate's.
pub fn repo_root() -> std::path::PathBuf {
    let running = std::env::var("CARGO_MANIFEST_DIR").ok();
    [running.as_deref(), Some(env!("CARGO_MANIFEST_DIR"))]
        .into_iter()
        .flatten()
        .find_map(|dir| {
            std::path::Path::new(dir)
                .ancestors()
                .find(|d| d.join("scripts/jaeger.sh").exists())
                .map(std::path::Path::to_path_buf)
        })
        .expect("scripts/jaeger.sh above the manifest directory")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Jaeger {
    child: Child,
    pub otlp: u16,
    pub query: u16,
}

impl Jaeger {
    /// The OTLP endpoint to give an exporter.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.otlp)
    }

    /// The operation names Jaeger has for `service` (`GET /api/services/<service>/operations`),
    /// waiting up to 30 s for some.
    pub fn operations(&self, service: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let names: Vec<String> = self
                .get(&format!("/api/services/{service}/operations"))
                .and_then(|json| {
                    json["data"].as_array().map(|ops| {
                        ops.iter()
                            // Plain names; objects with a `name` in newer APIs.
                            .filter_map(|o| o.as_str().or(o["name"].as_str()).map(str::to_owned))
                            .collect()
                    })
                })
                .unwrap_or_default();
            if !names.is_empty() || Instant::now() >= deadline {
                return names;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Waits (up to 30 s) for trace `trace_id` to hold at least `spans` spans.
    pub fn wait_trace(&self, trace_id: &str, spans: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(trace) = self.trace(trace_id)
                && trace["spans"].as_array().is_some_and(|s| s.len() >= spans)
            {
                return trace;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id} never reached Jaeger with {spans} spans"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Jaeger {
    pub fn start() -> Self {
        let out = Command::new(repo_root().join("scripts/jaeger.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/jaeger.sh runs");
        assert!(out.status.success());
        let binary = String::from_utf8(out.stdout).unwrap();
        let binary = binary.lines().last().unwrap().trim().to_owned();
        let (otlp, query, query_grpc) = (free_port(), free_port(), free_port());
        let config = repo_root().join("e2e/jaeger/config.yaml");
        let child = Command::new(binary)
            .arg("--config")
            .arg(format!("file:{}", config.display()))
            .env("OTLP_PORT", otlp.to_string())
            .env("QUERY_PORT", query.to_string())
            .env("QUERY_GRPC_PORT", query_grpc.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("jaeger");
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [otlp, query] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "jaeger did not listen on {port}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { child, otlp, query }
    }

    /// `GET /api/traces/<id>` of the query API: the trace.
    pub fn trace(&self, trace_id: &str) -> Option<serde_json::Value> {
        let json = self.get(&format!("/api/traces/{trace_id}"))?;
        json["data"].as_array()?.first().cloned()
    }

    /// A GET of the query API, as JSON.
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.query)).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let body = response.split("\r\n\r\n").nth(1)?;
        serde_json::from_str(body).ok()
    }
}
