//! The inter-node link: HTTP/2 over mutual TLS (see `super::tls`), one
//! connection per pair of nodes, reused by everything. Each forwarded unit
//! (one HTTP request, one WebSocket, one TCP connection) is one HTTP/2
//! CONNECT stream, carrying bytes both ways; its headers say what it
//! carries and for whom. Streams are read through spools on both ends
//! ([`crate::pipe::spooled`]), so a slow reader never holds the
//! connection's flow-control window and cannot stall the other streams.
//!
//! Plain HTTP/2 requests on the link serve the operator's cluster-wide
//! views (a node's tunnels, closing one), see `super::serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::tls::{LinkTls, LINK_NAME};
use crate::http::Body;
use crate::pipe::spool::Budget;
use crate::pipe::spooled::Spooled;
use crate::tunnel::directory::{Carry, Forwarded};
use crate::tunnel::ByteStream;

/// HTTP/2 stream window: one SSH window's worth (streams are drained into
/// spools, so this bounds memory in flight, not throughput).
pub const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// HTTP/2 connection window: room for many streams at full speed.
pub const CONNECTION_WINDOW: u32 = 64 * 1024 * 1024;
/// HTTP/2 pings on an idle link, and how long an answer may take: a dead
/// peer is noticed within both.
pub const PING_EVERY: Duration = Duration::from_secs(10);
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a TCP connect, TLS and HTTP/2 handshake to a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a peer to accept a stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off after a failed connect: doubles per failure, up to the max.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Header names of a link stream.
pub mod header {
    /// What the stream carries: `http`, `https` or `raw`.
    pub const CARRY: &str = "burrow-carry";
    /// The registry key the stream is for.
    pub const KEY: &str = "burrow-key";
    /// The visitor's real address.
    pub const VISITOR: &str = "burrow-visitor";
    /// The address the visitor connected to.
    pub const LOCAL: &str = "burrow-local";
    /// The node that opened the stream.
    pub const FROM: &str = "burrow-from";
}

/// Why a stream to a peer could not be opened, in words for the page the
/// visitor gets and the log.
#[derive(Debug)]
pub struct LinkError(pub String);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a stream did not open.
#[derive(Debug)]
pub enum StreamError {
    /// The link failed (connect, TLS, HTTP/2): the node may be down.
    Link(LinkError),
    /// The node works, but what the stream was for did not open there (a
    /// raw connection's client could not reach its app): the node's words.
    Refused(String),
}

/// The status a node answers a raw stream with when it could not open the
/// connection on its side; the body says why.
pub const REFUSED: StatusCode = StatusCode::BAD_GATEWAY;

/// Where a peer's link listens, and which incarnation of the peer is
/// there: a restarted node (a new incarnation, often at the same address)
/// gets a new connection at once, without the old one's back-off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: String,
    pub incarnation: u64,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// One peer's connection, and its back-off after failures.
#[derive(Default)]
struct Peer {
    sender: Option<SendRequest<Body>>,
    /// Where the sender connects; another endpoint means a new connection.
    at: Endpoint,
    failures: u32,
    retry_at: Option<Instant>,
    /// The last failure was logged (logged once until it works again).
    logged: bool,
}

/// The client side: streams to other nodes.
pub struct Links {
    tls: tokio_rustls::TlsConnector,
    me: String,
    peers: Peers,
    /// Connections are being made (one at a time per peer).
    connecting: tokio::sync::Mutex<()>,
    spool: Arc<Budget>,
}

impl Links {
    pub fn new(tls: &LinkTls, me: &str, spool: Arc<Budget>) -> Links {
        Links {
            tls: tokio_rustls::TlsConnector::from(Arc::clone(&tls.client)),
            me: me.to_string(),
            peers: Peers::default(),
            connecting: tokio::sync::Mutex::new(()),
            spool,
        }
    }

    /// Opens a stream to `node` (its link at `at`) for `key`.
    pub async fn open(
        &self,
        node: &str,
        at: &Endpoint,
        key: &str,
        forwarded: Forwarded,
    ) -> Result<ByteStream, StreamError> {
        let opened = tokio::time::timeout(OPEN_TIMEOUT, self.try_open(node, at, key, forwarded));
        match opened.await {
            Ok(result) => result,
            Err(_) => Err(StreamError::Link(LinkError(format!(
                "node {node} did not accept the stream within {}",
                crate::limits::human(OPEN_TIMEOUT)
            )))),
        }
    }

    async fn try_open(
        &self,
        node: &str,
        at: &Endpoint,
        key: &str,
        forwarded: Forwarded,
    ) -> Result<ByteStream, StreamError> {
        let mut sender = self.sender(node, at).await.map_err(StreamError::Link)?;
        let request = connect_request(&self.me, key, forwarded);
        let response = sender.send_request(request).await.map_err(|err| {
            self.peers.forget(node);
            StreamError::Link(LinkError(format!("the link to node {node} broke: {err}")))
        })?;
        if response.status() == REFUSED {
            let body = response.into_body().collect().await;
            let why = body.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(StreamError::Refused(
                String::from_utf8_lossy(&why).into_owned(),
            ));
        }
        if response.status() != StatusCode::OK {
            return Err(StreamError::Link(LinkError(format!(
                "node {node} refused the stream ({})",
                response.status()
            ))));
        }
        let upgraded = hyper::upgrade::on(response).await.map_err(|err| {
            StreamError::Link(LinkError(format!("node {node}: stream failed: {err}")))
        })?;
        let stream = Spooled::new(TokioIo::new(upgraded), Arc::clone(&self.spool));
        Ok(Box::new(stream))
    }

    /// Sends a plain request (the operator's views) to `node`.
    pub async fn request(
        &self,
        node: &str,
        at: &Endpoint,
        request: Request<Body>,
    ) -> Result<(StatusCode, Bytes), LinkError> {
        let mut sender = self.sender(node, at).await?;
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(OPEN_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => {
                self.peers.forget(node);
                Err(LinkError(format!("the link to node {node} broke: {err}")))
            }
            Err(_) => Err(LinkError(format!("node {node} did not answer"))),
        }
    }

    /// A ready connection to `node`, made if needed (one at a time; failed
    /// peers are not dialled again before their back-off is over).
    async fn sender(&self, node: &str, at: &Endpoint) -> Result<SendRequest<Body>, LinkError> {
        if let Some(sender) = self.peers.ready(node, at)? {
            return Ok(sender);
        }
        let _one = self.connecting.lock().await;
        if let Some(sender) = self.peers.ready(node, at)? {
            return Ok(sender);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&at.addr)).await {
            Ok(Ok(sender)) => {
                self.peers.connected(node, at, sender.clone());
                Ok(sender)
            }
            Ok(Err(err)) => Err(self.peers.failed(node, at, err)),
            Err(_) => Err(self.peers.failed(node, at, "no answer within 3 s".into())),
        }
    }

    async fn connect(&self, addr: &str) -> Result<SendRequest<Body>, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(LinkTls::server_name(), tcp)
            .await
            .map_err(|e| format!("TLS with {addr} failed (another cluster secret?): {e}"))?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .keep_alive_interval(PING_EVERY)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 with {addr} failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "cluster link connection ended");
            }
        });
        Ok(sender)
    }
}

/// Every peer's connection and back-off, by node id.
#[derive(Default)]
struct Peers(Mutex<HashMap<String, Peer>>);

impl Peers {
    /// The current connection to `node` if it can take a stream; `Err`
    /// while the peer is backing off.
    fn ready(&self, node: &str, at: &Endpoint) -> Result<Option<SendRequest<Body>>, LinkError> {
        let peers = self.0.lock().expect("peers lock");
        let Some(peer) = peers.get(node).filter(|p| p.at == *at) else {
            return Ok(None);
        };
        if let Some(sender) = peer.sender.as_ref().filter(|s| s.is_ready()) {
            return Ok(Some(sender.clone()));
        }
        if let Some(retry_at) = peer.retry_at.filter(|at| Instant::now() < *at) {
            let wait = retry_at.saturating_duration_since(Instant::now());
            return Err(LinkError(format!(
                "the link to node {node} ({at}) is down; retrying in {}",
                crate::limits::human(wait)
            )));
        }
        Ok(None)
    }

    fn connected(&self, node: &str, at: &Endpoint, sender: SendRequest<Body>) {
        let mut peers = self.0.lock().expect("peers lock");
        let peer = peers.entry(node.to_string()).or_default();
        if peer.logged {
            tracing::info!(node, addr = %at, "cluster link up again");
        }
        *peer = Peer {
            sender: Some(sender),
            at: at.clone(),
            ..Peer::default()
        };
    }

    /// Records a failed connect: back-off, one log line until it works.
    fn failed(&self, node: &str, at: &Endpoint, why: String) -> LinkError {
        crate::counters::COUNTERS.link_error();
        let mut peers = self.0.lock().expect("peers lock");
        let peer = peers.entry(node.to_string()).or_default();
        if peer.at != *at {
            *peer = Peer {
                at: at.clone(),
                ..Peer::default()
            };
        }
        peer.sender = None;
        peer.failures += 1;
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << peer.failures.min(6))
            .min(BACKOFF_MAX);
        peer.retry_at = Some(Instant::now() + backoff);
        if !peer.logged {
            peer.logged = true;
            tracing::warn!(node, addr = %at, error = %why, "cluster link down");
        }
        LinkError(format!("the link to node {node} failed: {why}"))
    }

    /// Drops a connection that broke, so the next stream makes a new one.
    fn forget(&self, node: &str) {
        crate::counters::COUNTERS.link_error();
        if let Some(peer) = self.0.lock().expect("peers lock").get_mut(node) {
            peer.sender = None;
        }
    }
}

/// The CONNECT request that opens a stream for `key` (`pub(crate)` for
/// `crate::fuzzing`'s write → read round trip).
pub(crate) fn connect_request(me: &str, key: &str, forwarded: Forwarded) -> Request<Body> {
    let carry = match forwarded.carry {
        Carry::Http { https: true } => "https",
        Carry::Http { https: false } => "http",
        Carry::Raw => "raw",
    };
    let value = |text: String| HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
    Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{LINK_NAME}:443"))
        .header(header::CARRY, carry)
        .header(header::KEY, value(key.to_string()))
        .header(header::VISITOR, value(forwarded.visitor.to_string()))
        .header(header::LOCAL, value(forwarded.local.to_string()))
        .header(header::FROM, value(me.to_string()))
        .body(empty())
        .expect("a valid CONNECT request")
}

/// What the receiving end reads from a stream's CONNECT request (any body
/// type: only the headers are read).
pub fn forwarded_of<B>(request: &Request<B>) -> Option<(String, Forwarded)> {
    let get = |name: &str| request.headers().get(name)?.to_str().ok();
    let carry = match get(header::CARRY)? {
        "https" => Carry::Http { https: true },
        "http" => Carry::Http { https: false },
        "raw" => Carry::Raw,
        _ => return None,
    };
    let visitor: SocketAddr = get(header::VISITOR)?.parse().ok()?;
    let local: SocketAddr = get(header::LOCAL)?.parse().ok()?;
    let key = get(header::KEY)?.to_string();
    Some((
        key,
        Forwarded {
            carry,
            visitor,
            local,
        },
    ))
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The operator's views another node asks this one for.
pub trait Views: Send + Sync + 'static {
    /// This node's tunnels, as the admin API's JSON array.
    fn tunnels(&self) -> Vec<u8>;
    /// Closes this node's clients of `name`; how many there were.
    fn close(&self, name: &str) -> usize;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(incarnation: u64) -> Endpoint {
        Endpoint {
            addr: "127.0.0.2:7000".into(),
            incarnation,
        }
    }

    #[test]
    fn a_failing_peer_backs_off() {
        let peers = Peers::default();
        assert!(matches!(peers.ready("b", &at(1)), Ok(None)), "dial");
        peers.failed("b", &at(1), "refused".into());
        let err = peers.ready("b", &at(1)).expect_err("backing off");
        assert!(err.0.contains("retrying in"), "{err}");
    }

    /// A restarted node (a new incarnation at the same address) is dialled
    /// at once, without the back-off its dead incarnation earned.
    #[test]
    fn a_new_incarnation_starts_without_the_old_ones_back_off() {
        let peers = Peers::default();
        for _ in 0..6 {
            peers.failed("b", &at(1), "refused".into());
        }
        assert!(peers.ready("b", &at(1)).is_err(), "the dead one backs off");
        assert!(
            matches!(peers.ready("b", &at(2)), Ok(None)),
            "dial the new one"
        );
        peers.failed("b", &at(2), "refused".into());
        peers
            .ready("b", &at(2))
            .expect_err("its own back-off, from the start");
    }
}
