use super::*;
use crate::controllers::meshlogic_agent::monitoring::previous_monitor_namespace;

#[test]
fn a_service_monitor_selects_the_metrics_service_of_the_probe_pods() {
    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    assert!(!wants_service_monitor(
        &Agent::new(&resource(spec.clone())).unwrap()
    ));
    spec.metrics.service_monitor.enabled = true;
    spec.metrics.service_monitor.interval = "15s".into();
    spec.metrics.port = 9200;
    let mla = resource(spec.clone());
    let agent = Agent::new(&mla).unwrap();
    assert!(wants_service_monitor(&agent));
    let service = metrics_service(&agent);
    assert_eq!(
        service.metadata.name.as_deref(),
        Some("probe-a-probe-metrics")
    );
    assert_eq!(service.metadata.owner_references.as_ref().unwrap().len(), 1);
    let service_spec = service.spec.as_ref().unwrap();
    assert_eq!(service_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(service_spec.selector, Some(agent.selector_labels()));
    let port = &service_spec.ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 9200));
    let monitor = service_monitor(&agent);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        monitor["metadata"]["ownerReferences"][0]["kind"],
        "MeshLogicAgent"
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    // The monitor's selector matches the Service's labels.
    let service_labels = service.metadata.labels.as_ref().unwrap();
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(service_labels.get(key).map(String::as_str), value.as_str());
    }
    // Metrics off: no monitor, whatever serviceMonitor says.
    spec.metrics.enabled = false;
    assert!(!wants_service_monitor(
        &Agent::new(&resource(spec)).unwrap()
    ));
}

#[test]
fn a_service_monitor_in_another_namespace_is_annotated_not_owned() {
    let mla = spec_with(|s| {
        s.metrics.service_monitor.enabled = true;
        s.metrics.service_monitor.namespace = Some("monitoring".into());
        s.metrics.service_monitor.labels = BTreeMap::from([
            ("release".into(), "prometheus".into()),
            ("app.kubernetes.io/managed-by".into(), "helm".into()),
        ]);
    });
    let agent = Agent::new(&mla).unwrap();
    assert_eq!(agent.service_monitor_namespace(), "monitoring");
    let monitor = service_monitor(&agent);
    let metadata = &monitor["metadata"];
    assert_eq!(metadata["namespace"], "monitoring");
    assert_eq!(metadata["name"], "meshlogic.probe-a-probe");
    assert!(metadata.get("ownerReferences").is_none(), "{metadata}");
    assert_eq!(
        metadata["annotations"]["agentmesh.io/owner"],
        "meshlogic/probe-a"
    );
    assert_eq!(metadata["labels"]["release"], "prometheus");
    assert_eq!(
        metadata["labels"]["app.kubernetes.io/managed-by"],
        "meshlogic-operator"
    );
    // It still selects the Service beside the agent.
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!(["meshlogic"])
    );
    // The Service remembers where the monitor went.
    let service = metrics_service(&agent);
    assert_eq!(
        service.metadata.annotations.unwrap()["agentmesh.io/service-monitor-namespace"],
        "monitoring"
    );

    // Beside the agent, by default: owned, no annotations.
    let mla = spec_with(|s| s.metrics.service_monitor.enabled = true);
    let agent = Agent::new(&mla).unwrap();
    let monitor = service_monitor(&agent);
    assert_eq!(monitor["metadata"]["namespace"], "meshlogic");
    assert_eq!(monitor["metadata"]["name"], "probe-a-probe");
    assert!(monitor["metadata"].get("annotations").is_none());
    assert!(metrics_service(&agent).metadata.annotations.is_none());
}

#[test]
fn service_monitor_names_never_collide_across_namespaces() {
    assert_eq!(service_monitor_name("a", "b", "a"), "b-probe");
    assert_ne!(
        service_monitor_name("a-b", "c", "monitoring"),
        service_monitor_name("a", "b-c", "monitoring")
    );
    let long = service_monitor_name("ns", &"x".repeat(253), "monitoring");
    assert!(long.len() <= 253, "{}", long.len());
    assert_ne!(
        long,
        service_monitor_name("ns", &"x".repeat(252), "monitoring")
    );
}

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

fn service(uid: &str, monitor_namespace: Option<&str>) -> Service {
    Service {
        metadata: ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                uid: uid.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            annotations: monitor_namespace.map(|namespace| {
                [(
                    annotations::SERVICE_MONITOR_NAMESPACE.to_owned(),
                    namespace.to_owned(),
                )]
                .into()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn the_metrics_service_tells_where_the_monitor_was_put() {
    let previous = |service: Option<&Service>| previous_monitor_namespace(service, "team", "uid-1");
    assert_eq!(previous(None), None);
    assert_eq!(
        previous(Some(&service("uid-1", None))).as_deref(),
        Some("team")
    );
    assert_eq!(
        previous(Some(&service("uid-1", Some("monitoring")))).as_deref(),
        Some("monitoring")
    );
    // A Service this agent does not control says nothing.
    assert_eq!(previous(Some(&service("uid-2", Some("monitoring")))), None);
}
