//! The HTTPS reverse proxy: route by Host, open a `forwarded-tcpip` channel
//! through the tunnel's SSH handle, speak HTTP/1.1 to the local app over it,
//! and stream both bodies.
//!
//! HTTP/2 visitors are translated to HTTP/1.1 (the local app is usually a
//! dev server). HTTP/1.1 upgrades (WebSocket) become a raw byte relay
//! between the visitor and the channel once the app answers 101.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::access::{self, Access};
use super::interstitial::{self, Gate};
use super::metered::MeteredBody;
use super::pool::Sender;
use super::{pages, Body, Scheme};
use crate::channel::ChannelIo;
use crate::limits::http::Slot;
use crate::limits::{Activity, Refusal};
use crate::registry::{OpenError, Tunnel};
use crate::relay::{self, RelayLimits};
use crate::request_log::{Answered, Event, Seen};
use crate::ssh::options::{ProxyHeader, Tls, TunnelOptions};
use crate::stats::OwnedGauge;
use crate::subdomain::Route;
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
    scheme: Scheme,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let response = route(app, req, peer, scheme).await?;
    crate::metrics::METRICS.http_response(response.status().as_u16(), started.elapsed());
    Ok(response)
}

/// Routes by host: the landing page, a tunnel, or an error page.
async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: Scheme,
) -> Result<Response<Body>, Infallible> {
    let Some(host) = request_host(&req) else {
        return Ok(pages::bad_request("The request names no host.").render(req.headers()));
    };
    let response = match app.route(&host) {
        Route::Apex => {
            let mut page =
                pages::landing(&app.config.domain, &app.connect_command()).render(req.headers());
            page.headers_mut().insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
            page
        }
        Route::Foreign => pages::foreign_host(&app.config.domain).render(req.headers()),
        Route::Malformed => pages::not_found(&host).render(req.headers()),
        Route::Tunnel(name) => match app.registry.get_or_wait(&name).await {
            Some(tunnel) => serve_tunnel(&app, tunnel, &name, req, peer, &host, scheme).await,
            None => pages::not_found(&host).render(req.headers()),
        },
    };
    Ok(response)
}

/// A request for a live tunnel `name` (`picked` from its clients). The
/// response goes into the request log of the client that served it once
/// its body has ended.
async fn serve_tunnel(
    app: &Arc<App>,
    picked: Arc<Tunnel>,
    name: &str,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    host: &str,
    scheme: Scheme,
) -> Response<Body> {
    let local = req
        .extensions()
        .get::<super::LocalAddr>()
        .and_then(|l| l.0)
        .unwrap_or(app.addrs.https);
    let visitor = Visitor {
        addr: app.trusted.visitor(req.headers(), peer),
        local,
        host,
        scheme,
    };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let seen = Seen::new(req.method().as_str(), path, visitor.addr.ip(), host);
    req.extensions_mut().insert(seen.clone());
    if let Some(block) = app.ip_guard.blocked(visitor.addr.ip()) {
        let page = pages::blocked(&block.until_utc(), &block.reason).render(req.headers());
        return log_when_done(app, &picked, seen, page);
    }
    let Some((tunnel, options)) = http_client(app, Arc::clone(&picked), name).await else {
        let page = pages::misdirected(host).render(req.headers());
        return log_when_done(app, &picked, seen, page);
    };
    let response = tunnel_request(app, &tunnel, &options, req, &visitor).await;
    if response.status().is_server_error() {
        tunnel
            .traffic
            .errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    log_when_done(app, &tunnel, seen, response)
}

/// Writes the request's log line (and its access-log line) when the
/// response body ends, with why it was cut if it was. A 101 is left to
/// the WebSocket's own open and close lines.
fn log_when_done(
    app: &App,
    tunnel: &Tunnel,
    seen: Seen,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status();
    let access_log = app.config.access_log;
    // Nobody to tell (`-N`, no access log): no body wrapper on the hot path.
    if status == StatusCode::SWITCHING_PROTOCOLS || !(access_log || tunnel.client.has_log()) {
        return response;
    }
    let answered = response.extensions().get::<Answered>().cloned();
    // HEAD, 204 and 304 have no body to finish.
    let bodyless =
        seen.is_head() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let client = Arc::clone(&tunnel.client);
    response.map(move |body| {
        MeteredBody::new(body)
            .on_end(move |ended| {
                let sent = crate::limits::human_bytes(ended.bytes);
                let why = match (answered.as_ref(), ended.error) {
                    (Some(answered), _) => answered.0.clone(),
                    (None, Some(error)) => Some(format!("response cut off after {sent}: {error}")),
                    (None, None) if !ended.complete && !bodyless => Some(format!(
                        "the visitor went away after {sent}, before the response ended"
                    )),
                    (None, None) => None,
                };
                let duration = seen.elapsed();
                let event = Event::Request {
                    seen,
                    status: status.as_u16(),
                    bytes: ended.bytes,
                    duration,
                    why,
                };
                if access_log {
                    event.trace();
                }
                client.log(event, answered.is_some());
            })
            .boxed_unsync()
    })
}

/// A client of `name` that serves HTTP: `picked` unless it passes TLS
/// through (clients of one name may differ in `tls=`), then another one.
/// `None`: only the app's own TLS may serve this name, and this request
/// came through burrow's TLS (its Host named another tunnel than its SNI)
/// or, in `--http-mode proxy`, over plain HTTP while the options settled.
async fn http_client(
    app: &App,
    picked: Arc<Tunnel>,
    name: &str,
) -> Option<(Arc<Tunnel>, Arc<TunnelOptions>)> {
    let options = picked.client.options_settled().await;
    if options.tls != Tls::Passthrough {
        return Some((picked, options));
    }
    let other = app
        .registry
        .members(name)
        .into_iter()
        .find(|t| !t.passthrough())?;
    let options = other.client.options_settled().await;
    Some((other, options))
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

/// A request for a live tunnel: warning page, limits, then the proxy.
async fn tunnel_request(
    app: &Arc<App>,
    tunnel: &Arc<Tunnel>,
    options: &TunnelOptions,
    req: Request<Incoming>,
    visitor: &Visitor<'_>,
) -> Response<Body> {
    let req = match access::check(tunnel, options, req, visitor.addr) {
        Access::Answer(response) => return response,
        Access::Pass(req) => req,
    };
    // Names the operator granted to a known key are trusted: no warning.
    let req = if app.config.limits.no_browser_warning || tunnel.granted {
        req
    } else {
        match interstitial::gate(req, &tunnel.subdomain, visitor.host, visitor.scheme).await {
            Gate::Answer(response) => return response,
            Gate::Pass(req) => req,
        }
    };
    let slot = match tunnel.gate.admit_request(visitor.addr.ip()) {
        Ok(slot) => slot,
        Err(refusal) => return refused(app, tunnel, visitor.addr, &refusal, req.headers()),
    };
    let max_body = app.config.limits.max_body_size;
    if max_body > 0 && content_length(req.headers()).is_some_and(|len| len > max_body) {
        return pages::too_large(max_body).render(req.headers());
    }
    let ws_slot = if wants_upgrade(&req) {
        match tunnel.gate.admit_websocket(visitor.addr.ip()) {
            Ok(slot) => Some(slot),
            Err(refusal) => return refused(app, tunnel, visitor.addr, &refusal, req.headers()),
        }
    } else {
        None
    };
    proxy(app, tunnel, req, visitor, options, slot, ws_slot).await
}

/// A limit said no: 429 (or 503 when the whole tunnel is busy) with
/// `Retry-After`, logged once per visitor and limit.
fn refused(
    app: &App,
    tunnel: &Arc<Tunnel>,
    visitor: SocketAddr,
    refusal: &Refusal,
    request_headers: &HeaderMap,
) -> Response<Body> {
    app.stats.refused(refusal.limit);
    if app.refusal_log.first(visitor.ip(), refusal.limit) {
        tracing::info!(subdomain = %tunnel.subdomain, visitor = %visitor.ip(), limit = refusal.limit, reason = %refusal.message, "request refused");
    }
    let status = if refusal.limit == "max-inflight-per-tunnel" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::TOO_MANY_REQUESTS
    };
    let mut response = pages::limited(status, refusal).render(request_headers);
    if let Some(secs) = refusal.retry_secs() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Who asked, for what host, over which scheme.
struct Visitor<'a> {
    addr: SocketAddr,
    /// The address it connected to.
    local: SocketAddr,
    host: &'a str,
    scheme: Scheme,
}

async fn proxy(
    app: &Arc<App>,
    tunnel: &Arc<Tunnel>,
    mut req: Request<Incoming>,
    visitor: &Visitor<'_>,
    options: &TunnelOptions,
    slot: Slot,
    ws_slot: Option<Slot>,
) -> Response<Body> {
    app.stats
        .total_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tunnel
        .traffic
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let in_flight = OwnedGauge::new(app, |s| &s.active_requests);
    // Error pages only look at Accept: keep that, not a copy of every header.
    let visitor_headers = pages::negotiation_headers(req.headers());
    let host = visitor.host;
    let limits = &app.config.limits;
    let activity = Arc::new(Activity::default());
    let too_large = Arc::new(AtomicBool::new(false));

    let upgrade = ws_slot.is_some().then(|| hyper::upgrade::on(&mut req));
    let seen = req.extensions().get::<Seen>().cloned();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let req = to_origin_request(
        req,
        visitor.addr,
        host,
        options.host.as_deref(),
        upgrade.is_some(),
        visitor.scheme,
    )
    .map(|body| {
        MeteredBody::new(body)
            .limit(limits.max_body_size, Some(Arc::clone(&too_large)))
            .activity(Arc::clone(&activity), Duration::ZERO)
            .boxed_unsync()
    });

    let idle = limits.request_idle_timeout;
    let sent = tokio::select! {
        sent = send(app, tunnel, req, visitor.addr, options.proxy.map(|v| (v, visitor.local))) => sent,
        _ = relay::idle_expired(&activity, idle) => {
            tracing::debug!(subdomain = %tunnel.subdomain, "request idle timeout before the response");
            return pages::request_idle(host, idle).render(&visitor_headers);
        }
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(SendError::Open(OpenError::Timeout)) => {
            return pages::channel_timeout(host).render(&visitor_headers)
        }
        Err(SendError::Open(err)) => {
            tracing::debug!(subdomain = %tunnel.subdomain, error = ?err, "channel open failed");
            let hint = format!("the client's -R {} forward", tunnel.bind_port);
            let said = match &err {
                OpenError::Refused(why) if !why.is_empty() => why.as_str(),
                OpenError::Refused(_) => "refused",
                OpenError::Gone => "the SSH connection is gone",
                OpenError::Timeout => "no answer",
            };
            return pages::local_app_down(host, &hint, said).render(&visitor_headers);
        }
        Err(SendError::Failed(_)) if too_large.load(std::sync::atomic::Ordering::Relaxed) => {
            return pages::too_large(limits.max_body_size).render(&visitor_headers);
        }
        Err(SendError::Failed(err)) => {
            tracing::debug!(subdomain = %tunnel.subdomain, error = %err, "local app gave no response");
            return pages::local_app_failed(host, &err.to_string()).render(&visitor_headers);
        }
    };
    if limits.max_body_size > 0
        && content_length(response.headers()).is_some_and(|len| len > limits.max_body_size)
    {
        return pages::response_too_large(host, limits.max_body_size).render(&visitor_headers);
    }

    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(visitor_upgrade), Some(ws_slot)) = (switching, upgrade, ws_slot) {
        let log = seen.map(|seen| WebSocketLog {
            seen,
            client: Arc::clone(&tunnel.client),
            access_log: app.config.access_log,
        });
        relay_upgrade(
            app,
            visitor_upgrade,
            hyper::upgrade::on(&mut response),
            ws_slot,
            log,
        );
    }
    strip_hop_by_hop(response.headers_mut(), switching);
    add_safety_headers(response.headers_mut());
    access::decorate(options, origin.as_ref(), response.headers_mut());
    response.map(|body| {
        MeteredBody::new(body)
            .limit(limits.max_body_size, None)
            .activity(activity, idle)
            .guard(slot)
            .guard(in_flight)
            .boxed_unsync()
    })
}

/// Why a request got no response from the local app.
enum SendError {
    /// No channel to the app (refused, timed out, connection gone).
    Open(OpenError),
    /// The app (or the channel) failed before answering.
    Failed(hyper::Error),
}

/// Sends the request over a pooled keep-alive connection, or a new one.
///
/// With `proxy=`, every request gets a fresh connection that starts with a
/// PROXY header naming its own visitor (a pooled one would name whoever
/// opened it). When the client fails to open a channel, another client of
/// the same key serving the name stands in (`--balance`).
///
/// A pooled connection can turn out to be closed by the app while it sat
/// idle. If that is found before the request went out, the request simply
/// goes over a fresh channel. If the app closed it just as the request was
/// written (no answer at all), a request without a body and with a safe
/// method is sent once more over a fresh channel, as nginx does; anything
/// else gets the error, since the app may have acted on it.
async fn send(
    app: &Arc<App>,
    tunnel: &Arc<Tunnel>,
    mut req: Request<Body>,
    visitor: SocketAddr,
    proxy: Option<(ProxyHeader, SocketAddr)>,
) -> Result<Response<Incoming>, SendError> {
    let pooling = proxy.is_none();
    let mut tunnel = Arc::clone(tunnel);
    let mut pooled = if pooling { tunnel.pool.take() } else { None };
    loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(sender) => sender,
            None => match connect(app, &tunnel, visitor, proxy).await {
                Ok(sender) => sender,
                Err(SendError::Open(err)) => {
                    tunnel.mark_failing();
                    match app.registry.stand_in(&tunnel) {
                        Some(next) => {
                            tracing::debug!(subdomain = %tunnel.subdomain, conn = tunnel.conn, error = ?err, "channel open failed; another client stands in");
                            tunnel = next;
                            continue;
                        }
                        None => return Err(SendError::Open(err)),
                    }
                }
                Err(err) => return Err(err),
            },
        };
        let replay = reused.then(|| replayable(&req)).flatten();
        match sender.try_send_request(req).await {
            Ok(response) => {
                if reused {
                    app.stats
                        .channels_reused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                if pooling {
                    tunnel.pool.recycle(sender);
                }
                return Ok(response);
            }
            Err(mut err) => match (err.take_message(), replay) {
                (Some(unsent), _) if reused => req = unsent,
                (None, Some(copy)) if err.error().is_incomplete_message() => {
                    tracing::debug!(subdomain = %tunnel.subdomain, "pooled connection closed under the request; sending it again");
                    req = copy;
                }
                _ => return Err(SendError::Failed(err.into_error())),
            },
        }
    }
}

/// A copy of a request that may safely be sent twice: a safe method and no
/// body. `None` for anything else.
fn replayable(req: &Request<Body>) -> Option<Request<Body>> {
    use hyper::body::Body as _;
    let safe = matches!(
        *req.method(),
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
    );
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(pages::full(bytes::Bytes::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Opens a channel to the local app and starts an HTTP/1.1 connection on it.
async fn connect(
    app: &Arc<App>,
    tunnel: &Arc<Tunnel>,
    visitor: SocketAddr,
    proxy: Option<(ProxyHeader, SocketAddr)>,
) -> Result<Sender, SendError> {
    let channel = tunnel
        .open_channel(visitor)
        .await
        .map_err(SendError::Open)?;
    app.stats
        .channels_opened
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut io = ChannelIo::new(channel, Arc::clone(&app.spool), tunnel);
    if let Some((version, local)) = proxy {
        use tokio::io::AsyncWriteExt;
        let header = relay::proxy_header(version, visitor, local);
        // A failed write shows up as the handshake's or the request's error.
        let _ = io.write_all(&header).await;
    }
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(SendError::Failed)?;
    tokio::spawn(async move {
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "origin connection error");
        }
    });
    Ok(sender)
}

/// Proxied responses: `nosniff` and a Referrer-Policy unless the app chose
/// its own; never indexed by search engines. Framing is left to the app.
fn add_safety_headers(headers: &mut HeaderMap) {
    headers
        .entry("x-content-type-options")
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("strict-origin-when-cross-origin"));
    headers.insert(
        "x-robots-tag",
        HeaderValue::from_static("noindex, nofollow"),
    );
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
pub fn to_origin_request<B>(
    mut req: Request<B>,
    visitor: SocketAddr,
    host: &str,
    rewrite_host: Option<&str>,
    upgrade: bool,
    scheme: Scheme,
) -> Request<B> {
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
    if let Ok(ip) = HeaderValue::from_str(&visitor.ip().to_canonical().to_string()) {
        headers.insert(X_FORWARDED_FOR, ip);
    }
    if let Ok(public_host) = HeaderValue::from_str(host) {
        headers.insert(X_FORWARDED_HOST, public_host.clone());
        // HTTP/2 carries the host in :authority; HTTP/1.1 needs Host.
        headers.entry(header::HOST).or_insert(public_host);
    }
    // host=: for dev servers that only answer to their own name.
    if let Some(value) = rewrite_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::HOST, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    strip_burrow_cookies(headers);
    req
}

/// Removes burrow's own cookies (warning page) from what the app sees.
fn strip_burrow_cookies(headers: &mut HeaderMap) {
    let values: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    if !values
        .iter()
        .any(|v| v.contains("burrow_warned_") || v.contains("burrow_csrf_"))
    {
        return;
    }
    let kept: Vec<&str> = values
        .iter()
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !interstitial::is_burrow_cookie(name)
        })
        .collect();
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_str(&kept.join("; ")) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, value);
        }
    }
}

/// Where a WebSocket's open and close lines go.
struct WebSocketLog {
    seen: Seen,
    client: Arc<crate::registry::Conn>,
    access_log: bool,
}

impl WebSocketLog {
    fn record(&self, event: Event) {
        if self.access_log {
            event.trace();
        }
        self.client.log(event, false);
    }

    fn opened(&self) {
        self.record(Event::WebSocketOpen {
            seen: self.seen.clone(),
        });
    }

    fn closed(self, moved: &relay::Moved, why: Option<String>) {
        use std::sync::atomic::Ordering::Relaxed;
        let duration = self.seen.elapsed();
        self.record(Event::WebSocketClose {
            seen: self.seen.clone(),
            duration,
            bytes_in: moved.a_to_b.load(Relaxed),
            bytes_out: moved.b_to_a.load(Relaxed),
            why,
        });
    }
}

/// After a 101, relays raw bytes between the visitor and the local app,
/// holding the WebSocket slot and gauge until the relay ends.
fn relay_upgrade(
    app: &Arc<App>,
    visitor: hyper::upgrade::OnUpgrade,
    origin: hyper::upgrade::OnUpgrade,
    slot: Slot,
    log: Option<WebSocketLog>,
) {
    let gauge = OwnedGauge::new(app, |s| &s.active_websockets);
    let limits = RelayLimits {
        max_bytes: app.config.limits.websocket_max_bytes,
        idle: app.config.limits.websocket_idle_timeout,
        flags: "websocket",
        bandwidth: None,
    };
    tokio::spawn(async move {
        let _held = (gauge, slot);
        let (visitor, origin) = match tokio::try_join!(visitor, origin) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        if let Some(log) = &log {
            log.opened();
        }
        let moved = relay::Moved::default();
        let end =
            relay::relay_counted(TokioIo::new(visitor), TokioIo::new(origin), &limits, &moved)
                .await;
        tracing::debug!(end = %end.describe(&limits), "upgraded connection ended");
        if let Some(log) = log {
            // Only a limit is burrow's doing; a visitor or app that hangs
            // up, politely or not, is not.
            let cut = matches!(end, relay::RelayEnd::TooManyBytes | relay::RelayEnd::Idle);
            let why = cut.then(|| format!("WebSocket {}", end.describe(&limits)));
            log.closed(&moved, why);
        }
    });
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
