//! Types and schema fragments shared by the three kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `did:mesh:` followed by the first 32 hex digits of sha256(public key).
pub const DID_PATTERN: &str = r"^did:mesh:[0-9a-f]{32}$";

/// An Ed25519 public key in its text form: standard base64 (RFC 4648, padded) of the 32 raw
/// key bytes, 44 characters.
pub const PUBLIC_KEY_PATTERN: &str = r"^[A-Za-z0-9+/]{43}=$";

/// A capability: `*`, `action:*`, `action:resource`, `action:resource:*` or
/// `action:resource:qualifier`. A trailing `*` in a segment matches any suffix
/// (`read:docs/*`).
pub const CAPABILITY_PATTERN: &str =
    r"^(\*|[a-z][a-z0-9_-]*:(\*|[A-Za-z0-9_./-]+\*?)(:(\*|[A-Za-z0-9_./=-]+\*?))?)$";

/// A name pattern with `*` wildcards: an MCP tool name, a peer, an executable.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_.:/@*-]+$";

/// An absolute path, or an absolute path prefix ending in `*`.
pub const PATH_PATTERN: &str = r"^/[^\x00]*$";

/// Trust tier, derived from the score: `verified` ≥ 900, `trusted` ≥ 700, `standard` ≥ 500,
/// `probationary` ≥ 300, `untrusted` below.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TrustTier {
    Verified,
    Trusted,
    Standard,
    Probationary,
    Untrusted,
}

impl TrustTier {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::Trusted => "trusted",
            Self::Standard => "standard",
            Self::Probationary => "probationary",
            Self::Untrusted => "untrusted",
        }
    }
}

/// Conditions in the Kubernetes shape, merged by `type` under server-side apply.
pub type Conditions = Vec<Condition>;

/// Schema transform for a `conditions` list: a map keyed by `type`, bounded.
pub fn conditions_schema(schema: &mut schemars::Schema) {
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema.insert("maxItems".into(), 16.into());
}

/// Look up a condition by type.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of this type is present with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}
