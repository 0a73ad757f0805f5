//! Start-up check that the CRDs are installed, with the instruction when they are not.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

pub async fn ensure_installed(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut missing = Vec::new();
    for generated in agentmesh_api::crd::all() {
        let name = generated.crd.metadata.name.clone().unwrap_or_default();
        match api.get_opt(&name).await {
            Ok(Some(_)) => {}
            Ok(None) => missing.push(name),
            Err(error) => anyhow::bail!("cannot check that CRD {name} is installed: {error}"),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "the AgentMesh CRDs are not installed (missing: {}). Install them with \
             `kubectl apply -f crds/` or `agentmesh crds | kubectl apply -f -`, then restart the operator",
            missing.join(", ")
        );
    }
    Ok(())
}
