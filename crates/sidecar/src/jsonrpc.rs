//! JSON-RPC as the proxy reads it: a POST body is one message or a batch; a message is a call
//! the policy decides (`tools/call`, `prompts/get`, `resources/read`), a list whose result is
//! filtered, or anything else, passed on untouched.
//!
//! Bodies are parsed strictly: a duplicated object key is refused, because parsers disagree on
//! which copy wins and a proxy that reads `{"name":"echo","name":"run_shell"}` differently from
//! the server behind it decides on a call that is not the one made.

use std::fmt;

use base64::Engine;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// JSON-RPC error codes the sidecar answers with.
pub mod codes {
    /// A call the policy denies (what AgentMesh's proxy has always answered; MCP clients
    /// surface it, where a 4xx would lose it).
    pub const DENIED: i64 = -32001;
    /// MCP 2026-07-28: `Mcp-Method` / `Mcp-Name` do not match the body, or are missing.
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INTERNAL_ERROR: i64 = -32603;
}

/// A body parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Single(Value),
    Batch(Vec<Value>),
}

impl Body {
    pub fn messages(&self) -> &[Value] {
        match self {
            Body::Single(v) => std::slice::from_ref(v),
            Body::Batch(vs) => vs,
        }
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("a JSON-RPC message is an object, or a batch is a non-empty array of objects")]
    NotMessages,
}

/// Parse a POST body (strictly: duplicated keys refused).
pub fn parse_body(bytes: &[u8]) -> Result<Body, BodyError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue::deserialize(&mut deserializer)
        .map_err(|e| BodyError::NotJson(e.to_string()))?
        .0;
    deserializer
        .end()
        .map_err(|e| BodyError::NotJson(e.to_string()))?;
    match value {
        Value::Object(_) => Ok(Body::Single(value)),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            Ok(Body::Batch(items))
        }
        _ => Err(BodyError::NotMessages),
    }
}

/// The method of a request or notification.
pub fn method(message: &Value) -> Option<&str> {
    message.get("method")?.as_str()
}

/// What a decided call names: `params.name` (tools, prompts) or `params.uri` (resources).
pub fn called_name(message: &Value) -> Option<&str> {
    let params = message.get("params")?;
    match method(message)? {
        "resources/read" => params.get("uri")?.as_str(),
        _ => params.get("name")?.as_str(),
    }
}

/// The `id` of a request, `null` when absent.
pub fn id(message: &Value) -> Value {
    message.get("id").cloned().unwrap_or(Value::Null)
}

/// A JSON-RPC error response.
pub fn error_response(id: Value, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut error = Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    if let Some(data) = data {
        error.insert("data".into(), data);
    }
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error})
}

/// MCP's header value encoding: `=?base64?<base64 of UTF-8>?=` or the plain value.
pub fn decode_header_value(value: &str) -> Option<String> {
    match value
        .strip_prefix("=?base64?")
        .and_then(|v| v.strip_suffix("?="))
    {
        Some(encoded) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok()),
        None => Some(value.to_owned()),
    }
}

/// The three lists the proxy filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListKind {
    Tools,
    Prompts,
    Resources,
}

impl ListKind {
    /// Which list a result is, by its shape: `result.tools`, `result.prompts` or
    /// `result.resources` as an array of objects. Shape rather than the request's method,
    /// because on the 2025 revisions a response may arrive on another stream than its request
    /// (the GET stream, a resumed stream).
    pub fn of_result(result: &Value) -> Option<Self> {
        let object = result.as_object()?;
        [
            (Self::Tools, "tools"),
            (Self::Prompts, "prompts"),
            (Self::Resources, "resources"),
        ]
        .into_iter()
        .find(|(_, key)| object.get(*key).is_some_and(Value::is_array))
        .map(|(kind, _)| kind)
    }

    pub fn key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
        }
    }

    /// The field an item is named by.
    pub fn name_field(self) -> &'static str {
        match self {
            Self::Resources => "uri",
            _ => "name",
        }
    }
}

/// Removes from a list result the items `keep` refuses; when any is removed, the result's
/// cache hints are made private and immediate (`ttlMs: 0`, `cacheScope: "private"`), so a
/// filtered list is never reused by another agent or after the policy changes. Returns the
/// number removed. Items without a name are removed (nothing can be decided about them).
pub fn filter_list(
    result: &mut Value,
    kind: ListKind,
    mut keep: impl FnMut(&str, &Value) -> bool,
) -> usize {
    let Some(items) = result.get_mut(kind.key()).and_then(Value::as_array_mut) else {
        return 0;
    };
    let before = items.len();
    items.retain(|item| {
        item.get(kind.name_field())
            .and_then(Value::as_str)
            .is_some_and(|name| keep(name, item))
    });
    let removed = before - items.len();
    if removed > 0
        && let Some(object) = result.as_object_mut()
    {
        object.insert("ttlMs".into(), 0.into());
        object.insert("cacheScope".into(), "private".into());
    }
    removed
}

/// A `serde_json::Value` that refuses duplicated object keys.
struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_batch_and_bad_bodies() {
        let single = parse_body(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#,
        )
        .unwrap();
        assert_eq!(method(&single.messages()[0]), Some("tools/call"));
        assert_eq!(called_name(&single.messages()[0]), Some("echo"));
        let batch = parse_body(br#"[{"id":1,"method":"tools/list"},{"id":2,"method":"resources/read","params":{"uri":"memo://x"}}]"#).unwrap();
        assert_eq!(batch.messages().len(), 2);
        assert_eq!(called_name(&batch.messages()[1]), Some("memo://x"));
        assert!(matches!(parse_body(b"{"), Err(BodyError::NotJson(_))));
        assert!(matches!(parse_body(b"[]"), Err(BodyError::NotMessages)));
        assert!(matches!(parse_body(b"[1]"), Err(BodyError::NotMessages)));
        assert!(matches!(parse_body(b"{} {}"), Err(BodyError::NotJson(_))));
    }

    #[test]
    fn duplicated_keys_are_refused_at_every_depth() {
        let e = parse_body(
            br#"{"id":1,"method":"tools/call","params":{"name":"echo","name":"run_shell"}}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("duplicate key \"name\""), "{e}");
        assert!(parse_body(br#"{"method":"a","method":"tools/call"}"#).is_err());
    }

    #[test]
    fn header_values_decode() {
        assert_eq!(
            decode_header_value("get_weather").as_deref(),
            Some("get_weather")
        );
        assert_eq!(
            decode_header_value("=?base64?SGVsbG8sIOS4lueVjA==?=").as_deref(),
            Some("Hello, 世界")
        );
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }

    #[test]
    fn lists_are_filtered_and_made_private() {
        let mut result = json!({"tools": [{"name": "echo"}, {"name": "run_shell"}, {"x": 1}], "nextCursor": "c"});
        assert_eq!(ListKind::of_result(&result), Some(ListKind::Tools));
        let removed = filter_list(&mut result, ListKind::Tools, |name, _| name != "run_shell");
        assert_eq!(removed, 2);
        assert_eq!(result["tools"], json!([{"name": "echo"}]));
        assert_eq!(result["ttlMs"], 0);
        assert_eq!(result["cacheScope"], "private");
        assert_eq!(result["nextCursor"], "c");
        let mut untouched = json!({"resources": [{"uri": "memo://a"}], "ttlMs": 5000});
        assert_eq!(
            filter_list(&mut untouched, ListKind::Resources, |_, _| true),
            0
        );
        assert_eq!(untouched["ttlMs"], 5000);
        assert_eq!(ListKind::of_result(&json!({"content": []})), None);
    }
}
