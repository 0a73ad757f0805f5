//! The CustomResourceDefinitions generated from the types, and their YAML form.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
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
    .map(|mut crd| {
        for version in &mut crd.spec.versions {
            let schema = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut());
            if let Some(schema) = schema {
                unwrap_descriptions(schema);
            }
        }
        GeneratedCrd {
            file_name: format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default()),
            crd,
        }
    })
    .collect()
}

/// Doc comments are wrapped at 100 columns and `kubectl explain` wraps again, so a description
/// keeps only its paragraph breaks: each paragraph becomes one line.
fn unwrap_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(description) = schema.description.as_mut() {
        *description = description
            .split("\n\n")
            .map(|paragraph| paragraph.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        unwrap_descriptions(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        unwrap_descriptions(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(additional)) = schema.additional_properties.as_mut() {
        unwrap_descriptions(additional);
    }
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
