//! Capabilities and the "covers" relation that delegation narrowing and authorisation use.
//!
//! Grammar (the CRD's `CAPABILITY_PATTERN`): `*`, or `action:resource[:qualifier]` where the
//! action is `[a-z][a-z0-9_-]*` and each of resource and qualifier is `*` or a name with an
//! optional trailing `*` (prefix match: `read:docs/*` matches `read:docs/a`).
//!
//! `p` **covers** `c` when every concrete capability `c` grants is also granted by `p`:
//! - `*` covers everything; only `*` covers `*`;
//! - the actions are equal;
//! - the resource of `p` is equal to `c`'s, or is a prefix pattern that `c`'s resource (or
//!   `c`'s own prefix) starts with;
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
    /// Matches any text starting with this (`*` alone is `Prefix("")`).
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
        Ok(if prefix {
            Self::Prefix(body.to_owned())
        } else {
            Self::Exact(body.to_owned())
        })
    }

    fn covers(&self, other: &Segment) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(_), Self::Prefix(_)) => false,
            (Self::Prefix(a), Self::Exact(b) | Self::Prefix(b)) => b.starts_with(a.as_str()),
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
            ("tools:search:we*", "tools:search:web"),
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
    }

    fn cap_strategy() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let seg = prop_oneof![Just("*".to_owned()), "[ab]{1,2}\\*?"];
        prop_oneof![
            1 => Just("*".to_owned()),
            6 => ("[rw]", seg.clone(), proptest::option::of(seg)).prop_map(|(a, r, q)| match q {
                Some(q) => format!("{a}:{r}:{q}"),
                None => format!("{a}:{r}"),
            }),
        ]
    }
}
