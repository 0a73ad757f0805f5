//! Who may have a probe run on every node: a MeshLogicAgent is honoured only in the namespaces
//! and with the image repositories the operator is told of.

use super::*;

fn in_namespace(namespace: &str, change: impl FnOnce(&mut MeshLogicAgentSpec)) -> MeshLogicAgent {
    let mut mla = spec_with(change);
    mla.metadata.namespace = Some(namespace.into());
    mla
}

fn refusal(mla: &MeshLogicAgent, settings: &OperatorSettings) -> Option<&'static str> {
    settings
        .refusal(&Agent::new(mla).unwrap())
        .map(|refusal| refusal.reason)
}

#[test]
fn an_agent_is_honoured_in_the_operators_namespace_and_the_listed_ones_only() {
    let settings = settings();
    for namespace in ["meshlogic", "agentmesh"] {
        assert_eq!(refusal(&in_namespace(namespace, |_| {}), &settings), None);
    }
    // A tenant's namespace, and spelling variants of an allowed one.
    for namespace in ["team-a", "meshlogic-x", "Meshlogic", "kube-system"] {
        assert_eq!(
            refusal(&in_namespace(namespace, |_| {}), &settings),
            Some("NamespaceNotAllowed"),
            "{namespace}"
        );
    }
    let any = OperatorSettings {
        agent_namespaces: vec!["*".into()],
        ..settings
    };
    assert_eq!(refusal(&in_namespace("team-a", |_| {}), &any), None);
}

#[test]
fn an_agent_runs_only_an_allowed_image_repository() {
    let settings = settings();
    let with_image = |repository: &str| {
        let repository = repository.to_owned();
        in_namespace("meshlogic", move |spec| spec.image.repository = repository)
    };
    assert_eq!(
        refusal(
            &with_image("registry.meshlogic.ai/meshlogic/agent"),
            &settings
        ),
        None
    );
    for repository in [
        "evil.example/root",
        "registry.meshlogic.ai/meshlogic/agent-debug",
        "registry.meshlogic.ai/meshlogic/agent/../evil",
        "registry.meshlogic.ai.evil.example/meshlogic/agent",
        "meshlogic/agent",
    ] {
        let refused = settings.refusal(&Agent::new(&with_image(repository)).unwrap());
        let refused = refused.expect(repository);
        assert_eq!(refused.reason, "ImageNotAllowed");
        assert!(refused.message.contains(repository), "{}", refused.message);
    }
    // The namespace is checked first: an agent elsewhere is refused whatever its image.
    let mut elsewhere = with_image("evil.example/root");
    elsewhere.metadata.namespace = Some("team-a".into());
    assert_eq!(refusal(&elsewhere, &settings), Some("NamespaceNotAllowed"));
}
