//! Sending a request to a tunnel's app: over an idle keep-alive connection
//! from the tunnel's [`Pool`](super::pool::Pool), or over a fresh HTTP/1.1 connection on a new
//! stream through the tunnel's client; another client of the same key
//! stands in when one fails to open a stream.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::pool::{Lent, Pools, Sender};
use super::{pages, Body};
use crate::counters::COUNTERS;
use crate::tunnel::options::ProxyHeader;
use crate::tunnel::{OpenError, Registry, Tunnel};

/// Why a request got no response from the local app.
pub enum SendError {
    /// No stream to the app (refused, timed out, connection gone).
    Open(OpenError),
    /// The app (or the stream) failed before answering.
    Failed(hyper::Error),
}

/// Sends the request over a pooled keep-alive connection, or a new one.
/// With the response comes the connection, lent out until the response
/// body has been read to its end (then [`Lent::give_back`]).
///
/// With `proxy=`, every request gets a fresh connection that starts with a
/// PROXY header naming its own visitor (a pooled one would name whoever
/// opened it). When the client fails to open a stream, another client of
/// the same key serving the name stands in (`--balance`).
///
/// A pooled connection can turn out to be closed by the app while it sat
/// idle. If that is found before the request went out, the request simply
/// goes over a fresh stream. If the app closed it just as the request was
/// written (no answer at all), a request without a body and with a safe
/// method is sent once more over a fresh stream, as nginx does; anything
/// else gets the error, since the app may have acted on it.
pub async fn send(
    (registry, pools): (&Registry, &Pools),
    tunnel: &Arc<Tunnel>,
    mut req: Request<Body>,
    visitor: SocketAddr,
    proxy: Option<(ProxyHeader, SocketAddr)>,
) -> Result<(Response<Incoming>, Option<Lent>), SendError> {
    let pooling = proxy.is_none();
    let mut tunnel = Arc::clone(tunnel);
    let mut pooled = if pooling {
        pools.of(&tunnel).take()
    } else {
        None
    };
    loop {
        let reused = pooled.is_some();
        let mut sender = match pooled.take() {
            Some(sender) => sender,
            None => match connect(&tunnel, visitor, proxy).await {
                Ok(sender) => sender,
                Err(SendError::Open(err)) => {
                    tunnel.mark_failing();
                    match registry.stand_in(&tunnel) {
                        Some(next) => {
                            tracing::debug!(subdomain = %tunnel.key(), conn = tunnel.conn(), error = ?err, "stream open failed; another client stands in");
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
                    COUNTERS.stream_reused();
                }
                let lent = pooling.then(|| pools.of(&tunnel).lend(sender)).flatten();
                return Ok((response, lent));
            }
            Err(mut err) => match (err.take_message(), replay) {
                (Some(unsent), _) if reused => req = unsent,
                (None, Some(copy)) if err.error().is_incomplete_message() => {
                    tracing::debug!(subdomain = %tunnel.key(), "pooled connection closed under the request; sending it again");
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

/// Opens a stream to the local app and starts an HTTP/1.1 connection on it.
async fn connect(
    tunnel: &Tunnel,
    visitor: SocketAddr,
    proxy: Option<(ProxyHeader, SocketAddr)>,
) -> Result<Sender, SendError> {
    let mut io = tunnel.open(visitor).await.map_err(SendError::Open)?;
    if let Some((version, local)) = proxy {
        use tokio::io::AsyncWriteExt;
        let header = crate::forwarded::proxy_header(version, visitor, local);
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
