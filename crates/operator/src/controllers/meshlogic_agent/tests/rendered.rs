//! What the operator makes of the meshlogic-agent chart's renderings (its goldens, the seed's
//! values and every key set), written as `crates/operator/tests/golden/probe/<scenario>.yaml`
//! so that `scripts/chart-test.sh` checks the probe's DaemonSet, RBAC and Service with
//! kubeconform and checkov as it checks the charts. `UPDATE_GOLDEN=1` rewrites them; otherwise
//! a stale or missing file fails.

use std::path::PathBuf;

use super::*;

fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// The chart's MeshLogicAgent of `scenario`, then every object the operator makes of it, one
/// JSON document each (JSON is YAML; the tools read both).
fn render(scenario: &str) -> String {
    let chart = repo().join(format!(
        "charts/meshlogic-agent/tests/golden/{scenario}.yaml"
    ));
    let text =
        std::fs::read_to_string(&chart).unwrap_or_else(|e| panic!("{}: {e}", chart.display()));
    let mut mla: MeshLogicAgent =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", chart.display()));
    mla.metadata.uid = Some("00000000-0000-4000-8000-000000000001".into());
    let agent = Agent::new(&mla).unwrap();
    let config = config_json(&agent).unwrap();
    let mut objects = vec![];
    if creates_service_account(&agent) {
        objects.push(serde_json::to_value(service_account(&agent)).unwrap());
    }
    objects.push(serde_json::to_value(cluster_role_binding(&agent, "agentmesh-probe")).unwrap());
    objects.push(serde_json::to_value(config_map(&agent, &config)).unwrap());
    objects.push(serde_json::to_value(daemon_set(&agent, &settings(), &config).unwrap()).unwrap());
    if mla.spec.metrics.enabled {
        objects.push(serde_json::to_value(metrics_service(&agent)).unwrap());
        if mla.spec.metrics.service_monitor.enabled {
            objects.push(service_monitor(&agent));
        }
    }
    let mut out = format!(
        "# What meshlogic-operator makes of charts/meshlogic-agent/tests/golden/{scenario}.yaml\n\
         # (generated: UPDATE_GOLDEN=1 cargo test -p meshlogic-operator --lib rendered)\n"
    );
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(&object).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn the_charts_agents_render_as_their_goldens() {
    let dir = repo().join("crates/operator/tests/golden/probe");
    for scenario in ["seed", "all-keys"] {
        let rendered = render(scenario);
        let path = dir.join(format!("{scenario}.yaml"));
        if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &rendered).unwrap();
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (UPDATE_GOLDEN=1 cargo test -p meshlogic-operator --lib rendered)",
                path.display()
            )
        });
        assert!(
            golden == rendered,
            "{} is stale (UPDATE_GOLDEN=1 cargo test -p meshlogic-operator --lib rendered):\n{rendered}",
            path.display()
        );
    }
}
