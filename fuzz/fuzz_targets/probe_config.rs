//! The probe's start-up configuration: its environment (the lines before the first empty line,
//! `NAME=value`, as the DaemonSet sets them; flags take the same values) and its configuration
//! file (the rest: the MeshLogicAgent the operator writes into a ConfigMap). Whatever they
//! hold, `ProbeConfig::from_json` and the logging settings answer without panicking; a refusal
//! names its field; a configuration it accepts has every value within the bounds the probe
//! relies on, and each of its mute paths fits the kernel's mute_paths trie.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use agentmesh_api::meshlogic::{
    RING_BUFFER_MAX, RING_BUFFER_MIN, TELEMETRY_BATCH_MAX, TelemetrySink,
};
use agentmesh_api::settings::Settings;
use libfuzzer_sys::fuzz_target;
use meshlogic_probe_core::config::{FileHookChoice, KubeAccess, Overrides, ProbeConfig, Tier};
use meshlogic_probe_core::keys::mute_path_entries;
use meshlogic_probe_core::layout::{PATH_LEN, PathKey};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (env, file) = match text.split_once("\n\n") {
        Some((env, file)) => (env, file),
        None => ("", text.as_ref()),
    };
    let env: HashMap<&str, &str> = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();

    // AGENTMESH_LOG_LEVEL and AGENTMESH_LOG_FORMAT, read before anything else.
    let logging = Settings::logging_from_lookup(|name| env.get(name).map(|v| v.to_string()));
    if let Err(error) = logging {
        assert!(!error.to_string().is_empty());
    }

    // The flags' values as clap parses them (an unparsable one stops the probe before this).
    let Ok(report_queue) = env
        .get("MESHLOGIC_REPORT_QUEUE")
        .map_or(Ok(64), |v| v.parse::<usize>())
    else {
        return;
    };
    let Ok(metrics_addr) = env
        .get("MESHLOGIC_METRICS_ADDR")
        .map(|v| v.parse::<SocketAddr>())
        .transpose()
    else {
        return;
    };
    // MESHLOGIC_FILE_HOOK: one of three spellings, or a refusal that names the variable.
    let file_hook = match env
        .get("MESHLOGIC_FILE_HOOK")
        .map(|v| v.parse::<FileHookChoice>())
    {
        None => FileHookChoice::Auto,
        Some(Ok(choice)) => choice,
        Some(Err(error)) => {
            assert!(error.starts_with("MESHLOGIC_FILE_HOOK "), "{error}");
            return;
        }
    };
    let trust_api = env
        .get("MESHLOGIC_TRUST_API")
        .map_or("http://meshlogic-operator.agentmesh.svc:8080", |v| v);
    let overrides = Overrides {
        node_name: env.get("NODE_NAME").map_or("node-1", |v| v).to_string(),
        trust_api: trust_api.to_string(),
        trust_api_ca: env.get("MESHLOGIC_TRUST_API_CA").map(|v| v.to_string()),
        token_file: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
        cgroup_root: env.get("MESHLOGIC_CGROUP_ROOT").map(PathBuf::from),
        metrics_addr,
        btf_path: "/sys/kernel/btf/vmlinux".into(),
        proc_root: "/proc".into(),
        report_queue,
        kube: KubeAccess::Disabled,
        file_hook,
    };
    let config = match ProbeConfig::from_json(file, overrides.clone()) {
        Ok(config) => config,
        Err(error) => {
            assert!(
                !error.field.is_empty(),
                "a refusal without its field: {error}"
            );
            return;
        }
    };

    let (namespace, name) = config
        .agent
        .split_once('/')
        .expect("agent is namespace/name");
    assert!(!namespace.is_empty() && !name.is_empty());
    assert!(!config.node_name.is_empty());
    assert_eq!(config.file_hook, file_hook);
    assert!(config.trust_api.starts_with("http://") && !config.trust_api.ends_with('/'));
    assert!(matches!(
        config.requested_tier,
        Tier::UserMode | Tier::ReadOnly | Tier::Blocking
    ));
    assert!((1..=3).contains(&config.requested_tier.number()));
    let size = i64::from(config.ring_buffer_size);
    assert!((RING_BUFFER_MIN..=RING_BUFFER_MAX).contains(&size) && size.count_ones() == 1);
    assert!(config.cgroup_root.is_absolute());
    assert!(config.epsilon.is_finite() && config.epsilon > 0.0 && config.epsilon <= 100.0);
    assert!(config.metrics_addr.port() > 0 || metrics_addr.is_some());
    assert!((1..=3600).contains(&config.report_interval.as_secs()));
    assert!((10..=86_400).contains(&config.telemetry_interval.as_secs()));
    assert!((1..=TELEMETRY_BATCH_MAX as usize).contains(&config.telemetry_batch_size));
    if config.telemetry_sink == TelemetrySink::Http {
        assert!(
            config
                .telemetry_endpoint
                .as_deref()
                .is_some_and(|url| url.starts_with("http://"))
        );
    }
    assert!(config.report_queue >= 1);

    // The mute paths: at most 64, absolute, NUL-free, and each in the kernel's trie (its key
    // the size of struct path_key, its prefix within the path).
    assert!(config.mute_paths.len() <= 64);
    for path in &config.mute_paths {
        assert!(path.starts_with('/') && !path.contains('\0') && path.len() <= 128);
        let entries = mute_path_entries(std::slice::from_ref(path));
        assert_eq!(
            entries.len(),
            if path.ends_with('/') { 1 } else { 2 },
            "{path:?}"
        );
        for (key, value) in entries {
            assert_eq!(key.len(), size_of::<PathKey>());
            assert_eq!(value, [1]);
            let prefixlen = u32::from_ne_bytes(key[..4].try_into().unwrap()) as usize;
            assert!(prefixlen % 8 == 0 && prefixlen / 8 <= PATH_LEN);
            assert!(key[4..4 + prefixlen / 8].starts_with(path.as_bytes()));
            assert!(key[4 + prefixlen / 8..].iter().all(|b| *b == 0));
        }
    }
});
