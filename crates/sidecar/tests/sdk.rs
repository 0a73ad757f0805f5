//! The sidecar between the official MCP SDKs: the Python `mcp` client and the TypeScript SDK
//! client, through the real `agentmesh-sidecar` binary, to `@modelcontextprotocol/server-everything`
//! (Streamable HTTP and the legacy HTTP+SSE transport) and to a Python `mcp` server speaking
//! 2026-07-28. All on loopback.

mod common;

use common::*;
use std::process::Command;

use serde_json::{Value, json};

/// The policy of most tests: the standard preset, and `get_env` denied (the server names the
/// tool `get-env`: the rule's spelling must not matter).
const DENY_GET_ENV: &str = "preset: standard\ntools:\n  deny: [get_env]\n";

fn everything_steps() -> Value {
    json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "echo", "arguments": {"message": "hello"}},
        {"op": "call_tool", "name": "get-sum", "arguments": {"a": 2, "b": 3}},
        {"op": "call_tool", "name": "get-env", "arguments": {}},
        {"op": "list_resources"},
        {"op": "read_resource", "uri": "demo://resource/static/document/architecture.md"},
    ])
}

fn assert_denied(step: &Value, rule: &str) {
    let error = &step["error"];
    assert_eq!(error["code"], -32001, "not a policy denial: {step}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Blocked by AgentMesh policy"),
        "{step}"
    );
    let data = &error["data"]["agentmesh"];
    assert_eq!(data["blocked"], true, "{step}");
    assert_eq!(data["rule"], rule, "{step}");
    assert!(data["trust_score"].is_i64(), "{step}");
    assert!(data["policy"].is_string(), "{step}");
}

fn check_everything(transport: &str, mode: &str, path: &str) {
    let (_server, port) = everything(mode);
    let sidecar = sidecar(
        &format!("everything=http://127.0.0.1:{port}"),
        Some(DENY_GET_ENV),
        &[],
    );
    for lang in ["py", "ts"] {
        let direct = client(
            lang,
            &format!("http://127.0.0.1:{port}{path}"),
            transport,
            &everything_steps(),
            &[],
        );
        let proxied = client(
            lang,
            &sidecar.url(&format!("/servers/everything{path}")),
            transport,
            &everything_steps(),
            &[],
        );
        assert_eq!(proxied.len(), 6, "{lang}: {proxied:?}");
        // Allowed calls give the same results as direct.
        for i in [1, 2, 5] {
            assert_eq!(proxied[i], direct[i], "{lang} {transport} step {i}");
        }
        assert_eq!(
            proxied[4], direct[4],
            "{lang} {transport}: resources are not filtered here"
        );
        // The denied tool: -32001 in both SDKs, never reaching the server.
        assert!(
            direct[3].get("ok").is_some(),
            "direct get-env works: {}",
            direct[3]
        );
        assert_denied(&proxied[3], "tools.deny[0]");
        // The list is filtered.
        let listed = names(&proxied[0], "tools", "name");
        assert!(
            !listed.contains(&"get-env".to_owned()),
            "{lang}: {listed:?}"
        );
        assert!(listed.contains(&"echo".to_owned()));
        assert_eq!(
            listed.len() + 1,
            names(&direct[0], "tools", "name").len(),
            "exactly one tool hidden"
        );
        if lang == "ts" {
            // The TypeScript SDK keeps fields it does not model; the Python one drops them.
            assert_eq!(
                proxied[0]["ok"]["ttlMs"], 0,
                "a filtered list is not cacheable"
            );
            assert_eq!(proxied[0]["ok"]["cacheScope"], "private");
        }
    }
    assert_eq!(
        sidecar.metric("agentmesh_sidecar_requests_total{method=\"tools/call\",decision=\"deny\"}"),
        2.0,
        "one denial per client"
    );
    assert_eq!(
        sidecar.metric("agentmesh_policy_violation_count{mode=\"enforce\"}"),
        2.0
    );
}

#[test]
fn streamable_http_through_the_sidecar_to_server_everything() {
    check_everything("streamable", "streamableHttp", "/mcp");
}

#[test]
fn legacy_http_sse_through_the_sidecar_to_server_everything() {
    check_everything("sse", "sse", "/sse");
}

#[test]
fn mcp_2026_07_28_stateless_with_the_python_sdk() {
    let (_server, port) = server_2026();
    let sidecar = sidecar(&format!("fixture=http://127.0.0.1:{port}"), None, &[]);
    let steps = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "echo", "arguments": {"message": "hi"}},
        {"op": "call_tool", "name": "run_shell", "arguments": {"cmd": "id"}},
        {"op": "get_prompt", "name": "greeting", "arguments": {"name": "Ada"}},
        {"op": "read_resource", "uri": "memo://notes"},
    ]);
    let url = sidecar.url("/servers/fixture/mcp");
    let direct = client(
        "py",
        &format!("http://127.0.0.1:{port}/mcp"),
        "streamable",
        &steps,
        &["--mode", "2026-07-28"],
    );
    let proxied = client("py", &url, "streamable", &steps, &["--mode", "2026-07-28"]);
    assert_eq!(proxied[1], direct[1]);
    assert_eq!(proxied[3], direct[3]);
    assert_eq!(proxied[4], direct[4]);
    // The standard preset (AGENTMESH_POLICY's default) denies shell-like tools.
    assert!(direct[2].get("ok").is_some());
    assert_denied(&proxied[2], "preset:standard");
    let listed = names(&proxied[0], "tools", "name");
    assert!(!listed.contains(&"run_shell".to_owned()), "{listed:?}");
    assert!(listed.contains(&"echo".to_owned()));

    // The headers are checked against the body: a header naming an allowed tool does not get
    // a denied one through.
    let body = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"run_shell","arguments":{"cmd":"id"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
    let (status, answer) = post(
        sidecar.port,
        "/servers/fixture/mcp",
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
        ],
        body,
    );
    assert_eq!(status, 400, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["error"]["code"], -32020);
    assert_eq!(answer["id"], 9);
    // Missing headers at 2026-07-28 are refused too.
    let (status, _) = post(
        sidecar.port,
        "/servers/fixture/mcp",
        &[("MCP-Protocol-Version", "2026-07-28")],
        body,
    );
    assert_eq!(status, 400);
    // A spelling variant is the same tool to the rule.
    let variant = body.replace("run_shell", "Run-Shell");
    let (status, answer) = post(
        sidecar.port,
        "/servers/fixture/mcp",
        &[
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "Run-Shell"),
        ],
        &variant,
    );
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["error"]["code"], -32001, "{answer}");
    // Duplicated keys are refused before anything is decided or forwarded.
    let duplicated = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","name":"run_shell"}}"#;
    let (status, answer) = post(sidecar.port, "/servers/fixture/mcp", &[], duplicated);
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("-32700"), "{answer}");
}

#[test]
fn rate_limits_trip_after_the_allow_decision_and_shadow_mode_forwards() {
    let (_server, port) = everything("streamableHttp");
    let upstream = format!("everything=http://127.0.0.1:{port}");
    let limited = sidecar(
        &upstream,
        Some(
            "preset: standard\ntools:\n  deny: [get_env]\n  rules:\n  - tool: echo\n    rateLimit: {requests: 2, periodSeconds: 3600}\n",
        ),
        &[],
    );
    let echo = json!({"op": "call_tool", "name": "echo", "arguments": {"message": "x"}});
    let denied = json!({"op": "call_tool", "name": "get-env", "arguments": {}});
    // Denied calls spend no quota: three denials first, then two echoes pass, the third trips.
    let steps = json!([denied, denied, denied, echo, echo, echo]);
    let out = client(
        "ts",
        &limited.url("/servers/everything/mcp"),
        "streamable",
        &steps,
        &[],
    );
    for step in &out[..3] {
        assert_denied(step, "tools.deny[0]");
    }
    assert!(out[3].get("ok").is_some(), "{}", out[3]);
    assert!(out[4].get("ok").is_some(), "{}", out[4]);
    assert_denied(&out[5], "tools.rules[0].rateLimit");
    assert_eq!(
        limited.metric("agentmesh_sidecar_rate_limited_total{rule=\"tools.rules[0].rateLimit\"}"),
        1.0
    );

    let shadow = sidecar(
        &upstream,
        Some("mode: shadow\npreset: standard\ntools:\n  deny: [get_env]\n"),
        &[],
    );
    let out = client(
        "py",
        &shadow.url("/servers/everything/mcp"),
        "streamable",
        &json!([{"op": "list_tools"}, denied]),
        &[],
    );
    assert!(
        out[1].get("ok").is_some(),
        "shadow mode forwards: {}",
        out[1]
    );
    assert!(names(&out[0], "tools", "name").contains(&"get-env".to_owned()));
    assert_eq!(
        shadow.metric(
            "agentmesh_sidecar_requests_total{method=\"tools/call\",decision=\"would-deny\"}"
        ),
        1.0
    );
    assert_eq!(
        shadow.metric("agentmesh_policy_violation_count{mode=\"shadow\"}"),
        1.0
    );
}

#[test]
fn health_the_healthy_file_and_forward_proxy_requests() {
    let (_server, port) = everything("streamableHttp");
    let sidecar = sidecar("", Some(DENY_GET_ENV), &[]);
    // The healthy file appears once the key is held.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sidecar.dir.join("healthy").exists() {
        assert!(std::time::Instant::now() < deadline, "no healthy file");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let health: Value = serde_json::from_str(&http_get(sidecar.port, "/health")).unwrap();
    assert_eq!(health["status"], "healthy");
    // An HTTP_PROXY client sends absolute-form URIs: judged the same way.
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get-env","arguments":{}}}"#;
    let request = format!(
        "POST http://127.0.0.1:{port}/mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{call}",
        call.len()
    );
    let (status, body) = raw(sidecar.port, &request);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("-32001"), "{body}");
    // An unknown route and a CONNECT tunnel are refused with a reason.
    let (status, body) = post(sidecar.port, "/servers/nope/mcp", &[], "{}");
    assert_eq!(status, 404);
    assert!(body.contains("no MCP server named"), "{body}");
    let (status, _) = raw(
        sidecar.port,
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert_eq!(status, 405);
    // A browser page of another origin is refused (DNS rebinding).
    let (status, _) = post(
        sidecar.port,
        "/servers/nope/mcp",
        &[("Origin", "http://evil.example")],
        "{}",
    );
    assert_eq!(status, 403);
}

#[test]
fn batches_are_judged_call_by_call_and_sse_is_streamed_not_buffered() {
    let (_server, port) = everything("streamableHttp");
    let sidecar = sidecar(
        &format!("everything=http://127.0.0.1:{port}"),
        Some(DENY_GET_ENV),
        &[],
    );
    let path = "/servers/everything/mcp";
    // 2025-03-26 allowed JSON-RPC batches: every call inside is decided; the denied one is
    // answered by the sidecar, the other forwarded, both answers in the batch's answer.
    let session = open_session(sidecar.port, path, "2025-03-26");
    let batch = json!([
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "in a batch"}}},
        {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "get-env", "arguments": {}}},
    ]);
    let headers = [
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-03-26"),
    ];
    let (status, _, chunks) = post_streaming(
        sidecar.port,
        path,
        &headers,
        &batch.to_string(),
        "in a batch",
    );
    let answer: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("-32001"),
        "the denied call is answered: {answer}"
    );
    assert!(answer.contains("\"id\":8"), "{answer}");
    assert!(
        answer.contains("Echo: in a batch"),
        "the allowed call is forwarded: {answer}"
    );
    assert!(!answer.contains("PATH"), "get-env never ran: {answer}");

    // A long-running call's progress arrives while it runs, not with its result.
    let session = open_session(sidecar.port, path, "2025-06-18");
    let call = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {
        "name": "trigger-long-running-operation", "arguments": {"duration": 2, "steps": 4},
        "_meta": {"progressToken": "p"}}});
    let headers = [
        ("Mcp-Session-Id", session.as_str()),
        ("MCP-Protocol-Version", "2025-06-18"),
    ];
    let (status, _, chunks) = post_streaming(
        sidecar.port,
        path,
        &headers,
        &call.to_string(),
        "\"result\"",
    );
    assert_eq!(status, 200);
    let first_progress = chunks
        .iter()
        .find(|(_, c)| c.contains("notifications/progress"))
        .map(|(t, _)| *t)
        .expect("progress notifications");
    let result = chunks
        .iter()
        .find(|(_, c)| c.contains("\"result\""))
        .map(|(t, _)| *t)
        .expect("a result");
    assert!(
        result.saturating_sub(first_progress) > std::time::Duration::from_millis(1000),
        "progress at {first_progress:?}, result at {result:?}: the stream was buffered"
    );
}

#[test]
fn sigterm_lets_in_flight_calls_finish_and_removes_the_healthy_file() {
    let (_server, port) = everything("streamableHttp");
    let mut sidecar = sidecar(&format!("everything=http://127.0.0.1:{port}"), None, &[]);
    let path = "/servers/everything/mcp";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !sidecar.dir.join("healthy").exists() {
        assert!(std::time::Instant::now() < deadline, "no healthy file");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let session = open_session(sidecar.port, path, "2025-06-18");
    let sidecar_port = sidecar.port;
    let in_flight = std::thread::spawn(move || {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "trigger-long-running-operation", "arguments": {"duration": 2, "steps": 2}}});
        let headers = [
            ("Mcp-Session-Id", session.as_str()),
            ("MCP-Protocol-Version", "2025-06-18"),
        ];
        post_streaming(
            sidecar_port,
            path,
            &headers,
            &call.to_string(),
            "\"result\"",
        )
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = sidecar.process.0.id();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let (status, _, chunks) = in_flight.join().unwrap();
    let answer: String = chunks.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(status, 200);
    assert!(
        answer.contains("Long running operation completed"),
        "{answer}"
    );
    let exit = sidecar.process.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    assert!(
        !sidecar.dir.join("healthy").exists(),
        "the healthy file is removed on shutdown"
    );
}

#[test]
fn a_tool_that_changes_after_it_was_listed_is_an_anomaly() {
    let (_server, port) = server_2026();
    let sidecar = sidecar(&format!("fixture=http://127.0.0.1:{port}"), None, &[]);
    let steps = json!([
        {"op": "list_tools"},
        {"op": "list_tools"},
        {"op": "call_tool", "name": "redefine_add", "arguments": {}},
        {"op": "list_tools"},
        {"op": "list_tools"},
    ]);
    let out = client(
        "py",
        &sidecar.url("/servers/fixture/mcp"),
        "streamable",
        &steps,
        &["--mode", "2026-07-28"],
    );
    assert!(out[2].get("ok").is_some(), "{}", out[2]);
    let add = |step: &Value| {
        step["ok"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "add")
            .map(|t| t["description"].clone())
    };
    assert_ne!(add(&out[0]), add(&out[3]), "the fixture changed the tool");
    // Reported once, when the changed definition is first listed.
    assert_eq!(sidecar.metric("agentmesh_sidecar_tool_changes_total"), 1.0);
}

/// The one stand-in upstream of these tests: a raw socket that opens an SSE stream and then
/// watches for the proxy to hang up, which no SDK server reports to its caller.
#[test]
fn a_client_that_disconnects_cancels_the_upstream_request() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_port = listener.local_addr().unwrap().port();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 4096];
        let _ = socket.read(&mut buffer); // the request
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n9\r\n: hello\n\n\r\n")
            .unwrap();
        // Block until the proxy closes its side (read returns 0) or 20 s pass.
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let closed = matches!(socket.read(&mut buffer), Ok(0));
        closed_tx.send((closed, std::time::Instant::now())).unwrap();
    });
    let sidecar = sidecar(&format!("slow=http://127.0.0.1:{upstream_port}"), None, &[]);
    let mut client = std::net::TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    client
        .write_all(b"GET /servers/slow/mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(": hello") {
        let n = client.read(&mut buffer).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buffer[..n]);
    }
    // While the client listens, the upstream request stays open.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        closed_rx.try_recv().is_err(),
        "the upstream was hung up on too early"
    );
    let hung_up = std::time::Instant::now();
    drop(client);
    let (closed, at) = closed_rx
        .recv_timeout(std::time::Duration::from_secs(25))
        .unwrap();
    assert!(
        closed,
        "the upstream connection stayed open after the client left"
    );
    assert!(
        at.duration_since(hung_up) < std::time::Duration::from_secs(2),
        "the upstream request was dropped only {:?} after the client left",
        at.duration_since(hung_up)
    );
}
