//! A replica that does not lead passes trust-API calls on to the one that does. Every replica
//! sits behind the same Service, so a probe or sidecar lands on any of them; without this, half
//! its calls would be answered 503 and wait out a back-off before landing on the leader.
//!
//! The leader is the holder of the election Lease (its pod name); its address is that pod's IP
//! and this replica's own trust-API port. The hop is TLS like the client's: the leader's
//! certificate is checked against the operator's CA bundle and the trust API URL's host (every
//! replica serves the same certificate), so a pod that takes over the leader's IP gets no
//! token. The request goes on unchanged — the leader checks the caller's token itself — with
//! a header that stops a second hop: a forwarded request that
//! reaches a replica which does not lead (the Lease just moved) is answered 503 as before.
//! Bodies are small JSON documents, buffered both ways (the request within the API's size
//! limit); a long-poll simply takes as long as it takes on the leader.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::context::Context;
use crate::runtime::http::Body;

/// Set on a forwarded request; a replica never forwards a request that carries it.
pub const FORWARDED_HEADER: &str = "x-agentmesh-forwarded-by";
/// How long a resolved leader address is reused before the Lease is read again.
const CACHE_FOR: Duration = Duration::from_secs(2);
/// Longer than the longest long-poll (30 s), so that a held request is not cut short.
const TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Default)]
pub struct Forwarder {
    leader: Mutex<Option<(SocketAddr, Instant)>>,
    /// TLS to the leader, and the CA bundle it was made from.
    tls: Mutex<Option<MadeFrom>>,
}

/// A client TLS configuration and the CA bundle it trusts.
type MadeFrom = (Arc<Vec<u8>>, Arc<rustls::ClientConfig>);

impl Forwarder {
    /// Whether this request may be forwarded (it was not forwarded already).
    pub fn may_forward(request: &Request<Incoming>) -> bool {
        !request.headers().contains_key(FORWARDED_HEADER)
    }

    /// Sends `request` to the leader and returns its answer, or why that was not possible.
    pub async fn forward(
        &self,
        ctx: &Context,
        request: Request<Incoming>,
        max_body: usize,
    ) -> anyhow::Result<Response<Body>> {
        let leader = self.leader(ctx).await?;
        let (mut parts, body) = request.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the request body: {e}"))?
            .to_bytes();
        parts.headers.insert(
            FORWARDED_HEADER,
            hyper::header::HeaderValue::from_str(&ctx.config.args.holder_identity())?,
        );
        let outgoing = Request::from_parts(parts, Full::new(body));
        let tls = self.tls(ctx)?;
        let server_name = meshlogic_webhook_certs::url_host(&ctx.config.args.trust_api_url)
            .ok_or_else(|| anyhow::anyhow!("MESHLOGIC_TRUST_API_URL has no host"))?;
        let server_name = rustls::pki_types::ServerName::try_from(server_name)?;
        let result = tokio::time::timeout(TIMEOUT, send(leader, tls, server_name, outgoing)).await;
        match result {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => {
                self.forget();
                Err(error)
            }
            Err(_) => {
                self.forget();
                anyhow::bail!("the leader at {leader} did not answer within {TIMEOUT:?}")
            }
        }
    }

    /// TLS that trusts the operator's CA bundle as last loaded.
    fn tls(&self, ctx: &Context) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let bundle = ctx
            .certs
            .bundle()
            .ok_or_else(|| anyhow::anyhow!("the CA bundle is not loaded yet"))?;
        let mut cached = self
            .tls
            .lock()
            .map_err(|_| anyhow::anyhow!("TLS cache poisoned"))?;
        if let Some((made_from, config)) = cached.as_ref()
            && *made_from == bundle
        {
            return Ok(config.clone());
        }
        let config = agentmesh_runtime::client::tls_config(&bundle)
            .map_err(|e| anyhow::anyhow!("the CA bundle: {e}"))?;
        *cached = Some((bundle, config.clone()));
        Ok(config)
    }

    fn forget(&self) {
        if let Ok(mut leader) = self.leader.lock() {
            *leader = None;
        }
    }

    /// The leader's trust-API address, from the Lease and its holder's pod.
    async fn leader(&self, ctx: &Context) -> anyhow::Result<SocketAddr> {
        if let Ok(cached) = self.leader.lock()
            && let Some((address, at)) = *cached
            && at.elapsed() < CACHE_FOR
        {
            return Ok(address);
        }
        let args = &ctx.config.args;
        let lease = Api::<Lease>::namespaced(ctx.client.clone(), &args.namespace)
            .get(&args.leader_lease)
            .await?;
        let holder = lease
            .spec
            .and_then(|spec| spec.holder_identity)
            .filter(|holder| !holder.is_empty())
            .ok_or_else(|| anyhow::anyhow!("the Lease {} has no holder", args.leader_lease))?;
        anyhow::ensure!(
            holder != args.holder_identity(),
            "the Lease names this replica, which does not lead (yet)"
        );
        let pod = Api::<Pod>::namespaced(ctx.client.clone(), &args.namespace)
            .get(&holder)
            .await?;
        let ip = pod
            .status
            .and_then(|status| status.pod_ip)
            .ok_or_else(|| anyhow::anyhow!("the leader's pod {holder} has no IP"))?;
        let address = SocketAddr::new(ip.parse()?, args.trust_api_addr.port());
        if let Ok(mut cached) = self.leader.lock() {
            *cached = Some((address, Instant::now()));
        }
        Ok(address)
    }
}

async fn send(
    leader: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: rustls::pki_types::ServerName<'static>,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<Response<Body>> {
    let stream = tokio::net::TcpStream::connect(leader).await?;
    let _ = stream.set_nodelay(true);
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, stream)
        .await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "connection to the leader ended with an error");
        }
    });
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Full::new(body)))
}
