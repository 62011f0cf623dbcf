//! The HTTP side: accept loops shared by every HTTP listener (the :80
//! redirector, the :443 proxy, the stats endpoint) and the body type they
//! answer with.
//!
//! - [`redirect`]: plain HTTP → 301 to HTTPS (or, with `--http-mode proxy`,
//!   tunnels served over plain HTTP by the same proxy).
//! - [`proxy`]: HTTPS requests → the tunnel's SSH client → the local app.
//! - [`pages`]: the small pages burrow answers with itself.

pub mod access;
pub mod interstitial;
pub mod metered;
pub mod pages;
pub mod pool;
pub mod proxy;
pub mod redirect;
pub mod sni;
pub mod watchdog;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

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

/// Time a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// hyper refuses read buffers smaller than this.
const MIN_HEADER_BUFFER: usize = 8192;

/// The connection-level limits of a visitor listener.
#[derive(Clone)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_size: usize,
    /// Peers whose PROXY protocol header is believed.
    pub trusted: TrustedProxies,
}

impl ConnLimits {
    pub fn from_app(app: &crate::App) -> Self {
        let limits = &app.config.limits;
        ConnLimits {
            header_timeout: limits.header_timeout,
            keepalive_timeout: limits.keepalive_timeout,
            max_header_size: usize::try_from(limits.max_header_size).unwrap_or(usize::MAX),
            trusted: app.trusted.clone(),
        }
    }

    fn read_buffer(&self) -> usize {
        self.max_header_size.max(MIN_HEADER_BUFFER)
    }
}

/// Accepts connections until shutdown, hands each one to `serve`, then lets
/// open connections finish gracefully (the caller bounds how long).
async fn accept_loop<F, Fut>(
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
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let watcher = GracefulShutdownWatcher(graceful.watcher());
        let (proxies, timeout) = (limits.trusted.clone(), limits.header_timeout);
        let serve = serve.clone();
        shutdown.spawn(async move {
            let mut stream = stream;
            match proxies.resolve(&mut stream, peer, timeout).await {
                Ok(client) => serve(stream, client, watcher).await,
                Err(err) => tracing::debug!(%peer, error = %err, "dropped: bad PROXY header"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Reads the ClientHello and acts on its SNI. Returns the stream (with the
/// hello replayed) when TLS is to be terminated here; `None` when the
/// connection was relayed, refused, or broke off.
async fn route_by_sni(
    app: Arc<crate::App>,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<sni::Rewind<TcpStream>> {
    let read = sni::read_client_hello(&mut stream);
    let hello = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, read).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "no valid ClientHello");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "tls handshake timed out");
            return None;
        }
    };
    match sni::decide(&app, hello.server_name.as_deref()).await {
        sni::Decision::Terminate => Some(sni::Rewind::new(hello.bytes, stream)),
        sni::Decision::Reject => {
            tracing::debug!(%peer, sni = ?hello.server_name, "tls for a name outside the domain refused");
            sni::reject(&mut stream).await;
            None
        }
        sni::Decision::Passthrough(name) => {
            let local = stream.local_addr().unwrap_or(app.addrs.https);
            crate::relay::serve_visitor(app, &name, stream, &hello.bytes, peer, local).await;
            None
        }
    }
}

/// The address a visitor connected to, attached to each request (the
/// destination of a PROXY header to the app).
#[derive(Clone, Copy, Debug)]
pub struct LocalAddr(pub Option<SocketAddr>);

impl LocalAddr {
    fn of(stream: &TcpStream) -> Self {
        LocalAddr(stream.local_addr().ok())
    }
}

/// Lets a connection task register itself for graceful shutdown.
pub struct GracefulShutdownWatcher(hyper_util::server::graceful::Watcher);

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

/// Serves HTTPS (HTTP/1.1 with upgrades, and HTTP/2) with `handler`. Each
/// connection's SNI is read first ([`sni`]): `tls=passthrough` tunnels get
/// the raw bytes, names outside the domain an alert. Terminated connections
/// run next to a [`watchdog::ConnWatch`] that enforces the header and
/// keep-alive timeouts.
pub async fn serve_tls<H, Fut>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Arc<crate::App>,
    shutdown: Shutdown,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let limits = ConnLimits::from_app(&app);
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(limits.read_buffer());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    accept_loop(
        listener,
        &limits.clone(),
        shutdown,
        "https",
        move |stream, peer, watcher| {
            let handler = handler.clone();
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let limits = limits.clone();
            let app = Arc::clone(&app);
            async move {
                let local = LocalAddr::of(&stream);
                let Some(stream) = route_by_sni(app, stream, peer).await else {
                    return;
                };
                // A fresh limit: routing may have waited for a new tunnel.
                let handshake =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                let tls = match handshake.await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => {
                        tracing::debug!(%peer, error = %err, "tls handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "tls handshake timed out");
                        return;
                    }
                };
                let http2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let watch = watchdog::ConnWatch::new(
                    limits.header_timeout,
                    limits.keepalive_timeout,
                    http2,
                );
                let io = watchdog::WatchedIo::new(tls, Arc::clone(&watch));
                let marks = Arc::clone(&watch);
                let service =
                    service_fn(move |mut req: Request<Incoming>| {
                        req.extensions_mut().insert(local);
                        let mark = marks.begin();
                        let response = handler(req, peer);
                        async move {
                            let response = response.await?;
                            Ok::<_, Infallible>(response.map(|body| {
                                metered::MeteredBody::new(body).guard(mark).boxed_unsync()
                            }))
                        }
                    });
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                tokio::select! {
                    served = watcher.0.watch(conn.into_owned()) => {
                        if let Err(err) = served {
                            tracing::debug!(%peer, error = %err, "https connection error");
                        }
                    }
                    why = watch.expired() => {
                        tracing::debug!(%peer, reason = ?why, "closing visitor connection");
                    }
                }
            }
        },
    )
    .await;
}
