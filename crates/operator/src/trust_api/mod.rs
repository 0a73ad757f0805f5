//! The trust API on port 8080: `/health`, `/ready`, and the endpoints probes and sidecars use
//! (`agentmesh_api::wire`).

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::context::Context;
use crate::http::{self, Body};
use crate::metrics::RequestLabels;
use agentmesh_api::names::paths;

pub async fn serve(listener: TcpListener, ctx: Arc<Context>) {
    http::serve(listener, move |request| route(ctx.clone(), request)).await;
}

async fn route(ctx: Arc<Context>, request: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    let path = request.uri().path().to_owned();
    let response = match (request.method(), path.as_str()) {
        (&Method::GET, paths::HEALTH) => http::json(StatusCode::OK, &json!({"status": "healthy"})),
        (&Method::GET, paths::READY) => http::json(
            StatusCode::OK,
            &json!({"status": "ready", "leader": ctx.is_leader()}),
        ),
        (_, paths::HEALTH | paths::READY) => {
            http::error(StatusCode::METHOD_NOT_ALLOWED, "GET only")
        }
        _ => http::error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    };
    // Unknown paths share one label, so that scanners cannot grow the metric without bound.
    let known = [paths::HEALTH, paths::READY];
    let label = if known.contains(&path.as_str()) {
        path
    } else {
        "other".into()
    };
    ctx.metrics
        .api_request_duration
        .get_or_create(&RequestLabels {
            path: label,
            code: response.status().as_u16(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}
