//! Tests of the objects a MeshLogicAgent turns into, by concern; the helpers here build agents
//! and read what was built.

mod env;
mod monitoring;
mod naming;
mod pod;
mod rbac;
mod refusal;
mod rendered;

use std::collections::BTreeMap;

use super::agent::*;
use super::daemon_set::*;
use super::monitoring::*;
use super::rbac::*;
use agentmesh_api::meshlogic::PullPolicy;
use agentmesh_api::names::{annotations, probe_env};
use agentmesh_api::{MeshLogicAgent, MeshLogicAgentSpec};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, LocalObjectReference, PodSpec, Probe, Service, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::Error;
use agentmesh_api::meshlogic::{LogLevel, LoggingSettings};
use k8s_openapi::api::apps::v1::{DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Affinity, EmptyDirVolumeSource, NodeAffinity, NodeSelector, PodSecurityContext,
};

fn settings() -> OperatorSettings {
    OperatorSettings {
        default_image_tag: "0.1.0".into(),
        trust_api_url: "https://agentmesh.agentmesh.svc:8080".into(),
        trust_api_ca: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
        operator_namespace: "agentmesh".into(),
        agent_namespaces: vec!["meshlogic".into()],
        probe_images: vec!["registry.meshlogic.ai/meshlogic/agent".into()],
        probe_cluster_role: "agentmesh-probe".into(),
        otel_endpoint: None,
    }
}

fn resource(spec: MeshLogicAgentSpec) -> MeshLogicAgent {
    let mut mla = MeshLogicAgent::new("probe-a", spec);
    mla.metadata.namespace = Some("meshlogic".into());
    mla.metadata.uid = Some("6b2f5c1e-0000-4000-8000-000000000001".into());
    mla
}

fn default_resource() -> MeshLogicAgent {
    resource(MeshLogicAgentSpec::with_customer_id("acme"))
}

fn built(mla: &MeshLogicAgent) -> DaemonSet {
    let agent = Agent::new(mla).unwrap();
    let config = config_json(&agent).unwrap();
    daemon_set(&agent, &settings(), &config).unwrap()
}

fn template_annotations(ds: &DaemonSet) -> &BTreeMap<String, String> {
    let template = &ds.spec.as_ref().unwrap().template;
    template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn hash_of(mla: &MeshLogicAgent) -> String {
    template_hash(&built(mla)).unwrap().to_owned()
}

fn spec_with(change: impl FnOnce(&mut MeshLogicAgentSpec)) -> MeshLogicAgent {
    let mut spec = MeshLogicAgentSpec::with_customer_id("acme");
    change(&mut spec);
    resource(spec)
}

fn template_labels(ds: &DaemonSet) -> &BTreeMap<String, String> {
    let template = &ds.spec.as_ref().unwrap().template;
    template.metadata.as_ref().unwrap().labels.as_ref().unwrap()
}
