//! A TrustPolicy document: parsed from YAML into the CRD type, converted and compiled, then
//! asked a few decisions.
#![no_main]

use agentmesh_api::convert::compile_policy;
use agentmesh_api::policy::TrustPolicy;
use agentmesh_trust::Timestamp;
use agentmesh_trust::policy::{FileAccess, PeerRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resource) = serde_saphyr::from_str::<TrustPolicy>(text) else {
        return;
    };
    let Ok(policy) = compile_policy(&resource.spec) else {
        return;
    };
    let now = Timestamp::from_secs(1_800_000_000);
    let mut rate = policy.new_rate_state(now);
    for tool in ["fetch_url", "shell", "read_file", ""] {
        let d = policy.decide_tool(tool, 500, &mut rate, now);
        let _ = d.to_string();
    }
    let _ = policy.decide_exec("/bin/sh", 500).to_string();
    let _ = policy
        .decide_file("/etc/passwd", FileAccess::Write, 500)
        .to_string();
    let _ = policy
        .decide_connect("10.0.0.1".parse().unwrap(), 443, 500)
        .to_string();
    let _ = policy
        .decide_connect("fd00::1".parse().unwrap(), 443, 100)
        .to_string();
    let peer = PeerRef {
        did: "did:mesh:00112233445566778899aabbccddeeff",
        namespace: Some("a"),
        name: Some("b"),
    };
    let _ = policy.decide_peer(peer, 500, "a").to_string();
});
