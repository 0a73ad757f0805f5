//! The MCP proxy on 8081: routes the agent's requests to upstream MCP servers, judges every call
//! before it leaves, filters lists in the answers, and passes everything else through untouched.
//!
//! - **Routes**: `/servers/<name>/<path>` → `<url>/<path>` for a server the governing
//!   TrustPolicy declares (`spec.mcpServers`) or `AGENTMESH_UPSTREAMS` names; absolute-form
//!   request URIs (`HTTP_PROXY` clients) go where they say. `CONNECT` is refused: a tunnel
//!   cannot be judged.
//! - **Who may use it**: the pod itself (loopback peers); other pods get 403, except `/health`
//!   (the kubelet's readiness probe comes from the node). A browser `Origin` other than a
//!   loopback one gets 403 (DNS rebinding).
//! - **Requests** are read whole (they are small; a limit answers 413); a body that is not
//!   strict JSON (duplicated keys included) is refused with `-32700`, never forwarded.
//!   `Mcp-Method` / `Mcp-Name` are checked against the body whenever present and required from
//!   2026-07-28 on (a mismatch: 400 with `-32020`). Every `tools/call`, `prompts/get` and
//!   `resources/read`, alone or inside a batch, is decided before anything is forwarded; a
//!   denial is HTTP 200 with JSON-RPC error `-32001` (on the legacy transport: written into the
//!   client's SSE stream, the POST answered 202).
//! - **Answers** stream: SSE is relayed event by event as it arrives (comments, `id:`, `retry:`
//!   kept), only events carrying a list result are rewritten; a JSON answer is read whole only
//!   when it is a 2xx JSON body (to filter a list or add a batch's denials). Non-2xx answers
//!   pass as sent (clients read a 4xx body to fall back between revisions). When the client
//!   goes away, the upstream request is dropped with it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_api::wire::Outcome;
use agentmesh_trust::Effect;
use agentmesh_trust::policy::CallKind;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::StaticUpstream;
use crate::jsonrpc::{self, Body, ListKind, codes};
use crate::metrics::{MethodLabels, Metrics, RequestLabels, RuleLabels, ViolationLabels};
use crate::operator::Outbox;
use crate::peers::{self, PeerRefusal, Peers};
use crate::policy::{Governor, Verdict};
use crate::sse;
use agentmesh_identity::keys::Did;
use agentmesh_identity::proof::Covered;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;
/// An answer given instead of forwarding.
type Refusal = Box<Response<ProxyBody>>;

/// Largest request body.
pub const MAX_REQUEST: usize = 4 << 20;
/// Largest JSON answer read whole (to filter a list).
pub const MAX_JSON_ANSWER: usize = 16 << 20;

/// The first revision whose requests must carry `Mcp-Method` / `Mcp-Name`.
const HEADERS_REQUIRED_FROM: &str = "2026-07-28";

/// Headers of one hop only (RFC 9110 §7.6.1), never forwarded; `accept-encoding` is dropped so
/// that answers arrive uncompressed and lists can be filtered.
const HOP_BY_HOP: [HeaderName; 12] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HOST,
    header::CONTENT_LENGTH,
    header::ACCEPT_ENCODING,
];

/// Where a request goes.
#[derive(Clone, Debug)]
struct Target {
    /// Full upstream URL (path and query).
    url: String,
    /// The server as reports name it: the declared name, or `host:port` for a forward proxy.
    server: String,
    /// `/servers/<name>` for a named route: what an `endpoint` event's path is rewritten under.
    route: Option<(String, String)>,
    /// Another agent's sidecar: its DID (from the registry) and origin (`http://host:port`).
    peer: Option<(Did, String)>,
    /// Filter list answers by this sidecar's policy (its agent's calls; not inbound requests).
    judge_answers: bool,
}

/// What a proxy is made of.
pub struct ProxyOptions {
    pub governor: Arc<Governor>,
    pub metrics: Arc<Metrics>,
    pub outbox: Option<Arc<Outbox>>,
    pub upstreams: Vec<StaticUpstream>,
    pub health: Arc<crate::health::Health>,
    pub upstream_timeout: Duration,
    /// This identity's namespace (bare names in `allowedPeers` and `mcpServers[].agent`).
    pub namespace: String,
    /// How long a session with a peer is reused (`AGENTMESH_CACHE_TTL`; 0: never).
    pub session_ttl: Duration,
    /// Where requests from other agents go once their proof is checked.
    pub inbound_upstream: Option<String>,
}

pub struct Proxy {
    pub governor: Arc<Governor>,
    pub metrics: Arc<Metrics>,
    pub outbox: Option<Arc<Outbox>>,
    pub upstreams: Vec<StaticUpstream>,
    pub health: Arc<crate::health::Health>,
    pub peers: Arc<Peers>,
    inbound_upstream: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    upstream_timeout: Duration,
    /// Legacy HTTP+SSE sessions: upstream message-endpoint URL → the client's SSE stream.
    legacy: Mutex<HashMap<String, mpsc::Sender<Bytes>>>,
}

fn boxed<B>(body: B) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

pub fn full_body(bytes: impl Into<Bytes>) -> ProxyBody {
    boxed(Full::new(bytes.into()).map_err(|never: Infallible| match never {}))
}

fn json_response(status: StatusCode, value: &Value) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full_body(value.to_string()))
        .expect("static headers are valid")
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response<ProxyBody> {
    json_response(status, &jsonrpc::error_response(id, code, message, None))
}

fn is_loopback(peer: SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A browser origin on this host (`http://localhost:3000`, `http://127.0.0.1`, `http://[::1]`).
fn origin_allowed(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        rest.split(':').next().unwrap_or_default()
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body: whenever present, and required from
/// 2026-07-28 on. The decision is always taken on the body; the headers only have to agree.
pub fn check_mcp_headers(headers: &HeaderMap, body: &Body) -> Result<(), String> {
    fn text<'h>(headers: &'h HeaderMap, name: &str) -> Result<Option<&'h str>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| format!("{name} is not visible ASCII"))
            })
            .transpose()
    }
    let version = text(headers, "mcp-protocol-version")?;
    let required = version.is_some_and(|v| v >= HEADERS_REQUIRED_FROM);
    let method_header = text(headers, "mcp-method")?;
    let name_header = text(headers, "mcp-name")?;
    let message = match body {
        Body::Single(message) => message,
        Body::Batch(_) => {
            return match (method_header, required) {
                (Some(_), _) => Err("Mcp-Method cannot describe a batch".into()),
                (None, true) => Err(format!(
                    "batches are not part of protocol version {HEADERS_REQUIRED_FROM}"
                )),
                (None, false) => Ok(()),
            };
        }
    };
    let Some(method) = jsonrpc::method(message) else {
        return Ok(()); // a response to the server: no request metadata
    };
    match method_header {
        Some(h) if h != method => {
            return Err(format!(
                "Header mismatch: Mcp-Method header value '{h}' does not match body value '{method}'"
            ));
        }
        None if required => return Err("the Mcp-Method header is required".into()),
        _ => {}
    }
    if CallKind::of_method(method).is_some() {
        let body_name = jsonrpc::called_name(message).unwrap_or_default();
        match name_header {
            Some(h) => {
                let decoded = jsonrpc::decode_header_value(h)
                    .ok_or_else(|| "Mcp-Name is not valid =?base64?...?= encoding".to_owned())?;
                if decoded != body_name {
                    return Err(format!(
                        "Header mismatch: Mcp-Name header value '{decoded}' does not match body value '{body_name}'"
                    ));
                }
            }
            None if required => return Err("the Mcp-Name header is required".into()),
            None => {}
        }
    }
    Ok(())
}

/// What one POST asked for, after the decisions.
struct Judged {
    /// Denials to answer: JSON-RPC error responses.
    denials: Vec<Value>,
    /// The messages to forward (`None`: nothing left to forward), and whether they are the
    /// whole body as it came (then its bytes are forwarded unchanged, unless a trace is added).
    forward: Option<(Vec<Value>, bool)>,
    /// The methods seen, for the latency metric.
    method: &'static str,
    /// Whether a list was asked for (only then can the answer need filtering).
    lists: bool,
    /// Whether the body was a batch (its denials are answered as an array).
    batch: bool,
}

/// How long an idle upstream connection is kept for reuse (see [`Proxy::new`]).
const UPSTREAM_POOL_IDLE: Duration = Duration::from_secs(4);

impl Proxy {
    pub fn new(options: ProxyOptions) -> Self {
        // Shorter than the keep-alive of the MCP servers behind it (Node's http server and
        // uvicorn close an idle connection after 5 s; agentmesh_runtime's after 60 s): a pooled
        // connection is not reused just as the server closes it, which would fail a call that
        // was already sent (a 502 the agent cannot tell from a real upstream failure).
        let client = agentmesh_runtime::client::client(Duration::from_secs(10), UPSTREAM_POOL_IDLE);
        let peers = Arc::new(Peers::new(
            options.namespace,
            options.session_ttl,
            client.clone(),
            options.metrics.clone(),
            options.outbox.clone(),
        ));
        Self {
            governor: options.governor,
            metrics: options.metrics,
            outbox: options.outbox,
            upstreams: options.upstreams,
            health: options.health,
            peers,
            inbound_upstream: options.inbound_upstream,
            client,
            upstream_timeout: options.upstream_timeout,
            legacy: Mutex::new(HashMap::new()),
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        if request.uri().scheme().is_none()
            && request.uri().path() == agentmesh_api::names::paths::HEALTH
        {
            return self.health.response();
        }
        if request.uri().scheme().is_none() {
            let path = request.uri().path();
            if request.method() == Method::POST
                && (path == peers::HANDSHAKE_INIT_PATH || path == peers::HANDSHAKE_RESPONSE_PATH)
            {
                return self.handshake(request).await;
            }
            if path == peers::INBOUND_PREFIX || path.starts_with("/inbound/") {
                return self.inbound(request).await;
            }
        }
        if !is_loopback(peer) {
            return rpc_error(
                StatusCode::FORBIDDEN,
                Value::Null,
                codes::INVALID_REQUEST,
                "this proxy serves the agent of its own pod only",
            );
        }
        if let Some(origin) = request.headers().get(header::ORIGIN)
            && !origin.to_str().is_ok_and(origin_allowed)
        {
            return rpc_error(
                StatusCode::FORBIDDEN,
                Value::Null,
                codes::INVALID_REQUEST,
                "Origin not allowed",
            );
        }
        if request.method() == Method::CONNECT {
            return rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                Value::Null,
                codes::INVALID_REQUEST,
                "CONNECT tunnels cannot be judged: send http:// URLs through the proxy, or use /servers/<name>/",
            );
        }
        let target = match self.resolve(request.uri()) {
            Ok(target) => target,
            Err(response) => return *response,
        };
        let (response, method) = if request.method() == Method::POST {
            self.post(request, target).await
        } else {
            (self.forward(request, target, Vec::new()).await, "stream")
        };
        self.metrics
            .request_duration
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        response
    }

    fn resolve(&self, uri: &Uri) -> Result<Target, Refusal> {
        if uri.scheme().is_some() {
            if uri.scheme_str() != Some("http") {
                return Err(Box::new(rpc_error(
                    StatusCode::BAD_REQUEST,
                    Value::Null,
                    codes::INVALID_REQUEST,
                    "only http:// URLs can be proxied (a TLS tunnel cannot be judged)",
                )));
            }
            return Ok(Target {
                url: uri.to_string(),
                server: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                route: None,
                peer: None,
                judge_answers: true,
            });
        }
        let path = uri.path();
        let not_found = |message: String| {
            rpc_error(
                StatusCode::NOT_FOUND,
                Value::Null,
                codes::INVALID_REQUEST,
                &message,
            )
        };
        let Some(rest) = path.strip_prefix("/servers/") else {
            return Err(Box::new(not_found(format!(
                "no route for {path}: use /servers/<name>/... or an absolute http:// URL"
            ))));
        };
        let (name, tail) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, ""),
        };
        let current = self.governor.current();
        let declared = current.servers.iter().find(|s| s.name == name);
        let base = declared
            .map(|s| s.url.trim_end_matches('/').to_owned())
            .or_else(|| {
                self.upstreams
                    .iter()
                    .find(|u| u.name == name)
                    .map(|u| u.url.clone())
            });
        let Some(base) = base else {
            let mut known: Vec<&str> = current.servers.iter().map(|s| s.name.as_str()).collect();
            known.extend(self.upstreams.iter().map(|u| u.name.as_str()));
            return Err(Box::new(not_found(format!(
                "no MCP server named {name:?} (declared: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))));
        };
        if !base.starts_with("http://") {
            return Err(Box::new(rpc_error(
                StatusCode::BAD_GATEWAY,
                Value::Null,
                codes::INTERNAL_ERROR,
                &format!("MCP server {name:?} is {base}: https upstreams are not supported yet"),
            )));
        }
        let peer = match declared.and_then(|s| s.agent.as_deref()) {
            None => None,
            Some(agent) => {
                let entry = current.peer_named(agent, self.peers.namespace());
                let did = entry
                    .and_then(|e| e.did.as_deref())
                    .and_then(|d| Did::parse(d).ok());
                let Some(did) = did else {
                    return Err(Box::new(rpc_error(
                        StatusCode::BAD_GATEWAY,
                        Value::Null,
                        codes::INTERNAL_ERROR,
                        &format!(
                            "MCP server {name:?} is agent {agent:?}, which the registry does not know (yet)"
                        ),
                    )));
                };
                Some((did, origin_of(&base)))
            }
        };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        Ok(Target {
            url: format!("{base}{tail}{query}"),
            server: name.to_owned(),
            route: Some((format!("/servers/{name}"), base)),
            peer,
            judge_answers: true,
        })
    }

    async fn post(
        self: &Arc<Self>,
        request: Request<Incoming>,
        target: Target,
    ) -> (Response<ProxyBody>, &'static str) {
        let (parts, body) = request.into_parts();
        let bytes = match read_request(body).await {
            Ok(bytes) => bytes,
            Err(response) => return (*response, "other"),
        };
        // Parsed once: the trace, the decision and the forwarded body all come from this.
        let parsed = jsonrpc::parse_body(&bytes);
        // The MCP SDKs carry the agent's trace in `params._meta`, not in a header: then the
        // call is a span of that trace (the request's span, made before the body was read,
        // is not).
        let in_meta = (agentmesh_runtime::traces::enabled()
            && !parts.headers.contains_key("traceparent"))
        .then(|| parsed.as_ref().ok().and_then(meta_trace))
        .flatten();
        match in_meta {
            Some((parent, state)) => {
                use tracing::Instrument as _;
                use tracing_opentelemetry::OpenTelemetrySpanExt as _;
                let span = tracing::info_span!("mcp call");
                let _ = span.set_parent(agentmesh_runtime::traces::extract_traceparent(
                    &parent,
                    state.as_deref(),
                ));
                self.post_body(parts, bytes, parsed, target)
                    .instrument(span)
                    .await
            }
            None => self.post_body(parts, bytes, parsed, target).await,
        }
    }

    async fn post_body(
        self: &Arc<Self>,
        parts: hyper::http::request::Parts,
        bytes: Bytes,
        parsed: Result<Body, jsonrpc::BodyError>,
        target: Target,
    ) -> (Response<ProxyBody>, &'static str) {
        let judged = match self.judge(&parts.headers, parsed) {
            Ok(judged) => judged,
            Err(response) => return (*response, "refused"),
        };
        let method = judged.method;
        // A POST's answer belongs to it: only a list asked for can need filtering.
        let mut target = target;
        target.judge_answers &= judged.lists;
        let legacy = self.legacy_session(&target.url);
        if let Some(stream) = &legacy {
            // Legacy transport: answers travel on the client's SSE stream.
            for denial in &judged.denials {
                let _ = stream.send(sse::message_event(&denial.to_string())).await;
            }
            if judged.forward.is_none() {
                return (
                    Response::builder()
                        .status(StatusCode::ACCEPTED)
                        .body(full_body("Accepted"))
                        .expect("valid"),
                    method,
                );
            }
        }
        let denials = if legacy.is_some() {
            Vec::new()
        } else {
            judged.denials
        };
        let batch = judged.batch;
        let Some((mut kept, whole)) = judged.forward else {
            // Everything was denied: answer without the upstream.
            let answer = if judged.batch {
                Value::Array(denials)
            } else {
                denials.into_iter().next().unwrap_or(Value::Null)
            };
            return (json_response(StatusCode::OK, &answer), method);
        };
        // The upstream's SDK reads the trace from `params._meta`: this request is its parent.
        let traceparent = agentmesh_runtime::traces::current_traceparent();
        let forward = match traceparent {
            None if whole => bytes,
            traceparent => {
                if let Some(traceparent) = &traceparent {
                    set_meta_traceparent(&mut kept, traceparent);
                }
                let json = if batch {
                    serde_json::to_vec(&kept)
                } else {
                    serde_json::to_vec(&kept[0])
                };
                Bytes::from(json.expect("JSON values serialize"))
            }
        };
        (self.send(parts, forward, target, denials).await, method)
    }

    /// Checks and decides a POST body, as parsed.
    fn judge(
        &self,
        headers: &HeaderMap,
        parsed: Result<Body, jsonrpc::BodyError>,
    ) -> Result<Judged, Refusal> {
        let body = parsed.map_err(|error| {
            self.count(None, "refused");
            Box::new(rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                codes::PARSE_ERROR,
                &format!("Parse error: {error}"),
            ))
        })?;
        if let Err(message) = check_mcp_headers(headers, &body) {
            let id = match &body {
                Body::Single(m) => jsonrpc::id(m),
                Body::Batch(_) => Value::Null,
            };
            self.count(body.messages().first().and_then(jsonrpc::method), "refused");
            return Err(Box::new(rpc_error(
                StatusCode::BAD_REQUEST,
                id,
                codes::HEADER_MISMATCH,
                &message,
            )));
        }
        let now = crate::now();
        let mut denials = Vec::new();
        // Per message: forwarded or not.
        let mut keep = Vec::with_capacity(body.messages().len());
        let mut any_denied = false;
        let mut lists = false;
        for message in body.messages() {
            let method = jsonrpc::method(message);
            lists |= matches!(
                method,
                Some("tools/list" | "prompts/list" | "resources/list")
            );
            let Some(kind) = method.and_then(CallKind::of_method) else {
                self.count(method, "forwarded");
                keep.push(true);
                continue;
            };
            let Some(name) = jsonrpc::called_name(message) else {
                self.count(method, "refused");
                any_denied = true;
                keep.push(false);
                denials.push(jsonrpc::error_response(
                    jsonrpc::id(message),
                    -32602,
                    &format!(
                        "Invalid params: {} needs params.{}",
                        kind.method(),
                        if kind == CallKind::Resource {
                            "uri"
                        } else {
                            "name"
                        }
                    ),
                    None,
                ));
                continue;
            };
            let verdict = self.governor.decide(kind, name, now);
            self.record(kind, name, &verdict, now);
            keep.push(!verdict.denied());
            if verdict.denied() {
                any_denied = true;
                denials.push(jsonrpc::error_response(
                    jsonrpc::id(message),
                    codes::DENIED,
                    &format!("Blocked by AgentMesh policy: {}", verdict.explanation),
                    Some(verdict.error_data()),
                ));
            }
        }
        let method = match &body {
            Body::Single(m) => crate::metrics::method_label(jsonrpc::method(m)),
            Body::Batch(_) => "batch",
        };
        let batch = matches!(body, Body::Batch(_));
        let messages = match body {
            Body::Single(message) => vec![message],
            Body::Batch(messages) => messages,
        };
        let kept: Vec<Value> = messages
            .into_iter()
            .zip(keep)
            .filter_map(|(message, keep)| keep.then_some(message))
            .collect();
        let forward = (!kept.is_empty()).then_some((kept, !any_denied));
        Ok(Judged {
            denials,
            forward,
            method,
            lists,
            batch,
        })
    }

    fn count(&self, method: Option<&str>, decision: &'static str) {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                method: crate::metrics::method_label(method),
                decision,
            })
            .inc();
    }

    /// Metrics, logs and the report of one decision.
    fn record(
        &self,
        kind: CallKind,
        name: &str,
        verdict: &Verdict,
        now: agentmesh_trust::Timestamp,
    ) {
        self.count(Some(kind.method()), verdict.effect.as_str());
        {
            // The decision, on the request's span (and so on its OpenTelemetry span).
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            let span = tracing::Span::current();
            span.set_attribute("mcp.method", kind.method().to_owned());
            span.set_attribute("mcp.name", name.to_owned());
            span.set_attribute("agentmesh.decision", verdict.effect.as_str());
            span.set_attribute("agentmesh.rule", verdict.rule.clone());
            span.set_attribute("agentmesh.policy", verdict.policy.to_string());
            span.set_attribute("agentmesh.score", i64::from(verdict.score));
        }
        if verdict.effect != Effect::Allow {
            let mode = if verdict.is_shadow() {
                "shadow"
            } else {
                "enforce"
            };
            self.metrics
                .violations
                .get_or_create(&ViolationLabels { mode: mode.into() })
                .inc();
            if verdict.rate_limited {
                self.metrics
                    .rate_limited
                    .get_or_create(&RuleLabels {
                        rule: verdict.rule.clone(),
                    })
                    .inc();
            }
            tracing::info!(method = kind.method(), name, decision = verdict.effect.as_str(), rule = %verdict.rule, policy = %verdict.policy, score = verdict.score, "{}", verdict.explanation);
        }
        if let Some(outbox) = &self.outbox {
            outbox.push(Outcome::ToolCall {
                tool: name.to_owned(),
                method: (kind != CallKind::Tool).then(|| kind.method().to_owned()),
                effect: verdict.effect.as_str().to_owned(),
                rule: verdict.rule.clone(),
                at_ms: now.as_millis(),
            });
        }
    }

    fn legacy_session(&self, url: &str) -> Option<mpsc::Sender<Bytes>> {
        let mut sessions = self.legacy.lock().expect("legacy lock");
        match sessions.get(url) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                sessions.remove(url);
                None
            }
            None => None,
        }
    }

    /// Forwards a request whose body needs no judging (GET streams, DELETE, ...).
    async fn forward(
        self: &Arc<Self>,
        request: Request<Incoming>,
        target: Target,
        denials: Vec<Value>,
    ) -> Response<ProxyBody> {
        let (parts, body) = request.into_parts();
        // GET and DELETE carry no body; anything else is passed on as read.
        match read_request(body).await {
            Ok(bytes) => self.send(parts, bytes, target, denials).await,
            Err(response) => *response,
        }
    }

    async fn send(
        self: &Arc<Self>,
        mut parts: hyper::http::request::Parts,
        body: Bytes,
        target: Target,
        denials: Vec<Value>,
    ) -> Response<ProxyBody> {
        for name in &HOP_BY_HOP {
            parts.headers.remove(name);
        }
        // The trace goes on to the upstream with this request as the parent (with traces off,
        // the caller's own `traceparent` passes through untouched).
        agentmesh_runtime::traces::inject(&mut parts.headers);
        let uri: Uri = match target.url.parse() {
            Ok(uri) => uri,
            Err(_) => {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    Value::Null,
                    codes::INVALID_REQUEST,
                    "the upstream URL is not valid",
                );
            }
        };
        parts.uri = uri;
        parts.version = hyper::Version::HTTP_11;
        let started = Instant::now();
        let mut fresh = false;
        let response = loop {
            if let Some((did, origin)) = &target.peer {
                let current = self.governor.current();
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let covered = Covered {
                    method: parts.method.as_str(),
                    path: &path,
                    body: &body,
                };
                match self
                    .peers
                    .proof(&current, origin, did, covered, fresh)
                    .await
                {
                    Ok(proof) => {
                        let value =
                            HeaderValue::from_str(&proof).expect("base64url is a header value");
                        parts.headers.insert(peers::PROOF_HEADER, value);
                    }
                    Err(refusal) => return self.peer_refused(&refusal, &body, &current),
                }
            }
            let request = Request::from_parts(parts.clone(), Full::new(body.clone()));
            let answer =
                tokio::time::timeout(self.upstream_timeout, self.client.request(request)).await;
            match answer {
                Ok(Ok(response))
                    if response.status() == StatusCode::UNAUTHORIZED
                        && target.peer.is_some()
                        && !fresh =>
                {
                    // The peer no longer knows the session (it restarted): handshake again, once.
                    fresh = true;
                    continue;
                }
                Ok(Ok(response)) => break response,
                Ok(Err(error)) => {
                    self.metrics.upstream_errors.inc();
                    tracing::warn!(server = %target.server, %error, "upstream unreachable");
                    return rpc_error(
                        StatusCode::BAD_GATEWAY,
                        Value::Null,
                        codes::INTERNAL_ERROR,
                        &format!("upstream MCP server {} unreachable: {error}", target.server),
                    );
                }
                Err(_) => {
                    self.metrics.upstream_errors.inc();
                    return rpc_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        Value::Null,
                        codes::INTERNAL_ERROR,
                        &format!(
                            "upstream MCP server {} did not answer within {:?}",
                            target.server, self.upstream_timeout
                        ),
                    );
                }
            }
        };
        self.metrics
            .upstream_latency
            .observe(started.elapsed().as_secs_f64());
        let (mut parts, body) = response.into_parts();
        for name in HOP_BY_HOP.iter().filter(|n| **n != header::CONTENT_LENGTH) {
            parts.headers.remove(name);
        }
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !parts.status.is_success() {
            return Response::from_parts(parts, boxed(body));
        }
        let inspect = target.judge_answers || !denials.is_empty();
        if content_type.starts_with("text/event-stream") {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts
                .headers
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
            if !inspect {
                return Response::from_parts(parts, boxed(body));
            }
            parts
                .headers
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
            let stream = self.clone().relay_sse(body, target, denials);
            return Response::from_parts(parts, stream);
        }
        if !inspect {
            return Response::from_parts(parts, boxed(body));
        }
        if content_type.starts_with("application/json") || !denials.is_empty() {
            let bytes = match Limited::new(body, MAX_JSON_ANSWER).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => {
                    return rpc_error(
                        StatusCode::BAD_GATEWAY,
                        Value::Null,
                        codes::INTERNAL_ERROR,
                        &format!("reading the upstream answer: {error}"),
                    );
                }
            };
            let rewritten = self.rewrite_json(&bytes, &target.server, denials);
            let Some(rewritten) = rewritten else {
                return Response::from_parts(parts, full_body(bytes));
            };
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if parts.status == StatusCode::ACCEPTED {
                parts.status = StatusCode::OK;
            }
            return Response::from_parts(parts, full_body(rewritten));
        }
        Response::from_parts(parts, boxed(body))
    }

    /// A JSON answer with lists filtered and a batch's denials added; `None`: unchanged.
    fn rewrite_json(&self, bytes: &[u8], server: &str, denials: Vec<Value>) -> Option<Vec<u8>> {
        let mut value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Array(Vec::new())
        } else {
            match serde_json::from_slice(bytes) {
                Ok(value) => value,
                Err(_) if denials.is_empty() => return None,
                Err(_) => Value::Array(Vec::new()),
            }
        };
        let filtered = self.filter_answer(&mut value, server);
        if denials.is_empty() {
            return filtered.then(|| serde_json::to_vec(&value).expect("serializes"));
        }
        let mut answers = match value {
            Value::Array(items) => items,
            other => vec![other],
        };
        answers.extend(denials);
        Some(serde_json::to_vec(&Value::Array(answers)).expect("serializes"))
    }

    /// Filters every list result in a message or batch; `true` when something changed.
    fn filter_answer(&self, value: &mut Value, server: &str) -> bool {
        match value {
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.filter_answer(item, server);
                }
                changed
            }
            Value::Object(message) => {
                let Some(result) = message.get_mut("result") else {
                    return false;
                };
                let Some(kind) = ListKind::of_result(result) else {
                    return false;
                };
                let call_kind = match kind {
                    ListKind::Tools => CallKind::Tool,
                    ListKind::Prompts => CallKind::Prompt,
                    ListKind::Resources => CallKind::Resource,
                };
                let current = self.governor.current();
                let now = crate::now();
                let removed = jsonrpc::filter_list(result, kind, |name, item| {
                    if kind == ListKind::Tools && self.governor.tool_changed(server, item) {
                        self.tool_changed(server, name, now);
                    }
                    self.governor.visible(&current, call_kind, name, now)
                });
                if removed > 0 {
                    self.metrics.list_items_hidden.inc_by(removed as u64);
                }
                removed > 0
            }
            _ => false,
        }
    }

    fn tool_changed(&self, server: &str, tool: &str, now: agentmesh_trust::Timestamp) {
        self.metrics.tool_changes.inc();
        tracing::warn!(
            server,
            tool,
            "a tool's description or input schema changed since it was first listed"
        );
        if let Some(outbox) = &self.outbox {
            outbox.push(Outcome::ToolChanged {
                server: server.to_owned(),
                tool: tool.to_owned(),
                at_ms: now.as_millis(),
            });
        }
    }

    /// Relays an SSE answer event by event.
    fn relay_sse(
        self: Arc<Self>,
        mut upstream: Incoming,
        target: Target,
        denials: Vec<Value>,
    ) -> ProxyBody {
        let (tx, mut rx) = mpsc::channel::<Bytes>(64);
        let (inject_tx, mut inject_rx) = mpsc::channel::<Bytes>(64);
        let mut registered: Option<String> = None;
        tokio::spawn(async move {
            for denial in denials {
                if tx
                    .send(sse::message_event(&denial.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let mut parser = sse::Parser::default();
            loop {
                tokio::select! {
                    _ = tx.closed() => break, // the client went away: drop the upstream
                    Some(injected) = inject_rx.recv() => {
                        if tx.send(injected).await.is_err() { break; }
                    }
                    frame = upstream.frame() => {
                        let data = match frame {
                            Some(Ok(frame)) => match frame.into_data() {
                                Ok(data) => data,
                                Err(_) => continue,
                            },
                            Some(Err(error)) => {
                                tracing::debug!(%error, "upstream stream ended with an error");
                                break;
                            }
                            None => {
                                let rest = parser.rest();
                                if !rest.is_empty() {
                                    let _ = tx.send(rest).await;
                                }
                                break;
                            }
                        };
                        let events = match parser.push(&data) {
                            Ok(events) => events,
                            Err(error) => {
                                tracing::warn!(server = %target.server, %error, "closing the stream");
                                break;
                            }
                        };
                        for event in events {
                            let out = self.rewrite_event(&event, &target, &inject_tx, &mut registered);
                            if tx.send(out).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
            if let Some(url) = registered {
                self.legacy.lock().expect("legacy lock").remove(&url);
            }
        });
        let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|bytes| Ok::<_, BoxError>(Frame::data(bytes)));
        BoxBody::new(StreamBody::new(stream))
    }

    /// One event as the client gets it.
    fn rewrite_event(
        &self,
        event: &sse::Event,
        target: &Target,
        inject: &mpsc::Sender<Bytes>,
        registered: &mut Option<String>,
    ) -> Bytes {
        let Some(data) = &event.data else {
            return event.raw.clone();
        };
        if event.kind.as_deref() == Some("endpoint") {
            let (client_uri, upstream_url) = endpoint(target, data);
            self.legacy
                .lock()
                .expect("legacy lock")
                .insert(upstream_url.clone(), inject.clone());
            *registered = Some(upstream_url);
            return if client_uri == *data {
                event.raw.clone()
            } else {
                event.with_data(&client_uri)
            };
        }
        let Ok(mut value) = serde_json::from_str::<Value>(data) else {
            return event.raw.clone();
        };
        if self.filter_answer(&mut value, &target.server) {
            event.with_data(&value.to_string())
        } else {
            event.raw.clone()
        }
    }
}

impl Proxy {
    /// A refusal about identity, as the caller's client sees it: HTTP 200 with JSON-RPC error
    /// `-32001` for a JSON-RPC request (what MCP clients surface), else the refusal's status.
    fn peer_refused(
        &self,
        refusal: &PeerRefusal,
        body: &[u8],
        current: &crate::policy::Current,
    ) -> Response<ProxyBody> {
        let id = match jsonrpc::parse_body(body) {
            Ok(Body::Single(message)) if message.get("id").is_some() => Some(jsonrpc::id(&message)),
            _ => None,
        };
        let data = serde_json::json!({"agentmesh": {
            "blocked": true,
            "policy": &*current.policy_label,
            "rule": refusal.rule,
            "trust_score": current.score,
            "reason": refusal.reason,
        }});
        let message = format!("Blocked by AgentMesh identity check: {}", refusal.reason);
        let error = jsonrpc::error_response(
            id.clone().unwrap_or(Value::Null),
            codes::DENIED,
            &message,
            Some(data),
        );
        let status = if id.is_some() && refusal.status != StatusCode::UNAUTHORIZED {
            StatusCode::OK
        } else {
            refusal.status
        };
        json_response(status, &error)
    }

    /// `POST /agentmesh/v1/handshake/{init,response}` from another agent's sidecar.
    async fn handshake(self: &Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let is_init = request.uri().path() == peers::HANDSHAKE_INIT_PATH;
        let body = match Limited::new(request.into_body(), 64 << 10).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => {
                return json_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &serde_json::json!({"error": "handshake message too large"}),
                );
            }
        };
        let current = self.governor.current();
        let result = if is_init {
            self.peers.on_init(&current, &body)
        } else {
            self.peers
                .on_response(&current, &body)
                .map(|(answer, peer)| {
                    self.peers.record_handshake(peer.as_str(), Ok(()));
                    answer
                })
        };
        match result {
            Ok(answer) => json_response(StatusCode::OK, &answer),
            Err(refusal) => {
                self.peers.record_refusal();
                tracing::warn!(rule = %refusal.rule, reason = %refusal.reason, "handshake refused");
                json_response(
                    refusal.status,
                    &serde_json::json!({"error": refusal.reason, "rule": refusal.rule}),
                )
            }
        }
    }

    /// `/inbound/<path>`: a request from another agent, for this sidecar's agent.
    async fn inbound(self: &Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let Some(base) = self.inbound_upstream.clone() else {
            return rpc_error(
                StatusCode::NOT_FOUND,
                Value::Null,
                codes::INVALID_REQUEST,
                "this agent accepts no requests from other agents (AGENTMESH_INBOUND_UPSTREAM is not set)",
            );
        };
        let (mut parts, body) = request.into_parts();
        let body = match read_request(body).await {
            Ok(bytes) => bytes,
            Err(response) => return *response,
        };
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let current = self.governor.current();
        let proof = parts
            .headers
            .get(peers::PROOF_HEADER)
            .and_then(|v| v.to_str().ok());
        let covered = Covered {
            method: parts.method.as_str(),
            path: &path,
            body: &body,
        };
        let caller = match self.peers.check_inbound(&current, proof, covered) {
            Ok(caller) => caller,
            Err(refusal) => {
                self.peers.record_refusal();
                tracing::warn!(rule = %refusal.rule, reason = %refusal.reason, "request from a peer refused");
                return self.peer_refused(&refusal, &body, &current);
            }
        };
        parts.headers.remove(peers::PROOF_HEADER);
        if let Ok(value) = HeaderValue::from_str(caller.as_str()) {
            parts.headers.insert(peers::PEER_DID_HEADER, value);
        }
        if let Some(entry) = current.peer(caller.as_str())
            && let Ok(value) = HeaderValue::from_str(&format!("{}/{}", entry.namespace, entry.name))
        {
            parts.headers.insert(peers::PEER_IDENTITY_HEADER, value);
        }
        let rest = path.strip_prefix(peers::INBOUND_PREFIX).unwrap_or(&path);
        let target = Target {
            url: format!("{}{rest}", base.trim_end_matches('/')),
            server: "inbound".into(),
            route: None,
            peer: None,
            judge_answers: false,
        };
        self.send(parts, body, target, Vec::new()).await
    }
}

/// A request body, read whole up to [`MAX_REQUEST`] (413 beyond, 400 when it breaks off).
async fn read_request(body: Incoming) -> Result<Bytes, Refusal> {
    match Limited::new(body, MAX_REQUEST).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            let too_large = error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (status, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body over {MAX_REQUEST} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("reading the request: {error}"),
                )
            };
            Err(Box::new(rpc_error(
                status,
                Value::Null,
                codes::INVALID_REQUEST,
                &message,
            )))
        }
    }
}

/// `scheme://authority` of a URL.
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(at) => match url[at + 3..].find('/') {
            Some(slash) => url[..at + 3 + slash].to_owned(),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The legacy transport's `endpoint` event: the URI the client is told to post to (rewritten
/// under the named route) and the upstream URL those posts go to.
fn endpoint(target: &Target, data: &str) -> (String, String) {
    let upstream_url = if data.starts_with("http://") || data.starts_with("https://") {
        data.to_owned()
    } else {
        // Relative to the SSE URL.
        let origin_end = target
            .url
            .find("://")
            .and_then(|s| target.url[s + 3..].find('/').map(|p| s + 3 + p))
            .unwrap_or(target.url.len());
        let origin = &target.url[..origin_end];
        if data.starts_with('/') {
            format!("{origin}{data}")
        } else {
            let path = target.url[origin_end..].split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("{origin}{dir}{data}")
        }
    };
    let client_uri = match &target.route {
        Some((prefix, base)) => match upstream_url.strip_prefix(base.as_str()) {
            Some(rest) => format!("{prefix}{rest}"),
            None => data.to_owned(),
        },
        // A forward-proxy client resolves the URI against the absolute URL it asked for.
        None => data.to_owned(),
    };
    (client_uri, upstream_url)
}

/// The `traceparent` (and `tracestate`) of a message's `params._meta` (the first message of a
/// batch), as MCP's SDKs carry a trace.
fn meta_trace(body: &Body) -> Option<(String, Option<String>)> {
    let meta = body.messages().first()?.get("params")?.get("_meta")?;
    let parent = meta.get("traceparent")?.as_str()?.to_owned();
    let state = meta
        .get("tracestate")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((parent, state))
}

/// Sets `params._meta.traceparent` of every message with object params to `traceparent`
/// (`tracestate` is passed on as it came; `_meta` made where missing).
fn set_meta_traceparent(messages: &mut [Value], traceparent: &str) {
    for message in messages {
        let Some(params) = message.get_mut("params").and_then(Value::as_object_mut) else {
            continue;
        };
        let meta = params
            .entry("_meta")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("traceparent".into(), Value::String(traceparent.to_owned()));
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves; in-flight requests then get
/// `drain` to finish ([`agentmesh_runtime::serve`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl std::future::Future<Output = ()>,
    drain: Duration,
) {
    agentmesh_runtime::serve(
        "proxy",
        listener,
        agentmesh_runtime::Plain,
        agentmesh_runtime::Limits {
            header_timeout: Duration::from_secs(60),
            drain,
            // A span per proxied call costs a few percent at `make bench-sidecar`'s rates: at
            // DEBUG unless traces are exported, where each MCP request is a span.
            request_span: if agentmesh_runtime::traces::enabled() {
                tracing::Level::INFO
            } else {
                tracing::Level::DEBUG
            },
            ..agentmesh_runtime::Limits::default()
        },
        move |request, peer| {
            let proxy = proxy.clone();
            async move { proxy.handle(request, peer).await }
        },
        shutdown,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_in_meta_is_read_and_replaced_in_every_request() {
        let parse = |bytes: &[u8]| jsonrpc::parse_body(bytes).unwrap();
        let single = parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","_meta":{"traceparent":"00-aa-bb-01","tracestate":"v=1"}}}"#,
        );
        assert_eq!(
            meta_trace(&single),
            Some(("00-aa-bb-01".to_owned(), Some("v=1".to_owned())))
        );
        let ours = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut replaced = single.messages().to_vec();
        set_meta_traceparent(&mut replaced, ours);
        assert_eq!(replaced[0]["params"]["_meta"]["traceparent"], ours);
        assert_eq!(replaced[0]["params"]["_meta"]["tracestate"], "v=1");
        assert_eq!(replaced[0]["params"]["name"], "echo");
        // A batch: every request gets it, `_meta` made where missing.
        let batch = parse(
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#,
        );
        assert_eq!(meta_trace(&batch), None);
        let mut replaced = batch.messages().to_vec();
        set_meta_traceparent(&mut replaced, ours);
        assert_eq!(replaced[0]["params"]["_meta"]["traceparent"], ours);
        assert!(replaced[1].get("params").is_none());
        // params that are not an object: unchanged.
        let mut odd = vec![serde_json::json!({"id": 2, "method": "x", "params": [1]})];
        set_meta_traceparent(&mut odd, ours);
        assert_eq!(odd[0]["params"], serde_json::json!([1]));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    fn call(name: &str) -> Body {
        jsonrpc::parse_body(
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{name}"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn mcp_headers_must_agree_with_the_body() {
        let modern = ("mcp-protocol-version", "2026-07-28");
        assert!(
            check_mcp_headers(
                &headers(&[modern, ("mcp-method", "tools/call"), ("mcp-name", "echo")]),
                &call("echo")
            )
            .is_ok()
        );
        // A header naming an allowed tool does not make the body's tool allowed.
        let e = check_mcp_headers(
            &headers(&[modern, ("mcp-method", "tools/call"), ("mcp-name", "echo")]),
            &call("run_shell"),
        )
        .unwrap_err();
        assert!(e.contains("does not match body value 'run_shell'"), "{e}");
        assert!(
            check_mcp_headers(
                &headers(&[modern, ("mcp-method", "tools/call")]),
                &call("echo")
            )
            .is_err()
        );
        assert!(check_mcp_headers(&headers(&[modern]), &call("echo")).is_err());
        assert!(
            check_mcp_headers(
                &headers(&[modern, ("mcp-method", "tools/list"), ("mcp-name", "echo")]),
                &call("echo")
            )
            .is_err()
        );
        // Encoded names are decoded before comparing.
        assert!(
            check_mcp_headers(
                &headers(&[
                    modern,
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "=?base64?ZWNobw==?=")
                ]),
                &call("echo")
            )
            .is_ok()
        );
        // Older revisions need no headers, but one that is sent must agree.
        assert!(
            check_mcp_headers(
                &headers(&[("mcp-protocol-version", "2025-06-18")]),
                &call("echo")
            )
            .is_ok()
        );
        assert!(check_mcp_headers(&headers(&[("mcp-name", "echo")]), &call("run_shell")).is_err());
    }

    #[test]
    fn origins() {
        assert!(origin_allowed("http://localhost:3000"));
        assert!(origin_allowed("http://127.0.0.1"));
        assert!(origin_allowed("http://[::1]:8080"));
        assert!(!origin_allowed("http://evil.example"));
        assert!(!origin_allowed("http://localhost.evil.example"));
        assert!(!origin_allowed("null"));
    }

    #[test]
    fn endpoints_are_rewritten_under_the_route() {
        let target = Target {
            url: "http://127.0.0.1:3001/sse".into(),
            server: "everything".into(),
            route: Some(("/servers/everything".into(), "http://127.0.0.1:3001".into())),
            peer: None,
            judge_answers: true,
        };
        assert_eq!(
            endpoint(&target, "/message?sessionId=abc"),
            (
                "/servers/everything/message?sessionId=abc".into(),
                "http://127.0.0.1:3001/message?sessionId=abc".into()
            )
        );
        assert_eq!(
            endpoint(&target, "messages?s=1").1,
            "http://127.0.0.1:3001/messages?s=1"
        );
        let forward = Target {
            url: "http://10.0.0.5:8000/sse".into(),
            server: "10.0.0.5:8000".into(),
            route: None,
            peer: None,
            judge_answers: true,
        };
        assert_eq!(
            endpoint(&forward, "/message?sessionId=abc"),
            (
                "/message?sessionId=abc".into(),
                "http://10.0.0.5:8000/message?sessionId=abc".into()
            )
        );
    }
}
