//! The HTTP side: accept loops shared by every HTTP listener (the :80
//! redirector, the :443 proxy, the stats endpoint) and the body type they
//! answer with.
//!
//! - [`redirect`]: plain HTTP → 301 to HTTPS.
//! - [`proxy`]: HTTPS requests → the tunnel's SSH client → the local app.
//! - [`pages`]: the small pages burrow answers with itself.

pub mod pages;
pub mod proxy;
pub mod redirect;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::shutdown::Shutdown;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body every handler answers with: a generated page or a proxied stream.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Time a client gets to send a complete request head (slow-loris guard).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client gets to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until shutdown, hands each one to `serve`, then lets
/// open connections finish gracefully (the caller bounds how long).
async fn accept_loop<F, Fut>(listener: TcpListener, shutdown: Shutdown, name: &str, serve: F)
where
    F: Fn(TcpStream, SocketAddr, GracefulShutdownWatcher) -> Fut,
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
        shutdown.spawn(serve(
            stream,
            peer,
            GracefulShutdownWatcher(graceful.watcher()),
        ));
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Lets a connection task register itself for graceful shutdown.
pub struct GracefulShutdownWatcher(hyper_util::server::graceful::Watcher);

/// Serves plain HTTP/1.1 (the redirector and the stats endpoint).
pub async fn serve_plain<H, Fut>(listener: TcpListener, shutdown: Shutdown, handler: H)
where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    accept_loop(listener, shutdown, "http", move |stream, peer, watcher| {
        let handler = handler.clone();
        async move {
            let service = service_fn(move |req| handler(req, peer));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = watcher.0.watch(conn).await {
                tracing::debug!(%peer, error = %err, "http connection error");
            }
        }
    })
    .await;
}

/// Serves HTTPS (HTTP/1.1 with upgrades, and HTTP/2) with `handler`.
pub async fn serve_tls<H, Fut>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: Shutdown,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let acceptor = TlsAcceptor::from(tls);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    accept_loop(listener, shutdown, "https", move |stream, peer, watcher| {
        let handler = handler.clone();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        async move {
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
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
            let service = service_fn(move |req| handler(req, peer));
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(err) = watcher.0.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %err, "https connection error");
            }
        }
    })
    .await;
}
