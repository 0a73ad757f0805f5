use super::*;

fn overrides() -> Overrides {
    Overrides {
        node_name: "node-1".into(),
        trust_api: "http://127.0.0.1:8080".into(),
        trust_api_ca: None,
        token_file: "/tmp/token".into(),
        cgroup_root: None,
        metrics_addr: None,
        btf_path: "/sys/kernel/btf/vmlinux".into(),
        proc_root: "/proc".into(),
        report_queue: 16,
        kube: KubeAccess::Disabled,
        file_hook: FileHookChoice::Auto,
    }
}

fn error_of(spec: serde_json::Value) -> String {
    let text = serde_json::json!({"agent": "meshlogic/agent", "spec": spec}).to_string();
    ProbeConfig::from_json(&text, overrides())
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn a_minimal_file_takes_the_seed_defaults() {
    let text = r#"{"agent":"meshlogic/meshlogic-agent","spec":{"customerId":"acme"}}"#;
    let config = ProbeConfig::from_json(text, overrides()).unwrap();
    assert_eq!(config.requested_tier, Tier::ReadOnly);
    assert_eq!(config.ring_buffer_size, 1_048_576);
    assert_eq!(config.mute_paths, ["/proc", "/sys", "/dev"]);
    assert_eq!(config.cgroup_root, PathBuf::from("/sys/fs/cgroup"));
    assert_eq!(config.metrics_addr.port(), 9090);
    assert_eq!(config.epsilon, 1.0);
    assert!(config.enable_noise && config.enable_file);
    assert_eq!(config.report_interval, Duration::from_secs(10));
    assert_eq!(config.telemetry_batch_size, 25);
}

#[test]
fn the_telemetry_batch_size_comes_from_the_spec() {
    let text = r#"{"agent":"a/b","spec":{"customerId":"x","telemetry":{"batchSize":5}}}"#;
    let config = ProbeConfig::from_json(text, overrides()).unwrap();
    assert_eq!(config.telemetry_batch_size, 5);
}

#[test]
fn the_cgroup_root_flag_wins_over_the_spec() {
    let text = r#"{"agent":"a/b","spec":{"customerId":"x","cgroup":{"root":"/sys/fs/cgroup"}}}"#;
    let mut o = overrides();
    o.cgroup_root = Some("/sys/fs/cgroup/unified".into());
    let config = ProbeConfig::from_json(text, o).unwrap();
    assert_eq!(config.cgroup_root, PathBuf::from("/sys/fs/cgroup/unified"));
}

#[test]
fn each_bad_value_names_its_field() {
    let cases = [
        (
            serde_json::json!({"customerId": "x", "safetyTier": 4}),
            "spec.safetyTier",
        ),
        (
            serde_json::json!({"customerId": "x", "ebpf": {"ringBufferSize": 5000}}),
            "spec.ebpf.ringBufferSize",
        ),
        (
            serde_json::json!({"customerId": "x", "ebpf": {"ringBufferSize": 2048}}),
            "spec.ebpf.ringBufferSize",
        ),
        (
            serde_json::json!({"customerId": "x", "ebpf": {"mutePaths": ["/ok", "relative"]}}),
            "spec.ebpf.mutePaths[1]",
        ),
        (
            serde_json::json!({"customerId": "x", "privacy": {"epsilon": 0.0}}),
            "spec.privacy.epsilon",
        ),
        (
            serde_json::json!({"customerId": "x", "metrics": {"port": 70000}}),
            "spec.metrics.port",
        ),
        (
            serde_json::json!({"customerId": "x", "reportIntervalSeconds": 0}),
            "spec.reportIntervalSeconds",
        ),
        (
            serde_json::json!({"customerId": "x", "cgroup": {"root": "sys/fs/cgroup"}}),
            "spec.cgroup.root",
        ),
        (
            serde_json::json!({"customerId": "x", "telemetry": {"sink": "http"}}),
            "spec.telemetry.endpoint",
        ),
        (
            serde_json::json!({"customerId": "x", "telemetry": {"batchSize": 26}}),
            "spec.telemetry.batchSize",
        ),
        (
            serde_json::json!({"customerId": "x", "telemetry": {"batchSize": 0}}),
            "spec.telemetry.batchSize",
        ),
        (
            serde_json::json!({"customerId": "x", "ebpf": {"enableFile": "yes"}}),
            "enableFile",
        ),
    ];
    for (spec, field) in cases {
        let message = error_of(spec.clone());
        assert!(
            message.contains(field),
            "{spec}: {message:?} should name {field}"
        );
    }
}

#[test]
fn unknown_top_level_fields_are_refused() {
    let text = r#"{"agent":"a/b","spec":{"customerId":"x"},"spce":{}}"#;
    let message = ProbeConfig::from_json(text, overrides())
        .unwrap_err()
        .to_string();
    assert!(message.contains("spce"), "{message}");
}

/// Found by the fuzz target `probe_config`: an unknown field named "" gave an error that named
/// no field (": unknown field ``").
#[test]
fn an_unknown_field_without_a_name_names_the_file() {
    let text = r#"{"agent":"a/b","spec":{"customerId":"x"},"":1}"#;
    let error = ProbeConfig::from_json(text, overrides()).unwrap_err();
    assert_eq!(error.field, "config file", "{error}");
}

#[test]
fn agent_node_and_trust_api_are_checked() {
    let spec = r#""spec":{"customerId":"x"}"#;
    let text = format!(r#"{{"agent":"no-slash",{spec}}}"#);
    assert!(
        ProbeConfig::from_json(&text, overrides())
            .unwrap_err()
            .to_string()
            .starts_with("agent:")
    );
    let text = format!(r#"{{"agent":"a/b",{spec}}}"#);
    let mut o = overrides();
    o.node_name.clear();
    assert!(
        ProbeConfig::from_json(&text, o)
            .unwrap_err()
            .to_string()
            .contains("NODE_NAME")
    );
    let mut o = overrides();
    o.trust_api = "ftp://x".into();
    assert!(
        ProbeConfig::from_json(&text, o)
            .unwrap_err()
            .to_string()
            .contains("MESHLOGIC_TRUST_API")
    );
    // TLS needs the roots to check the operator's certificate with.
    let mut o = overrides();
    o.trust_api = "https://agentmesh.agentmesh.svc:8080".into();
    let error = ProbeConfig::from_json(&text, o.clone()).unwrap_err();
    assert_eq!(error.field, "MESHLOGIC_TRUST_API_CA", "{error}");
    o.trust_api_ca = Some("-----BEGIN CERTIFICATE-----".into());
    let config = ProbeConfig::from_json(&text, o).unwrap();
    assert_eq!(
        config.trust_api_ca.as_deref(),
        Some("-----BEGIN CERTIFICATE-----")
    );
}

#[test]
fn file_hook_choices_are_spelled_as_documented() {
    use agentmesh_api::meshlogic::FileHook;
    assert_eq!("auto".parse(), Ok(FileHookChoice::Auto));
    assert_eq!("fexit".parse(), Ok(FileHookChoice::Only(FileHook::Fexit)));
    assert_eq!(
        "sys_exit".parse(),
        Ok(FileHookChoice::Only(FileHook::SysExit))
    );
    for wrong in ["", "Fexit", "sys-exit", "lsm", "fexit "] {
        let error = wrong.parse::<FileHookChoice>().unwrap_err();
        assert!(
            error.contains("expected auto, fexit or sys_exit"),
            "{error}"
        );
    }
}
