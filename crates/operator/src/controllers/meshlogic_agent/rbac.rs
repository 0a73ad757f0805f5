//! The probe's ServiceAccount (unless the agent names an existing one), and the
//! ClusterRoleBinding to the installation's probe ClusterRole that lets it read pods and create
//! reports.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};

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

/// Binds the probes' ClusterRole (`role`: `get`/`list`/`watch` on pods, to name the pods of
/// its node, and `create` on `reports` in `agentmesh.io`, which the trust API authorizes with
/// a SubjectAccessReview) to the probe's ServiceAccount, made by the operator or not. The
/// ClusterRole is the installation's (the chart makes it), not the agent's: the operator may
/// bind it and make no ClusterRole at all.
pub fn cluster_role_binding(agent: &Agent, role: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: agent.cluster_meta(),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: agent.service_account_name(),
            namespace: Some(agent.namespace.to_owned()),
            ..Default::default()
        }]),
    }
}
