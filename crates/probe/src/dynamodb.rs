//! The `dynamodb` telemetry sink (the MeshLogic chart's): each noised telemetry record becomes
//! one item of `spec.telemetry.table` in `spec.region`, written with `BatchWriteItem` in
//! batches of `spec.telemetry.batchSize` (at most 25).
//!
//! **Table and keys.** Partition key `pk` (string) = `<customerId>#<node>`, sort key `sk`
//! (number) = the window's start in milliseconds since the epoch: one partition per node, its
//! windows in time order; a record written twice (a retry after an unanswered request) lands
//! on the same item, so retries never duplicate. The other attributes are the record's:
//! `customerId`, `node`, `agent`, `windowStartMs`, `windowEndMs`, `counts` (a map of numbers:
//! the noised counts — the exact ones never leave the node), `noise`, `epsilon`, `noiseScale`.
//! The table is the installation's to make (`aws dynamodb create-table … --key-schema
//! AttributeName=pk,KeyType=HASH AttributeName=sk,KeyType=RANGE`); the probe only writes.
//!
//! **Credentials**, AWS's default chain: IRSA (the web-identity token file and role ARN that
//! EKS's pod identity webhook sets, `AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, exchanged
//! with STS's `AssumeRoleWithWebIdentity`), or the keys of `aws.credentialsSecret` that the
//! operator puts in `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
//!
//! **Throttling.** The SDK retries throttled and failed requests (standard mode, up to
//! [`MAX_ATTEMPTS`] attempts, exponential backoff with jitter); items DynamoDB leaves
//! unprocessed are sent again, backing off, up to [`UNPROCESSED_ROUNDS`] times. What is still
//! not written stays in the backlog for the next export, in order ([`crate::telemetry`]); the
//! backlog's bound is the only place records are dropped, and those drops are counted.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde_json::Value;

use crate::config::ProbeConfig;
use crate::metrics::Metrics;

/// Attempts of one request (the first included) before the SDK gives up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Rounds of resending the items DynamoDB left unprocessed.
pub const UNPROCESSED_ROUNDS: u32 = 5;

/// The sink: a DynamoDB client and where to write.
pub struct DynamoSink {
    client: Client,
    table: String,
    customer_id: String,
    metrics: std::sync::Arc<Metrics>,
}

impl DynamoSink {
    /// The sink of `config`: its region and table, the endpoint override when set
    /// (`spec.telemetry.endpoint`), credentials from the default chain (resolved at the first
    /// write, so that start-up never waits for AWS).
    pub async fn new(config: &ProbeConfig, metrics: std::sync::Arc<Metrics>) -> Self {
        use aws_smithy_http_client::{Builder, tls};
        let http = Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .region(aws_config::Region::new(config.region.clone()))
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(100))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(endpoint) = &config.telemetry_endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        Self {
            client: Client::new(&shared),
            table: config.telemetry_table.clone(),
            customer_id: config.customer_id.clone(),
            metrics,
        }
    }

    /// Writes `records` (one batch, oldest first); returns how many of the oldest are written
    /// — the records up to the first one that is not. Records after it that were written are
    /// written again with it next time, onto the same items.
    pub async fn write(&self, records: &[Value]) -> usize {
        let items: Vec<_> = records
            .iter()
            .map(|record| item(&self.customer_id, record))
            .collect();
        let keys: Vec<_> = items.iter().map(key).collect();
        let mut pending: Vec<WriteRequest> = items
            .into_iter()
            .filter_map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .ok()
                    .map(|put| WriteRequest::builder().put_request(put).build())
            })
            .collect();
        let mut backoff = Duration::from_millis(100);
        for round in 0..=UNPROCESSED_ROUNDS {
            if pending.is_empty() {
                break;
            }
            if round > 0 {
                self.metrics.telemetry_retries.inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            match self
                .client
                .batch_write_item()
                .request_items(&self.table, pending.clone())
                .send()
                .await
            {
                Ok(output) => {
                    pending = output
                        .unprocessed_items()
                        .and_then(|items| items.get(&self.table))
                        .cloned()
                        .unwrap_or_default();
                }
                Err(error) => {
                    let error = aws_sdk_dynamodb::error::DisplayErrorContext(&error);
                    tracing::warn!(%error, table = %self.table, "telemetry not written to DynamoDB; kept for the next export");
                    break;
                }
            }
        }
        let unwritten: HashSet<(String, String)> = pending
            .iter()
            .filter_map(|request| request.put_request())
            .filter_map(|put| key(put.item()))
            .collect();
        let written = keys
            .iter()
            .take_while(|k| k.as_ref().is_none_or(|k| !unwritten.contains(k)))
            .count();
        self.metrics.telemetry_exports.inc_by(written as u64);
        written
    }
}

/// An item's key, as text: (`pk`, `sk`).
fn key(item: &HashMap<String, AttributeValue>) -> Option<(String, String)> {
    let pk = item.get("pk")?.as_s().ok()?.clone();
    let sk = item.get("sk")?.as_n().ok()?.clone();
    Some((pk, sk))
}

/// A telemetry record as a DynamoDB item: its fields, plus the keys `pk` and `sk`.
pub fn item(customer_id: &str, record: &Value) -> HashMap<String, AttributeValue> {
    let mut item: HashMap<String, AttributeValue> = match record {
        Value::Object(fields) => fields
            .iter()
            .map(|(name, value)| (name.clone(), attribute(value)))
            .collect(),
        other => HashMap::from([("record".to_owned(), attribute(other))]),
    };
    let node = record["node"].as_str().unwrap_or_default();
    item.insert(
        "pk".into(),
        AttributeValue::S(format!("{customer_id}#{node}")),
    );
    item.insert(
        "sk".into(),
        AttributeValue::N(record["windowStartMs"].as_u64().unwrap_or(0).to_string()),
    );
    item.insert("customerId".into(), AttributeValue::S(customer_id.into()));
    item
}

/// A JSON value as a DynamoDB attribute.
fn attribute(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(attribute).collect()),
        Value::Object(fields) => AttributeValue::M(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), attribute(value)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_becomes_an_item_keyed_by_customer_node_and_window() {
        let record = json!({"node": "node-a", "agent": "meshlogic/agent", "windowStartMs": 1_800_000_000_000u64,
            "windowEndMs": 1_800_000_060_000u64, "counts": {"execs": 3, "connects": 0},
            "noise": true, "epsilon": 1.0, "noiseScale": 4.0});
        let item = item("acme", &record);
        assert_eq!(item["pk"], AttributeValue::S("acme#node-a".into()));
        assert_eq!(item["sk"], AttributeValue::N("1800000000000".into()));
        assert_eq!(item["customerId"], AttributeValue::S("acme".into()));
        assert_eq!(item["noise"], AttributeValue::Bool(true));
        let AttributeValue::M(counts) = &item["counts"] else {
            panic!("{item:?}")
        };
        assert_eq!(counts["execs"], AttributeValue::N("3".into()));
        assert_eq!(
            key(&item),
            Some(("acme#node-a".into(), "1800000000000".into()))
        );
    }
}
