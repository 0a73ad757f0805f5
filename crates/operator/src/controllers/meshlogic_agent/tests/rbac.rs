use super::*;

#[test]
fn the_probe_is_bound_to_the_installations_cluster_role_and_no_role_is_made() {
    let mla = default_resource();
    let agent = Agent::new(&mla).unwrap();
    let binding = cluster_role_binding(&agent, "agentmesh-probe");
    assert_eq!(
        binding.metadata.name.as_deref(),
        Some(agent.cluster_rbac_name().as_str())
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "agentmesh-probe");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "probe-a-probe");
    assert_eq!(subjects[0].namespace.as_deref(), Some("meshlogic"));
}

#[test]
fn irsa_annotations_go_on_the_service_account() {
    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    spec.service_account.annotations = BTreeMap::from([(
        "eks.amazonaws.com/role-arn".into(),
        "arn:aws:iam::123456789012:role/meshlogic-agent".into(),
    )]);
    let mla = resource(spec);
    let sa = service_account(&Agent::new(&mla).unwrap());
    assert_eq!(sa.metadata.name.as_deref(), Some("probe-a-probe"));
    assert_eq!(
        sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::123456789012:role/meshlogic-agent"
    );
    let plain = default_resource();
    assert!(
        service_account(&Agent::new(&plain).unwrap())
            .metadata
            .annotations
            .is_none()
    );
}

#[test]
fn an_existing_service_account_is_used_and_bound_not_made() {
    let mla = spec_with(|s| {
        s.service_account.create = false;
        s.service_account.name = Some("node-agents".into());
    });
    let agent = Agent::new(&mla).unwrap();
    assert!(!creates_service_account(&agent));
    assert_eq!(agent.service_account_name(), "node-agents");
    let config = config_json(&agent).unwrap();
    let ds = daemon_set(&agent, &settings(), &config).unwrap();
    assert_eq!(
        pod_spec(&ds).service_account_name.as_deref(),
        Some("node-agents")
    );
    let subjects = cluster_role_binding(&agent, "agentmesh-probe")
        .subjects
        .unwrap();
    assert_eq!(
        (subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
        ("node-agents", Some("meshlogic"))
    );

    // Made under another name when `create` stays true.
    let mla = spec_with(|s| s.service_account.name = Some("node-agents".into()));
    let agent = Agent::new(&mla).unwrap();
    assert!(creates_service_account(&agent));
    assert_eq!(
        service_account(&agent).metadata.name.as_deref(),
        Some("node-agents")
    );
    assert!(creates_service_account(
        &Agent::new(&default_resource()).unwrap()
    ));
}
