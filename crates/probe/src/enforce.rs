//! Tier 3: the node's enforcement set, long-polled from the operator's trust API
//! (`GET /v1/enforcement?node=<node>&since=<version>`), published to the map syncer.

use std::time::Duration;

use agentmesh_api::wire::{ENFORCEMENT_PATH, EnforcementSet};
use hyper::Method;
use tokio::sync::watch;

use crate::http::JsonClient;
use crate::report::Backoff;

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

pub fn url(trust_api: &str, node: &str, since: &str) -> String {
    format!(
        "{trust_api}{ENFORCEMENT_PATH}?node={}&since={}",
        encode(node),
        encode(since)
    )
}

/// Polls forever; each new version is sent on `sets`.
pub async fn run(
    client: JsonClient,
    trust_api: String,
    node: String,
    sets: watch::Sender<Option<EnforcementSet>>,
    backoff: Backoff,
) {
    let mut version = String::new();
    let mut attempt = 0u32;
    loop {
        let url = url(&trust_api, &node, &version);
        // The server holds the request up to 30 s when nothing changed.
        match client
            .send(Method::GET, &url, None, Duration::from_secs(45))
            .await
        {
            Ok((_, body)) => match serde_json::from_slice::<EnforcementSet>(&body) {
                Ok(set) => {
                    attempt = 0;
                    if set.version != version || sets.borrow().is_none() {
                        tracing::info!(version = %set.version, pods = set.pods.len(), "enforcement set received");
                        version = set.version.clone();
                        sets.send_replace(Some(set));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "enforcement set does not parse");
                    tokio::time::sleep(backoff.delay(attempt)).await;
                    attempt = attempt.saturating_add(1);
                }
            },
            Err(error) => {
                tracing::warn!(%error, %url, "enforcement poll failed");
                tokio::time::sleep(backoff.delay(attempt)).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_url_encodes_its_query() {
        assert_eq!(
            super::url("http://op:8080", "node-1", "v 1/2"),
            "http://op:8080/v1/enforcement?node=node-1&since=v%201%2F2"
        );
    }
}
