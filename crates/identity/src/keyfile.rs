//! The one place this crate touches the file system or the environment: loading the agent's
//! private key for a binary at start-up. Everything else in the crate is pure.
//!
//! `AGENTMESH_AGENT_PRIVATE_KEY` holds either the PEM itself (a value starting with
//! `-----BEGIN`) or the path of a file that holds it (what a mounted Secret gives:
//! `/var/run/agentmesh/keys/private-key`). Anything else, an unreadable file, or a file that is
//! not a PKCS#8 Ed25519 PEM is an error that names the variable or the file.

use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;

use crate::keys::{KeyError, private_key_from_pem};

/// Why the private key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    #[error("{variable} is not set")]
    Unset { variable: &'static str },
    #[error("{variable}: {source}")]
    BadValue {
        variable: &'static str,
        source: KeyError,
    },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    BadFile { path: PathBuf, source: KeyError },
}

/// Read a PEM private key from a file.
pub fn read_private_key_file(path: &Path) -> Result<SigningKey, KeyLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyLoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    private_key_from_pem(&text).map_err(|source| KeyLoadError::BadFile {
        path: path.to_owned(),
        source,
    })
}

/// Interpret the value of `AGENTMESH_AGENT_PRIVATE_KEY`: inline PEM, or a file path.
pub fn private_key_from_env_value(value: &str) -> Result<SigningKey, KeyLoadError> {
    let variable = agentmesh_env_name();
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(KeyLoadError::Unset { variable });
    }
    if trimmed.starts_with("-----BEGIN") {
        return private_key_from_pem(trimmed)
            .map_err(|source| KeyLoadError::BadValue { variable, source });
    }
    if !trimmed.starts_with('/') && !trimmed.starts_with('.') {
        return Err(KeyLoadError::BadValue {
            variable,
            source: KeyError::MalformedPrivateKey(
                "neither a PEM (-----BEGIN PRIVATE KEY-----) nor a file path".into(),
            ),
        });
    }
    read_private_key_file(Path::new(trimmed))
}

/// Load the key named by `AGENTMESH_AGENT_PRIVATE_KEY` from the process environment.
pub fn private_key_from_env() -> Result<SigningKey, KeyLoadError> {
    match std::env::var(agentmesh_env_name()) {
        Ok(value) => private_key_from_env_value(&value),
        Err(_) => Err(KeyLoadError::Unset {
            variable: agentmesh_env_name(),
        }),
    }
}

/// Same value as `agentmesh_api::names::env::AGENT_PRIVATE_KEY` (this crate cannot depend on
/// the API crate; a test in crates/api checks that the two agree).
pub const fn agentmesh_env_name() -> &'static str {
    "AGENTMESH_AGENT_PRIVATE_KEY"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::private_key_to_pem;

    #[test]
    fn inline_pem_and_file_path_both_load() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let pem = private_key_to_pem(&key).unwrap();
        assert_eq!(
            private_key_from_env_value(&pem).unwrap().to_bytes(),
            key.to_bytes()
        );

        let dir = std::env::temp_dir().join(format!("agentmesh-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("private-key");
        std::fs::write(&path, &pem).unwrap();
        let loaded = private_key_from_env_value(path.to_str().unwrap()).unwrap();
        assert_eq!(loaded.to_bytes(), key.to_bytes());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_name_the_variable_or_file() {
        let err = private_key_from_env_value("hello").unwrap_err();
        assert!(
            err.to_string().starts_with("AGENTMESH_AGENT_PRIVATE_KEY:"),
            "{err}"
        );
        let err = private_key_from_env_value(
            "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("AGENTMESH_AGENT_PRIVATE_KEY:"),
            "{err}"
        );
        let err = private_key_from_env_value("/nonexistent/agentmesh/key").unwrap_err();
        assert!(
            err.to_string().starts_with("/nonexistent/agentmesh/key:"),
            "{err}"
        );
        assert!(matches!(
            private_key_from_env_value("  "),
            Err(KeyLoadError::Unset { .. })
        ));
    }
}
