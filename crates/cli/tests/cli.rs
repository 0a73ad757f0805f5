//! The `agentmesh identity` and `agentmesh policy check` commands, end to end.

use std::process::Command;

fn agentmesh(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(args)
        .output()
        .unwrap()
}

fn examples(file: &str) -> String {
    // The running test's manifest directory, not the one compiled in (see e2e's repo_root).
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{manifest}/../../examples/{file}")
}

#[test]
fn generated_key_shows_the_same_did() {
    let out = agentmesh(&["identity", "generate", "--output-key"]);
    assert!(out.status.success());
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let did = stderr
        .lines()
        .find_map(|l| l.strip_prefix("did: "))
        .unwrap()
        .to_owned();
    let path = std::env::temp_dir().join(format!("agentmesh-cli-test-{}.pem", std::process::id()));
    std::fs::write(&path, pem).unwrap();
    let out = agentmesh(&[
        "identity",
        "show",
        "--key",
        path.to_str().unwrap(),
        "--output",
        "json",
    ]);
    std::fs::remove_file(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["did"], did.as_str());
    assert_eq!(json["publicKey"].as_str().unwrap().len(), 44);
}

#[test]
fn policy_check_explains_and_exits_by_effect() {
    let policy = examples("trustpolicy.yaml");
    let identity = examples("agentidentity.yaml");
    let check = |call: &str, score: &str| {
        agentmesh(&[
            "policy",
            "check",
            "--policy",
            &policy,
            "--identity",
            &identity,
            "--call",
            call,
            "--score",
            score,
            "--output",
            "json",
        ])
    };
    let out = check(r#"{"tool":"fetch_url"}"#, "800");
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["effect"].as_str(), json["rule"].as_str()),
        (Some("allow"), Some("tools.allow[1]"))
    );
    let out = check(r#"{"tool":"fetch_url"}"#, "450");
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rule"], "tools.rules[0].minScore");
    assert_eq!(json["tier"], "probationary");
    let out = check(r#"{"connect":"169.254.169.254","port":80}"#, "800");
    assert_eq!(out.status.code(), Some(2));
    let out = check(r#"{"nonsense":1}"#, "800");
    assert_eq!(out.status.code(), Some(1));
}
