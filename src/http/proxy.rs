//! The HTTPS reverse proxy: route by Host, open a `forwarded-tcpip` channel
//! through the tunnel's SSH handle, speak HTTP/1.1 to the local app over it,
//! and stream both bodies.
//!
//! HTTP/2 visitors are translated to HTTP/1.1 (the local app is usually a
//! dev server). HTTP/1.1 upgrades (WebSocket) become a raw byte relay
//! between the visitor and the channel once the app answers 101.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::pages;
use super::{Body, BoxError};
use crate::registry::{OpenError, Tunnel};
use crate::stats::OwnedGauge;
use crate::subdomain::{self, Route};
use crate::App;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Entry point for every HTTPS request.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let Some(host) = request_host(&req) else {
        return Ok(pages::bad_request("The request names no host.").render(req.headers()));
    };
    let response = match subdomain::route(&host, &app.config.domain) {
        Route::Apex => {
            pages::landing(&app.config.domain, &app.connect_command()).render(req.headers())
        }
        Route::Foreign => pages::foreign_host(&app.config.domain).render(req.headers()),
        Route::Malformed => pages::not_found(&host).render(req.headers()),
        Route::Tunnel(name) => match app.registry.get(&name) {
            Some(tunnel) => proxy(&app, &tunnel, req, peer, &host).await,
            None => pages::not_found(&host).render(req.headers()),
        },
    };
    Ok(response)
}

/// The host the visitor asked for: `:authority` for HTTP/2, else `Host`.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

async fn proxy(
    app: &Arc<App>,
    tunnel: &Tunnel,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    host: &str,
) -> Response<Body> {
    app.stats
        .total_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let in_flight = OwnedGauge::new(app, |s| &s.active_requests);
    let visitor_headers = req.headers().clone();

    let upgrade = wants_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let req = to_origin_request(req, peer, host, upgrade.is_some());

    let channel = match tunnel.open_channel(peer).await {
        Ok(channel) => channel,
        Err(OpenError::Timeout) => return pages::channel_timeout(host).render(&visitor_headers),
        Err(err) => {
            tracing::debug!(subdomain = %tunnel.subdomain, error = ?err, "channel open failed");
            let hint = format!("the client's -R {} forward", tunnel.bind_port);
            return pages::local_app_down(host, &hint).render(&visitor_headers);
        }
    };

    let io = TokioIo::new(channel.into_stream());
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(io)
        .await
    {
        Ok(pair) => pair,
        Err(_) => return pages::local_app_failed(host).render(&visitor_headers),
    };
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "origin connection error");
        }
    });

    let mut response = match sender.send_request(req).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(subdomain = %tunnel.subdomain, error = %err, "local app gave no response");
            return pages::local_app_failed(host).render(&visitor_headers);
        }
    };

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(visitor)) = (switching, upgrade) {
        relay_upgrade(app, visitor, hyper::upgrade::on(&mut response));
    }
    strip_hop_by_hop(response.headers_mut(), switching);
    response.map(|body| {
        TrackedBody {
            inner: body.map_err(BoxError::from).boxed_unsync(),
            _in_flight: in_flight,
        }
        .boxed_unsync()
    })
}

/// Whether the visitor asks for an HTTP/1.1 protocol upgrade (WebSocket).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and those the `Connection` header names. For
/// an upgrade, `Connection: upgrade` and `Upgrade` are put back.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_to = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(protocol) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Turns the visitor's request into the HTTP/1.1 request the local app gets.
fn to_origin_request(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    host: &str,
    upgrade: bool,
) -> Request<Incoming> {
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    // Forwarding headers from the visitor are lies until proven otherwise:
    // drop them all and state what we saw ourselves.
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_canonical().to_string()) {
        headers.insert(X_FORWARDED_FOR, ip);
    }
    if let Ok(public_host) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST, public_host.clone());
        // HTTP/2 carries the host in :authority; HTTP/1.1 needs Host.
        headers.entry(header::HOST).or_insert(public_host);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    req
}

/// After a 101, relays raw bytes between the visitor and the local app.
fn relay_upgrade(
    app: &Arc<App>,
    visitor: hyper::upgrade::OnUpgrade,
    origin: hyper::upgrade::OnUpgrade,
) {
    let gauge = OwnedGauge::new(app, |s| &s.active_websockets);
    tokio::spawn(async move {
        let _gauge = gauge;
        let (visitor, origin) = match tokio::try_join!(visitor, origin) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        let mut visitor = TokioIo::new(visitor);
        let mut origin = TokioIo::new(origin);
        if let Err(err) = tokio::io::copy_bidirectional(&mut visitor, &mut origin).await {
            tracing::debug!(error = %err, "upgraded connection ended with an error");
        }
    });
}

/// A response body that keeps the in-flight gauge up until it is finished
/// or dropped.
struct TrackedBody {
    inner: Body,
    _in_flight: OwnedGauge,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
