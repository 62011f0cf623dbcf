//! The cluster link's serving side: another node's visitors enter here,
//! and are served as this node's own. A forwarded HTTP request (a plain
//! HTTP/2 request of the link) or a stream carrying HTTP (an upgrade, or a
//! node that only knows streams) runs through this node's edge (so the
//! tunnel's options, limits, warning page and request log apply here,
//! where its client is), a raw stream through its relays; other plain
//! requests answer the operator's cluster-wide views.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::Edge;
use crate::cluster::link::{
    self, Views, CONNECTION_WINDOW, MAX_HEADER_LIST, PING_EVERY, PING_TIMEOUT, REQUESTS_PATH,
    STREAM_WINDOW,
};
use crate::http::{Body, LocalAddr, Scheme};
use crate::pipe::relay::{Relays, Upstream};
use crate::pipe::spool::Budget;
use crate::pipe::spooled::Spooled;
use crate::shutdown::Shutdown;
use crate::tunnel::directory::{Carry, Forwarded};

/// Longest a peer's TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the link's server works with.
pub struct LinkServer {
    pub tls: Arc<rustls::ServerConfig>,
    pub edge: Arc<Edge>,
    pub relays: Arc<Relays>,
    pub views: Arc<dyn Views>,
    pub spool: Arc<Budget>,
    pub shutdown: Shutdown,
}

/// Serves the link until shutdown.
pub async fn serve(listener: TcpListener, server: Arc<LinkServer>) {
    let shutdown = server.shutdown.clone();
    crate::listen::accept_loop(
        &listener,
        "cluster link",
        shutdown.requested(),
        |socket, peer| {
            let server = Arc::clone(&server);
            shutdown.spawn(async move {
                if let Err(err) = server.connection(socket).await {
                    tracing::debug!(%peer, error = %err, "cluster link connection ended");
                }
            });
        },
    )
    .await;
}

impl LinkServer {
    /// One peer's connection: mutual TLS, then HTTP/2 until it ends (or
    /// shutdown's last phase).
    async fn connection(self: Arc<Self>, socket: TcpStream) -> anyhow::Result<()> {
        let acceptor = TlsAcceptor::from(Arc::clone(&self.tls));
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket))
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake timed out"))?
            .map_err(|e| anyhow::anyhow!("TLS handshake failed (another cluster secret?): {e}"))?;
        let me = Arc::clone(&self);
        // Boxed: hyper's h2 server moves each stream's service future into
        // a task of its own; the request path's state is large, a box is
        // a pointer.
        let service = service_fn(move |req| {
            let me = Arc::clone(&me);
            Box::pin(async move { Ok::<_, Infallible>(me.request(req).await) })
        });
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(None)
            .max_header_list_size(MAX_HEADER_LIST)
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .serve_connection(TokioIo::new(tls), service);
        tokio::select! {
            served = conn => served.map_err(Into::into),
            _ = self.shutdown.finishing() => Ok(()),
        }
    }

    /// A stream (CONNECT), a forwarded request, or one of the operator's
    /// views.
    async fn request(self: Arc<Self>, req: Request<Incoming>) -> Response<Body> {
        if req.method() == Method::CONNECT {
            return self.stream(req).await;
        }
        if req.headers().contains_key(link::header::CARRY) {
            return self.forwarded(req).await;
        }
        let path = req.uri().path().to_string();
        if path == REQUESTS_PATH {
            return answer(StatusCode::OK, Vec::new());
        }
        match (req.method().clone(), path.strip_prefix("/tunnels")) {
            (Method::GET, Some("")) => answer(StatusCode::OK, self.views.tunnels()),
            (Method::DELETE, Some(name)) if name.starts_with('/') => {
                let closed = self.views.close(&name[1..]);
                let body = serde_json::json!({ "closed": closed }).to_string();
                answer(StatusCode::OK, body.into_bytes())
            }
            _ => answer(StatusCode::NOT_FOUND, b"{}".to_vec()),
        }
    }

    /// A visitor's HTTP request another node forwarded as a request of
    /// the link: served as if the visitor had come here (this node's own
    /// tunnels only), as an HTTP/1.1 request like the visitor's was before
    /// requests travelled as requests. Its body is the link stream's own:
    /// no second parse, no copy.
    async fn forwarded(&self, mut req: Request<Incoming>) -> Response<Body> {
        let Some((_, forwarded)) = link::forwarded_of(&req) else {
            return answer(StatusCode::BAD_REQUEST, b"{}".to_vec());
        };
        let Carry::Http { https } = forwarded.carry else {
            return answer(StatusCode::BAD_REQUEST, b"{}".to_vec());
        };
        link::strip_headers(req.headers_mut());
        *req.version_mut() = Version::HTTP_11;
        req.extensions_mut()
            .insert(LocalAddr(Some(forwarded.local)));
        let scheme = if https { Scheme::Https } else { Scheme::Http };
        self.edge.request_here(req, forwarded.visitor, scheme).await
    }

    /// Accepts a stream and serves it in its own task. A raw connection's
    /// client is reached first, so that its failure is the answer (the
    /// node that asked passes it on, e.g. as an SSH open failure).
    async fn stream(self: Arc<Self>, mut req: Request<Incoming>) -> Response<Body> {
        let Some((key, forwarded)) = link::forwarded_of(&req) else {
            return answer(StatusCode::BAD_REQUEST, b"{}".to_vec());
        };
        let (visitor, local) = (forwarded.visitor, forwarded.local);
        let serve = match forwarded.carry {
            Carry::Raw => match self.relays.connect_here(&key, visitor).await {
                Ok(upstream) => Serve::Raw(upstream),
                Err(why) => return answer(link::REFUSED, why.to_string().into_bytes()),
            },
            Carry::Http { https } => Serve::Http { https },
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let tasks = self.shutdown.clone();
        tasks.spawn(async move {
            let upgraded = match upgrade.await {
                Ok(upgraded) => upgraded,
                Err(err) => {
                    tracing::debug!(error = %err, "cluster stream did not open");
                    return;
                }
            };
            let stream = Spooled::new(TokioIo::new(upgraded), Arc::clone(&self.spool));
            match serve {
                Serve::Raw(upstream) => {
                    let relays = &self.relays;
                    relays.relay(upstream, stream, &[], visitor, local).await;
                }
                Serve::Http { https } => self.http(stream, forwarded, https).await,
            }
        });
        answer(StatusCode::OK, Vec::new())
    }

    /// Serves HTTP/1.1 requests from a stream as if the visitor had come
    /// here: this node's own tunnels only (a forwarded request is never
    /// forwarded again).
    async fn http(
        &self,
        stream: Spooled<TokioIo<hyper::upgrade::Upgraded>>,
        forwarded: Forwarded,
        https: bool,
    ) {
        let edge = Arc::clone(&self.edge);
        let scheme = if https { Scheme::Https } else { Scheme::Http };
        let local = LocalAddr(Some(forwarded.local));
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(local);
            let edge = Arc::clone(&edge);
            async move { Ok::<_, Infallible>(edge.request_here(req, forwarded.visitor, scheme).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "forwarded HTTP stream ended");
        }
    }
}

/// How an accepted stream is served.
enum Serve {
    /// Relayed to the client already reached.
    Raw(Upstream),
    /// HTTP/1.1 requests for this node's own tunnels.
    Http { https: bool },
}

fn answer(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}
