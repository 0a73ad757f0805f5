//! Spelling-insensitive names: a rule that names `run_shell` also governs `Run_Shell`,
//! `run-shell`, `runShell`, `RUN_SHELL`, `run.shell` and `run__shell`, because MCP servers
//! (and the frameworks under them) commonly resolve tool names case- and separator-insensitively,
//! and a deny rule that a different spelling escapes is no rule at all.
//!
//! The canonical form, applied to rule patterns and to called names alike:
//! 1. a word boundary inside camel case becomes `_` (`runShell` → `run_Shell`,
//!    `getHTTPResponse` → `get_HTTP_Response`);
//! 2. ASCII letters are lowercased;
//! 3. `-`, `.`, ASCII whitespace and `_` runs become one `_`; leading and trailing `_` are
//!    dropped;
//! 4. everything else (digits, `*`, `:`, `/`, `@`, non-ASCII) is kept as it is.
//!
//! Non-ASCII characters are not folded (no Unicode normalisation): a server that names a tool
//! `run_shеll` with a Cyrillic `е` exposes a different tool from `run_shell`, and the strict
//! preset, which allows only names it recognises, still refuses it.

use std::borrow::Cow;

/// Whether `name` is already in canonical form (the common case: no allocation).
fn is_canonical(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.first() == Some(&b'_') || bytes.last() == Some(&b'_') {
        return false;
    }
    let mut previous = 0u8;
    for &b in bytes {
        if b.is_ascii_uppercase() || b == b'-' || b == b'.' || b.is_ascii_whitespace() {
            return false;
        }
        if b == b'_' && previous == b'_' {
            return false;
        }
        previous = b;
    }
    true
}

/// The canonical spelling of a tool or prompt name, or of a pattern over them.
pub fn canonical_name(name: &str) -> Cow<'_, str> {
    if is_canonical(name) {
        return Cow::Borrowed(name);
    }
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    let mut pending_separator = false;
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' || c == '-' || c == '.' || c.is_ascii_whitespace() {
            pending_separator = !out.is_empty();
            continue;
        }
        if c.is_ascii_uppercase() && i > 0 {
            let previous = chars[i - 1];
            let next = chars.get(i + 1).copied();
            let boundary = previous.is_ascii_lowercase()
                || previous.is_ascii_digit()
                || (previous.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()));
            if boundary && !out.is_empty() {
                pending_separator = true;
            }
        }
        if pending_separator {
            out.push('_');
            pending_separator = false;
        }
        out.push(c.to_ascii_lowercase());
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_agree() {
        for spelling in [
            "run_shell",
            "Run_Shell",
            "RUN_SHELL",
            "run-shell",
            "runShell",
            "RunShell",
            "run.shell",
            "run__shell",
            "_run_shell_",
            "run shell",
            "Run-_-Shell",
        ] {
            assert_eq!(canonical_name(spelling), "run_shell", "{spelling}");
        }
    }

    #[test]
    fn acronyms_digits_and_patterns() {
        assert_eq!(canonical_name("getHTTPResponse"), "get_http_response");
        assert_eq!(canonical_name("HTTPGet"), "http_get");
        assert_eq!(canonical_name("s3Upload"), "s3_upload");
        assert_eq!(canonical_name("execute*"), "execute*");
        assert_eq!(canonical_name("*_Shell_*"), "*_shell_*");
        assert_eq!(canonical_name("github/createIssue"), "github/create_issue");
        assert!(matches!(canonical_name("read_file"), Cow::Borrowed(_)));
    }

    #[test]
    fn non_ascii_is_kept() {
        assert_eq!(canonical_name("run_shеll"), "run_shеll");
        assert_ne!(canonical_name("run_shеll"), "run_shell");
    }

    proptest::proptest! {
        #[test]
        fn canonical_is_idempotent(name in "[a-zA-Z0-9_. *-]{0,16}") {
            let once = canonical_name(&name).into_owned();
            proptest::prop_assert_eq!(canonical_name(&once).into_owned(), once);
        }
    }
}
