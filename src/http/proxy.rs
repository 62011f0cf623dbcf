//! The reverse proxy for one routed request: a tunnel's name came in, the
//! request goes out to the tunnel's app over a stream through its client
//! ([`super::upstream`]), and both bodies stream.
//!
//! The request path, in order, as named phases of [`Proxy::serve`]:
//! 1. **visitor**: who asked (trusted proxies), blocked visitors get 403;
//! 2. **client**: a client of the name that serves HTTP, with its options
//!    (settled);
//! 3. **access**: allow-list, CORS preflight, Basic auth ([`super::access`]);
//! 4. **guards**: what plugs in to decide who may pass ([`super::guard`]:
//!    sign-in at the edge);
//! 5. **warning**: the browser warning page ([`super::interstitial`]);
//! 6. **limits**: visitor and tunnel buckets, in-flight caps, body size,
//!    WebSocket caps;
//! 7. **send**: rewrite ([`super::rewrite`]), send over a pooled or fresh
//!    stream, with the request idle timeout;
//! 8. **respond**: error pages for failures, headers, the response body
//!    metered, a 101 turned into a relay ([`super::websocket`]), and the
//!    request-log line when the body ends ([`super::log`]).
//!
//! HTTP/2 visitors are translated to HTTP/1.1 (the local app is usually a
//! dev server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::access::{self, Access};
use super::guard::{Checkpoint, Guard, Guarded, Vouched};
use super::interstitial::{self, Gate};
use super::metered::{Cut, MeteredBody, Stopped};
use super::observe::{Observation, Observer, Start};
use super::upstream::SendError;
use super::{log, pages, rewrite, upstream, websocket, Body, Scheme};
use crate::config::{Config, LimitArgs};
use crate::counters::{Gauge, COUNTERS};
use crate::forwarded::TrustedProxies;
use crate::limits::http::Slot;
use crate::limits::ssh::IpGuard;
use crate::limits::{Activity, Refusal, Refusals, Side};
use crate::pipe::relay;
use crate::request_log::Seen;
use crate::tunnel::options::{Tls, TunnelOptions};
use crate::tunnel::{OpenError, Registry, Tunnel};

/// What the proxy works with, and nothing else. Built by [`Proxy::new`].
pub struct Proxy {
    registry: Arc<Registry>,
    limits: LimitArgs,
    trusted: TrustedProxies,
    ip_guard: Arc<IpGuard>,
    refusals: Arc<Refusals>,
    /// `--access-log`: every request also goes to the server's log.
    access_log: bool,
    /// Browser navigations get the warning page first (unless the name
    /// was granted to a known key).
    browser_warning: bool,
    /// Keep-alive connections to the apps (the same pools replays use).
    pools: super::pool::Pools,
    /// WebSocket relays are tasks shutdown waits for.
    shutdown: crate::shutdown::Shutdown,
    /// The address visitors connect to when a connection cannot tell its
    /// own (the destination of a PROXY header to the app).
    https_addr: SocketAddr,
    /// Sees the requests someone watches (the request inspector).
    observer: Arc<dyn Observer>,
    /// The guard phase's guards, in order (sign-in).
    guards: Vec<Arc<dyn Guard>>,
}

/// The node's shared parts the proxy is built from.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub trusted: TrustedProxies,
    pub ip_guard: Arc<IpGuard>,
    pub refusals: Arc<Refusals>,
    pub pools: super::pool::Pools,
    pub observer: Arc<dyn Observer>,
    /// Run in order in the guard phase.
    pub guards: Vec<Arc<dyn Guard>>,
    pub shutdown: crate::shutdown::Shutdown,
}

/// Who asked, for what host, over which scheme.
pub(super) struct Visitor<'a> {
    pub addr: SocketAddr,
    /// The address it connected to.
    pub local: SocketAddr,
    pub host: &'a str,
    pub scheme: Scheme,
    /// The request as it arrived, for its log lines.
    pub seen: &'a Seen,
}

impl Proxy {
    /// The proxy `config` describes; `https_addr` is where visitors
    /// connect.
    pub fn new(config: &Config, parts: Parts, https_addr: SocketAddr) -> Proxy {
        Proxy {
            registry: parts.registry,
            limits: config.limits.clone(),
            trusted: parts.trusted,
            ip_guard: parts.ip_guard,
            refusals: parts.refusals,
            access_log: config.access_log,
            browser_warning: !config.warning.no_browser_warning,
            pools: parts.pools,
            shutdown: parts.shutdown,
            https_addr,
            observer: parts.observer,
            guards: parts.guards,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Whose `X-Forwarded-For` is believed.
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// The HTTPS listener's address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// A request for live tunnel `name` (`picked` from its clients). The
    /// response goes into the request log of the client that served it
    /// once its body has ended. Returns the tunnel that answered, whose
    /// errors the response counts toward.
    pub async fn serve(
        &self,
        picked: Arc<Tunnel>,
        name: &str,
        req: Request<Incoming>,
        peer: SocketAddr,
        host: &str,
        scheme: Scheme,
    ) -> (Response<Body>, Arc<Tunnel>) {
        // visitor
        let local = req
            .extensions()
            .get::<super::LocalAddr>()
            .and_then(|l| l.0)
            .unwrap_or(self.https_addr);
        let addr = self.trusted.visitor(req.headers(), peer);
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let held_before = req.extensions().get::<super::HeldForOptions>();
        let held_before = held_before.map_or(Duration::ZERO, |held| held.0);
        let seen = Seen::new(req.method().as_str(), path, addr.ip(), host).held_before(held_before);
        let visitor = Visitor {
            addr,
            local,
            host,
            scheme,
            seen: &seen,
        };
        if let Some(block) = self.ip_guard.blocked(visitor.addr.ip()) {
            let page = pages::blocked(&block.until_utc(), &block.reason).render(req.headers());
            return (log::when_done(self.access_log, &picked, seen, page), picked);
        }
        // client
        let Some((tunnel, options)) = self.http_client(Arc::clone(&picked), name, &seen).await
        else {
            let page = pages::misdirected(host).render(req.headers());
            return (log::when_done(self.access_log, &picked, seen, page), picked);
        };
        let response = self.admit(&tunnel, &options, req, &visitor).await;
        (
            log::when_done(self.access_log, &tunnel, seen, response),
            tunnel,
        )
    }

    /// A client of `name` that serves HTTP: `picked` unless it passes TLS
    /// through (clients of one name may differ in `tls=`), then another
    /// one. `None`: only the app's own TLS may serve this name, and this
    /// request came through burrow's TLS (its Host named another tunnel
    /// than its SNI) or, in `--http-mode proxy`, over plain HTTP while the
    /// options settled.
    ///
    /// A request held for the options is counted, and its log line and
    /// inspector entry say so (`seen`).
    async fn http_client(
        &self,
        picked: Arc<Tunnel>,
        name: &str,
        seen: &Seen,
    ) -> Option<(Arc<Tunnel>, Arc<TunnelOptions>)> {
        let settled = picked.settle_options().await;
        let held = |held: Duration| {
            COUNTERS.held_for_options(held);
            seen.add_held(held);
        };
        held(settled.held);
        if settled.options.tls != Tls::Passthrough {
            return Some((picked, settled.options));
        }
        let members = self.registry.members(name);
        let other = members.into_iter().find(|t| !t.passthrough())?;
        let settled = other.settle_options().await;
        held(settled.held);
        Some((other, settled.options))
    }

    /// The access, warning and limit phases; then the request is sent. An
    /// observed request's observer sees burrow's own answers too.
    async fn admit(
        &self,
        tunnel: &Arc<Tunnel>,
        options: &TunnelOptions,
        req: Request<Incoming>,
        visitor: &Visitor<'_>,
    ) -> Response<Body> {
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut observed = self.observer.observe(Start {
            conn: tunnel.conn(),
            tunnel: tunnel.key(),
            always: options.inspect,
            visitor: visitor.addr,
            method: req.method().as_str(),
            path,
            held: visitor.seen.held(),
        });
        if let Some(observed) = &mut observed {
            observed.arrived(req.headers());
        }
        let gates = self.gates(tunnel, options, req, visitor).await;
        if let (Some(observed), Some(user)) = (&mut observed, visitor.seen.user()) {
            observed.identified(user);
        }
        match gates {
            Gates::Pass(req, slots) => {
                self.proxy(tunnel, req, visitor, options, slots, observed)
                    .await
            }
            Gates::Answer(response) => match observed {
                Some(observed) => observed.answered_here(response),
                None => response,
            },
        }
    }

    /// The access, warning and limit phases: the request with its slots,
    /// or burrow's answer.
    async fn gates(
        &self,
        tunnel: &Arc<Tunnel>,
        options: &TunnelOptions,
        req: Request<Incoming>,
        visitor: &Visitor<'_>,
    ) -> Gates {
        let refused = |refusal, req: &Request<Incoming>| {
            Gates::Answer(self.refused(tunnel, visitor.addr, &refusal, req.headers()))
        };
        // access
        let mut req = match access::check(tunnel, options, req, visitor.addr) {
            Access::Answer(response) => return Gates::Answer(response),
            Access::Refused(refusal, req) => return refused(refusal, &req),
            Access::Pass(req) => req,
        };
        // guards
        for guard in &self.guards {
            let at = Checkpoint {
                tunnel,
                options,
                visitor: visitor.addr,
                host: visitor.host,
                scheme: visitor.scheme,
                seen: visitor.seen,
            };
            req = match guard.guard(at, req).await {
                Guarded::Pass(req) => req,
                Guarded::Answer(response) => return Gates::Answer(response),
            };
        }
        // warning: names the operator granted to a known key are trusted,
        // and so is a visitor a guard vouched for (signed in with the
        // operator's provider to reach it).
        let vouched = req.extensions().get::<Vouched>().is_some();
        let req = if !self.browser_warning || tunnel.granted() || vouched {
            req
        } else {
            match interstitial::gate(req, tunnel.key(), visitor.host, visitor.scheme).await {
                Gate::Answer(response) => return Gates::Answer(response),
                Gate::Pass(req) => req,
            }
        };
        // limits
        let ip = visitor.addr.ip();
        let slot = match tunnel.gate().admit_request(ip) {
            Ok(slot) => slot,
            Err(refusal) => return refused(refusal, &req),
        };
        if let Err(refusal) = plan_admits(tunnel) {
            return refused(refusal, &req);
        }
        let max_body = self.limits.max_body_size;
        if max_body > 0 && content_length(req.headers()).is_some_and(|len| len > max_body) {
            return Gates::Answer(pages::too_large(max_body).render(req.headers()));
        }
        let ws_slot = if rewrite::wants_upgrade(&req) {
            match tunnel.gate().admit_websocket(ip) {
                Ok(slot) => Some(slot),
                Err(refusal) => return refused(refusal, &req),
            }
        } else {
            None
        };
        Gates::Pass(req, (slot, ws_slot))
    }

    /// A limit said no: 429 (or 503 when the whole tunnel is busy) with
    /// `Retry-After`, logged once per visitor and limit.
    fn refused(
        &self,
        tunnel: &Tunnel,
        visitor: SocketAddr,
        refusal: &Refusal,
        request_headers: &HeaderMap,
    ) -> Response<Body> {
        let ip = visitor.ip();
        self.refusals
            .refuse(refusal, ip, Side::Visitor, tunnel.key());
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

    /// The send and respond phases.
    async fn proxy(
        &self,
        tunnel: &Arc<Tunnel>,
        mut req: Request<Incoming>,
        visitor: &Visitor<'_>,
        options: &TunnelOptions,
        (slot, ws_slot): (Slot, Option<Slot>),
        mut observed: Option<Box<dyn Observation>>,
    ) -> Response<Body> {
        COUNTERS.request_proxied(tunnel.traffic());
        let in_flight = Gauge::request();
        // Error pages only look at Accept: keep that, not a copy of every header.
        let visitor_headers = pages::negotiation_headers(req.headers());
        let (host, limits) = (visitor.host, &self.limits);
        let activity = Arc::new(Activity::default());
        // What cut the visitor's body, if anything: too large (413) or
        // malformed (400) are not the app's failures.
        let cut = Arc::new(Cut::default());

        let upgrade = ws_slot.is_some().then(|| hyper::upgrade::on(&mut req));
        let origin = req.headers().get(header::ORIGIN).cloned();
        let req = rewrite::to_origin_request(
            req,
            visitor.addr,
            host,
            options.host.as_deref(),
            upgrade.is_some(),
            visitor.scheme,
        )
        .map(|body| {
            MeteredBody::new(body)
                .limit(limits.max_body_size)
                .watch(Arc::clone(&cut))
                .activity(Arc::clone(&activity), Duration::ZERO)
                .boxed_unsync()
        });
        let req = match &mut observed {
            Some(observed) => observed.request(req),
            None => req,
        };

        let idle = limits.request_idle_timeout;
        let proxy_header = options.proxy.map(|v| (v, visitor.local));
        let sent = tokio::select! {
            sent = upstream::send((&self.registry, &self.pools), tunnel, req, visitor.addr, proxy_header) => sent,
            _ = relay::idle_expired(&activity, idle) => {
                tracing::debug!(subdomain = %tunnel.key(), "request idle timeout before the response");
                return pages::request_idle(host, idle).render(&visitor_headers);
            }
        };
        let (mut response, lent) = match sent {
            Ok(sent) => sent,
            Err(err) => return failed(tunnel, host, err, &cut, &visitor_headers),
        };
        if let Some(observed) = &mut observed {
            observed.answered(response.status(), response.headers());
        }
        if limits.max_body_size > 0
            && content_length(response.headers()).is_some_and(|len| len > limits.max_body_size)
        {
            return pages::response_too_large(host, limits.max_body_size).render(&visitor_headers);
        }

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(visitor_upgrade), Some(ws_slot)) = (switching, upgrade, ws_slot) {
            let log = log::WebSocketLog::new(visitor.seen.clone(), tunnel, self.access_log);
            let origin_upgrade = hyper::upgrade::on(&mut response);
            let upgrades = (visitor_upgrade, origin_upgrade);
            let observed = observed.as_ref().and_then(|o| o.websocket());
            let quota = tunnel.client().account();
            websocket::relay(
                &self.shutdown,
                (limits, quota),
                upgrades,
                ws_slot,
                (log, observed),
            );
        }
        // The visitor's body may still break after the head came back.
        response.extensions_mut().insert(log::RequestCut(cut));
        rewrite::strip_hop_by_hop(response.headers_mut(), switching);
        rewrite::add_safety_headers(response.headers_mut());
        access::decorate(options, origin.as_ref(), response.headers_mut());
        let response = response.map(|body| {
            let body = MeteredBody::new(body)
                .limit(limits.max_body_size)
                .activity(activity, idle)
                .guard((slot, in_flight));
            // A connection that switched protocols is the WebSocket's now.
            match lent.filter(|_| !switching) {
                Some(lent) => body.on_end(|ended| {
                    if ended.complete && ended.error.is_none() {
                        lent.give_back();
                    }
                }),
                None => body,
            }
            .boxed_unsync()
        });
        match observed {
            Some(observed) => observed.finish(response),
            None => response,
        }
    }
}

/// What the access, warning and limit phases decided.
enum Gates {
    /// On to the app, holding its request slot (and WebSocket slot).
    Pass(Request<Incoming>, (Slot, Option<Slot>)),
    /// burrow answers itself.
    Answer(Response<Body>),
}

/// The page for a request the app never answered. A visitor's body that
/// was too large or malformed is the visitor's fault (413, 400), whatever
/// the connection to the app then said.
fn failed(
    tunnel: &Tunnel,
    host: &str,
    err: SendError,
    cut: &Cut,
    visitor_headers: &HeaderMap,
) -> Response<Body> {
    let page = match (err, cut.get()) {
        (_, Some(Stopped::TooLarge(limit))) => pages::too_large(*limit),
        (_, Some(Stopped::Broken(why))) => pages::malformed_body(why),
        (err, _) => app_failed(tunnel, host, err),
    };
    page.render(visitor_headers)
}

/// The page for a request the app (or the stream to it) failed.
fn app_failed(tunnel: &Tunnel, host: &str, err: SendError) -> pages::Page {
    match err {
        SendError::Open(OpenError::Timeout) => pages::channel_timeout(host, tunnel.open_timeout()),
        SendError::Open(OpenError::Limited(refusal)) => {
            pages::limited(StatusCode::SERVICE_UNAVAILABLE, &refusal)
        }
        SendError::Open(err) => {
            tracing::debug!(subdomain = %tunnel.key(), error = ?err, "stream open failed");
            let hint = format!("the client's -R {} forward", tunnel.bind().port);
            pages::local_app_down(host, &hint, &err.to_string())
        }
        SendError::Failed(err) => {
            tracing::debug!(subdomain = %tunnel.key(), error = %err, "local app gave no response");
            pages::local_app_failed(host, &err.to_string())
        }
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The tunnel owner's plan: a used-up transfer or request quota refuses
/// the request (429 naming the quota and when it resets); else it counts.
fn plan_admits(tunnel: &Tunnel) -> Result<(), Refusal> {
    let Some(account) = tunnel.client().account() else {
        return Ok(());
    };
    account.admit_request().inspect_err(|refusal| {
        crate::counters::COUNTERS.quota_refused(&account.plan().name, refusal.limit);
    })
}
