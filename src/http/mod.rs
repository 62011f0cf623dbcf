//! HTTP: serving connections (shared by every HTTP listener: the :80
//! redirector, the :443 proxy, the stats endpoint), the body type they
//! answer with, and the reverse proxy to tunnels' apps.
//!
//! - [`proxy`]: a request for a tunnel → its client → the local app, as
//!   named phases; [`upstream`] sends it, [`pool`] keeps connections,
//!   [`rewrite`] fixes headers, [`websocket`] relays upgrades, [`log`]
//!   writes the request log.
//! - [`access`], [`interstitial`]: allow-list, CORS, Basic auth, and the
//!   browser warning page.
//! - [`pages`]: the small pages burrow answers with itself (and the JSON
//!   answers of the operator's endpoints).
//! - [`metered`], [`watchdog`]: body limits and guards, connection timeouts.

pub mod access;
pub mod cookies;
pub mod form;
pub mod forward;
pub mod guard;
pub mod interstitial;
pub mod log;
pub mod metered;
pub mod observe;
pub mod pages;
pub mod pool;
pub mod proxy;
pub mod rewrite;
pub mod upstream;
pub mod watchdog;
pub mod websocket;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};

use crate::config::LimitArgs;
use crate::forwarded::TrustedProxies;
use crate::shutdown::Shutdown;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body every handler answers with: a generated page or a proxied stream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// The scheme a visitor used to reach us: shown to the app in
/// `X-Forwarded-Proto`, and deciding whether burrow's cookies are `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// hyper refuses read buffers smaller than this.
const MIN_HEADER_BUFFER: usize = 8192;

/// The connection-level limits of a visitor listener.
#[derive(Clone)]
pub struct ConnLimits {
    /// `--tls-handshake-timeout` (:443), `Duration::MAX` for never.
    pub tls_handshake_timeout: Duration,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_size: usize,
    /// Peers whose PROXY protocol header is believed.
    pub trusted: TrustedProxies,
}

impl ConnLimits {
    pub fn new(limits: &LimitArgs, trusted: TrustedProxies) -> Self {
        ConnLimits {
            tls_handshake_timeout: crate::limits::zero_is_never(limits.tls_handshake_timeout),
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            max_header_size: usize::try_from(limits.max_header_size).unwrap_or(usize::MAX),
            trusted,
        }
    }

    pub fn read_buffer(&self) -> usize {
        self.max_header_size.max(MIN_HEADER_BUFFER)
    }
}

/// Accepts connections until shutdown, hands each one (after its PROXY
/// header, from trusted proxies) to `serve`, then lets open connections
/// finish gracefully (the caller bounds how long).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: &ConnLimits,
    shutdown: Shutdown,
    name: &str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, GracefulShutdownWatcher) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let tasks = shutdown.clone();
    crate::listen::accept_loop(&listener, name, shutdown.requested(), |stream, peer| {
        let watcher = GracefulShutdownWatcher(graceful.watcher());
        let (proxies, timeout) = (limits.trusted.clone(), limits.header_timeout);
        let serve = serve.clone();
        tasks.spawn(async move {
            let mut stream = stream;
            match proxies.resolve(&mut stream, peer, timeout).await {
                Ok(client) => serve(stream, client, watcher).await,
                Err(err) => tracing::debug!(%peer, error = %err, "dropped: bad PROXY header"),
            }
        });
    })
    .await;
    drop(listener);
    graceful.shutdown().await;
}

/// How long a request was held for its tunnel's options before it reached
/// the proxy (its TLS handshake, or the plain-HTTP routing, waited): the
/// request log and the inspector show it. Attached to the first request of
/// a connection that waited.
#[derive(Clone, Copy, Debug)]
pub struct HeldForOptions(pub std::time::Duration);

/// The address a visitor connected to, attached to each request (the
/// destination of a PROXY header to the app).
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub Option<SocketAddr>);

impl LocalAddr {
    pub fn of(stream: &TcpStream) -> Self {
        LocalAddr(stream.local_addr().ok())
    }
}

/// Lets a connection task register itself for graceful shutdown.
pub struct GracefulShutdownWatcher(pub hyper_util::server::graceful::Watcher);

/// Serves plain HTTP/1.1 (the redirector and the stats endpoint). Idle
/// keep-alive connections here are bounded by the header timeout.
pub async fn serve_plain<H, Fut>(
    listener: TcpListener,
    limits: ConnLimits,
    shutdown: Shutdown,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    accept_loop(
        listener,
        &limits.clone(),
        shutdown,
        "http",
        move |stream, peer, watcher| {
            let handler = handler.clone();
            let limits = limits.clone();
            async move {
                let local = LocalAddr::of(&stream);
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(local);
                    handler(req, peer)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(limits.read_buffer())
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(err) = watcher.0.watch(conn).await {
                    tracing::debug!(%peer, error = %err, "http connection error");
                }
            }
        },
    )
    .await;
}
