//! Errors of the reconcilers and servers; each has a short label for metrics.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0} has no namespace")]
    NoNamespace(&'static str),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("serialization: {0}")]
    Json(#[from] serde_json::Error),
    #[error("key material: {0}")]
    Key(String),
}

impl Error {
    /// Label of the `error` dimension of the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::NoNamespace(_) => "no_namespace",
            Self::Invalid(_) => "invalid",
            Self::Json(_) => "json",
            Self::Key(_) => "key",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
