//! Types and schema fragments shared by the three kinds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `did:mesh:` followed by the first 32 hex digits of sha256(public key).
pub const DID_PATTERN: &str = r"^did:mesh:[0-9a-f]{32}$";

/// An Ed25519 public key in its text form: standard base64 (RFC 4648, padded) of the 32 raw
/// key bytes, 44 characters.
pub const PUBLIC_KEY_PATTERN: &str = r"^[A-Za-z0-9+/]{43}=$";

/// A capability: `*`, or `action:resource[:qualifier]`, each of resource and qualifier `*` or a
/// `/`-separated path with an optional trailing `*` (a prefix on segment boundaries:
/// `read:docs/*`, `read:docs*`). No path segment is empty, `.` or `..`. The grammar of
/// `agentmesh_identity::capability`, which the test below holds this to.
pub const CAPABILITY_PATTERN: &str = concat!(
    r"^(\*|[a-z][a-z0-9_-]*:",
    r"(\*|(\.{0,2}[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3}[A-Za-z0-9_.-]*)(/(\.{0,2}[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.{3}[A-Za-z0-9_.-]*))*(/?\*)?)",
    r"(:(\*|(\.{0,2}[A-Za-z0-9_=-][A-Za-z0-9_.=-]*|\.{3}[A-Za-z0-9_.=-]*)(/(\.{0,2}[A-Za-z0-9_=-][A-Za-z0-9_.=-]*|\.{3}[A-Za-z0-9_.=-]*))*(/?\*)?))?)$"
);

/// A name pattern with `*` wildcards: an MCP tool name, a peer, an executable.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9_.:/@*-]+$";

/// An absolute path, or an absolute path prefix ending in `*`.
pub const PATH_PATTERN: &str = r"^/[^\x00]*$";

/// An executable: an absolute path matched exactly, or a prefix ended by its only `*`
/// (`/usr/bin/*`). The operator and the kernel (safety tier 3) give a pattern this one meaning:
/// a `*` elsewhere would be a wildcard to one and a literal to the other, so it is refused
/// (`agentmesh_trust::policy::exec_pattern_ok`, which the test below holds this to). At most
/// [`EXEC_PATH_MAX`] bytes.
pub const EXEC_PATH_PATTERN: &str = r"^/[^\x00*]*\*?$";

/// Longest executable pattern: the kernel's deny key holds 240 bytes of path, its NUL
/// included (`EXEC_KEY_PATH` in `bpf/probe.h`).
pub const EXEC_PATH_MAX: usize = agentmesh_trust::policy::EXEC_PATTERN_MAX;

pub use agentmesh_trust::policy::exec_pattern_ok;

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

#[cfg(test)]
mod tests {
    use super::{CAPABILITY_PATTERN, EXEC_PATH_MAX, EXEC_PATH_PATTERN, exec_pattern_ok};
    use agentmesh_identity::capability::Capability;

    fn schema_accepts_exec(text: &str) -> bool {
        regex::Regex::new(EXEC_PATH_PATTERN).unwrap().is_match(text)
            && (1..=EXEC_PATH_MAX).contains(&text.len())
    }

    #[test]
    fn an_exec_pattern_has_one_meaning_in_the_schema_and_the_operator() {
        for (text, ok) in [
            ("/usr/bin/curl", true),
            ("/usr/bin/*", true),
            ("/tmp/x*", true),
            ("/*", true),
            ("/usr/*/curl", false),
            ("/usr/bin/**", false),
            ("*/curl", false),
            ("curl", false),
            ("/a\0b", false),
        ] {
            assert_eq!(schema_accepts_exec(text), ok, "{text}");
            assert_eq!(exec_pattern_ok(text), ok, "{text}");
        }
        let longest = format!("/{}", "a".repeat(EXEC_PATH_MAX - 1));
        assert!(schema_accepts_exec(&longest) && exec_pattern_ok(&longest));
        let longer = format!("{longest}a");
        assert!(!schema_accepts_exec(&longer) && !exec_pattern_ok(&longer));
    }

    fn schema_accepts(text: &str) -> bool {
        regex::Regex::new(CAPABILITY_PATTERN)
            .unwrap()
            .is_match(text)
    }

    #[test]
    fn the_schema_and_the_parser_agree_on_traversal_and_empty_segments() {
        for text in [
            "read:docs/../secret",
            "read:..",
            "read:docs/./a",
            "read:docs/..*",
            "read:docs//a",
            "read:/etc",
            "tools:search:../x",
            "read:docs/*",
            "read:docs*",
            "read:.hidden/a..b/...",
            "a:b:c=d/e*",
        ] {
            assert_eq!(
                schema_accepts(text),
                Capability::parse(text).is_ok(),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_exec_schema_is_the_operators_check(text in "[/a*\\x00]{0,6}") {
            proptest::prop_assert_eq!(schema_accepts_exec(&text), exec_pattern_ok(&text), "{:?}", text);
        }

        // The CRD refuses exactly what the operator's parser refuses, so a capability the API
        // server stores is one the operator understands, and the other way round.
        #[test]
        fn the_schema_is_the_parser(text in "\\*|[ab]{1,2}:[a./*=-]{0,6}(:[a./*=-]{0,5})?") {
            proptest::prop_assert_eq!(
                schema_accepts(&text),
                Capability::parse(&text).is_ok(),
                "{}", text
            );
        }
    }
}
