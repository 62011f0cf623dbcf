//! The operator's endpoints on the stats listener (loopback only): the
//! JSON stats ([`stats`]), Prometheus metrics ([`metrics`]), the admin API
//! ([`admin`]), plans and usage ([`usage`]) and the live dashboard
//! ([`dashboard`]).
//!
//! Every request passes two checks first: the peer must be a loopback
//! address (bound wider by mistake or not, strangers never see the
//! numbers), and the `Host` must name a loopback host (a DNS-rebinding page
//! in the operator's browser would otherwise reach it).

pub mod admin;
pub mod cluster;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod stats;
pub mod usage;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::acme::Acme;
use crate::config::LimitArgs;
use crate::custom::CustomDomains;
use crate::http::{pages, Body, ConnLimits};
use crate::limits::ssh::IpGuard;
use crate::pipe::spool::Budget;
use crate::shutdown::Shutdown;
use crate::tunnel::Registry;

/// What the operator's endpoints work with. Built by [`Ops::new`]; its
/// fields are this module's.
pub struct Ops {
    registry: Arc<Registry>,
    ip_guard: Arc<IpGuard>,
    spool: Arc<Budget>,
    custom: Arc<CustomDomains>,
    /// ACME certificates, when on.
    acme: Option<Arc<Acme>>,
    /// The last hour of traffic, for the dashboard.
    history: Arc<dashboard::History>,
    /// `--block-duration`: a ban without a duration lasts this long.
    block_duration: Duration,
    /// This node's cluster, when it is in one.
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Who inspects what (`inspector_connections` in the stats).
    inspect_watchers: Arc<crate::inspect::capture::Watchers>,
    /// Per-user plans and usage, when configured.
    plans: Option<Arc<crate::plans::Plans>>,
}

/// The node's shared parts the operator's endpoints read.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub ip_guard: Arc<IpGuard>,
    pub spool: Arc<Budget>,
    pub custom: Arc<CustomDomains>,
    pub acme: Option<Arc<Acme>>,
    pub history: Arc<dashboard::History>,
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub inspect_watchers: Arc<crate::inspect::capture::Watchers>,
    pub plans: Option<Arc<crate::plans::Plans>>,
}

impl Ops {
    /// The endpoints `config` describes.
    pub fn new(config: &crate::config::Config, parts: Parts) -> Ops {
        Ops {
            registry: parts.registry,
            ip_guard: parts.ip_guard,
            spool: parts.spool,
            custom: parts.custom,
            acme: parts.acme,
            history: parts.history,
            block_duration: config.limits.block_duration,
            cluster: parts.cluster,
            inspect_watchers: parts.inspect_watchers,
            plans: parts.plans,
        }
    }
}

/// Serves the stats endpoint until shutdown.
pub async fn serve(listener: TcpListener, ops: Arc<Ops>, limits: &LimitArgs, shutdown: Shutdown) {
    // Loopback peers only; no proxy is ever trusted here.
    let limits = ConnLimits::new(limits, Default::default());
    crate::http::serve_plain(listener, limits, shutdown, move |req, peer| {
        let ops = Arc::clone(&ops);
        async move { Ok::<_, Infallible>(handle(&ops, req, peer).await) }
    })
    .await;
}

async fn handle(ops: &Ops, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
        return pages::json_text(
            StatusCode::FORBIDDEN,
            r#"{"error":"stats are served to loopback peers only"}"#.into(),
        );
    }
    // DNS rebinding: a web page under an attacker's name that resolves to
    // 127.0.0.1 reaches this listener from the operator's browser with its
    // own Host header. Only loopback names are answered.
    if !loopback_host(&req) {
        return pages::json_text(
            StatusCode::MISDIRECTED_REQUEST,
            r#"{"error":"the stats and admin endpoint answers only Host: localhost or a loopback IP"}"#.into(),
        );
    }
    let path = req.uri().path();
    if path == "/metrics" {
        return metrics::response(ops);
    }
    if let Some(response) = dashboard::handle(&ops.history, req.method(), path) {
        return response;
    }
    if path == "/" {
        return stats::response(ops, req.uri().query());
    }
    if let Some(response) = usage::handle(ops, &req).await {
        return response;
    }
    match admin::handle(ops, req).await {
        Some(response) => response,
        None => pages::json_text(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
    }
}

/// Whether the request names a loopback host (or none, as HTTP/1.0 may).
fn loopback_host(req: &Request<Incoming>) -> bool {
    let Some(host) = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return true;
    };
    let name = crate::subdomain::strip_port(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}
