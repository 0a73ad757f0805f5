//! The sidecar's side of the operator's trust API: the config long-poll
//! (`GET /v1/sidecar/config?since=`) and the signed report batches (`POST /v1/reports`).
//!
//! Reports: outcomes queue in memory (bounded; the oldest are dropped beyond
//! `AGENTMESH_SIDECAR_REPORT_QUEUE`, counted) and leave every report interval as one batch,
//! signed with the identity's key over the exact body (`x-agentmesh-signature`), with a fresh
//! batch id and the send time, so the operator applies it once and believes only what the key
//! signed. A batch the operator refuses for good (4xx other than 401, 408, 429) is dropped and
//! counted; other failures are retried with backoff, the batch kept.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_api::wire::{self, Outcome, ReportBatch, ReportSource, SidecarConfig};
use agentmesh_identity::SigningKey;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngCore;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::policy::Governor;

/// A JSON client for the trust API, authenticated by the pod's ServiceAccount token.
#[derive(Clone)]
pub struct TrustApi {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token_file: PathBuf,
}

impl TrustApi {
    pub fn new(base: String, token_file: PathBuf) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base,
            token_file,
        }
    }

    async fn send(
        &self,
        request: hyper::http::request::Builder,
        body: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| anyhow::anyhow!("token file {}: {e}", self.token_file.display()))?;
        let request = request
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(Full::new(body))?;
        let response = tokio::time::timeout(timeout, self.client.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))??;
        let status = response.status();
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .map_err(|_| anyhow::anyhow!("body not read within {timeout:?}"))??
            .to_bytes();
        Ok((status, body))
    }

    /// The config, waiting for a version other than `since` (the operator long-polls 30 s).
    pub async fn config(&self, since: &str) -> anyhow::Result<SidecarConfig> {
        let url = format!("{}{}?since={since}", self.base, wire::SIDECAR_CONFIG_PATH);
        let (status, body) = self
            .send(
                Request::builder().method(Method::GET).uri(url),
                Bytes::new(),
                Duration::from_secs(40),
            )
            .await?;
        if status != StatusCode::OK {
            anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(serde_json::from_slice(&body)?)
    }

    /// Posts one signed batch.
    pub async fn report(&self, body: Bytes, signature: String) -> anyhow::Result<StatusCode> {
        let url = format!("{}{}", self.base, wire::REPORTS_PATH);
        let (status, text) = self
            .send(
                Request::builder()
                    .method(Method::POST)
                    .uri(url)
                    .header("content-type", "application/json")
                    .header(wire::REPORT_SIGNATURE_HEADER, signature),
                body,
                Duration::from_secs(10),
            )
            .await?;
        if !status.is_success() {
            tracing::warn!(%status, body = %String::from_utf8_lossy(&text), "report refused");
        }
        Ok(status)
    }
}

/// Keeps the governor's policy in step with the operator's config, for ever.
pub async fn follow_config(api: TrustApi, governor: Arc<Governor>, metrics: Arc<Metrics>) {
    let mut since = String::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        match api.config(&since).await {
            Ok(config) => {
                backoff = Duration::from_millis(200);
                if config.version == since {
                    continue;
                }
                match governor.apply(&config) {
                    Ok(()) => {
                        if since.is_empty() {
                            tracing::info!(version = %config.version, policy = ?config.policy_name, score = config.identity.score, "operator policy in force");
                        }
                        since = config.version.clone();
                        metrics.policy_from_operator.set(1);
                        metrics.trust_score.set(i64::from(config.identity.score));
                        metrics.registry_size.set(config.peers.len() as i64);
                    }
                    Err(error) => {
                        tracing::error!(%error, "the operator's policy does not compile here; keeping the one in force");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "sidecar config");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Where the proxy drops outcomes; the reporter takes them from here.
pub struct Outbox {
    queue: Mutex<VecDeque<Outcome>>,
    capacity: usize,
    metrics: Arc<Metrics>,
    pub wake: Notify,
}

impl Outbox {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            metrics,
            wake: Notify::new(),
        })
    }

    pub fn push(&self, outcome: Outcome) {
        let mut queue = self.queue.lock().expect("outbox lock");
        if queue.len() >= self.capacity {
            queue.pop_front();
            self.metrics.report_drops.inc();
        }
        queue.push_back(outcome);
    }

    fn take(&self, most: usize) -> Vec<Outcome> {
        let mut queue = self.queue.lock().expect("outbox lock");
        let n = queue.len().min(most);
        queue.drain(..n).collect()
    }

    fn put_back(&self, outcomes: Vec<Outcome>) {
        let mut queue = self.queue.lock().expect("outbox lock");
        for outcome in outcomes.into_iter().rev() {
            if queue.len() >= self.capacity {
                self.metrics.report_drops.inc();
                continue;
            }
            queue.push_front(outcome);
        }
    }

    pub fn len(&self) -> usize {
        self.queue.lock().expect("outbox lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Most outcomes in one batch.
const BATCH: usize = 512;

/// A signed batch: the body and its signature.
pub fn signed_batch(identity: &str, key: &SigningKey, outcomes: Vec<Outcome>) -> (Bytes, String) {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    let batch = ReportBatch {
        source: ReportSource::Sidecar {
            identity: identity.to_owned(),
            batch_id: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id),
            sent_at_ms: crate::now().as_millis(),
        },
        pods: Vec::new(),
        outcomes,
    };
    let body = Bytes::from(serde_json::to_vec(&batch).expect("batches serialize"));
    let signature = agentmesh_identity::report::sign_report(key, &body);
    (body, signature)
}

/// Sends the outbox every `interval` until `stop` is notified, then once more.
pub async fn report_forever(
    api: TrustApi,
    identity: String,
    key: SigningKey,
    outbox: Arc<Outbox>,
    interval: Duration,
    metrics: Arc<Metrics>,
    stop: Arc<Notify>,
) {
    let mut backoff = interval;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(backoff) => false,
            _ = stop.notified() => true,
        };
        loop {
            let outcomes = outbox.take(BATCH);
            if outcomes.is_empty() {
                break;
            }
            let (body, signature) = signed_batch(&identity, &key, outcomes.clone());
            match api.report(body, signature).await {
                // 409: the operator already applied this batch (its answer was lost).
                Ok(status) if status.is_success() || status == StatusCode::CONFLICT => {
                    metrics.reports_sent.inc();
                    backoff = interval;
                }
                Ok(status)
                    if status.is_client_error() && ![401, 408, 429].contains(&status.as_u16()) =>
                {
                    // Refused for good: sending it again will not change that.
                    metrics.report_failures.inc();
                    for _ in 0..outcomes.len() {
                        metrics.report_drops.inc();
                    }
                }
                Ok(_) | Err(_) => {
                    metrics.report_failures.inc();
                    outbox.put_back(outcomes);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    break;
                }
            }
        }
        if stopping {
            return;
        }
    }
}
