//! Capabilities and the "covers" relation that delegation narrowing and authorisation use.
//!
//! Grammar (the CRD's `CAPABILITY_PATTERN`): `*`, or `action:resource[:qualifier]` where the
//! action is `[a-z][a-z0-9_-]*` and each of resource and qualifier is `*` or a `/`-separated
//! path of non-empty segments, none of them `.` or `..`, with an optional trailing `*`.
//!
//! A trailing `*` matches **whole segments only** (like Envoy's `path_separated_prefix`):
//! - `docs/*` matches every name under `docs/` (`docs/a`, `docs/a/b`), not `docs` itself;
//! - `docs*` matches `docs` and every name under `docs/`, but not `docs-secret` or `docsx`:
//!   a grant of `read:docs*` never reaches a sibling that merely starts with the same letters;
//! - `*` alone matches everything.
//!
//! `.` and `..` segments and empty segments (`a//b`) are refused when parsed, so no spelling
//! of a name can climb out of the prefix that granted it (`read:docs/../secret`).
//!
//! `p` **covers** `c` when every concrete capability `c` grants is also granted by `p`:
//! - `*` covers everything; only `*` covers `*`;
//! - the actions are equal;
//! - the resource of `p` is equal to `c`'s, or is a prefix pattern that matches `c`'s resource
//!   (a concrete name, or the name before `c`'s own `*`: `read:docs*` covers `read:docs/a*`);
//! - a `p` without qualifier covers every qualifier: `read:docs` covers `read:docs:summary`
//!   (a qualifier only narrows). So does a `p` whose resource is a prefix pattern without
//!   qualifier (`read:*` covers `read:docs:summary`). A `p` with a qualifier covers a `c` only
//!   when `c` has a qualifier that `p`'s covers in the same way.

use std::fmt;

/// Why a capability string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid capability {text:?}: {reason} (expected *, action:resource or action:resource:qualifier)"
)]
pub struct CapabilityError {
    pub text: String,
    pub reason: &'static str,
}

/// A resource or qualifier segment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this text.
    Exact(String),
    /// The text before a trailing `*` (`*` alone is `Prefix("")`): matches whole `/`-segments
    /// only, see the module docs.
    Prefix(String),
}

impl Segment {
    fn parse(text: &str, allowed: fn(u8) -> bool) -> Result<Self, &'static str> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if !prefix && body.is_empty() {
            return Err("empty segment");
        }
        if !body.bytes().all(allowed) {
            return Err("character not allowed in segment");
        }
        if !body.is_empty() {
            // `docs/*`: the empty name after the last `/` is the prefix's, not a segment.
            let path = if prefix {
                body.strip_suffix('/').unwrap_or(body)
            } else {
                body
            };
            for segment in path.split('/') {
                match segment {
                    "" => return Err("empty path segment (a leading, trailing or double /)"),
                    "." | ".." => return Err("a . or .. path segment"),
                    _ => {}
                }
            }
        }
        Ok(if prefix {
            Self::Prefix(body.to_owned())
        } else {
            Self::Exact(body.to_owned())
        })
    }

    /// Whether this segment matches the name `name` (for a prefix `other`, the text before its
    /// `*`: a name the prefix matches and then extends segment by segment).
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(a) => a == name,
            Self::Prefix(a) if a.is_empty() || a.ends_with('/') => name.starts_with(a.as_str()),
            Self::Prefix(a) => {
                name == a
                    || name
                        .strip_prefix(a.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            }
        }
    }

    fn covers(&self, other: &Segment) -> bool {
        match (self, other) {
            (_, Self::Exact(b)) => self.matches(b),
            (Self::Exact(_), Self::Prefix(_)) => false,
            // `*` is matched only by `*`; `docs/*` (everything under `docs/`) by what matches
            // `docs/`; `docs*` (`docs` and everything under it) by what matches `docs`.
            (Self::Prefix(a), Self::Prefix(b)) => {
                a.is_empty() || (!b.is_empty() && self.matches(b))
            }
        }
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => f.write_str(s),
            Self::Prefix(s) => write!(f, "{s}*"),
        }
    }
}

/// A parsed capability.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    /// `*`: everything.
    All,
    Scoped {
        action: String,
        resource: Segment,
        qualifier: Option<Segment>,
    },
}

fn resource_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-')
}

fn qualifier_char(b: u8) -> bool {
    resource_char(b) || b == b'='
}

/// Longest capability accepted (the CRD's bound).
pub const MAX_CAPABILITY_LEN: usize = 253;

impl Capability {
    pub fn parse(text: &str) -> Result<Self, CapabilityError> {
        let err = |reason| CapabilityError {
            text: text.chars().take(300).collect(),
            reason,
        };
        if text.len() > MAX_CAPABILITY_LEN {
            return Err(err("longer than 253 characters"));
        }
        if text == "*" {
            return Ok(Self::All);
        }
        let mut parts = text.split(':');
        let action = parts.next().unwrap_or_default();
        let resource = parts.next().ok_or_else(|| err("missing resource"))?;
        let qualifier = parts.next();
        if parts.next().is_some() {
            return Err(err("more than three segments"));
        }
        let mut action_bytes = action.bytes();
        let first_ok = action_bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        if !first_ok
            || !action_bytes
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(err("action must be [a-z][a-z0-9_-]*"));
        }
        let resource = Segment::parse(resource, resource_char).map_err(err)?;
        let qualifier = qualifier
            .map(|q| Segment::parse(q, qualifier_char))
            .transpose()
            .map_err(err)?;
        Ok(Self::Scoped {
            action: action.to_owned(),
            resource,
            qualifier,
        })
    }

    /// Whether everything `other` grants is granted by `self` (see the module docs).
    pub fn covers(&self, other: &Capability) -> bool {
        match (self, other) {
            (Self::All, _) => true,
            (Self::Scoped { .. }, Self::All) => false,
            (
                Self::Scoped {
                    action: pa,
                    resource: pr,
                    qualifier: pq,
                },
                Self::Scoped {
                    action: ca,
                    resource: cr,
                    qualifier: cq,
                },
            ) => {
                if pa != ca || !pr.covers(cr) {
                    return false;
                }
                match (pq, cq) {
                    (None, _) => true,
                    // `c` without qualifier grants every qualifier; only a `p` that does too
                    // covers it.
                    (Some(pq), None) => *pq == Segment::Prefix(String::new()),
                    (Some(pq), Some(cq)) => pq.covers(cq),
                }
            }
        }
    }

    /// Whether one of `granted` covers this capability.
    pub fn is_covered_by(&self, granted: &[Capability]) -> bool {
        granted.iter().any(|g| g.covers(self))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Scoped {
                action,
                resource,
                qualifier: None,
            } => write!(f, "{action}:{resource}"),
            Self::Scoped {
                action,
                resource,
                qualifier: Some(q),
            } => write!(f, "{action}:{resource}:{q}"),
        }
    }
}

/// Parse a list of capabilities, refusing the first invalid one.
pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Capability>, CapabilityError> {
    texts
        .iter()
        .map(|t| Capability::parse(t.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(text: &str) -> Capability {
        Capability::parse(text).unwrap()
    }

    #[test]
    fn grammar_matches_the_crd_pattern() {
        for good in [
            "*",
            "read:*",
            "read:documents",
            "tools:search:*",
            "write:notes/research/*",
            "a:b:c=d",
            "x-y_1:r.s-t/u",
            "read:docs*:q*",
            "read:docs/*",
            "read:.hidden/a..b/...",
            "read:docs/v1.2*",
        ] {
            let parsed = Capability::parse(good).unwrap();
            assert_eq!(parsed.to_string(), good);
        }
        for bad in [
            "",
            "read",
            "Read:x",
            "1read:x",
            "read:",
            "read::x",
            "read:a:b:c",
            "read:a b",
            "read:a*b",
            "**",
            "read:x:y:",
            ":x",
            // `.`, `..` and empty path segments: no spelling climbs out of a prefix.
            "read:docs/../secret",
            "read:docs/..",
            "read:../secret",
            "read:..",
            "read:.",
            "read:docs/./a",
            "read:docs/.*",
            "read:docs/..*",
            "read:docs//a",
            "read:/etc",
            "read:docs/",
            "read://*",
            "tools:search:../x",
            "tools:search:a/..*",
        ] {
            assert!(Capability::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn covers_narrowing() {
        let yes = [
            ("*", "*"),
            ("*", "read:x"),
            ("read:*", "read:documents"),
            ("read:*", "read:documents:summary"),
            ("read:*", "read:docs/*"),
            ("read:documents", "read:documents"),
            ("read:documents", "read:documents:summary"),
            ("read:documents", "read:documents:*"),
            ("tools:search:*", "tools:search:web"),
            ("tools:search:*", "tools:search"),
            ("write:notes/*", "write:notes/research/*"),
            ("write:notes/*", "write:notes/a:b"),
            ("tools:search:web*", "tools:search:web"),
            ("tools:search:web*", "tools:search:web/news"),
            ("read:docs*", "read:docs"),
            ("read:docs*", "read:docs/a/b"),
            ("read:docs*", "read:docs/*"),
            ("read:docs*", "read:docs/a*"),
            ("read:docs*", "read:docs*"),
            ("read:docs/*", "read:docs/a*"),
            ("read:docs/*", "read:docs/a/*"),
            ("read:docs.v1*", "read:docs.v1/x"),
        ];
        for (p, c) in yes {
            assert!(cap(p).covers(&cap(c)), "{p} should cover {c}");
        }
        let no = [
            ("read:*", "*"),
            ("read:*", "write:x"),
            ("read:documents", "read:documents2"),
            ("read:documents", "read:*"),
            ("read:documents", "read:documents*"),
            ("tools:search:web", "tools:search:*"),
            ("tools:search:web", "tools:search"),
            ("tools:search:we*", "tools:search"),
            ("write:notes/research/*", "write:notes/*"),
            ("tools:search:web", "tools:search:webx"),
            // A prefix stops at segment boundaries: the same letters are not the same name.
            ("tools:search:we*", "tools:search:web"),
            ("read:docs*", "read:docs-secret"),
            ("read:docs*", "read:docsx/a"),
            ("read:docs*", "read:docs-secret*"),
            ("read:docs*", "read:docs.bak"),
            ("read:docs/*", "read:docs"),
            ("read:docs/*", "read:docs*"),
            ("read:docs/a*", "read:docs/ab"),
            ("read:*", "read2:x"),
        ];
        for (p, c) in no {
            assert!(!cap(p).covers(&cap(c)), "{p} should not cover {c}");
        }
    }

    proptest::proptest! {
        // Covering is reflexive and transitive over a small generated alphabet.
        #[test]
        fn covers_is_a_preorder(a in cap_strategy(), b in cap_strategy(), c in cap_strategy()) {
            let (a, b, c) = (cap(&a), cap(&b), cap(&c));
            proptest::prop_assert!(a.covers(&a));
            if a.covers(&b) && b.covers(&c) {
                proptest::prop_assert!(a.covers(&c), "{a} > {b} > {c}");
            }
        }

        // A prefix grant reaches its own name and what lies under it, never a name that only
        // starts with the same letters (`read:docs*` and `read:docs-secret`).
        #[test]
        fn a_prefix_never_covers_a_longer_sibling(
            base in "[a-c]{1,3}(/[a-c]{1,3}){0,2}",
            rest in "[a-c-][a-c/-]{0,4}",
        ) {
            let grant = cap(&format!("read:{base}*"));
            let sibling = format!("read:{base}{rest}");
            if let Ok(sibling) = Capability::parse(&sibling) {
                proptest::prop_assert!(!grant.covers(&sibling), "{} covers {}", grant, sibling);
            }
            let own = cap(&format!("read:{base}"));
            proptest::prop_assert!(grant.covers(&own), "{} misses {}", grant, own);
            if let Ok(under) = Capability::parse(&format!("read:{base}/{rest}")) {
                proptest::prop_assert!(grant.covers(&under), "{} misses {}", grant, under);
            }
        }
    }

    fn cap_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Names of one or two segments over a tiny alphabet, so that prefixes, siblings that
        // share letters (`a`, `ab`, `a-`) and names under others (`a/b`) all meet.
        let seg = prop_oneof![Just("*".to_owned()), "[ab-]{1,2}(/[ab]{1,2})?(/?\\*)?"];
        prop_oneof![
            1 => Just("*".to_owned()),
            6 => ("[rw]", seg.clone(), proptest::option::of(seg)).prop_map(|(a, r, q)| match q {
                Some(q) => format!("{a}:{r}:{q}"),
                None => format!("{a}:{r}"),
            }),
        ]
    }
}
