//! The examples under `examples/` parse into the types and pass the CRDs' CEL rules; the
//! invalid examples checked by CEL are refused with a message that names the field.

use std::path::{Path, PathBuf};

use agentmesh_api::{AgentIdentity, MeshLogicAgent, TrustPolicy};
use kube::core::cel::validate_cel;
use serde::de::DeserializeOwned;

fn examples_dir() -> PathBuf {
    // The running test's manifest directory, not the one compiled in (see e2e's repo_root).
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../../examples")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn parse<T: DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

fn kind_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    value["kind"].as_str().unwrap_or_default().to_owned()
}

/// The `# key: value` header lines of an invalid example.
fn header(path: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let prefix = format!("# {key}: ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{} has no `{prefix}` line", path.display()))
        .to_owned()
}

/// Parses the example into its kind's type and runs the CRD's CEL rules on it.
fn validate(path: &Path) -> Result<(), String> {
    let result = match kind_of(path).as_str() {
        "AgentIdentity" => validate_cel(&parse::<AgentIdentity>(path)),
        "TrustPolicy" => validate_cel(&parse::<TrustPolicy>(path)),
        "MeshLogicAgent" => validate_cel(&parse::<MeshLogicAgent>(path)),
        other => panic!("{}: unknown kind {other:?}", path.display()),
    };
    result.map_err(|errors| errors.to_string())
}

#[test]
fn there_is_an_example_of_each_kind() {
    let kinds: Vec<String> = yaml_files(&examples_dir())
        .iter()
        .map(|p| kind_of(p))
        .collect();
    for kind in ["AgentIdentity", "TrustPolicy", "MeshLogicAgent"] {
        assert!(kinds.iter().any(|k| k == kind), "no example of {kind}");
    }
}

#[test]
fn examples_parse_and_pass_the_cel_rules() {
    for path in yaml_files(&examples_dir()) {
        if let Err(errors) = validate(&path) {
            panic!("{} fails the CRD's CEL rules: {errors}", path.display());
        }
    }
}

#[test]
fn examples_keep_every_field_they_set() {
    // A field misspelt in an example, or one the types do not have, would be dropped silently
    // by serde; round-trip each example and compare with what the file says.
    for path in yaml_files(&examples_dir()) {
        let text = std::fs::read_to_string(&path).unwrap();
        let written: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        let typed = match kind_of(&path).as_str() {
            "AgentIdentity" => serde_json::to_value(parse::<AgentIdentity>(&path)),
            "TrustPolicy" => serde_json::to_value(parse::<TrustPolicy>(&path)),
            _ => serde_json::to_value(parse::<MeshLogicAgent>(&path)),
        }
        .unwrap();
        assert_subset(&written, &typed, &path.display().to_string());
    }
}

fn assert_subset(written: &serde_json::Value, typed: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for (key, value) in w {
                let other = t
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}.{key} was dropped by the types"));
                assert_subset(value, other, &format!("{at}.{key}"));
            }
        }
        (Value::Array(w), Value::Array(t)) => {
            assert_eq!(w.len(), t.len(), "{at}");
            for (i, (a, b)) in w.iter().zip(t).enumerate() {
                assert_subset(a, b, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(w), Value::Number(t)) => assert_eq!(w.as_f64(), t.as_f64(), "{at}"),
        (w, t) => assert_eq!(w, t, "{at}"),
    }
}

#[test]
fn invalid_examples_are_refused_by_cel_naming_the_field() {
    let mut checked = 0;
    for path in yaml_files(&examples_dir().join("invalid")) {
        if header(&path, "checked-by") != "cel" {
            continue; // schema constraints (ranges, patterns) are checked by the API server (e2e)
        }
        let field = header(&path, "expect-error");
        let errors = validate(&path)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        // The error names the field, relative to the object (`spec.trust.decayFloor`).
        assert!(
            errors.contains(&field),
            "{}: error does not name {field}: {errors}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} CEL examples checked");
}
