//! The probe's ServiceAccount (unless the agent names an existing one), and the ClusterRole and
//! ClusterRoleBinding that let it read pods and create reports.

use agentmesh_api::names::{self};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};

use super::agent::*;

/// Whether the operator makes the probe's ServiceAccount (`serviceAccount.create`), rather than
/// use an existing one.
pub fn creates_service_account(agent: &Agent) -> bool {
    agent.resource.spec.service_account.create
}

/// The probe's ServiceAccount, with the spec's annotations (IRSA's role ARN among them). Made
/// only when [`creates_service_account`].
pub fn service_account(agent: &Agent) -> ServiceAccount {
    let spec_annotations = &agent.resource.spec.service_account.annotations;
    let mut meta = agent.namespaced_meta(agent.service_account_name());
    if !spec_annotations.is_empty() {
        meta.annotations = Some(spec_annotations.clone());
    }
    ServiceAccount {
        metadata: meta,
        ..Default::default()
    }
}

/// What the probe may do, and nothing more: read pods (it keeps those of its node, by field
/// selector, to name the pods it reports on) and post reports, which the trust API authorizes
/// with a SubjectAccessReview for `create` on `reports` in `agentmesh.io`.
pub fn cluster_role(agent: &Agent) -> ClusterRole {
    ClusterRole {
        metadata: agent.cluster_meta(),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: ["get", "list", "watch"].map(String::from).to_vec(),
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec![names::GROUP.into()]),
                resources: Some(vec!["reports".into()]),
                verbs: vec!["create".into()],
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Binds [`cluster_role`] to the probe's ServiceAccount, made by the operator or not.
pub fn cluster_role_binding(agent: &Agent) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: agent.cluster_meta(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: agent.cluster_rbac_name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: agent.service_account_name(),
            namespace: Some(agent.namespace.to_owned()),
            ..Default::default()
        }]),
    }
}
