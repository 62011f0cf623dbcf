//! The plain-HTTP listener: every request for the domain or one of its
//! subdomains (or a custom domain bound right now) is sent to the same host
//! and URI on HTTPS with a 301. Other hosts get 400, so the redirector can
//! never be used as an open redirect.
//!
//! With `--http-mode proxy`, requests for tunnels go to the proxy instead
//! (over plain HTTP); the apex and `tls=passthrough` tunnels still redirect.
//!
//! Before any of that, `/.well-known/acme-challenge/TOKEN` is answered from
//! the pending ACME HTTP-01 challenges (any host: a custom domain too; in a
//! cluster, any node's).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::router::Route;
use super::Edge;
use crate::config::HttpMode;
use crate::http::{pages, Body, HeldForOptions, Scheme};
use crate::subdomain;

/// Serves plain HTTP until shutdown.
pub async fn serve(listener: TcpListener, edge: Arc<Edge>) {
    let (limits, shutdown) = (edge.conn_limits.clone(), edge.shutdown.clone());
    crate::http::serve_plain(listener, limits, shutdown, move |req, peer| {
        let edge = Arc::clone(&edge);
        async move {
            if let Some(answer) = edge.challenges.answer(req.uri().path()).await {
                return Ok(acme_challenge(answer));
            }
            if edge.http_mode == HttpMode::Proxy {
                if let (true, held) = is_tunnel(&edge, &req).await {
                    let mut req = req;
                    req.extensions_mut().insert(HeldForOptions(held));
                    return Ok(edge.request(req, peer, Scheme::Http).await);
                }
            }
            Ok::<_, Infallible>(handle(&edge, &req).await)
        }
    })
    .await;
}

/// The key authorization of a pending HTTP-01 challenge, or 404.
fn acme_challenge(answer: Option<String>) -> Response<Body> {
    let found = answer.is_some();
    let mut response = Response::new(pages::full(answer.unwrap_or_default()));
    if !found {
        *response.status_mut() = StatusCode::NOT_FOUND;
    }
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

/// The host a plain-HTTP request names: `Host`, else an absolute URI's.
fn host(req: &Request<Incoming>) -> Option<&str> {
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())
}

/// Whether the request is for a tunnel the proxy serves over plain HTTP:
/// any but a `tls=passthrough` one, which only speaks TLS; and how long it
/// was held for the tunnel's options.
async fn is_tunnel(edge: &Edge, req: &Request<Incoming>) -> (bool, std::time::Duration) {
    match host(req) {
        Some(host) => edge.router.serves_plain_http(host).await,
        None => (false, std::time::Duration::ZERO),
    }
}

async fn handle(edge: &Edge, req: &Request<Incoming>) -> Response<Body> {
    match location(edge, req).await {
        Some(location) => pages::redirect(StatusCode::MOVED_PERMANENTLY, location),
        None => pages::foreign_host(edge.router.domain()).render(req.headers()),
    }
}

/// The HTTPS URL for this request, or `None` when the host is not ours.
async fn location(edge: &Edge, req: &Request<Incoming>) -> Option<HeaderValue> {
    let name = subdomain::strip_port(host(req)?)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    match edge.router.route(&name).await {
        Route::Apex | Route::Tunnel(_) => {}
        Route::Malformed | Route::Foreign => return None,
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    // Only an origin-form path may follow the host: "//evil" or an
    // absolute URI must not turn into a redirect elsewhere.
    let path = if path.starts_with('/') && !path.starts_with("//") {
        path
    } else {
        "/"
    };
    let port = edge.proxy.registry().public().port_suffix();
    HeaderValue::from_str(&format!("https://{name}{port}{path}")).ok()
}
