//! The inter-node link: HTTP/2 over mutual TLS (see `super::tls`), one
//! connection per pair of nodes, reused by everything.
//!
//! - A visitor's HTTP request (no upgrade) is one plain HTTP/2 request on
//!   the link ([`Links::send`]): the visitor's method, URI and headers,
//!   plus headers saying for whom ([`header`]; a visitor's own copies of
//!   them are replaced here); the answer is the owner's response, its
//!   body read through a spool ([`crate::pipe::spooled_body`]).
//! - Everything else (a WebSocket or other upgrade, one TCP connection, a
//!   passed-through TLS connection) is one HTTP/2 CONNECT stream carrying
//!   bytes both ways ([`Links::open`]), read through spools on both ends
//!   ([`crate::pipe::spooled`]).
//!
//! Either way a slow reader never holds the connection's flow-control
//! window and cannot stall the other streams. A peer that only knows
//! streams (an older version: it answers the probe [`REQUESTS_PATH`] with
//! 404) gets requests on streams too.
//!
//! Other plain HTTP/2 requests serve the operator's cluster-wide views (a
//! node's tunnels, closing one), see `crate::edge::link`.

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
use crate::pipe::spooled_body::SpooledBody;
use crate::tunnel::directory::{Carry, Forwarded, Sent};
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
/// Longest wait for a peer to answer on the link (a connection for a
/// request, or an operator's view).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest header block on the link, either way: a visitor's headers
/// (the edge bounds them, `--max-header-size`) plus the link's own.
pub const MAX_HEADER_LIST: u32 = 1024 * 1024;
/// Asked once per connection: a node that carries HTTP requests as
/// requests answers 200, an older one 404.
pub const REQUESTS_PATH: &str = "/link/requests";
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

    /// Every one of them: a visitor's copies never cross the link, and
    /// the serving node removes them before the request goes on.
    pub const ALL: [&str; 5] = [CARRY, KEY, VISITOR, LOCAL, FROM];
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
    sender: Option<Sender>,
    /// Where the sender connects; another endpoint means a new connection.
    at: Endpoint,
    failures: u32,
    retry_at: Option<Instant>,
    /// The last failure was logged (logged once until it works again).
    logged: bool,
}

/// A connection to a peer, and whether the peer takes HTTP requests as
/// requests (else only streams).
#[derive(Clone)]
struct Sender {
    send: SendRequest<Body>,
    requests: bool,
}

/// The client side: streams to other nodes.
pub struct Links {
    tls: tokio_rustls::TlsConnector,
    me: String,
    peers: Peers,
    /// Connections are being made (one at a time per peer).
    connecting: tokio::sync::Mutex<()>,
    spool: Arc<Budget>,
    /// Longest wait for a peer to accept a stream: the peer's own open of
    /// the client's stream (`--stream-open-timeout`, which answers first
    /// and says why) plus a connect.
    open_timeout: Duration,
}

impl Links {
    /// `stream_open`: `--stream-open-timeout` (0: as long as it takes).
    pub fn new(tls: &LinkTls, me: &str, spool: Arc<Budget>, stream_open: Duration) -> Links {
        let open_timeout =
            crate::limits::zero_is_never(stream_open).saturating_add(CONNECT_TIMEOUT);
        Links {
            tls: tokio_rustls::TlsConnector::from(Arc::clone(&tls.client)),
            me: me.to_string(),
            peers: Peers::default(),
            connecting: tokio::sync::Mutex::new(()),
            spool,
            open_timeout,
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
        let opened =
            tokio::time::timeout(self.open_timeout, self.try_open(node, at, key, forwarded));
        match opened.await {
            Ok(result) => result,
            Err(_) => Err(StreamError::Link(LinkError(format!(
                "node {node} did not accept the stream within {}",
                crate::limits::human(self.open_timeout)
            )))),
        }
    }

    /// Sends a visitor's HTTP request for `key` to `node` as a request of
    /// its own; gives it back if `node` only takes streams. Only getting a
    /// connection is bounded here: the answer takes what the owner's proxy
    /// lets it take.
    pub async fn send(
        &self,
        node: &str,
        at: &Endpoint,
        key: &str,
        forwarded: Forwarded,
        mut request: Request<Body>,
    ) -> Result<Sent, StreamError> {
        let sender = match tokio::time::timeout(ANSWER_TIMEOUT, self.sender(node, at)).await {
            Ok(sender) => sender.map_err(StreamError::Link)?,
            Err(_) => {
                let why = format!("node {node} did not answer");
                return Err(StreamError::Link(LinkError(why)));
            }
        };
        if !sender.requests {
            return Ok(Sent::Unsupported(request));
        }
        set_headers(request.headers_mut(), &self.me, key, forwarded);
        let mut send = sender.send;
        match send.send_request(request).await {
            Ok(response) => {
                let spool = Arc::clone(&self.spool);
                Ok(Sent::Answered(response.map(|body| {
                    SpooledBody::new(body, spool)
                        .map_err(Into::into)
                        .boxed_unsync()
                })))
            }
            // The connection broke: the node (or the way to it) failed.
            Err(err) if send.is_closed() => {
                self.peers.forget(node);
                let why = format!("the link to node {node} broke: {err}");
                Err(StreamError::Link(LinkError(why)))
            }
            // Only this request failed (its body broke, or the node reset
            // it): the node works.
            Err(err) => Err(StreamError::Refused(format!("node {node}: {err}"))),
        }
    }

    async fn try_open(
        &self,
        node: &str,
        at: &Endpoint,
        key: &str,
        forwarded: Forwarded,
    ) -> Result<ByteStream, StreamError> {
        let mut sender = self.sender(node, at).await.map_err(StreamError::Link)?.send;
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
        let mut sender = self.sender(node, at).await?.send;
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
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
    async fn sender(&self, node: &str, at: &Endpoint) -> Result<Sender, LinkError> {
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

    async fn connect(&self, addr: &str) -> Result<Sender, String> {
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
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 with {addr} failed: {e}"))?;
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "cluster link connection ended");
            }
        });
        let requests = takes_requests(sender.clone())
            .await
            .map_err(|e| format!("HTTP/2 with {addr} failed: {e}"))?;
        if !requests {
            tracing::info!(
                addr,
                "cluster peer takes HTTP on streams only (an older version)"
            );
        }
        Ok(Sender {
            send: sender,
            requests,
        })
    }
}

/// Every peer's connection and back-off, by node id.
#[derive(Default)]
struct Peers(Mutex<HashMap<String, Peer>>);

impl Peers {
    /// The current connection to `node` if it can take a stream; `Err`
    /// while the peer is backing off.
    fn ready(&self, node: &str, at: &Endpoint) -> Result<Option<Sender>, LinkError> {
        let peers = self.0.lock().expect("peers lock");
        let Some(peer) = peers.get(node).filter(|p| p.at == *at) else {
            return Ok(None);
        };
        if let Some(sender) = peer.sender.as_ref().filter(|s| s.send.is_ready()) {
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

    fn connected(&self, node: &str, at: &Endpoint, sender: Sender) {
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

/// Whether the peer behind `sender` takes HTTP requests as requests.
async fn takes_requests(mut sender: SendRequest<Body>) -> Result<bool, hyper::Error> {
    let probe = Request::builder()
        .method(Method::GET)
        .uri(REQUESTS_PATH)
        .body(empty())
        .expect("a valid request");
    let response = sender.send_request(probe).await?;
    Ok(response.status() == StatusCode::OK)
}

/// The CONNECT request that opens a stream for `key` (`pub(crate)` for
/// `crate::fuzzing`'s write → read round trip).
pub(crate) fn connect_request(me: &str, key: &str, forwarded: Forwarded) -> Request<Body> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("{LINK_NAME}:443"))
        .body(empty())
        .expect("a valid CONNECT request");
    set_headers(request.headers_mut(), me, key, forwarded);
    request
}

/// States whom a stream or request is for, replacing any copies (a
/// visitor's request may come with its own).
fn set_headers(headers: &mut hyper::HeaderMap, me: &str, key: &str, forwarded: Forwarded) {
    let carry = match forwarded.carry {
        Carry::Http { https: true } => "https",
        Carry::Http { https: false } => "http",
        Carry::Raw => "raw",
    };
    let value = |text: String| HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static(""));
    strip_headers(headers);
    headers.insert(header::CARRY, HeaderValue::from_static(carry));
    headers.insert(header::KEY, value(key.to_string()));
    // The visitor's address and port change with every connection:
    // never indexed, so HPACK does not churn its table with them.
    let mut visitor = value(forwarded.visitor.to_string());
    visitor.set_sensitive(true);
    headers.insert(header::VISITOR, visitor);
    headers.insert(header::LOCAL, value(forwarded.local.to_string()));
    headers.insert(header::FROM, value(me.to_string()));
}

/// Removes the link's own headers (see [`header::ALL`]).
pub fn strip_headers(headers: &mut hyper::HeaderMap) {
    for name in header::ALL {
        headers.remove(name);
    }
}

/// What the receiving end reads from a stream's CONNECT request (or a
/// forwarded request's headers).
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
        let Err(err) = peers.ready("b", &at(1)) else {
            panic!("backing off");
        };
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
        assert!(
            peers.ready("b", &at(2)).is_err(),
            "its own back-off, from the start"
        );
    }

    /// A link peer that answers the probe with `probe` and any other
    /// request with the link headers it got, as `name=value|value …`.
    async fn peer(tls: &LinkTls, probe: StatusCode) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<_>| async move {
                        let status = match req.uri().path() {
                            REQUESTS_PATH => probe,
                            _ => StatusCode::OK,
                        };
                        let _: &hyper::body::Incoming = req.body();
                        let seen: Vec<String> = header::ALL
                            .iter()
                            .map(|name| {
                                let values: Vec<&str> = req
                                    .headers()
                                    .get_all(*name)
                                    .iter()
                                    .map(|v| v.to_str().unwrap_or("?"))
                                    .collect();
                                format!("{name}={}", values.join("|"))
                            })
                            .collect();
                        let mut response = hyper::Response::new(seen.join(" "));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Endpoint {
            addr,
            incarnation: 1,
        }
    }

    fn links(tls: &LinkTls) -> Links {
        let budget = Budget::new(crate::pipe::spool::SpoolLimits {
            memory_per_stream: 1 << 20,
            disk_per_stream: 0,
            memory_total: 1 << 24,
            disk_total: 0,
            dir: std::env::temp_dir(),
        });
        Links::new(tls, "node-a", budget, Duration::from_secs(10))
    }

    fn link_tls() -> (tempfile::TempDir, LinkTls) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        crate::store::secret::init(&file, false).unwrap();
        let secret = crate::store::secret::Secret::load(&file).unwrap();
        (dir, LinkTls::new(&secret).unwrap())
    }

    fn forwarded() -> Forwarded {
        Forwarded {
            carry: Carry::Http { https: true },
            visitor: "127.0.0.9:5000".parse().unwrap(),
            local: "127.0.0.2:443".parse().unwrap(),
        }
    }

    /// A visitor's request that brings the link's headers of its own.
    fn forged_request() -> Request<Body> {
        Request::builder()
            .uri("https://name.example.com/x")
            .header(header::VISITOR, "10.6.6.6:666")
            .header(header::VISITOR, "10.6.6.7:667")
            .header(header::CARRY, "raw")
            .header(header::KEY, "someone-else")
            .header(header::FROM, "node-9")
            .body(empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_visitors_link_headers_are_replaced_by_the_links_own() {
        let (_dir, tls) = link_tls();
        let at = peer(&tls, StatusCode::OK).await;
        let links = links(&tls);
        let sent = links
            .send("b", &at, "name", forwarded(), forged_request())
            .await;
        let Ok(Sent::Answered(response)) = sent else {
            panic!("the peer takes requests");
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let seen = String::from_utf8_lossy(&body);
        assert_eq!(
            seen,
            "burrow-carry=https burrow-key=name burrow-visitor=127.0.0.9:5000 \
             burrow-local=127.0.0.2:443 burrow-from=node-a"
        );
    }

    /// Version skew: a node that only knows streams answers the probe
    /// 404; the request comes back untouched, to go on a stream.
    #[tokio::test]
    async fn a_peer_that_only_takes_streams_gets_the_request_back() {
        let (_dir, tls) = link_tls();
        let at = peer(&tls, StatusCode::NOT_FOUND).await;
        let links = links(&tls);
        let request = Request::builder()
            .uri("https://name.example.com/x")
            .header("x-app", "1")
            .body(empty())
            .unwrap();
        let sent = links.send("b", &at, "name", forwarded(), request).await;
        let Ok(Sent::Unsupported(back)) = sent else {
            panic!("the old peer gets no request");
        };
        assert_eq!(back.uri(), "https://name.example.com/x");
        assert_eq!(back.headers()["x-app"], "1");
        assert!(header::ALL.iter().all(|h| !back.headers().contains_key(*h)));
    }
}
