//! Counters and the loopback-only JSON stats endpoint (which also serves
//! the [`crate::admin`] API, `/metrics` and the [`crate::dashboard`]).
//!
//! Counters are plain atomics bumped on the hot path; gauges are held by RAII
//! guards so that an early return or a dropped future can never leave them
//! skewed. The JSON field names are a contract: add fields, never rename.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::http::{pages, Body};
use crate::shutdown::Shutdown;
use crate::App;

/// Process-wide counters.
#[derive(Default)]
pub struct Stats {
    pub total_connections: AtomicU64,
    pub total_requests: AtomicU64,
    pub active_websockets: AtomicU64,
    pub active_requests: AtomicU64,
    pub total_blocked: AtomicU64,
    pub total_rate_limited: AtomicU64,
    /// `forwarded-tcpip` channels opened to local apps.
    pub channels_opened: AtomicU64,
    /// Requests sent over a pooled keep-alive connection instead.
    pub channels_reused: AtomicU64,
}

impl Stats {
    /// A limit refused someone: counted in `total_rate_limited` and, by
    /// limit, in the Prometheus metrics.
    pub fn refused(&self, limit: &'static str) {
        self.total_rate_limited.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS.refused(limit);
    }
}

/// Holds a gauge up for as long as it lives (a request, a WebSocket).
pub struct OwnedGauge {
    app: Arc<App>,
    pick: fn(&Stats) -> &AtomicU64,
}

impl OwnedGauge {
    pub fn new(app: &Arc<App>, pick: fn(&Stats) -> &AtomicU64) -> Self {
        pick(&app.stats).fetch_add(1, Ordering::Relaxed);
        OwnedGauge {
            app: Arc::clone(app),
            pick,
        }
    }
}

impl Drop for OwnedGauge {
    fn drop(&mut self) {
        (self.pick)(&self.app.stats).fetch_sub(1, Ordering::Relaxed);
    }
}

/// The JSON document served at `GET /`.
#[derive(Serialize)]
struct Snapshot {
    active_tunnels: u64,
    unique_ips: u64,
    total_connections: u64,
    total_requests: u64,
    active_websockets: u64,
    active_requests: u64,
    blocked_ips: u64,
    total_blocked: u64,
    total_rate_limited: u64,
    channels_opened: u64,
    channels_reused: u64,
    idle_channels: u64,
    spool_memory_bytes: u64,
    spool_disk_bytes: u64,
    streams_cut: u64,
    /// Distinct names and TCP ports served (`active_tunnels` counts each
    /// client of a shared name).
    active_names: u64,
    /// Certificates of custom domains: the issuer, issued, failed, binds
    /// refused by the issuance limit, passthrough names that need none, and
    /// how many names hold one.
    custom_certs: CustomCerts,
    #[serde(skip_serializing_if = "Option::is_none")]
    subdomains: Option<Vec<String>>,
    /// With `subdomains=true`: how many clients serve each name.
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: Option<std::collections::BTreeMap<String, usize>>,
    /// With ACME on: each certificate in hand (by its first name) and its
    /// expiry in unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificates: Option<std::collections::BTreeMap<String, u64>>,
}

#[derive(Serialize)]
struct CustomCerts {
    issuer: &'static str,
    issued: u64,
    failed: u64,
    refused: u64,
    passthrough: u64,
    cached: u64,
}

fn custom_certs(app: &App) -> CustomCerts {
    let on_demand = &app.custom.certs;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    CustomCerts {
        issuer: on_demand.issuer_kind(),
        issued: load(&on_demand.counters.issued),
        failed: load(&on_demand.counters.failed),
        refused: load(&on_demand.counters.refused),
        passthrough: load(&on_demand.counters.passthrough),
        cached: app.custom.certs.cached() as u64,
    }
}

fn snapshot(app: &App, with_subdomains: bool) -> Snapshot {
    let s = &app.stats;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Snapshot {
        active_tunnels: app.registry.len() as u64,
        unique_ips: app.registry.unique_ips() as u64,
        total_connections: load(&s.total_connections),
        total_requests: load(&s.total_requests),
        active_websockets: load(&s.active_websockets),
        active_requests: load(&s.active_requests),
        blocked_ips: app.ip_guard.blocked_count() as u64,
        total_blocked: load(&s.total_blocked),
        total_rate_limited: load(&s.total_rate_limited),
        channels_opened: load(&s.channels_opened),
        channels_reused: load(&s.channels_reused),
        idle_channels: app
            .registry
            .tunnels()
            .iter()
            .map(|t| t.pool.idle() as u64)
            .sum(),
        spool_memory_bytes: app.spool.memory_used(),
        spool_disk_bytes: app.spool.disk_used(),
        streams_cut: app.spool.streams_cut(),
        active_names: app.registry.names_len() as u64,
        custom_certs: custom_certs(app),
        subdomains: with_subdomains.then(|| app.registry.names()),
        clients: with_subdomains.then(|| app.registry.client_counts()),
        certificates: app
            .acme
            .as_ref()
            .map(|acme| acme.expiries().into_iter().collect()),
    }
}

/// Serves the stats endpoint until shutdown.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: Shutdown) {
    // Stats answer loopback peers only; no proxy is ever trusted here.
    let limits = crate::http::ConnLimits {
        trusted: Default::default(),
        ..crate::http::ConnLimits::from_app(&app)
    };
    crate::http::serve_plain(listener, limits, shutdown, move |req, peer| {
        let app = Arc::clone(&app);
        async move { Ok::<_, Infallible>(handle(&app, req, peer).await) }
    })
    .await;
}

async fn handle(app: &App, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    // Bound wider by mistake or not, strangers never see the numbers.
    if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
        return json(
            StatusCode::FORBIDDEN,
            r#"{"error":"stats are served to loopback peers only"}"#.into(),
        );
    }
    // DNS rebinding: a web page under an attacker's name that resolves to
    // 127.0.0.1 reaches this listener from the operator's browser with its
    // own Host header. Only loopback names are answered.
    if !loopback_host(&req) {
        return json(
            StatusCode::MISDIRECTED_REQUEST,
            r#"{"error":"the stats and admin endpoint answers only Host: localhost or a loopback IP"}"#.into(),
        );
    }
    if req.uri().path() == "/metrics" {
        return Response::builder()
            .header(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .header("cache-control", "no-store")
            .body(pages::full(crate::metrics::render(app)))
            .expect("static response parts are valid");
    }
    if let Some(response) = crate::dashboard::handle(app, req.method(), req.uri().path()) {
        return response;
    }
    if req.uri().path() != "/" {
        return match crate::admin::handle(app, req).await {
            Some(response) => response,
            None => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
        };
    }
    let with_subdomains = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "subdomains=true"));
    let body =
        serde_json::to_string(&snapshot(app, with_subdomains)).expect("stats snapshot serializes");
    json(StatusCode::OK, body)
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

/// A JSON answer of the stats listener (stats and admin API alike).
pub fn json(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .body(pages::full(body))
        .expect("static response parts are valid")
}
