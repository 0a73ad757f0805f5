//! moto's server mode (scripts/moto.sh installs it) playing DynamoDB and STS on loopback — the
//! one stand-in of the suite: AWS's DynamoDB Local cannot be used here (its licence) — and a
//! fault-injecting proxy in front of it that throttles requests or leaves items unprocessed.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use http_body_util::BodyExt;

pub const TABLE: &str = "meshlogic-telemetry";

pub struct Moto {
    pub url: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo_root() -> std::path::PathBuf {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::PathBuf::from(manifest).join("../..")
}

impl Moto {
    pub fn start() -> Self {
        let out = Command::new(repo_root().join("scripts/moto.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/moto.sh runs");
        assert!(out.status.success(), "scripts/moto.sh failed");
        let server = String::from_utf8(out.stdout).unwrap();
        let server = server.lines().last().unwrap().trim().to_owned();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// A client of moto's DynamoDB with test keys (moto takes any).
    pub async fn client(&self) -> aws_sdk_dynamodb::Client {
        use aws_smithy_http_client::{Builder, tls};
        let http = Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_dynamodb::Config::builder()
            .http_client(http)
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("ap-southeast-2"))
            .endpoint_url(&self.url)
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "AKIDMOTOTEST",
                "moto-test-secret",
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// The table of the README's key design: `pk` (S, hash), `sk` (N, range).
    pub async fn create_table(&self) {
        self.client()
            .await
            .create_table()
            .table_name(TABLE)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .unwrap(),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("sk")
                    .attribute_type(ScalarAttributeType::N)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("sk")
                    .key_type(KeyType::Range)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("create-table");
    }

    /// Every item of the table, by sort key.
    pub async fn items(&self) -> Vec<HashMap<String, AttributeValue>> {
        let out = self
            .client()
            .await
            .scan()
            .table_name(TABLE)
            .send()
            .await
            .expect("scan");
        let mut items = out.items().to_vec();
        items.sort_by_key(|i| number(i, "sk"));
        items
    }
}

pub fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item[name].as_n().unwrap().parse().unwrap()
}

/// What the proxy saw and did.
#[derive(Default)]
pub struct Faults {
    /// BatchWriteItem requests still to answer with a throttling error.
    pub throttle: AtomicUsize,
    /// BatchWriteItem requests still to answer with every item unprocessed.
    pub leave_unprocessed: AtomicUsize,
    pub throttled: AtomicUsize,
    pub unprocessed: AtomicUsize,
    /// The `X-Amz-Target` or `Action` of every request, in order.
    pub seen: Mutex<Vec<String>>,
}

/// A proxy to `upstream` that injects [`Faults`]; returns its URL.
pub async fn fault_proxy(upstream: String, faults: Arc<Faults>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (client, upstream, faults) = (client.clone(), upstream.clone(), faults.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (client, upstream, faults) =
                            (client.clone(), upstream.clone(), faults.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            let target = parts
                                .headers
                                .get("x-amz-target")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                                .unwrap_or_else(|| {
                                    String::from_utf8_lossy(&body)
                                        .split('&')
                                        .find_map(|p| p.strip_prefix("Action="))
                                        .unwrap_or("?")
                                        .to_owned()
                                });
                            faults.seen.lock().unwrap().push(target.clone());
                            if target.ends_with("BatchWriteItem") {
                                if take(&faults.throttle) {
                                    faults.throttled.fetch_add(1, Ordering::SeqCst);
                                    return Ok::<_, std::convert::Infallible>(json_response(
                                        400,
                                        r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"The level of configured provisioned throughput for the table was exceeded."}"#.to_owned(),
                                    ));
                                }
                                if take(&faults.leave_unprocessed) {
                                    faults.unprocessed.fetch_add(1, Ordering::SeqCst);
                                    let request: serde_json::Value =
                                        serde_json::from_slice(&body).unwrap();
                                    let answer = serde_json::json!({"UnprocessedItems": request["RequestItems"]});
                                    return Ok(json_response(200, answer.to_string()));
                                }
                            }
                            let mut forward =
                                hyper::Request::builder().method(parts.method).uri(format!(
                                    "{upstream}{}",
                                    parts.uri.path_and_query().map_or("/", |p| p.as_str())
                                ));
                            for (name, value) in &parts.headers {
                                forward = forward.header(name, value);
                            }
                            let answer = client
                                .request(forward.body(http_body_util::Full::new(body)).unwrap())
                                .await
                                .unwrap();
                            let (parts, body) = answer.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            Ok(hyper::Response::from_parts(
                                parts,
                                http_body_util::Full::new(body),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn json_response(status: u16, body: String) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap()
}
