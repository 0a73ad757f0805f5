//! Tier 3: the node's enforcement set, long-polled from the operator's trust API
//! (`GET /v1/enforcement?node=<node>&since=<version>`), published to the map syncer.

use std::time::Duration;

use agentmesh_api::wire::{self, ENFORCEMENT_PATH, EnforcementSet};
use backon::Retryable;
use hyper::Method;
use tokio::sync::watch;

use crate::http::{HttpError, JsonClient};
use crate::retry::Backoff;

/// Why one poll gave no enforcement set.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("enforcement poll failed: {0}")]
    Http(#[from] HttpError),
    #[error("enforcement set does not parse: {0}")]
    Parse(#[from] serde_json::Error),
}

pub fn url(trust_api: &str, node: &str, since: &str) -> String {
    let query = wire::encode_query(&[("node", node), ("since", since)]);
    format!("{trust_api}{ENFORCEMENT_PATH}?{query}")
}

/// Polls forever, retrying failed polls with backoff; each new version is sent on `sets`.
pub async fn run(
    client: JsonClient,
    trust_api: String,
    node: String,
    sets: watch::Sender<Option<EnforcementSet>>,
    backoff: Backoff,
) {
    let mut version = String::new();
    loop {
        let url = url(&trust_api, &node, &version);
        let poll = || async {
            // The server holds the request up to 30 s when nothing changed.
            let (_, body) = client
                .send(Method::GET, &url, None, Duration::from_secs(45))
                .await?;
            Ok::<_, PollError>(serde_json::from_slice::<EnforcementSet>(&body)?)
        };
        let polled = poll
            .retry(backoff.schedule())
            .notify(
                |error, delay| tracing::warn!(%error, %url, retry_in = ?delay, "enforcement poll"),
            )
            .await;
        let Ok(set) = polled else {
            continue;
        };
        if set.version != version || sets.borrow().is_none() {
            tracing::info!(version = %set.version, pods = set.pods.len(), "enforcement set received");
            version = set.version.clone();
            sets.send_replace(Some(set));
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
