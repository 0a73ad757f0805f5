//! The `agentmesh identity`, `policy check` and `trust status` commands, end to end.

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

/// Runs `program` with `args`; its stdout, or a panic with what it said.
fn run_tool(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (it must be installed for this test): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} refused the key: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The private key `agentmesh identity generate --output-key` writes is read by OpenSSL 3 and
/// Python's `cryptography`, and both derive the public key agentmesh printed.
#[test]
fn a_generated_key_is_read_by_openssl_and_python_cryptography() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    let out = agentmesh(&["identity", "generate", "--output-key"]);
    assert!(out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let public_key = stderr
        .lines()
        .find_map(|l| l.strip_prefix("publicKey: "))
        .unwrap_or_else(|| panic!("no publicKey in {stderr}"))
        .to_owned();
    let dir = std::env::temp_dir().join(format!("agentmesh-cli-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("key.pem");
    std::fs::write(&path, &out.stdout).unwrap();
    let path = path.to_str().unwrap();

    run_tool("openssl", &["pkey", "-in", path, "-noout"]);
    // SubjectPublicKeyInfo DER: 12 bytes of algorithm header, then the 32 key bytes.
    let spki = run_tool(
        "openssl",
        &["pkey", "-in", path, "-pubout", "-outform", "DER"],
    );
    assert_eq!(spki.len(), 44, "{spki:?}");
    assert_eq!(STANDARD.encode(&spki[12..]), public_key, "openssl");

    let script = "import base64, sys\n\
        from cryptography.hazmat.primitives.serialization import load_pem_private_key, Encoding, PublicFormat\n\
        key = load_pem_private_key(open(sys.argv[1], 'rb').read(), password=None)\n\
        print(base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode())\n";
    let python = run_tool("python3", &["-c", script, path]);
    assert_eq!(
        String::from_utf8(python).unwrap().trim(),
        public_key,
        "python cryptography"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With nothing listening at the kubeconfig's server, `trust status` fails in one line that
/// names the server, with status 1 and no panic.
#[test]
fn trust_status_names_an_unreachable_cluster() {
    let dir = std::env::temp_dir().join(format!("agentmesh-cli-trust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: nowhere\n  cluster: {server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}\n\
         users:\n\
         - name: nobody\n  user: {token: not-a-token}\n\
         contexts:\n\
         - name: nowhere\n  context: {cluster: nowhere, user: nobody, namespace: agents}\n\
         current-context: nowhere\n",
    )
    .unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    for args in [
        &["trust", "status", "--kubeconfig", kubeconfig][..],
        &[
            "trust",
            "status",
            "-A",
            "-w",
            "--duration",
            "5",
            "-o",
            "json",
            "--kubeconfig",
            kubeconfig,
        ],
    ] {
        let out = agentmesh(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            stderr.starts_with("error: cannot reach the cluster at https://127.0.0.1:1/: "),
            "{args:?}: {stderr}"
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trust_status_refuses_duration_without_watch_and_namespace_with_all() {
    let out = agentmesh(&["trust", "status", "--duration", "3"]);
    assert_eq!(out.status.code(), Some(2));
    let out = agentmesh(&["trust", "status", "-n", "agents", "-A"]);
    assert_eq!(out.status.code(), Some(2));
}
