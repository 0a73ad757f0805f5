//! Name patterns with `*` (any run of characters, possibly empty), compiled once so that
//! matching allocates nothing and the common shapes (`exact`, `prefix*`, `*suffix`, `*infix*`)
//! are one comparison.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Shape {
    Any,
    Exact,
    Prefix(Box<str>),
    Suffix(Box<str>),
    Infix(Box<str>),
    /// Several `*`: literal parts between them.
    General {
        parts: Box<[Box<str>]>,
        anchored_start: bool,
        anchored_end: bool,
    },
}

/// A compiled `*` pattern; keeps its source text for explanations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    source: Box<str>,
    shape: Shape,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let stars = pattern.bytes().filter(|&b| b == b'*').count();
        let shape = if pattern.bytes().all(|b| b == b'*') && stars > 0 {
            Shape::Any
        } else if stars == 0 {
            Shape::Exact
        } else if stars == 1 && pattern.ends_with('*') {
            Shape::Prefix(pattern[..pattern.len() - 1].into())
        } else if stars == 1 && pattern.starts_with('*') {
            Shape::Suffix(pattern[1..].into())
        } else if stars == 2 && pattern.starts_with('*') && pattern.ends_with('*') {
            Shape::Infix(pattern[1..pattern.len() - 1].into())
        } else {
            Shape::General {
                parts: pattern
                    .split('*')
                    .filter(|p| !p.is_empty())
                    .map(Into::into)
                    .collect(),
                anchored_start: !pattern.starts_with('*'),
                anchored_end: !pattern.ends_with('*'),
            }
        };
        Self {
            source: pattern.into(),
            shape,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Number of literal characters: how specific the pattern is.
    pub fn literal_len(&self) -> usize {
        self.source.bytes().filter(|&b| b != b'*').count()
    }

    #[inline]
    pub fn matches(&self, text: &str) -> bool {
        match &self.shape {
            Shape::Any => true,
            Shape::Exact => *self.source == *text,
            Shape::Prefix(p) => text.starts_with(&**p),
            Shape::Suffix(s) => text.ends_with(&**s),
            Shape::Infix(i) => text.contains(&**i),
            Shape::General {
                parts,
                anchored_start,
                anchored_end,
            } => general(parts, *anchored_start, *anchored_end, text),
        }
    }
}

fn general(parts: &[Box<str>], anchored_start: bool, anchored_end: bool, text: &str) -> bool {
    let mut rest = text;
    let last = parts.len().saturating_sub(1);
    for (i, part) in parts.iter().enumerate() {
        if i == 0 && anchored_start {
            match rest.strip_prefix(&**part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == last && anchored_end {
            return rest.len() >= part.len() && rest.ends_with(&**part);
        } else {
            match rest.find(&**part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    !anchored_end || rest.is_empty() || parts.is_empty()
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Several patterns; the first that matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GlobSet(Vec<Glob>);

impl GlobSet {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        Self(patterns.iter().map(|p| Glob::new(p.as_ref())).collect())
    }

    /// Index and pattern of the first match.
    #[inline]
    pub fn first_match(&self, text: &str) -> Option<(usize, &Glob)> {
        self.0.iter().enumerate().find(|(_, g)| g.matches(text))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Glob> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference implementation: classic recursive wildcard matching.
    fn reference(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    #[test]
    fn shapes() {
        let cases = [
            ("*", "anything", true),
            ("read_file", "read_file", true),
            ("read_file", "read_files", false),
            ("search_*", "search_web", true),
            ("search_*", "research_web", false),
            ("*_shell", "run_shell", true),
            ("*exec*", "do_exec_now", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbYcd", false),
            ("a*bc*bc", "abcbc", true),
            ("**", "", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).matches(t), want, "{p} vs {t}");
        }
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_reference(p in "[ab*]{0,7}", t in "[ab]{0,9}") {
            proptest::prop_assert_eq!(Glob::new(&p).matches(&t), reference(p.as_bytes(), t.as_bytes()), "{} vs {}", p, t);
        }
    }
}
