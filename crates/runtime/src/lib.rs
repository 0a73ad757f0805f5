//! What every AgentMesh server shares: [`serve`] (HTTP/1 with a header and idle timeout, a
//! connection cap, graceful shutdown and a span per request) and [`logging`] (one initialiser,
//! one default format).

pub mod logging;
pub mod serve;

pub use serve::{Accept, Limits, Plain, serve};
