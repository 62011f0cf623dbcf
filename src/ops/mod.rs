//! The operator's endpoints on the stats listener (loopback only): the
//! JSON stats ([`stats`]), Prometheus metrics ([`metrics`]), the admin API
//! ([`admin`]), plans and usage ([`usage`]) and the live dashboard
//! ([`dashboard`]).
//!
//! Every request passes three checks first: the peer must be a loopback
//! address (bound wider by mistake or not, strangers never see the
//! numbers; on a Unix socket, file permissions decide), the `Host` must
//! name a loopback host (a DNS-rebinding page in the operator's browser
//! would otherwise reach it), and the path's token ([`auth`]).

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod dashboard;
pub mod health;
pub mod metrics;
pub mod stats;
mod unix;
pub mod usage;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::acme::Acme;
use crate::config::LimitArgs;
use crate::custom::CustomDomains;
use crate::http::{pages, Body, ConnLimits};
use crate::limits::ssh::IpGuard;
use crate::listen::StatsListener;
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
    /// The admin and metrics tokens.
    auth: auth::AdminAuth,
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
    pub auth: auth::AdminAuth,
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
            auth: parts.auth,
        }
    }
}

/// Who is asking: a TCP peer (loopback only) or a Unix socket's (the
/// socket's mode decided).
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    Unix,
}

/// Serves the stats endpoint until shutdown.
pub async fn serve(listener: StatsListener, ops: Arc<Ops>, limits: &LimitArgs, shutdown: Shutdown) {
    let listener = match listener {
        StatsListener::Tcp(listener) => listener,
        StatsListener::Unix(listener, file) => {
            return unix::serve(listener, file, ops, limits, shutdown).await
        }
    };
    // Loopback peers only; no proxy is ever trusted here.
    let limits = ConnLimits::new(limits, Default::default());
    crate::http::serve_plain(listener, limits, shutdown, move |req, peer| {
        let ops = Arc::clone(&ops);
        async move { Ok::<_, Infallible>(handle(&ops, req, Peer::Tcp(peer)).await) }
    })
    .await;
}

async fn handle(ops: &Ops, req: Request<Incoming>, peer: Peer) -> Response<Body> {
    if let Peer::Tcp(peer) = peer {
        if !peer.ip().is_loopback() && !peer.ip().to_canonical().is_loopback() {
            return pages::json_text(
                StatusCode::FORBIDDEN,
                r#"{"error":"stats are served to loopback peers only"}"#.into(),
            );
        }
    }
    // DNS rebinding: a web page under an attacker's name that resolves to
    // 127.0.0.1 reaches this listener from the operator's browser with its
    // own Host header. Only loopback names are answered.
    if !loopback_host(req.headers()) {
        return pages::json_text(
            StatusCode::MISDIRECTED_REQUEST,
            r#"{"error":"the stats and admin endpoint answers only Host: localhost or a loopback IP"}"#.into(),
        );
    }
    let path = req.uri().path();
    let need = auth::need(req.method(), path, req.uri().query());
    if let Err(refused) = ops.auth.check(need, req.method(), req.headers()) {
        // The page asks for the token; everything else says what is needed.
        if matches!(path, "/dashboard" | "/dashboard/")
            && !matches!(refused, auth::Refused::Locked(_))
            && (req.method() == Method::GET || req.method() == Method::HEAD)
        {
            return dashboard::sign_in_page();
        }
        return ops.auth.refusal(need, refused);
    }
    if path == "/metrics" {
        return metrics::response(ops);
    }
    if path == "/dashboard/login" {
        return dashboard::sign_in(&ops.auth, req).await;
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
/// A `Host` that is there but not text (obs-text bytes) names no loopback
/// host: it is refused, not taken for a missing one. Takes the headers
/// only, so `crate::fuzzing` can drive it.
pub(crate) fn loopback_host(headers: &hyper::HeaderMap) -> bool {
    let Some(host) = headers.get(hyper::header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    // `[v6]` or a name, then nothing or `:` and digits; nothing else
    // (a stray bracket, bytes after `]`) names a host.
    let (name, port, bracketed) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((name, rest)) => (name, rest, true),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, _)) => (name, &host[name.len()..], false),
            None => (host, "", false),
        },
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    if !port_ok {
        return false;
    }
    if bracketed {
        return name
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    }
    !name.contains([':', '[', ']'])
        && (name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderValue, HOST};

    fn with_host(value: HeaderValue) -> hyper::HeaderMap {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(HOST, value);
        headers
    }

    #[test]
    fn a_host_header_that_is_not_text_is_refused() {
        let utf8 = HeaderValue::from_bytes("é.tunnel.example".as_bytes()).unwrap();
        assert!(!loopback_host(&with_host(utf8)));
        assert!(loopback_host(&with_host(HeaderValue::from_static(
            "localhost:9090"
        ))));
        assert!(
            loopback_host(&hyper::HeaderMap::new()),
            "HTTP/1.0 without a Host"
        );
    }

    /// Found by the fuzz target host (campaign of 2026-12-07): the check
    /// trimmed brackets from either end on their own and ignored what
    /// follows `]`, so `::1]` or `[::1]x` passed for loopback.
    #[test]
    fn a_host_with_stray_brackets_is_refused() {
        for host in [
            "::1]",
            "[::1]x",
            "[::1]]",
            "[::1",
            "[localhost]",
            "::1",
            "localhost:x",
        ] {
            let value = HeaderValue::from_str(host).unwrap();
            assert!(!loopback_host(&with_host(value)), "{host}");
        }
        for host in [
            "[::1]:9090",
            "[::1]",
            "127.0.0.1:9090",
            "localhost",
            "LOCALHOST:1",
        ] {
            let value = HeaderValue::from_str(host).unwrap();
            assert!(loopback_host(&with_host(value)), "{host}");
        }
    }
}
