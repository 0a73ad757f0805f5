//! The CustomResourceDefinitions generated from the types, and their YAML form.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{AgentIdentity, MeshLogicAgent, TrustPolicy};

/// One generated CRD and the file it is committed as under `crds/`.
pub struct GeneratedCrd {
    /// File name under `crds/`, e.g. `agentidentities.agentmesh.io.yaml`.
    pub file_name: String,
    pub crd: CustomResourceDefinition,
}

/// Every CRD of the API, in a stable order.
pub fn all() -> Vec<GeneratedCrd> {
    [
        AgentIdentity::crd(),
        TrustPolicy::crd(),
        MeshLogicAgent::crd(),
    ]
    .into_iter()
    .map(|crd| GeneratedCrd {
        file_name: format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default()),
        crd,
    })
    .collect()
}

/// The YAML document of one CRD, as committed under `crds/`.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from crates/api by `make crds` (agentmesh crds). Do not edit.\n{body}"
    ))
}

/// Every CRD as one multi-document YAML stream.
pub fn all_to_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for generated in all() {
        out.push_str("---\n");
        out.push_str(&to_yaml(&generated.crd)?);
    }
    Ok(out)
}
