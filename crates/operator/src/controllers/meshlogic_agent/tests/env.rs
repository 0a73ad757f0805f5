use super::*;

fn env_map(container: &Container) -> BTreeMap<String, EnvVar> {
    container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.clone(), e.clone()))
        .collect()
}

#[test]
fn the_container_gets_what_the_probe_reads() {
    let ds = built(&default_resource());
    let container = &pod_spec(&ds).containers[0];
    let env = env_map(container);
    assert_eq!(
        env["NODE_NAME"]
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap()
            .field_path,
        "spec.nodeName"
    );
    assert_eq!(
        env["MESHLOGIC_PROBE_CONFIG"].value.as_deref(),
        Some("/etc/meshlogic/config.json")
    );
    assert_eq!(
        env["MESHLOGIC_TRUST_API"].value.as_deref(),
        Some("https://agentmesh.agentmesh.svc:8080")
    );
    // The operator's CA bundle, as a value: the probe trusts nothing else.
    assert_eq!(
        env["MESHLOGIC_TRUST_API_CA"].value.as_deref(),
        Some(settings().trust_api_ca.as_str())
    );
    assert_eq!(
        env["MESHLOGIC_PROC_ROOT"].value.as_deref(),
        Some("/host/proc")
    );
    assert_eq!(env["AWS_REGION"].value.as_deref(), Some("ap-southeast-2"));
    assert!(
        !env.contains_key("AWS_ACCESS_KEY_ID"),
        "IRSA is the default"
    );
    assert_eq!(
        container.image.as_deref(),
        Some("registry.meshlogic.ai/meshlogic/agent:0.1.0")
    );
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        pod_spec(&ds).image_pull_secrets,
        Some(vec![LocalObjectReference {
            name: "meshlogic-registry".into()
        }])
    );
    let port = &container.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("metrics"), 9090)
    );
    let probe_path = |probe: &Option<Probe>| {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        (get.path.clone().unwrap(), get.port.clone())
    };
    let metrics_port = IntOrString::String("metrics".into());
    assert_eq!(
        probe_path(&container.liveness_probe),
        ("/health".into(), metrics_port.clone())
    );
    assert_eq!(
        probe_path(&container.readiness_probe),
        ("/ready".into(), metrics_port)
    );
    let annotations = template_annotations(&ds);
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9090");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
}

#[test]
fn resources_default_to_the_seed_values_and_follow_the_spec() {
    let ds = built(&default_resource());
    let resources = pod_spec(&ds).containers[0].resources.clone().unwrap();
    let get = |map: &Option<
        BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >,
               key: &str| map.as_ref().unwrap()[key].0.clone();
    assert_eq!(get(&resources.requests, "cpu"), "100m");
    assert_eq!(get(&resources.requests, "memory"), "128Mi");
    assert_eq!(get(&resources.limits, "cpu"), "500m");
    assert_eq!(get(&resources.limits, "memory"), "256Mi");

    // A spec parsed without `resources` gets the same defaults.
    let spec: MeshLogicAgentSpec = serde_json::from_value(json!({"customerId": "acme"})).unwrap();
    let ds = built(&resource(spec));
    assert_eq!(pod_spec(&ds).containers[0].resources, Some(resources));

    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    spec.resources.limits.as_mut().unwrap().insert(
        "memory".into(),
        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
    );
    let ds = built(&resource(spec));
    let resources = pod_spec(&ds).containers[0].resources.clone().unwrap();
    assert_eq!(get(&resources.limits, "memory"), "1Gi");
}

#[test]
fn spec_settings_reach_the_pod() {
    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    spec.image.repository = "example.com/probe".into();
    spec.image.tag = Some("2.0".into());
    spec.image.pull_policy = PullPolicy::Always;
    spec.image.pull_secrets = vec![];
    spec.metrics.port = 9200;
    spec.metrics.enabled = false;
    spec.region = "eu-west-1".into();
    spec.node_selector = BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]);
    spec.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
        operator: Some("Exists".into()),
        ..Default::default()
    }];
    spec.aws.use_irsa = false;
    spec.aws.credentials_secret = Some("aws-credentials".into());
    let ds = built(&resource(spec));
    let pod = pod_spec(&ds);
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("example.com/probe:2.0"));
    assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(pod.image_pull_secrets, None);
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 9200);
    assert_eq!(
        pod.node_selector.as_ref().unwrap()["kubernetes.io/os"],
        "linux"
    );
    assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
    let env = env_map(container);
    assert_eq!(env["AWS_REGION"].value.as_deref(), Some("eu-west-1"));
    for (var, key) in [
        ("AWS_ACCESS_KEY_ID", "aws-access-key-id"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-access-key"),
    ] {
        let selector = env[var]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .clone()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("aws-credentials", key)
        );
    }
    let annotations = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap();
    let annotations = annotations.annotations.as_ref().unwrap();
    assert!(!annotations.contains_key("prometheus.io/scrape"));
    assert!(annotations.contains_key("agentmesh.io/config-hash"));
}

#[test]
fn extra_volumes_mounts_and_env_come_after_the_operators() {
    let ds = built(&spec_with(|s| {
        s.pod.extra_volumes = vec![Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }];
        s.pod.extra_volume_mounts = vec![mount("scratch", "/scratch", false)];
        s.pod.extra_env = vec![env_value("MESHLOGIC_REPORT_QUEUE", "128")];
    }));
    let pod = pod_spec(&ds);
    let volumes: Vec<&str> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(
        volumes,
        [
            "config",
            "btf",
            "cgroup",
            "host-proc",
            "trust-api-token",
            "scratch"
        ]
    );
    let container = &pod.containers[0];
    let mounts = container.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.last().unwrap().mount_path, "/scratch");
    assert_eq!(mounts.len(), 6);
    let env = container.env.as_ref().unwrap();
    assert_eq!(env.last().unwrap().name, "MESHLOGIC_REPORT_QUEUE");
    assert_eq!(env.len(), 7);
}

#[test]
fn the_extra_env_rule_reserves_exactly_what_the_operator_sets() {
    // Everything on: the AWS Secret and logging add their variables.
    let ds = built(&spec_with(|s| {
        s.aws.use_irsa = false;
        s.aws.credentials_secret = Some("aws".into());
        s.logging = Some(LoggingSettings::default());
    }));
    let mut set: Vec<String> = pod_spec(&ds).containers[0]
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.clone())
        .collect();
    set.sort();
    let mut reserved: Vec<String> = probe_env::OPERATOR_SET
        .iter()
        .map(|n| n.to_string())
        .collect();
    reserved.sort();
    assert_eq!(set, reserved);
}

#[test]
fn logging_sets_the_probe_log_variables_only_when_given() {
    let env = env_map(&pod_spec(&built(&default_resource())).containers[0]);
    assert!(!env.contains_key("AGENTMESH_LOG_LEVEL"));
    assert!(!env.contains_key("AGENTMESH_LOG_FORMAT"));

    let env = env_map(
        &pod_spec(&built(&spec_with(|s| {
            s.logging = Some(LoggingSettings::default())
        })))
        .containers[0],
    );
    assert_eq!(env["AGENTMESH_LOG_LEVEL"].value.as_deref(), Some("info"));
    assert_eq!(env["AGENTMESH_LOG_FORMAT"].value.as_deref(), Some("json"));

    let env = env_map(
        &pod_spec(&built(&spec_with(|s| {
            s.logging = Some(LoggingSettings {
                level: LogLevel::Debug,
                json_format: false,
            })
        })))
        .containers[0],
    );
    assert_eq!(env["AGENTMESH_LOG_LEVEL"].value.as_deref(), Some("debug"));
    assert_eq!(env["AGENTMESH_LOG_FORMAT"].value.as_deref(), Some("text"));
}

#[test]
fn the_aws_secret_keys_come_from_the_spec() {
    let ds = built(&spec_with(|s| {
        s.aws.use_irsa = false;
        s.aws.credentials_secret = Some("aws".into());
        s.aws.access_key_id_key = "AWS_ACCESS_KEY_ID".into();
        s.aws.secret_access_key_key = "AWS_SECRET_ACCESS_KEY".into();
    }));
    let env = env_map(&pod_spec(&ds).containers[0]);
    for var in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        let selector = env[var]
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .clone()
            .unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("aws", var)
        );
    }
}
