//! Health: `GET /health` on the proxy port (the readiness probe) and the file
//! `/var/run/agentmesh/healthy` (the liveness probe), present exactly while the sidecar holds
//! its key and a policy.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::{Response, StatusCode, header};
use serde_json::json;

use crate::policy::{Governor, Source};
use crate::proxy::ProxyBody;

pub struct Health {
    file: PathBuf,
    key: AtomicBool,
    governor: Arc<Governor>,
}

impl Health {
    pub fn new(file: PathBuf, governor: Arc<Governor>) -> Arc<Self> {
        // A file left by an earlier run says nothing about this one.
        let _ = std::fs::remove_file(&file);
        Arc::new(Self {
            file,
            key: AtomicBool::new(false),
            governor,
        })
    }

    /// The key is loaded: the sidecar is healthy (a policy is always in force, the preset
    /// until the operator's arrives).
    pub fn key_loaded(&self) -> std::io::Result<()> {
        self.key.store(true, Ordering::SeqCst);
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&self.file, b"ok\n")
    }

    /// Shutting down: no longer healthy.
    pub fn stopping(&self) {
        self.key.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.file);
    }

    pub fn healthy(&self) -> bool {
        self.key.load(Ordering::SeqCst)
    }

    pub fn response(&self) -> Response<ProxyBody> {
        let current = self.governor.current();
        let source = match &current.source {
            Source::Preset(name) => json!({"preset": name}),
            Source::File => json!({"file": &*current.policy_label}),
            Source::Operator { version } => json!({"operator": version}),
        };
        let (status, text) = if self.healthy() {
            (StatusCode::OK, "healthy")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "waiting for the key")
        };
        let body = json!({
            "status": text,
            "policy": &*current.policy_label,
            "policySource": source,
            "trustScore": current.score,
            "quarantined": current.quarantined,
        });
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(crate::proxy::full_body(body.to_string()))
            .expect("static headers are valid")
    }
}
