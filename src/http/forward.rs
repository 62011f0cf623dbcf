//! A request for a tunnel held on another node of the cluster: it goes to
//! that node over the link, and that node serves it as its own (options,
//! limits, warning page, request log all apply there). This node only
//! carries it.
//!
//! A request without an upgrade travels as a plain HTTP/2 request of the
//! link (HTTP/2 form: the host in the URI, hop-by-hop headers gone), the
//! response comes back on the same stream ([`Remote::send`]). An upgrade
//! (WebSocket), and any request for a node that only takes streams (an
//! older version), takes a stream instead: the request as HTTP/1.1, the
//! response as it comes back, the upgrade turned into a relay. Either way
//! one link stream per request, so a browser's HTTP/2 connection can reach
//! tunnels on several nodes.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::metered::{Cut, MeteredBody, Stopped};
use super::{pages, rewrite, Body, Scheme};
use crate::counters::COUNTERS;
use crate::pipe::relay::{self, RelayLimits};
use crate::shutdown::Shutdown;
use crate::tunnel::directory::{Carry, Forwarded, Sent};
use crate::tunnel::route::Remote;

/// Retry-After for a tunnel whose node cannot be reached: its client is
/// reconnecting to another node meanwhile.
pub const RETRY_SECS: u32 = 5;

/// Sends `req` (for `host`) to the node holding `remote`.
pub async fn forward(
    shutdown: &Shutdown,
    remote: &Remote,
    mut req: Request<Incoming>,
    (visitor, local, scheme): (SocketAddr, SocketAddr, Scheme),
) -> Response<Body> {
    COUNTERS.forwarded("http");
    let forwarded = Forwarded {
        carry: Carry::Http {
            https: scheme == Scheme::Https,
        },
        visitor,
        local,
    };
    let wants_upgrade = rewrite::wants_upgrade(&req);
    let upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let headers = pages::negotiation_headers(req.headers());
    // A visitor's malformed body is the visitor's fault, not the node's.
    let cut = Arc::new(Cut::default());
    let broken = |cut: &Cut, why: &str| match cut.get() {
        Some(Stopped::Broken(why)) => pages::malformed_body(why).render(&headers),
        _ => unreachable_with(&headers, &remote.member.node, why),
    };
    let mut req = req.map(|body| {
        MeteredBody::new(body)
            .watch(Arc::clone(&cut))
            .boxed_unsync()
    });
    if to_h2_form(&mut req, wants_upgrade, scheme) {
        req = match remote.send(forwarded, req).await {
            Ok(Sent::Answered(response)) => return response,
            Ok(Sent::Unsupported(request)) => request,
            Err(err) => {
                tracing::debug!(key = %remote.key, node = %remote.member.node, error = ?err, "forwarding failed");
                return broken(&cut, &err.to_string());
            }
        };
    }
    let stream = match remote.open(forwarded).await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(key = %remote.key, node = %remote.member.node, error = ?err, "forwarding failed");
            return unreachable_with(&headers, &remote.member.node, &err.to_string());
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(err) => return unreachable_with(&headers, &remote.member.node, &err.to_string()),
    };
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "forwarded connection ended");
        }
    });
    let request = to_link_request(req, wants_upgrade);
    let mut response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(err) => return broken(&cut, &err.to_string()),
    };
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(visitor_side)) = (response.status(), upgrade) {
        let node_side = hyper::upgrade::on(&mut response);
        relay_upgrade(shutdown, visitor_side, node_side);
    }
    response.map(|body| body.map_err(Into::into).boxed_unsync())
}

/// Puts the visitor's request in the form of a request of the link
/// (HTTP/2): the host in the URI (HTTP/1.1 carries it in `Host`),
/// hop-by-hop headers gone. `false`, and the request untouched, when it
/// cannot travel so: an upgrade, a CONNECT, a host that is no URI
/// authority.
fn to_h2_form(req: &mut Request<Body>, upgrade: bool, scheme: Scheme) -> bool {
    if upgrade || req.method() == Method::CONNECT {
        return false;
    }
    let authority = match req.uri().authority() {
        Some(authority) => authority.as_str().to_string(),
        None => match req.headers().get(header::HOST).map(|h| h.to_str()) {
            Some(Ok(host)) => host.to_string(),
            _ => return false,
        },
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(uri) = Uri::builder()
        .scheme(scheme.as_str())
        .authority(authority)
        .path_and_query(path)
        .build()
    else {
        return false;
    };
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    let headers = req.headers_mut();
    rewrite::strip_hop_by_hop(headers, false);
    headers.remove(header::HOST);
    true
}

/// The visitor's request as HTTP/1.1 for the other node: origin-form, the
/// host in `Host` (HTTP/2 carries it in `:authority`), hop-by-hop headers
/// gone (an upgrade's kept). Forwarding headers are left to the node that
/// serves it: it states the visitor's address itself.
fn to_link_request(mut req: Request<Body>, upgrade: bool) -> Request<Body> {
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    rewrite::strip_hop_by_hop(headers, upgrade);
    if let Some(host) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
        headers.entry(header::HOST).or_insert(host);
    }
    req
}

/// After a 101 from the other node, relays the visitor's connection to it
/// (the limits of WebSockets apply there, where the app is).
fn relay_upgrade(
    shutdown: &Shutdown,
    visitor: hyper::upgrade::OnUpgrade,
    node: hyper::upgrade::OnUpgrade,
) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let Ok((visitor, node)) = tokio::try_join!(visitor, node) else {
            return;
        };
        let (visitor, node) = (TokioIo::new(visitor), TokioIo::new(node));
        let (moved, limits) = (relay::Moved::default(), RelayLimits::default());
        tokio::select! {
            _ = relay::relay_counted(visitor, node, &limits, &moved) => {}
            _ = stop.finishing() => {}
        }
    });
}

/// 502 naming the node and the cause, with `Retry-After`.
fn unreachable_with(headers: &hyper::HeaderMap, node: &str, why: &str) -> Response<Body> {
    let mut page = pages::node_unreachable(node, why).render(headers);
    page.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SECS));
    page
}

/// The page for a name the cluster's directory cannot resolve now (Redis
/// is down and this node never looked it up): 503, try again soon.
pub fn unresolved(headers: &hyper::HeaderMap, host: &str) -> Response<Body> {
    let mut page = pages::directory_down(host).render(headers);
    page.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SECS));
    page
}

/// The page for a name whose clients were all on nodes that are gone:
/// 503, try again in a few seconds (they are reconnecting elsewhere).
pub fn gone(headers: &hyper::HeaderMap, host: &str) -> Response<Body> {
    let mut page = pages::tunnel_moving(host).render(headers);
    page.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_SECS));
    page
}
