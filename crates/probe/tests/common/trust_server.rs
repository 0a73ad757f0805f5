//! A loopback stand-in for the operator's trust API: records report batches (refusing some on
//! demand) and serves an enforcement set; and the batches' pods merged per pod.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_api::wire::{EnforcementSet, PodBehavior, ReportBatch};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use super::TOKEN;

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
                let since = agentmesh_api::wire::parse_query(&query)
                    .remove("since")
                    .unwrap_or_default();
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
    pub events_dropped: u64,
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
            merged.events_dropped += w.events_dropped;
        }
        merged
    }

    pub fn all_paths(&self) -> impl Iterator<Item = &String> {
        self.read_paths.iter().chain(&self.written_paths)
    }
}
