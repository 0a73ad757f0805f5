use super::*;

#[test]
fn an_agent_needs_a_namespace_and_a_uid() {
    let mut mla = default_resource();
    mla.metadata.namespace = None;
    assert!(matches!(Agent::new(&mla), Err(Error::NoNamespace(_))));
    let mut mla = default_resource();
    mla.metadata.uid = None;
    assert!(matches!(Agent::new(&mla), Err(Error::Invalid(_))));
}

#[test]
fn names_derive_from_the_agent() {
    let mla = default_resource();
    let agent = Agent::new(&mla).unwrap();
    assert_eq!(agent.probe_name(), "probe-a-probe");
    assert_eq!(agent.config_map_name(), "probe-a-probe-config");
    assert_eq!(
        agent.cluster_rbac_name(),
        "meshlogic-probe:meshlogic:probe-a"
    );
    assert_eq!(agent.key(), "meshlogic/probe-a");
    // Namespaces hold no `:`, so the cluster-wide name is unambiguous.
    assert_ne!(cluster_rbac_name("a-b", "c"), cluster_rbac_name("a", "b-c"));
}

#[test]
fn every_object_carries_the_seed_labels_and_namespaced_ones_are_owned() {
    let mla = default_resource();
    let agent = Agent::new(&mla).unwrap();
    let config = config_json(&agent).unwrap();
    let ds = daemon_set(&agent, &settings(), &config).unwrap();
    let metas = [
        service_account(&agent).metadata,
        config_map(&agent, &config).metadata,
        ds.metadata.clone(),
        cluster_role_binding(&agent, "agentmesh-probe").metadata,
    ];
    for meta in &metas {
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "meshlogic-agent");
        assert_eq!(labels["app.kubernetes.io/instance"], "probe-a");
        assert_eq!(labels["app.kubernetes.io/part-of"], "agentmesh");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "meshlogic-operator");
    }
    for meta in &metas[..3] {
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "MeshLogicAgent");
        assert_eq!(owners[0].name, "probe-a");
        assert_eq!(owners[0].uid, "6b2f5c1e-0000-4000-8000-000000000001");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("meshlogic"));
    }
    for meta in &metas[3..] {
        assert!(
            meta.owner_references.is_none(),
            "cluster objects cannot be owned"
        );
        assert!(meta.namespace.is_none());
        assert_eq!(
            meta.annotations.as_ref().unwrap()["agentmesh.io/owner"],
            "meshlogic/probe-a"
        );
    }
    // The pods carry the labels the seed's `kubectl logs -l` uses, and the selector
    // matches them.
    let spec = ds.spec.as_ref().unwrap();
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (key, value) in spec.selector.match_labels.as_ref().unwrap() {
        assert_eq!(pod_labels.get(key), Some(value));
    }
    assert_eq!(pod_labels["app.kubernetes.io/name"], "meshlogic-agent");
}

#[test]
fn long_names_get_valid_distinct_label_values() {
    let long_a = format!("{}-a", "x".repeat(100));
    let long_b = format!("{}-b", "x".repeat(100));
    let (a, b) = (label_value(&long_a), label_value(&long_b));
    assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    assert_ne!(a, b);
    assert_eq!(label_value("short"), "short");
}
