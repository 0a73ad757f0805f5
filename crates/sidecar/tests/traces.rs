//! Traces through the real sidecar binary, exported to a real Jaeger (scripts/jaeger.sh): an
//! agent's request that carries a `traceparent` (as a header, or in `params._meta` as the MCP
//! SDKs carry it) is a span of the sidecar in the agent's trace, with the decision as
//! attributes, and the upstream gets the trace with the sidecar's span as its parent: a
//! recording upstream shows the header, and the official Python SDK server, exporting its own
//! spans, shows the whole trace — agent, sidecar, server — in Jaeger. A denied call is a span
//! too, and never reaches the upstream.

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use agentmesh_runtime::testing::Jaeger;
use common::{post, server_2026_with, sidecar};

/// An upstream that answers every request with an empty tool result and keeps each request's
/// `traceparent`.
fn recording_upstream() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = vec![0u8; 65536];
            let mut request = String::new();
            while !request.contains("\r\n\r\n") {
                let Ok(n) = stream.read(&mut buffer) else {
                    break;
                };
                if n == 0 {
                    break;
                }
                request.push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
            let traceparent = request
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("traceparent: ")
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            kept.lock().unwrap().push(traceparent);
            let body =
                r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

fn call(tool: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": {},
                   "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "1"},
                             "io.modelcontextprotocol/clientCapabilities": {}}}})
    .to_string()
}

fn tags(span: &serde_json::Value) -> std::collections::HashMap<String, String> {
    span["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let value = match &t["value"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (t["key"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[test]
fn an_agents_trace_goes_through_the_sidecar_to_the_upstream_and_into_jaeger() {
    let jaeger = Jaeger::start();
    let (upstream, seen) = recording_upstream();
    let endpoint = jaeger.endpoint();
    let proxy = sidecar(
        &format!("tools=http://127.0.0.1:{upstream}"),
        None,
        &[
            ("AGENTMESH_OTEL_ENABLED", "true"),
            ("AGENTMESH_OTEL_ENDPOINT", endpoint.as_str()),
        ],
    );
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let agent_span = "b7ad6b7169203331";
    let traceparent = format!("00-{trace_id}-{agent_span}-01");
    let headers = [
        ("traceparent", traceparent.as_str()),
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
    ];
    let mut allowed = headers.to_vec();
    allowed.push(("Mcp-Name", "echo"));
    let (status, body) = post(proxy.port, "/servers/tools/mcp", &allowed, &call("echo"));
    assert_eq!(status, 200, "{body}");
    let mut denied = headers.to_vec();
    denied.push(("Mcp-Name", "run_shell"));
    let (_, body) = post(
        proxy.port,
        "/servers/tools/mcp",
        &denied,
        &call("run_shell"),
    );
    assert!(body.contains("-32001"), "{body}");

    // The upstream got the agent's trace, with the sidecar's span as the parent; once.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].starts_with(&format!("00-{trace_id}-")), "{seen:?}");
    assert!(!seen[0].contains(agent_span), "{seen:?}");
    let parent_of_upstream = seen[0].split('-').nth(2).unwrap().to_owned();

    let trace = jaeger.wait_trace(trace_id, 2);
    let spans = trace["spans"].as_array().unwrap();
    for span in spans {
        let process = &trace["processes"][span["processID"].as_str().unwrap()];
        assert_eq!(process["serviceName"], "agentmesh-sidecar");
        assert_eq!(span["references"][0]["spanID"], agent_span, "{span}");
    }
    let by_tool = |tool: &str| {
        spans
            .iter()
            .find(|s| tags(s).get("mcp.name").map(String::as_str) == Some(tool))
            .unwrap_or_else(|| panic!("no span for {tool}: {spans:#?}"))
    };
    let echo = by_tool("echo");
    assert_eq!(tags(echo)["agentmesh.decision"], "allow");
    assert_eq!(echo["spanID"], parent_of_upstream.as_str());
    let shell = by_tool("run_shell");
    assert_eq!(tags(shell)["agentmesh.decision"], "deny");
    assert!(tags(shell)["agentmesh.rule"].contains("preset"), "{shell}");
    assert!(proxy.metric("agentmesh_sidecar_otel_spans_exported_total") >= 2.0);
}

#[test]
fn agent_sidecar_and_the_official_sdk_server_are_one_trace_in_jaeger() {
    let jaeger = Jaeger::start();
    let endpoint = jaeger.endpoint();
    let (_server, upstream) = server_2026_with(&["--otlp", endpoint.as_str()]);
    let proxy = sidecar(
        &format!("tools=http://127.0.0.1:{upstream}"),
        None,
        &[
            ("AGENTMESH_OTEL_ENABLED", "true"),
            ("AGENTMESH_OTEL_ENDPOINT", endpoint.as_str()),
        ],
    );
    // The agent's trace in `params._meta`, as the MCP SDKs put it; no header.
    let trace_id = "5b8efff798038103d269b633813fc60c";
    let agent_span = "eee19b7ec3c1b174";
    let mut body: serde_json::Value = serde_json::from_str(&call("echo")).unwrap();
    body["params"]["arguments"] = serde_json::json!({"message": "traced"});
    body["params"]["_meta"]["traceparent"] =
        serde_json::json!(format!("00-{trace_id}-{agent_span}-01"));
    let headers = [
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "echo"),
    ];
    let (status, answer) = post(
        proxy.port,
        "/servers/tools/mcp",
        &headers,
        &body.to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("traced"), "{answer}");

    let trace = jaeger.wait_trace(trace_id, 2);
    let spans = trace["spans"].as_array().unwrap();
    let service = |span: &serde_json::Value| {
        trace["processes"][span["processID"].as_str().unwrap()]["serviceName"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let sidecar_span = spans
        .iter()
        .find(|s| service(s) == "agentmesh-sidecar")
        .unwrap_or_else(|| panic!("no sidecar span: {trace:#}"));
    assert_eq!(sidecar_span["references"][0]["spanID"], agent_span);
    assert_eq!(tags(sidecar_span)["agentmesh.decision"], "allow");
    let server_span = spans
        .iter()
        .find(|s| service(s) == "mcp-fixture-2026")
        .unwrap_or_else(|| panic!("no span of the SDK server: {trace:#}"));
    assert_eq!(server_span["operationName"], "tools/call echo");
    assert_eq!(
        server_span["references"][0]["spanID"], sidecar_span["spanID"],
        "the server's span is the sidecar's child"
    );
}
