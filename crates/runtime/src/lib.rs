//! What every AgentMesh server shares: [`serve`] (HTTP/1 with a header and idle timeout, a
//! connection cap, graceful shutdown and a span per request), [`client`] (the HTTP client of a
//! component) and [`logging`] (one initialiser, one default format).

pub mod client;
pub mod logging;
pub mod serve;
#[cfg(feature = "testing")]
pub mod testing;
pub mod traces;

pub use serve::{Accept, Limits, OverTls, Plain, TlsOrPlain, serve};

/// Resolves on SIGTERM or Ctrl-C: what every component stops on.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
