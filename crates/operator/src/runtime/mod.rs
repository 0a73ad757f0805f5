//! What every replica runs around the product's logic: leader election, HTTP serving, logging,
//! the CRD check at start-up, and the shutdown signal.

pub mod crd_check;
pub mod http;
pub mod leader;
pub mod logging;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
