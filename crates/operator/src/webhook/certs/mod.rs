//! The webhook's serving certificate and the MutatingWebhookConfiguration that trusts it.
//!
//! Self-managed (the default): a CA and a serving certificate it signs, both in the Secret
//! `--webhook-secret` of the operator's namespace (`tls.crt`, `tls.key`, `ca.crt` — the bundle
//! the API server trusts — and `ca-signer.crt`/`ca-signer.key`). Only the leader writes: it
//! creates them, renews the serving certificate when less than a third of its lifetime is left
//! (same CA, so `caBundle` does not change), and replaces the CA when less than a third of the
//! CA's lifetime is left (the old CA stays in `ca.crt` while it is valid, so certificates it
//! signed keep working). After writing the Secret it applies the configuration with the new
//! `caBundle`. Every replica polls the Secret and loads what it holds into the [`CertStore`],
//! read at each TLS handshake.
//!
//! cert-manager mode: a cert-manager `Certificate` writes the Secret and its CA injector fills
//! `caBundle`; the operator only reads the Secret and applies the configuration.

// What needs no cluster (making, checking and loading certificates) is meshlogic-webhook-certs'.
pub use meshlogic_webhook_certs::*;

mod manager;

pub use manager::*;
