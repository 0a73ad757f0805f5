//! The sidecar's decoders of untrusted MCP traffic: JSON-RPC bodies (strict, duplicated keys
//! refused), list filtering, `Mcp-Name` header values, and the SSE relay. Whatever the bytes:
//! no panic; the SSE parser gives back exactly the bytes it was fed, however they are split;
//! an event rewritten with new data parses back to that data; a filtered list only loses items.
#![no_main]

// The sidecar's pure modules, compiled as they are (serde, serde_json, base64, bytes).
#[path = "../../crates/sidecar/src/jsonrpc.rs"]
#[allow(dead_code)]
mod jsonrpc;
#[path = "../../crates/sidecar/src/sse.rs"]
#[allow(dead_code)]
mod sse;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // JSON-RPC.
    if let Ok(body) = jsonrpc::parse_body(data) {
        for message in body.messages() {
            let _ = jsonrpc::method(message);
            let _ = jsonrpc::called_name(message);
            let _ = jsonrpc::id(message);
            if let Some(result) = message.get("result") {
                let mut result = result.clone();
                if let Some(kind) = jsonrpc::ListKind::of_result(&result) {
                    let before = result[kind.key()].as_array().map_or(0, Vec::len);
                    let removed =
                        jsonrpc::filter_list(&mut result, kind, |name, _| name.len() % 2 == 0);
                    let after = result[kind.key()].as_array().map_or(0, Vec::len);
                    assert_eq!(before - removed, after);
                    let text = serde_json::to_vec(&result).unwrap();
                    assert!(serde_json::from_slice::<serde_json::Value>(&text).is_ok());
                }
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = jsonrpc::decode_header_value(text);
    }

    // SSE: split the input at a point chosen by its first byte.
    let split = data
        .first()
        .map_or(0, |b| usize::from(*b) % (data.len() + 1));
    let mut parser = sse::Parser::default();
    let mut relayed = Vec::new();
    for chunk in [&data[..split], &data[split..]] {
        let Ok(events) = parser.push(chunk) else {
            return;
        };
        for event in events {
            relayed.extend_from_slice(&event.raw);
            if event.data.is_some() {
                let rewritten = event.with_data("{\"x\":1}");
                let mut again = sse::Parser::default();
                let parsed = again.push(&rewritten).unwrap();
                assert_eq!(parsed.len(), 1, "{rewritten:?}");
                assert_eq!(parsed[0].data.as_deref(), Some("{\"x\":1}"));
            }
        }
    }
    relayed.extend_from_slice(&parser.rest());
    assert_eq!(relayed, data);
});
