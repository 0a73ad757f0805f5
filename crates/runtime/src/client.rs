//! One way to make the HTTP/1 client of a component: the probe's and the sidecar's calls to the
//! trust API, and the sidecar's to the MCP servers behind it.

use std::time::Duration;

use hyper::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// How long a connection to one of the product's own servers stays pooled while idle: shorter
/// than their idle timeout ([`crate::Limits::header_timeout`], 60 s), so a pooled connection is
/// not reused just as the server closes it.
pub const OWN_SERVERS_POOL_IDLE: Duration = Duration::from_secs(30);

/// A pooled client over plain TCP (no Nagle delay) giving up on a connect after
/// `connect_timeout` and closing a connection idle for `pool_idle`.
pub fn client<B>(connect_timeout: Duration, pool_idle: Duration) -> Client<HttpConnector, B>
where
    B: Body + Send + 'static,
    B::Data: Send,
{
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(pool_idle)
        .build(connector)
}
