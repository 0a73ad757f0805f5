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
use agentmesh_runtime::client::HttpsClient;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use rand::RngCore;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::policy::Governor;

/// A JSON client for the trust API, authenticated by the pod's ServiceAccount token; over TLS
/// (`https://`), the operator's certificate checked against its CA bundle only.
#[derive(Clone)]
pub struct TrustApi {
    client: HttpsClient<Full<Bytes>>,
    base: String,
    token_file: PathBuf,
}

impl TrustApi {
    pub fn new(
        base: String,
        token_file: PathBuf,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            client: agentmesh_runtime::client::https_client(
                Duration::from_secs(5),
                agentmesh_runtime::client::OWN_SERVERS_POOL_IDLE,
                tls,
            ),
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
        let url = format!(
            "{}{}?{}",
            self.base,
            wire::SIDECAR_CONFIG_PATH,
            wire::encode_query(&[("since", since)])
        );
        self.get_json(url, Duration::from_secs(40)).await
    }

    /// The private key the operator made for this pod's identity (`GET /v1/sidecar/key`).
    pub async fn key(&self) -> anyhow::Result<wire::SidecarKey> {
        let url = format!("{}{}", self.base, wire::SIDECAR_KEY_PATH);
        self.get_json(url, Duration::from_secs(10)).await
    }

    /// `GET url`: its JSON answer when 200, else the status and body as the error.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let (status, body) = self
            .send(
                Request::builder().method(Method::GET).uri(url),
                Bytes::new(),
                timeout,
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

/// The key of `identity` (`namespace/name`) from the trust API, asked again (backing off up
/// to 2 s: the sidecar is not healthy until it has it) until the operator has it: a new
/// identity's key is made within a second or two of its pod. An answer for another identity,
/// or whose key is not its DID's, stops start-up.
pub async fn fetch_key(api: &TrustApi, identity: Option<&str>) -> anyhow::Result<SigningKey> {
    let mut backoff = Duration::from_millis(100);
    loop {
        match api.key().await {
            Ok(answer) => {
                if identity.is_some_and(|identity| identity != answer.identity) {
                    anyhow::bail!(
                        "the trust API gave the key of {}, not of {}",
                        answer.identity,
                        identity.unwrap_or_default()
                    );
                }
                let key = agentmesh_identity::keys::private_key_from_pem(&answer.private_key)
                    .map_err(|e| anyhow::anyhow!("the key from the trust API: {e}"))?;
                let did = agentmesh_identity::keys::Did::from_public_key(&key.verifying_key());
                if did.to_string() != answer.did {
                    anyhow::bail!("the key from the trust API is not that of {}", answer.did);
                }
                return Ok(key);
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "waiting for the identity's key from the trust API");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
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
///
/// Two queues under one bound: outcomes that cost trust (denials, would-denials, failed
/// handshakes, tool changes) and routine ones (allowed calls, successful handshakes). When the
/// bound is reached the oldest routine outcome goes first, so an agent cannot flush its own
/// denials out of the queue by flooding it with allowed calls; the costly ones are sent first.
pub struct Outbox {
    queues: Mutex<(VecDeque<Outcome>, VecDeque<Outcome>)>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

/// Whether an outcome can cost trust.
fn costly(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::ToolCall { effect, .. } => effect != "allow",
        Outcome::Handshake { succeeded, .. } => !succeeded,
        _ => true,
    }
}

impl Outbox {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            queues: Mutex::new((VecDeque::new(), VecDeque::new())),
            capacity: capacity.max(1),
            metrics,
        })
    }

    pub fn push(&self, outcome: Outcome) {
        let mut queues = self.queues.lock().expect("outbox lock");
        let (important, routine) = &mut *queues;
        if important.len() + routine.len() >= self.capacity {
            self.metrics.report_drops.inc();
            if routine.pop_front().is_none() {
                if !costly(&outcome) {
                    // Full of costly outcomes: this routine one is the one dropped.
                    return;
                }
                important.pop_front();
            }
        }
        if costly(&outcome) {
            important.push_back(outcome);
        } else {
            routine.push_back(outcome);
        }
    }

    /// Up to `most` outcomes, costly ones first.
    fn take(&self, most: usize) -> Vec<Outcome> {
        let mut queues = self.queues.lock().expect("outbox lock");
        let (important, routine) = &mut *queues;
        let first = important.len().min(most);
        let mut taken: Vec<Outcome> = important.drain(..first).collect();
        let rest = routine.len().min(most - first);
        taken.extend(routine.drain(..rest));
        taken
    }

    /// Outcomes that could not be sent, back at the front (beyond the bound: dropped, counted).
    fn put_back(&self, outcomes: Vec<Outcome>) {
        let mut queues = self.queues.lock().expect("outbox lock");
        let (important, routine) = &mut *queues;
        for outcome in outcomes.into_iter().rev() {
            if important.len() + routine.len() >= self.capacity {
                self.metrics.report_drops.inc();
                continue;
            }
            if costly(&outcome) {
                important.push_front(outcome);
            } else {
                routine.push_front(outcome);
            }
        }
    }

    pub fn len(&self) -> usize {
        let queues = self.queues.lock().expect("outbox lock");
        queues.0.len() + queues.1.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(effect: &str, n: i64) -> Outcome {
        Outcome::ToolCall {
            tool: "t".into(),
            method: None,
            effect: effect.into(),
            rule: "r".into(),
            at_ms: n,
        }
    }

    #[test]
    fn a_flood_of_allowed_calls_cannot_push_denials_out() {
        let (metrics, _) = Metrics::new();
        let outbox = Outbox::new(10, metrics.clone());
        for n in 0..3 {
            outbox.push(call("deny", n));
        }
        for n in 0..1000 {
            outbox.push(call("allow", n));
        }
        assert_eq!(outbox.len(), 10);
        let taken = outbox.take(4);
        assert!(
            taken[..3].iter().all(costly),
            "denials are sent first: {taken:?}"
        );
        assert_eq!(metrics.report_drops.get(), 993);
        // Full of denials: a new denial replaces the oldest one, an allowed call is dropped.
        let outbox = Outbox::new(2, metrics);
        outbox.push(call("deny", 1));
        outbox.push(call("deny", 2));
        outbox.push(call("allow", 3));
        outbox.push(call("would-deny", 4));
        let taken = outbox.take(10);
        assert_eq!(taken, vec![call("deny", 2), call("would-deny", 4)]);
        // A routine outcome replaces the oldest routine one, never a costly one.
        let (metrics, _) = Metrics::new();
        let outbox = Outbox::new(2, metrics.clone());
        outbox.push(call("deny", 1));
        outbox.push(call("allow", 2));
        outbox.push(call("allow", 3));
        assert_eq!(outbox.take(10), vec![call("deny", 1), call("allow", 3)]);
        assert_eq!(metrics.report_drops.get(), 1);
    }
}
