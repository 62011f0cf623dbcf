//! The HTTPS listener: TCP accepted, an SSH client handed to the SSH
//! server (`--ssh-on-https`), the ClientHello read and routed by SNI
//! (passthrough, terminate, or refuse), TLS terminated with rustls
//! (HTTP/1.1 with upgrades, or HTTP/2 by ALPN), and each request handed to
//! [`Edge::request`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::router::TlsRoute;
use super::{sni, Edge};
use crate::http::metered::MeteredBody;
use crate::http::watchdog::{ConnWatch, WatchedIo};
use crate::http::{accept_loop, HeldForOptions, LocalAddr, Scheme};
use crate::pipe::rewind::Rewind;

/// Serves HTTPS (HTTP/1.1 with upgrades, and HTTP/2) until shutdown. Each
/// connection's SNI is read first ([`super::sni`]): `tls=passthrough`
/// tunnels get the raw bytes, names outside the domain an alert.
/// Terminated connections run next to a [`ConnWatch`] that
/// enforces the header and keep-alive timeouts.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, edge: Arc<Edge>) {
    let limits = edge.conn_limits.clone();
    let shutdown = edge.shutdown.clone();
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
            let acceptor = acceptor.clone();
            let builder = builder.clone();
            let limits = limits.clone();
            let edge = Arc::clone(&edge);
            async move {
                let local = LocalAddr::of(&stream);
                let Some(stream) = ssh_or_tls(&edge, stream, peer).await else {
                    return;
                };
                let Some((stream, held)) = route_by_sni(&edge, stream, peer).await else {
                    return;
                };
                // The handshake's wait for the options is the first
                // request's.
                let held = std::sync::Mutex::new(Some(HeldForOptions(held)));
                // A fresh limit: routing may have waited for a new tunnel.
                let handshake =
                    tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream));
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
                let watch = ConnWatch::new(limits.header_timeout, limits.keepalive_timeout, http2);
                let io = WatchedIo::new(tls, Arc::clone(&watch));
                let marks = Arc::clone(&watch);
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(local);
                    if let Some(held) = held.lock().ok().and_then(|mut h| h.take()) {
                        req.extensions_mut().insert(held);
                    }
                    let mark = marks.begin();
                    let edge = Arc::clone(&edge);
                    async move {
                        let response = edge.request(req, peer, Scheme::Https).await;
                        Ok::<_, Infallible>(
                            response.map(|body| MeteredBody::new(body).guard(mark).boxed_unsync()),
                        )
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

/// With `--ssh-on-https`, tells an SSH client from a TLS one by the first
/// byte, without consuming it: an SSH identification line starts with
/// `S` (`SSH-2.0-…`, RFC 4253 §4.2), a TLS record with 0x16. SSH clients
/// go to the SSH server (`None` here); TLS ones come back. A client that
/// sends nothing is cut by the handshake timeout, as before.
async fn ssh_or_tls(edge: &Edge, stream: TcpStream, peer: SocketAddr) -> Option<TcpStream> {
    let Some(ssh) = &edge.ssh else {
        return Some(stream);
    };
    let mut first = [0u8; 1];
    let limit = edge.conn_limits.tls_handshake_timeout;
    match tokio::time::timeout(limit, stream.peek(&mut first)).await {
        Ok(Ok(n)) => match sniff(&first[..n.min(1)]) {
            Sniffed::Ssh => {
                if !ssh.give(stream, peer) {
                    tracing::warn!(%peer, "SSH on the HTTPS port: the SSH server is not taking connections");
                }
                None
            }
            Sniffed::Tls => Some(stream),
            Sniffed::Closed => None,
        },
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "https connection failed before its first byte");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "tls handshake timed out");
            None
        }
    }
}

/// What the first bytes on :443 are, with `--ssh-on-https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// `S`: an SSH identification line (`SSH-2.0-…`).
    Ssh,
    /// Anything else goes to TLS, whose ClientHello reader refuses what is
    /// not a TLS record (0x16).
    Tls,
    /// Nothing: the connection closed before its first byte.
    Closed,
}

/// The decision of [`ssh_or_tls`] on the bytes peeked (pure, so the fuzz
/// target `sniff` can check it).
pub fn sniff(peeked: &[u8]) -> Sniffed {
    match peeked.first() {
        Some(b'S') => Sniffed::Ssh,
        Some(_) => Sniffed::Tls,
        None => Sniffed::Closed,
    }
}

/// Reads the ClientHello and acts on its SNI. Returns the stream (with the
/// hello replayed) when TLS is to be terminated here, and how long routing
/// held it for a new tunnel's options; `None` when the connection was
/// relayed, refused, or broke off.
async fn route_by_sni(
    edge: &Edge,
    mut stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Rewind<TcpStream>, Duration)> {
    let read = sni::read_client_hello(&mut stream);
    let limit = edge.conn_limits.tls_handshake_timeout;
    let hello = match tokio::time::timeout(limit, read).await {
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
    let (route, held) = edge.router.tls(hello.server_name.as_deref()).await;
    match route {
        TlsRoute::Terminate => Some((Rewind::new(hello.bytes, stream), held)),
        TlsRoute::TerminateCustom(name) => {
            // The bound name's certificate may still be on its way.
            let certs = &edge.custom.certs;
            certs
                .wait_ready(&name, crate::custom::certs::CERT_WAIT)
                .await;
            Some((Rewind::new(hello.bytes, stream), held))
        }
        TlsRoute::Reject => {
            tracing::debug!(%peer, sni = ?hello.server_name, "tls for a name outside the domain refused");
            sni::reject(&mut stream).await;
            None
        }
        TlsRoute::Passthrough(name) => {
            let local = stream.local_addr().unwrap_or(edge.proxy.https_addr());
            let relays = &edge.relays;
            relays
                .serve_visitor(&name, stream, &hello.bytes, peer, local)
                .await;
            None
        }
    }
}
