//! The query string of the trust API's long-polls (`GET /v1/enforcement?node=&since=`,
//! `GET /v1/sidecar/config?since=`), as the operator reads it (`wire::parse_query`) and as the
//! probe and the sidecar write it (`wire::encode_query`). Whatever the query, reading it never
//! panics and gives at most one value per name; whatever the node and version, what a client
//! writes is a valid URI query that the operator reads back as they were.
#![no_main]

use agentmesh_api::wire::{encode_query, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // The operator: any query the HTTP parser lets through.
    let pairs = parse_query(&text);
    assert!(pairs.len() <= text.split('&').count());
    for (name, value) in &pairs {
        // Decoding never lengthens (`%FF`, not UTF-8, is the three bytes of U+FFFD).
        assert!(name.len() + value.len() <= text.len());
    }

    // The clients: a node name and a version (split at the first NUL), written then read.
    let (node, since) = text.split_once('\0').unwrap_or((&text, ""));
    let query = encode_query(&[("node", node), ("since", since)]);
    assert!(
        query
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%=&".contains(&b)),
        "not a plain URI query: {query:?}"
    );
    let read = parse_query(&query);
    assert_eq!(read.len(), 2, "{query:?}");
    assert_eq!(read["node"], node, "{query:?}");
    assert_eq!(read["since"], since, "{query:?}");
    assert_eq!(
        encode_query(&[("since", since)]),
        format!("since={}", query.split_once("&since=").unwrap().1)
    );
});
