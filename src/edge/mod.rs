//! The visitor's edge, in data-path order: TLS accepted on :443
//! ([`https`]), its SNI read ([`sni`]) and routed ([`router`]); plain HTTP
//! on :80 redirected ([`redirect`]); and every request, whichever listener
//! it came through, routed by Host to the landing page, an error page or
//! a tunnel's proxy ([`Edge::request`]).

pub mod https;
pub mod link;
pub mod redirect;
pub mod router;
pub mod sni;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response};

use self::router::{Route, Router};
use crate::acme::http01::Challenges;
use crate::config::{Config, HttpMode};
use crate::counters::COUNTERS;
use crate::custom::CustomDomains;
use crate::http::proxy::Proxy;
use crate::http::{forward, pages, Body, ConnLimits, Scheme};
use crate::login::Login;
use crate::pipe::relay::Relays;
use crate::shutdown::Shutdown;
use crate::tunnel::registry::Pick;
use crate::tunnel::route::Holder;

/// What the visitor's edge works with. Built by [`Edge::new`]; its
/// fields are this module's.
pub struct Edge {
    /// Host and SNI → route, over the same registry and custom domains as
    /// the proxy.
    router: Router,
    proxy: Proxy,
    /// Raw relays for `tls=passthrough` tunnels.
    relays: Arc<Relays>,
    /// Certificates of custom domains (a handshake may wait for one).
    custom: Arc<CustomDomains>,
    /// Pending ACME HTTP-01 challenges, answered on :80.
    challenges: Arc<Challenges>,
    /// Sign-in, when configured: its host is answered here.
    login: Option<Arc<Login>>,
    http_mode: HttpMode,
    /// Header and keep-alive timeouts, header size, trusted proxies.
    conn_limits: ConnLimits,
    /// Where SSH clients that connect to the HTTPS port go
    /// (`--ssh-on-https`); `None`: they get a failed TLS handshake.
    ssh: Option<crate::listen::Handoff>,
    shutdown: Shutdown,
}

/// The node's shared parts the edge is built from, besides its proxy.
pub struct Parts {
    pub relays: Arc<Relays>,
    pub custom: Arc<CustomDomains>,
    pub challenges: Arc<Challenges>,
    pub login: Option<Arc<Login>>,
    /// `Some` with `--ssh-on-https`.
    pub ssh: Option<crate::listen::Handoff>,
    pub shutdown: Shutdown,
}

impl Edge {
    /// The edge `config` describes, in front of `proxy`.
    pub fn new(config: &Config, proxy: Proxy, parts: Parts) -> Edge {
        let registry = Arc::clone(proxy.registry());
        Edge {
            router: Router::new(registry, Arc::clone(&parts.custom)),
            conn_limits: ConnLimits::new(&config.limits, proxy.trusted().clone()),
            proxy,
            relays: parts.relays,
            custom: parts.custom,
            challenges: parts.challenges,
            login: parts.login,
            http_mode: config.http_mode,
            ssh: parts.ssh,
            shutdown: parts.shutdown,
        }
    }

    /// Shutdown, for what serves the edge's requests (the link).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Every visitor request: routed by host to the landing page, an error
    /// page or a tunnel; counted once, with its status and time to head.
    pub async fn request(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> Response<Body> {
        self.counted(req, peer, scheme, Scope::Anywhere).await
    }

    /// A request another node of the cluster forwarded (from `visitor`):
    /// served by this node's own tunnels only, never forwarded again.
    pub async fn request_here(
        &self,
        req: Request<Incoming>,
        visitor: SocketAddr,
        scheme: Scheme,
    ) -> Response<Body> {
        self.counted(req, visitor, scheme, Scope::Here).await
    }

    async fn counted(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: Scheme,
        scope: Scope,
    ) -> Response<Body> {
        let started = Instant::now();
        let (response, served) = self.route(req, peer, scheme, scope).await;
        match served {
            // The node that serves a forwarded request counts it.
            Served::Elsewhere => {}
            Served::Here(tunnel) => {
                let traffic = tunnel.as_ref().map(|t| &**t.traffic());
                COUNTERS.response(response.status().as_u16(), started.elapsed(), traffic);
            }
        }
        response
    }

    /// Routes by host: the landing page, a tunnel (here or on another
    /// node), or an error page.
    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        scheme: Scheme,
        scope: Scope,
    ) -> (Response<Body>, Served) {
        let Some(host) = request_host(&req) else {
            let page = pages::bad_request("The request names no host.");
            return (page.render(req.headers()), Served::Here(None));
        };
        if let Some(login) = self.login.as_ref().filter(|l| l.is_host(&host)) {
            let visitor = self.proxy.trusted().visitor(req.headers(), peer);
            return (login.serve_host(req, visitor).await, Served::Here(None));
        }
        let domain = self.router.domain();
        let page = match self.router.route(&host).await {
            Route::Apex => {
                let connect = self.proxy.registry().public().connect_command();
                let mut page = pages::landing(domain, &connect).render(req.headers());
                page.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000"),
                );
                page
            }
            Route::Foreign => pages::foreign_host(domain).render(req.headers()),
            Route::Malformed => pages::not_found(&host).render(req.headers()),
            Route::Tunnel(name) => match self.holder(&name, scope).await {
                Holder::Here(tunnel) => {
                    let served = self.proxy.serve(tunnel, &name, req, peer, &host, scheme);
                    let (response, tunnel) = served.await;
                    return (response, Served::Here(Some(tunnel)));
                }
                Holder::There(remote) => {
                    let visitor = self.proxy.trusted().visitor(req.headers(), peer);
                    let local = local_addr(&req).unwrap_or(self.proxy.https_addr());
                    let to = (visitor, local, scheme);
                    let response = forward::forward(&self.shutdown, &remote, req, to);
                    return (response.await, Served::Elsewhere);
                }
                Holder::Gone => forward::gone(req.headers(), &host),
                Holder::Unresolved => forward::unresolved(req.headers(), &host),
                Holder::Nobody => pages::not_found(&host).render(req.headers()),
            },
        };
        (page, Served::Here(None))
    }

    /// Who serves `name` for a request from `scope`.
    async fn holder(&self, name: &str, scope: Scope) -> Holder {
        let registry = &self.proxy.registry();
        match scope {
            Scope::Anywhere => registry.route(name, Pick::Next).await,
            Scope::Here => registry
                .lookup(name, Pick::Next)
                .await
                .map_or(Holder::Nobody, Holder::Here),
        }
    }
}

/// Which tunnels may serve a request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Any node's (a visitor's request).
    Anywhere,
    /// This node's only (forwarded here by another node).
    Here,
}

/// Where a request was served, for counting it once cluster-wide.
enum Served {
    /// Here: by a tunnel, or with one of burrow's pages.
    Here(Option<Arc<crate::tunnel::Tunnel>>),
    /// Forwarded to the node holding the tunnel, which counts it.
    Elsewhere,
}

/// The address the visitor connected to, if the listener recorded it.
fn local_addr(req: &Request<Incoming>) -> Option<SocketAddr> {
    req.extensions()
        .get::<crate::http::LocalAddr>()
        .and_then(|l| l.0)
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
