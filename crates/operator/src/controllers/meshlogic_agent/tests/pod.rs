use super::*;

#[test]
fn the_config_file_is_the_agent_and_its_spec() {
    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    spec.safety_tier = 3;
    let mla = resource(spec.clone());
    let agent = Agent::new(&mla).unwrap();
    let config = config_json(&agent).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(parsed["agent"], "meshlogic/probe-a");
    assert_eq!(parsed["spec"]["safetyTier"], 3);
    assert_eq!(parsed["spec"]["customerId"], "acme");
    assert_eq!(parsed.as_object().unwrap().len(), 2);
    let back: MeshLogicAgentSpec = serde_json::from_value(parsed["spec"].clone()).unwrap();
    assert_eq!(back, spec);
    let map = config_map(&agent, &config);
    assert_eq!(map.data.unwrap()["config.json"], config);
}

#[test]
fn the_pod_has_the_seed_posture_and_the_mounts_bpf_needs() {
    let ds = built(&default_resource());
    let pod = pod_spec(&ds);
    assert_eq!(pod.host_pid, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("probe-a-probe"));
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let capabilities = security.capabilities.as_ref().unwrap();
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(
        capabilities.add.as_deref().unwrap(),
        [
            "BPF",
            "PERFMON",
            "NET_ADMIN",
            "SYS_PTRACE",
            "DAC_READ_SEARCH"
        ]
    );
    let mounts: BTreeMap<&str, (&str, Option<bool>)> = container
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.mount_path.as_str(), (m.name.as_str(), m.read_only)))
        .collect();
    assert_eq!(mounts["/sys/kernel/btf"], ("btf", Some(true)));
    // Nothing is mounted read-write from the node (the probe pins nothing in bpffs).
    assert!(!mounts.contains_key("/sys/fs/bpf"));
    assert!(
        mounts
            .values()
            .all(|(_, read_only)| *read_only == Some(true))
    );
    assert_eq!(mounts["/sys/fs/cgroup"], ("cgroup", Some(true)));
    assert_eq!(mounts["/host/proc"], ("host-proc", Some(true)));
    assert_eq!(mounts["/etc/meshlogic"], ("config", Some(true)));
    let volumes: BTreeMap<&str, &Volume> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let host = |name: &str| volumes[name].host_path.as_ref().unwrap().path.clone();
    assert_eq!(host("btf"), "/sys/kernel/btf");
    assert_eq!(host("cgroup"), "/sys/fs/cgroup");
    assert_eq!(host("host-proc"), "/proc");
    assert_eq!(
        volumes["config"].config_map.as_ref().unwrap().name,
        "probe-a-probe-config"
    );
    // Every mount has its volume.
    for (_, (name, _)) in mounts {
        assert!(volumes.contains_key(name), "{name}");
    }
}

#[test]
fn probe_pods_opt_out_of_sidecar_injection() {
    let ds = built(&default_resource());
    assert_eq!(template_annotations(&ds)["agentmesh.io/inject"], "false");
}

#[test]
fn ebpf_privileged_runs_the_probe_privileged_as_the_seed_chart_does() {
    let mut resource = default_resource();
    resource.spec.ebpf.privileged = true;
    let ds = built(&resource);
    let security = pod_spec(&ds).containers[0]
        .security_context
        .clone()
        .unwrap();
    assert_eq!(security.privileged, Some(true));
    assert_eq!(security.capabilities, None);
    // And it rolls the DaemonSet.
    assert_ne!(
        template_hash(&ds),
        template_hash(&built(&default_resource()))
    );
}

#[test]
fn the_cgroup_root_comes_from_the_spec() {
    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    spec.cgroup.root = "/sys/fs/cgroup/unified".into();
    let ds = built(&resource(spec));
    let pod = pod_spec(&ds);
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "cgroup")
        .unwrap();
    assert_eq!(
        volume.host_path.as_ref().unwrap().path,
        "/sys/fs/cgroup/unified"
    );
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "cgroup")
        .unwrap();
    assert_eq!(mount.mount_path, "/sys/fs/cgroup/unified");
}

#[test]
fn the_hash_changes_with_the_spec_and_only_with_it() {
    let base = hash_of(&default_resource());
    assert_eq!(base.len(), 32);
    // Same spec, other metadata that is not configuration: same hash.
    let mut again = default_resource();
    again.metadata.generation = Some(7);
    again.metadata.resource_version = Some("12345".into());
    again.metadata.labels = Some(BTreeMap::from([("team".into(), "x".into())]));
    assert_eq!(hash_of(&again), base);

    let changes: [fn(&mut MeshLogicAgentSpec); 14] = [
        |s| s.safety_tier = 3,
        |s| s.ebpf.mute_paths.push("/tmp".into()),
        |s| s.privacy.epsilon = 0.5,
        |s| s.customer_id = "other".into(),
        |s| s.image.tag = Some("9.9.9".into()),
        |s| s.region = "us-east-1".into(),
        |s| s.pod.host_network = true,
        |s| s.pod.capabilities = vec!["SYS_ADMIN".into()],
        |s| s.pod.labels = BTreeMap::from([("team".into(), "x".into())]),
        |s| s.logging = Some(LoggingSettings::default()),
        |s| s.health.enabled = false,
        |s| s.telemetry.batch_size = 10,
        |s| s.aws.access_key_id_key = "id".into(),
        |s| s.service_account.name = Some("mine".into()),
    ];
    for (i, change) in changes.iter().enumerate() {
        let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
        change(&mut spec);
        assert_ne!(hash_of(&resource(spec)), base, "change {i} kept the hash");
    }

    // The operator's own settings that reach the pod count too.
    let mla = default_resource();
    let agent = Agent::new(&mla).unwrap();
    let config = config_json(&agent).unwrap();
    let mut other = settings();
    other.trust_api_url = "http://elsewhere:8080".into();
    let moved = daemon_set(&agent, &other, &config).unwrap();
    assert_ne!(template_hash(&moved).unwrap(), base);
}

/// Every object an agent with an all-defaults spec renders, as JSON.
fn rendered_defaults(mla: &MeshLogicAgent) -> serde_json::Value {
    let agent = Agent::new(mla).unwrap();
    let config = config_json(&agent).unwrap();
    json!({
        "serviceAccount": service_account(&agent),
        "clusterRoleBinding": cluster_role_binding(&agent, "agentmesh-probe"),
        "configMap": config_map(&agent, &config),
        "daemonSet": daemon_set(&agent, &settings(), &config).unwrap(),
        "metricsService": metrics_service(&agent),
        "serviceMonitor": service_monitor(&agent),
    })
}

#[test]
fn an_all_defaults_spec_renders_byte_for_byte_as_before_the_pod_keys() {
    // Pinned from the code before `pod`, `logging`, `health`, `telemetry.batchSize`, the
    // AWS key names, `serviceMonitor.namespace`/`labels` and `serviceAccount.create`/`name`
    // existed, with the image repository of then (its default has changed since). Same
    // bytes: same ConfigMap, same configuration hash, no probe pod rolled by an upgrade.
    // Re-pinned once since, on purpose: the probe container's RuntimeDefault seccomp
    // profile changes the pod template and so its configuration hash (an upgrade rolls the
    // probe once); a diff of the two renderings showed nothing else changed. And a second
    // time: the node's bpffs, mounted read-write and never used (the probe pins nothing), is
    // no longer mounted (issue 16, least privilege); the volume, its mount and the hash alone
    // changed; in the same release the pod's security context became RuntimeDefault seccomp
    // when the spec gives none (checkov's CKV_K8S_29), so an upgrade rolls the probe once.
    // The same release binds the probe to the installation's ClusterRole instead of making
    // one per agent: the rendering lost its ClusterRole and the binding's roleRef changed
    // (neither is in the pod template); and the pod template gained the probe's trust-API
    // token volume (a projected token of the trust API's audience). Then the trust API moved
    // to TLS (issue 16, transport): the URL became https:// and the container gained the
    // operator's CA bundle (MESHLOGIC_TRUST_API_CA); nothing else changed, and an upgrade
    // rolls the probe once.
    let mut mla = default_resource();
    mla.spec.image.repository = "registry.meshlogic.ai/meshlogic-agent".into();
    let rendered = serde_json::to_vec(&rendered_defaults(&mla)).unwrap();
    assert_eq!(
        hex(&Sha256::digest(&rendered)),
        PINNED_DEFAULTS_SHA256,
        "{}",
        String::from_utf8_lossy(&rendered)
    );
    // And the spec written into the configuration file names none of the new keys.
    let config: serde_json::Value =
        serde_json::from_str(&config_json(&Agent::new(&mla).unwrap()).unwrap()).unwrap();
    for key in ["pod", "logging", "health"] {
        assert!(config["spec"].get(key).is_none(), "{key}");
    }
    assert!(config["spec"]["telemetry"].get("batchSize").is_none());
    assert_eq!(config["spec"]["serviceAccount"], json!({}));
}

const PINNED_DEFAULTS_SHA256: &str =
    "3c565aa7fd8168fdddce00279c09a48e26f692cd32375b3804cffa801255a4de";

#[test]
fn pod_labels_and_annotations_are_added_and_the_operators_win() {
    let ds = built(&spec_with(|s| {
        s.pod.labels = BTreeMap::from([
            ("team".into(), "security".into()),
            ("app.kubernetes.io/name".into(), "hijacked".into()),
            ("app.kubernetes.io/instance".into(), "hijacked".into()),
        ]);
        s.pod.annotations = BTreeMap::from([
            ("example.com/owner".into(), "sec".into()),
            ("agentmesh.io/inject".into(), "true".into()),
            ("agentmesh.io/config-hash".into(), "mine".into()),
        ]);
    }));
    let labels = template_labels(&ds);
    assert_eq!(labels["team"], "security");
    assert_eq!(labels["app.kubernetes.io/name"], "meshlogic-agent");
    assert_eq!(labels["app.kubernetes.io/instance"], "probe-a");
    // The selector still matches the pods.
    for (key, value) in ds
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .as_ref()
        .unwrap()
    {
        assert_eq!(labels.get(key), Some(value));
    }
    let annotations = template_annotations(&ds);
    assert_eq!(annotations["example.com/owner"], "sec");
    assert_eq!(annotations["agentmesh.io/inject"], "false");
    assert_ne!(annotations["agentmesh.io/config-hash"], "mine");
    // The DaemonSet itself keeps the operator's labels only.
    assert!(!ds.metadata.labels.as_ref().unwrap().contains_key("team"));
}

#[test]
fn pod_security_context_affinity_priority_init_containers_and_update_strategy_are_rendered() {
    let affinity = Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![Default::default()],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let security = PodSecurityContext {
        run_as_user: Some(0),
        seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let init = Container {
        name: "wait-for-bpffs".into(),
        image: Some("busybox:1.36".into()),
        ..Default::default()
    };
    let strategy = DaemonSetUpdateStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDaemonSet {
            max_unavailable: Some(IntOrString::String("25%".into())),
            ..Default::default()
        }),
    };
    let ds = built(&spec_with(|s| {
        s.pod.affinity = Some(affinity.clone());
        s.pod.security_context = Some(security.clone());
        s.pod.priority_class_name = Some("system-node-critical".into());
        s.pod.init_containers = vec![init.clone()];
        s.pod.update_strategy = Some(strategy.clone());
    }));
    let pod = pod_spec(&ds);
    assert_eq!(pod.affinity.as_ref(), Some(&affinity));
    assert_eq!(pod.security_context.as_ref(), Some(&security));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.init_containers.as_deref(), Some(&[init][..]));
    assert_eq!(pod.containers.len(), 1);
    assert_eq!(
        ds.spec.as_ref().unwrap().update_strategy.as_ref(),
        Some(&strategy)
    );

    // None of them by default.
    let ds = built(&default_resource());
    let pod = pod_spec(&ds);
    assert!(pod.affinity.is_none());
    // The pod's security context is the runtime's default seccomp profile.
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(
        security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(
        security,
        &PodSecurityContext {
            seccomp_profile: security.seccomp_profile.clone(),
            ..Default::default()
        }
    );
    assert!(pod.priority_class_name.is_none() && pod.init_containers.is_none());
    assert!(ds.spec.as_ref().unwrap().update_strategy.is_none());
}

fn added_capabilities(ds: &DaemonSet) -> Option<Vec<String>> {
    let security = pod_spec(ds).containers[0].security_context.clone()?;
    security.capabilities?.add
}

#[test]
fn extra_capabilities_are_added_once_after_the_operators() {
    let ds = built(&spec_with(|s| {
        s.pod.capabilities = ["SYS_ADMIN", "BPF", "SYS_RESOURCE", "SYS_ADMIN"]
            .map(String::from)
            .to_vec();
    }));
    assert_eq!(
        added_capabilities(&ds).unwrap(),
        [
            "BPF",
            "PERFMON",
            "NET_ADMIN",
            "SYS_PTRACE",
            "DAC_READ_SEARCH",
            "SYS_ADMIN",
            "SYS_RESOURCE"
        ]
    );
    // Privileged already has every capability.
    let ds = built(&spec_with(|s| {
        s.pod.capabilities = vec!["SYS_ADMIN".into()];
        s.ebpf.privileged = true;
    }));
    assert_eq!(added_capabilities(&ds), None);
}

#[test]
fn host_network_brings_the_dns_policy_that_still_resolves_services() {
    let ds = built(&default_resource());
    let pod = pod_spec(&ds);
    assert_eq!((pod.host_network, pod.dns_policy.as_deref()), (None, None));
    assert_eq!(pod.host_pid, Some(true));

    let ds = built(&spec_with(|s| {
        s.pod.host_network = true;
        s.pod.host_pid = false;
    }));
    let pod = pod_spec(&ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(pod.host_pid, Some(false));
}

fn timing(probe: &Option<Probe>) -> [Option<i32>; 4] {
    let probe = probe.as_ref().unwrap();
    [
        probe.initial_delay_seconds,
        probe.period_seconds,
        probe.timeout_seconds,
        probe.failure_threshold,
    ]
}

#[test]
fn health_settings_time_both_checks_or_remove_them() {
    let ds = built(&default_resource());
    let container = &pod_spec(&ds).containers[0];
    assert_eq!(
        timing(&container.liveness_probe),
        [Some(10), Some(20), Some(2), Some(3)]
    );
    assert_eq!(
        timing(&container.readiness_probe),
        [Some(2), Some(10), Some(2), Some(3)]
    );

    let ds = built(&spec_with(|s| {
        s.health.initial_delay_seconds = Some(30);
        s.health.timeout_seconds = 5;
        s.health.failure_threshold = 6;
    }));
    let container = &pod_spec(&ds).containers[0];
    assert_eq!(
        timing(&container.liveness_probe),
        [Some(30), Some(20), Some(5), Some(6)]
    );
    assert_eq!(
        timing(&container.readiness_probe),
        [Some(30), Some(10), Some(5), Some(6)]
    );
    let ds = built(&spec_with(|s| s.health.period_seconds = Some(15)));
    let container = &pod_spec(&ds).containers[0];
    assert_eq!(timing(&container.liveness_probe)[1], Some(15));
    assert_eq!(timing(&container.readiness_probe)[1], Some(15));

    let ds = built(&spec_with(|s| s.health.enabled = false));
    let container = &pod_spec(&ds).containers[0];
    assert!(container.liveness_probe.is_none() && container.readiness_probe.is_none());
}
