//! Cluster link transport: HTTP/2 over mutual TLS against QUIC, measured.
//!
//! In cluster mode a visitor that reaches node A for a tunnel held on node B
//! is forwarded over one long-lived link between the two nodes, and every
//! forwarded unit (one HTTP request, one WebSocket, one TCP connection) is one
//! bidirectional byte stream on it. This benchmark measures the two candidate
//! transports for that link, both ends in this process on 127.0.0.1:
//!
//! - `h2`: HTTP/2 over TLS 1.3 on one TCP connection, hyper on both sides,
//!   one CONNECT stream per unit (`hyper::upgrade::on` on both ends);
//! - `h2direct`: the same HTTP/2 link driven with the h2 crate directly (the
//!   crate under hyper): one CONNECT stream per unit whose bytes go out with
//!   the request, without waiting for the 200 or hyper's upgrade machinery;
//! - `quic`: QUIC (quinn) on one UDP socket pair, one bidi stream per unit.
//!
//! Both use rustls with the aws-lc-rs provider and mutual authentication: a
//! throwaway cluster CA (rcgen) signs one certificate per node and each side
//! verifies the other's against that CA. Every stream starts with a 9-byte
//! head (operation, argument) that tells node B what to do with it.
//!
//! Measurements, per transport:
//! - a. open a stream, send 1 KiB, close the sending side, read the 1 KiB
//!   answer to its end; 64 such exchanges at once for `DURATION`:
//!   exchanges/s, p50/p99 latency, process CPU time (getrusage, both ends)
//!   per exchange;
//! - b. the same one at a time;
//! - c. `BULK_MIB` on one stream, node B to A ("down") and A to B ("up"):
//!   MiB/s and CPU per MiB;
//! - d. isolation: one stream whose reader does not read at all for
//!   `STALL_SECS` while 64 others run (a), stalled in each direction, with
//!   the tuned windows and with the libraries' defaults, against the same
//!   load without a stalled stream.
//!
//! ```sh
//! cargo bench --bench link_transport
//! ```
//!
//! Environment:
//! - `DURATION` — seconds per load measurement, a and b (default 5)
//! - `CONCURRENCY` — streams at once in a and d (default 64)
//! - `BULK_MIB` — size of each bulk transfer (default 100)
//! - `STALL_SECS` — how long the stalled stream goes unread (default 2)
//! - `ONLY` — `h2`, `h2direct` or `quic` to run one transport (default all)
//! - `STREAM_WINDOW`, `CONN_WINDOW` — the tuned receive windows in bytes
//!   (default 1 MiB and 32 MiB), applied to both transports
//! - `H2_MAX_FRAME` — the HTTP/2 maximum frame size both ends advertise in
//!   the tuned configuration (default 16384, the protocol's default)
//! - `UDP_BUFFER` — SO_RCVBUF and SO_SNDBUF of the QUIC sockets in the tuned
//!   configuration (default 4 MiB; the kernel caps it at net.core.rmem_max
//!   and net.core.wmem_max; 0 leaves the kernel's default)
//!
//! Prints progress on stderr and markdown tables on stdout. Not run by
//! `cargo test`: without cargo bench's `--bench` argument it only prints how
//! to run it.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{TransportConfig, VarInt};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Bytes of each exchange's request body and of its response.
const PAYLOAD: usize = 1024;
/// Write size of bulk transfers and of the stalled stream's writer.
const CHUNK: usize = 64 * 1024;
/// The name node B's certificate carries and node A checks.
const SERVER_NAME: &str = "node-b.link.test";
/// The name in node A's (client) certificate.
const CLIENT_NAME: &str = "node-a.link.test";
/// CONNECT target: HTTP/2 CONNECT needs an authority; node B ignores it.
const CONNECT_AUTHORITY: &str = "node-b.link.test:443";
/// ALPN of the HTTP/2 link (what a TLS terminator in front would route on).
const ALPN_H2: &[u8] = b"h2";
/// ALPN of the QUIC link: QUIC requires one; this names the link protocol.
const ALPN_QUIC: &[u8] = b"burrow-link/1";
/// Streams node B lets node A have open at once, both transports.
const MAX_STREAMS: u32 = 256;
/// Ceiling on any one exchange or transfer, so a wedged link ends the run
/// with an error instead of hanging it.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// Load run before the measured one on a fresh link (connection ramp-up,
/// allocator warm-up), not counted.
const WARMUP: Duration = Duration::from_secs(1);
/// How long the stalled stream's byte count must stay unchanged before its
/// windows count as full.
const FULL_QUIET: Duration = Duration::from_millis(150);
/// Ceiling on the wait for the stalled stream to fill its windows.
const FULL_TIMEOUT: Duration = Duration::from_secs(5);

/// Stream head, first byte: read the request to its end, answer `PAYLOAD` bytes.
const OP_EXCHANGE: u8 = 1;
/// Read to the end and answer with the byte count (8 bytes, big-endian).
const OP_SINK: u8 = 2;
/// Write the argument's number of bytes, then end the stream.
const OP_SOURCE: u8 = 3;
/// Do not read at all until the stall is released, then drop the stream.
const OP_HOLD: u8 = 4;
/// Length of the stream head: operation byte and a big-endian u64 argument.
const HEAD_LEN: usize = 9;

/// One exchange's whole request: head and `PAYLOAD` bytes, sent in one write.
static EXCHANGE_REQUEST: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut request = head(OP_EXCHANGE, PAYLOAD as u64).to_vec();
    request.resize(HEAD_LEN + PAYLOAD, b'q');
    request
});
/// What node B answers to an exchange.
static EXCHANGE_RESPONSE: [u8; PAYLOAD] = [b'r'; PAYLOAD];
/// The bytes bulk writers send, `CHUNK` at a time.
static CHUNK_BYTES: [u8; CHUNK] = [0xa5; CHUNK];

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "link_transport: a load benchmark, not a test; run it with \
             `cargo bench --bench link_transport`"
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("link_transport: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- settings

/// The transports under comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    /// HTTP/2 over mTLS, hyper client and server, CONNECT + upgrade.
    H2,
    /// HTTP/2 over mTLS, h2 crate client and server, CONNECT streams.
    H2Direct,
    /// QUIC with quinn, bidi streams.
    Quic,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::H2 => "HTTP/2 + mTLS, hyper CONNECT",
            Transport::H2Direct => "HTTP/2 + mTLS, h2 crate",
            Transport::Quic => "QUIC (quinn)",
        }
    }
}

/// Flow-control receive windows, the knob that decides isolation.
#[derive(Clone, Copy, Debug)]
struct Windows {
    /// Unread bytes one stream may have in flight towards its reader: bounds
    /// one stream's throughput (window / RTT) and what one stalled stream
    /// pins.
    stream: u32,
    /// Unread bytes all streams of the link together may have in flight:
    /// must exceed what stalled streams pin, or the link stops for everyone.
    connection: u32,
}

/// How one link is configured.
#[derive(Clone, Copy, Debug)]
struct LinkConfig {
    /// Receive windows both ends advertise; `None` leaves each library's
    /// defaults (hyper client 2 MiB/5 MiB, hyper server 1 MiB/1 MiB, quinn
    /// 1.25 MB per stream and no connection limit).
    windows: Option<Windows>,
    /// HTTP/2 SETTINGS_MAX_FRAME_SIZE both ends advertise; `None` leaves 16 KiB.
    h2_max_frame: Option<u32>,
    /// SO_RCVBUF/SO_SNDBUF of both QUIC sockets; `None` leaves the kernel's
    /// default (net.core.rmem_default, 208 KiB here), which a fast sender
    /// overflows: QUIC then sees loss where TCP would not.
    udp_buffer: Option<u32>,
    /// Whether node A presents its certificate (off only for the check that
    /// node B refuses an anonymous peer).
    client_cert: bool,
}

/// What the run measures and how long.
struct Settings {
    /// Length of each load measurement (a and b).
    duration: Duration,
    /// Exchanges in flight at once in (a) and (d).
    concurrency: usize,
    /// Bytes in each bulk transfer (c).
    bulk: u64,
    /// How long the stalled stream of (d) goes unread.
    stall: Duration,
    /// Transports to measure, in order.
    transports: Vec<Transport>,
    /// The tuned configuration (a, b, c and the tuned rows of d).
    tuned: LinkConfig,
}

impl Settings {
    fn from_env() -> Result<Self> {
        let transports = match std::env::var("ONLY").ok().as_deref() {
            None | Some("") => vec![Transport::H2, Transport::H2Direct, Transport::Quic],
            Some("h2") => vec![Transport::H2],
            Some("h2direct") => vec![Transport::H2Direct],
            Some("quic") => vec![Transport::Quic],
            Some(other) => bail!("ONLY={other}: expected h2, h2direct or quic"),
        };
        Ok(Settings {
            duration: Duration::from_secs_f64(env_num("DURATION", 5.0)?),
            concurrency: env_num("CONCURRENCY", 64.0)? as usize,
            bulk: env_num("BULK_MIB", 100.0)? as u64 * 1024 * 1024,
            stall: Duration::from_secs_f64(env_num("STALL_SECS", 2.0)?),
            transports,
            tuned: LinkConfig {
                windows: Some(Windows {
                    stream: env_num("STREAM_WINDOW", 1024.0 * 1024.0)? as u32,
                    connection: env_num("CONN_WINDOW", 32.0 * 1024.0 * 1024.0)? as u32,
                }),
                h2_max_frame: Some(env_num("H2_MAX_FRAME", 16384.0)? as u32),
                udp_buffer: match env_num("UDP_BUFFER", 4.0 * 1024.0 * 1024.0)? as u32 {
                    0 => None,
                    bytes => Some(bytes),
                },
                client_cert: true,
            },
        })
    }
}

fn env_num(name: &str, default: f64) -> Result<f64> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{name}={text:?} is not a number")),
        Err(_) => Ok(default),
    }
}

// ------------------------------------------------------------- mutual TLS

/// One node's certificate chain and private key.
struct NodeCert {
    /// Leaf only: the peer has the CA.
    chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER of the leaf's key.
    key: Vec<u8>,
}

impl NodeCert {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

/// The cluster's trust: one CA and the two nodes' certificates it signed.
struct Pki {
    /// The cluster CA both nodes trust, and nothing else.
    ca: CertificateDer<'static>,
    /// Node B, the accepting side of the link.
    server: NodeCert,
    /// Node A, the connecting side.
    client: NodeCert,
}

fn pki() -> Result<Pki> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    Ok(Pki {
        ca: ca_cert.der().clone(),
        server: node_cert(SERVER_NAME, &ca_cert, &ca_key)?,
        client: node_cert(CLIENT_NAME, &ca_cert, &ca_key)?,
    })
}

/// A node certificate usable both ways: every node accepts links and opens them.
fn node_cert(name: &str, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> Result<NodeCert> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, ca, ca_key)?;
    Ok(NodeCert {
        chain: vec![cert.der().clone()],
        key: key.serialize_der(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn cluster_roots(pki: &Pki) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.clone())?;
    Ok(Arc::new(roots))
}

/// Node B's TLS: TLS 1.3 only, a client certificate from the cluster CA required.
fn server_tls(pki: &Pki, alpn: &[u8]) -> Result<rustls::ServerConfig> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(cluster_roots(pki)?, provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server.chain.clone(), pki.server.key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// Node A's TLS: TLS 1.3 only, node B's certificate checked against the
/// cluster CA, and node A's own certificate presented (unless `client_cert`
/// is off, for the refusal check).
fn client_tls(pki: &Pki, alpn: &[u8], client_cert: bool) -> Result<rustls::ClientConfig> {
    let verifier =
        WebPkiServerVerifier::builder_with_provider(cluster_roots(pki)?, provider()).build()?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(verifier);
    let mut config = if client_cert {
        builder.with_client_auth_cert(pki.client.chain.clone(), pki.client.key())?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

// ------------------------------------------------------------------ links

/// One bidirectional byte stream on a link, on either transport.
enum Stream {
    /// An HTTP/2 CONNECT stream after its 200 response.
    H2(TokioIo<Upgraded>),
    /// An HTTP/2 stream driven with the h2 crate.
    H2Direct(H2Stream),
    /// A QUIC bidirectional stream.
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::H2(io) => Pin::new(io).poll_read(cx, buf),
            Stream::H2Direct(stream) => stream.poll_read(cx, buf),
            Stream::Quic { recv, .. } => Pin::new(recv).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::H2(io) => Pin::new(io).poll_write(cx, buf),
            Stream::H2Direct(stream) => stream.poll_write(cx, buf),
            Stream::Quic { send, .. } => AsyncWrite::poll_write(Pin::new(send), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::H2(io) => Pin::new(io).poll_flush(cx),
            // h2's connection task writes what `send_data` queued.
            Stream::H2Direct(_) => Poll::Ready(Ok(())),
            Stream::Quic { send, .. } => AsyncWrite::poll_flush(Pin::new(send), cx),
        }
    }

    /// Ends the sending direction: END_STREAM on HTTP/2, FIN on QUIC.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::H2(io) => Pin::new(io).poll_shutdown(cx),
            Stream::H2Direct(stream) => Poll::Ready(stream.end()),
            Stream::Quic { send, .. } => AsyncWrite::poll_shutdown(Pin::new(send), cx),
        }
    }
}

/// Node A's end of a link: opens streams.
enum Link {
    /// hyper's HTTP/2 client handle (cloned per request).
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    /// h2's client handle (cloned per request).
    H2Direct(h2::client::SendRequest<Bytes>),
    /// The QUIC connection to node B.
    Quic(quinn::Connection),
}

impl Link {
    async fn open(&self) -> Result<Stream> {
        match self {
            Link::H2(sender) => {
                let request = Request::builder()
                    .method(Method::CONNECT)
                    .uri(CONNECT_AUTHORITY)
                    .body(Empty::new())?;
                let mut response = sender.clone().send_request(request).await?;
                ensure!(
                    response.status() == StatusCode::OK,
                    "CONNECT answered {}",
                    response.status()
                );
                let upgraded = hyper::upgrade::on(&mut response).await?;
                Ok(Stream::H2(TokioIo::new(upgraded)))
            }
            Link::H2Direct(sender) => {
                let request = Request::builder()
                    .method(Method::CONNECT)
                    .uri(CONNECT_AUTHORITY)
                    .body(())?;
                let mut sender = sender.clone().ready().await?;
                // The stream's bytes follow the HEADERS at once; the 200 is
                // checked when node A first reads.
                let (response, send) = sender.send_request(request, false)?;
                Ok(Stream::H2Direct(H2Stream {
                    send,
                    recv: H2Recv::Response(response),
                    unread: Bytes::new(),
                    ended: false,
                }))
            }
            Link::Quic(connection) => {
                let (send, recv) = connection.open_bi().await?;
                Ok(Stream::Quic { send, recv })
            }
        }
    }
}

/// What node B shares with the benchmark (both run in this process).
#[derive(Default)]
struct Shared {
    /// Bytes node B's `OP_SOURCE` writers got accepted by the transport.
    sourced: AtomicU64,
    /// Ends every `OP_HOLD` stream and the benchmark's own stalled stream.
    release: CancellationToken,
    /// Set when node B saw node A's certificate after the handshake.
    saw_client_cert: AtomicBool,
}

/// Both ends of one link, ready for streams.
struct Pair {
    /// Node A's end.
    link: Arc<Link>,
    /// Node B's counters and the stall release.
    shared: Arc<Shared>,
    /// Node B's accept loop (and, through its `JoinSet`, its connections).
    _server: AbortOnDropHandle<()>,
    /// hyper's client connection task (HTTP/2 only).
    _driver: Option<AbortOnDropHandle<()>>,
}

impl Pair {
    async fn start(transport: Transport, pki: &Pki, config: LinkConfig) -> Result<Pair> {
        match transport {
            Transport::H2 | Transport::H2Direct => h2_pair(transport, pki, config).await,
            Transport::Quic => quic_pair(pki, config).await,
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.shared.release.cancel();
        if let Link::Quic(connection) = &*self.link {
            connection.close(VarInt::from_u32(0), b"done");
        }
    }
}

// ------------------------------------------------------ HTTP/2 over mTLS

async fn h2_pair(transport: Transport, pki: &Pki, config: LinkConfig) -> Result<Pair> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(Arc::new(server_tls(pki, ALPN_H2)?));
    let shared = Arc::new(Shared::default());
    let server = tokio::spawn(h2_accept(
        transport,
        listener,
        acceptor,
        config,
        shared.clone(),
    ));
    let tls = tls_connect(addr, client_tls(pki, ALPN_H2, config.client_cert)?).await?;
    let (link, driver) = match transport {
        Transport::H2 => hyper_client(tls, config).await?,
        _ => h2_client(tls, config).await?,
    };
    Ok(Pair {
        link: Arc::new(link),
        shared,
        _server: AbortOnDropHandle::new(server),
        _driver: Some(driver),
    })
}

/// Node A's TCP + TLS connection to node B (Nagle off: the link carries
/// interactive traffic).
async fn tls_connect(
    addr: SocketAddr,
    tls: rustls::ClientConfig,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await?)
}

async fn hyper_client(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    config: LinkConfig,
) -> Result<(Link, AbortOnDropHandle<()>)> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    if let Some(windows) = config.windows {
        builder
            .initial_stream_window_size(windows.stream)
            .initial_connection_window_size(windows.connection);
    }
    if let Some(frame) = config.h2_max_frame {
        builder.max_frame_size(frame);
    }
    let (sender, connection) = builder.handshake(TokioIo::new(tls)).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((Link::H2(sender), AbortOnDropHandle::new(driver)))
}

async fn h2_client(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
    config: LinkConfig,
) -> Result<(Link, AbortOnDropHandle<()>)> {
    let mut builder = h2::client::Builder::new();
    if let Some(windows) = config.windows {
        builder
            .initial_window_size(windows.stream)
            .initial_connection_window_size(windows.connection);
    }
    if let Some(frame) = config.h2_max_frame {
        builder.max_frame_size(frame);
    }
    let (sender, connection) = builder.handshake(tls).await?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok((Link::H2Direct(sender), AbortOnDropHandle::new(driver)))
}

/// Node B's HTTP/2 side: accepts TLS connections and serves CONNECT streams
/// on each, with hyper or with h2 as `transport` says.
async fn h2_accept(
    transport: Transport,
    listener: TcpListener,
    acceptor: TlsAcceptor,
    config: LinkConfig,
    shared: Arc<Shared>,
) {
    let mut connections = JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            // A refused handshake (no client certificate) ends here.
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            if tls.get_ref().1.peer_certificates().is_some() {
                shared.saw_client_cert.store(true, Ordering::Relaxed);
            }
            match transport {
                Transport::H2 => hyper_serve(tls, config, shared).await,
                _ => h2_serve(tls, config, shared).await,
            }
        });
    }
}

async fn hyper_serve(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    config: LinkConfig,
    shared: Arc<Shared>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_streams(MAX_STREAMS);
    if let Some(windows) = config.windows {
        builder
            .initial_stream_window_size(windows.stream)
            .initial_connection_window_size(windows.connection);
    }
    if let Some(frame) = config.h2_max_frame {
        builder.max_frame_size(frame);
    }
    let service =
        hyper::service::service_fn(move |request| hyper_connect_stream(request, shared.clone()));
    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
}

/// Answers one CONNECT with 200 and serves the stream once hyper hands it over.
async fn hyper_connect_stream(
    mut request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    if request.method() != Method::CONNECT {
        let mut refused = Response::new(Empty::new());
        *refused.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return Ok(refused);
    }
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            serve_stream(Stream::H2(TokioIo::new(upgraded)), shared).await;
        }
    });
    Ok(Response::new(Empty::new()))
}

async fn h2_serve(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    config: LinkConfig,
    shared: Arc<Shared>,
) {
    let mut builder = h2::server::Builder::new();
    builder.max_concurrent_streams(MAX_STREAMS);
    if let Some(windows) = config.windows {
        builder
            .initial_window_size(windows.stream)
            .initial_connection_window_size(windows.connection);
    }
    if let Some(frame) = config.h2_max_frame {
        builder.max_frame_size(frame);
    }
    let Ok(mut connection) = builder.handshake::<_, Bytes>(tls).await else {
        return;
    };
    // `accept` also drives the connection's I/O: keep calling it.
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        if request.method() != Method::CONNECT {
            let mut refused = Response::new(());
            *refused.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            let _ = respond.send_response(refused, true);
            continue;
        }
        let Ok(send) = respond.send_response(Response::new(()), false) else {
            continue;
        };
        let stream = H2Stream {
            send,
            recv: H2Recv::Body(request.into_body()),
            unread: Bytes::new(),
            ended: false,
        };
        tokio::spawn(serve_stream(Stream::H2Direct(stream), shared.clone()));
    }
}

/// The reading side of an h2 stream: node A first waits for the response.
enum H2Recv {
    /// Node A's stream before node B's response headers arrived.
    Response(h2::client::ResponseFuture),
    /// The peer's DATA frames.
    Body(h2::RecvStream),
}

/// One h2 stream as a byte stream. Flow control is by hand: received bytes
/// are handed back to the window (`release_capacity`) when the reader takes
/// them, and a write waits for send capacity, so an unread stream stops its
/// writer after one window, as with hyper's upgrade.
struct H2Stream {
    /// Where this side's DATA frames go.
    send: h2::SendStream<Bytes>,
    /// Where the peer's come from.
    recv: H2Recv,
    /// The rest of a DATA frame the reader's buffer could not take.
    unread: Bytes,
    /// END_STREAM sent: further shutdowns do nothing.
    ended: bool,
}

fn h2_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        error.into_io().expect("is_io")
    } else {
        io::Error::other(error)
    }
}

impl H2Stream {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.unread.is_empty() {
            let body = match &mut self.recv {
                H2Recv::Body(body) => body,
                H2Recv::Response(response) => {
                    let response = ready!(Pin::new(response).poll(cx)).map_err(h2_io)?;
                    if response.status() != StatusCode::OK {
                        return Poll::Ready(Err(io::Error::other(format!(
                            "CONNECT answered {}",
                            response.status()
                        ))));
                    }
                    self.recv = H2Recv::Body(response.into_body());
                    let H2Recv::Body(body) = &mut self.recv else {
                        unreachable!("just set")
                    };
                    body
                }
            };
            match ready!(body.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(h2_io(error))),
                Some(Ok(data)) => {
                    body.flow_control()
                        .release_capacity(data.len())
                        .map_err(h2_io)?;
                    self.unread = data;
                }
            }
        }
        let n = self.unread.len().min(buf.remaining());
        buf.put_slice(&self.unread.split_to(n));
        Poll::Ready(Ok(()))
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(error)) => return Poll::Ready(Err(h2_io(error))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn end(&mut self) -> io::Result<()> {
        if !self.ended {
            self.ended = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Ok(())
    }
}

// ------------------------------------------------------------------- QUIC

fn quic_transport(config: LinkConfig) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS));
    if let Some(windows) = config.windows {
        transport
            .stream_receive_window(VarInt::from_u32(windows.stream))
            .receive_window(VarInt::from_u32(windows.connection));
    }
    transport
}

/// A loopback UDP socket, its kernel buffers raised to `buffer` bytes if set.
fn udp_socket(buffer: Option<u32>) -> Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    if let Some(bytes) = buffer {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let value = bytes as libc::c_int;
        for option in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: a valid socket and a c_int option value of the right size.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    std::ptr::addr_of!(value).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error()).context("setting a UDP buffer size");
            }
        }
    }
    Ok(socket)
}

async fn quic_pair(pki: &Pki, config: LinkConfig) -> Result<Pair> {
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(
        server_tls(pki, ALPN_QUIC)?,
    )?));
    server_config.transport_config(Arc::new(quic_transport(config)));
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        udp_socket(config.udp_buffer)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    let addr = endpoint.local_addr()?;
    let shared = Arc::new(Shared::default());
    let server = tokio::spawn(quic_accept(endpoint, shared.clone()));

    let mut client_config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(
        client_tls(pki, ALPN_QUIC, config.client_cert)?,
    )?));
    client_config.transport_config(Arc::new(quic_transport(config)));
    let client = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        udp_socket(config.udp_buffer)?,
        Arc::new(quinn::TokioRuntime),
    )?;
    let connection = client
        .connect_with(client_config, addr, SERVER_NAME)?
        .await?;
    Ok(Pair {
        link: Arc::new(Link::Quic(connection)),
        shared,
        _server: AbortOnDropHandle::new(server),
        _driver: None,
    })
}

/// Node B's QUIC side: accepts connections and serves every bidi stream.
async fn quic_accept(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        connections.spawn(async move {
            // A refused handshake (no client certificate) ends here.
            let Ok(connection) = incoming.await else {
                return;
            };
            if connection.peer_identity().is_some() {
                shared.saw_client_cert.store(true, Ordering::Relaxed);
            }
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(serve_stream(Stream::Quic { send, recv }, shared.clone()));
            }
        });
    }
}

// ------------------------------------------------- node B's stream server

fn head(op: u8, arg: u64) -> [u8; HEAD_LEN] {
    let mut head = [0; HEAD_LEN];
    head[0] = op;
    head[1..].copy_from_slice(&arg.to_be_bytes());
    head
}

async fn serve_stream(mut stream: Stream, shared: Arc<Shared>) {
    // Errors here are node A resetting streams it is done with (the stall
    // teardown); node A reports anything that matters on its side.
    let _ = serve_op(&mut stream, &shared).await;
}

async fn serve_op(stream: &mut Stream, shared: &Shared) -> io::Result<()> {
    let mut head = [0; HEAD_LEN];
    stream.read_exact(&mut head).await?;
    let arg = u64::from_be_bytes(head[1..].try_into().expect("8 bytes"));
    match head[0] {
        OP_EXCHANGE => {
            tokio::io::copy(stream, &mut tokio::io::sink()).await?;
            stream.write_all(&EXCHANGE_RESPONSE).await?;
        }
        OP_SINK => {
            let received = read_all(stream).await?;
            stream.write_all(&received.to_be_bytes()).await?;
        }
        OP_SOURCE => write_bytes(stream, arg, &shared.sourced).await?,
        OP_HOLD => {
            shared.release.cancelled().await;
            return Ok(());
        }
        other => return Err(io::Error::other(format!("unknown operation {other}"))),
    }
    stream.shutdown().await
}

/// Writes `total` bytes, up to `CHUNK` at a time, counting every byte the
/// transport took (partial writes too: a stalled stream's last write is one).
async fn write_bytes(stream: &mut Stream, total: u64, counter: &AtomicU64) -> io::Result<()> {
    let mut left = total;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        let written = stream.write(&CHUNK_BYTES[..n]).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        counter.fetch_add(written as u64, Ordering::Relaxed);
        left -= written as u64;
    }
    Ok(())
}

/// Reads to the end of the stream into one reused buffer, returning the count.
async fn read_all(stream: &mut Stream) -> io::Result<u64> {
    let mut buf = vec![0; CHUNK];
    let mut total = 0;
    loop {
        match stream.read(&mut buf).await? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

// ----------------------------------------------- node A's measured steps

/// One exchange, timed from opening the stream to the end of the answer.
async fn exchange(link: &Link) -> Result<Duration> {
    let start = Instant::now();
    let mut stream = link.open().await?;
    stream.write_all(&EXCHANGE_REQUEST).await?;
    stream.shutdown().await?;
    let mut answer = Vec::with_capacity(PAYLOAD);
    stream.read_to_end(&mut answer).await?;
    ensure!(answer.len() == PAYLOAD, "answer of {} bytes", answer.len());
    Ok(start.elapsed())
}

/// Sends `bytes` to node B on one stream and waits for its count.
async fn upload(link: &Link, bytes: u64) -> Result<()> {
    let mut stream = link.open().await?;
    stream.write_all(&head(OP_SINK, 0)).await?;
    write_bytes(&mut stream, bytes, &AtomicU64::new(0)).await?;
    stream.shutdown().await?;
    let mut count = [0; 8];
    stream.read_exact(&mut count).await?;
    let received = u64::from_be_bytes(count);
    ensure!(
        received == bytes,
        "node B received {received} of {bytes} bytes"
    );
    Ok(())
}

/// Has node B send `bytes` on one stream and reads them all.
async fn download(link: &Link, bytes: u64) -> Result<()> {
    let mut stream = link.open().await?;
    stream.write_all(&head(OP_SOURCE, bytes)).await?;
    stream.shutdown().await?;
    let received = read_all(&mut stream).await?;
    ensure!(received == bytes, "received {received} of {bytes} bytes");
    Ok(())
}

/// Process CPU time (user + system) so far: both ends of the link.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// What one load run measured.
struct Load {
    /// Exchanges completed.
    exchanges: usize,
    /// From the start until the last worker's last exchange ended.
    elapsed: Duration,
    /// Process CPU time over `elapsed`.
    cpu: Duration,
    /// Every exchange's latency, sorted.
    latencies: Vec<Duration>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.exchanges as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((self.latencies.len() as f64 * p).ceil() as usize).max(1) - 1;
        self.latencies[rank.min(self.latencies.len() - 1)].as_secs_f64() * 1e3
    }

    fn cpu_per_exchange_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.exchanges as f64
    }
}

/// `concurrency` workers running exchanges back to back for `duration`.
async fn load(link: &Arc<Link>, concurrency: usize, duration: Duration) -> Result<Load> {
    let cpu_start = cpu_time();
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let link = link.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let latency = tokio::time::timeout(STEP_TIMEOUT, exchange(&link))
                    .await
                    .map_err(|_| anyhow!("an exchange took over {STEP_TIMEOUT:?}"))??;
                latencies.push(latency);
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(worker) = workers.join_next().await {
        latencies.extend(worker??);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(Load {
        exchanges: latencies.len(),
        elapsed,
        cpu: cpu_time() - cpu_start,
        latencies,
    })
}

/// One bulk transfer's rate and cost.
struct Bulk {
    mib_per_s: f64,
    cpu_ms_per_mib: f64,
}

async fn bulk(link: &Link, bytes: u64, down: bool) -> Result<Bulk> {
    let cpu_start = cpu_time();
    let start = Instant::now();
    let transfer = async {
        if down {
            download(link, bytes).await
        } else {
            upload(link, bytes).await
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, transfer)
        .await
        .map_err(|_| anyhow!("a bulk transfer took over {STEP_TIMEOUT:?}"))??;
    let mib = bytes as f64 / (1024.0 * 1024.0);
    Ok(Bulk {
        mib_per_s: mib / start.elapsed().as_secs_f64(),
        cpu_ms_per_mib: (cpu_time() - cpu_start).as_secs_f64() * 1e3 / mib,
    })
}

// -------------------------------------------------------------- isolation

/// Which direction's reader stops reading in (d).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stall {
    /// No stalled stream: the baseline.
    None,
    /// Node B writes, node A does not read (a visitor not reading a download).
    Down,
    /// Node A writes, node B does not read (an app not reading an upload).
    Up,
}

impl Stall {
    fn label(self) -> &'static str {
        match self {
            Stall::None => "none",
            Stall::Down => "B→A unread",
            Stall::Up => "A→B unread",
        }
    }
}

/// Load on the others while one stream is stalled.
struct Isolation {
    /// Bytes the stalled stream's writer got rid of before it blocked: what
    /// the windows (and send buffers) let one unread stream pin.
    pinned: u64,
    load: Load,
}

async fn isolation(pair: &Pair, stall: Stall, settings: &Settings) -> Result<Isolation> {
    let shared = &pair.shared;
    let written = Arc::new(AtomicU64::new(0));
    let _holder = match stall {
        Stall::None => None,
        Stall::Down => {
            let mut stream = pair.link.open().await?;
            stream.write_all(&head(OP_SOURCE, u64::MAX)).await?;
            let release = shared.release.clone();
            // Hold the stream without reading until the release, then drop it.
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                release.cancelled().await;
                drop(stream);
            })))
        }
        Stall::Up => {
            let mut stream = pair.link.open().await?;
            stream.write_all(&head(OP_HOLD, 0)).await?;
            let release = shared.release.clone();
            let written = written.clone();
            Some(AbortOnDropHandle::new(tokio::spawn(async move {
                let writer = write_bytes(&mut stream, u64::MAX, &written);
                tokio::select! {
                    _ = release.cancelled() => {}
                    _ = writer => {}
                }
            })))
        }
    };
    let counter = match stall {
        Stall::Up => &*written,
        _ => &shared.sourced,
    };
    let pinned = match stall {
        Stall::None => 0,
        _ => wait_until_still(counter).await?,
    };
    let release = shared.release.clone();
    let stall_for = settings.stall;
    let _timer = AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::time::sleep(stall_for).await;
        release.cancel();
    }));
    let load = load(&pair.link, settings.concurrency, settings.stall).await?;
    Ok(Isolation { pinned, load })
}

/// Waits until a stalled writer's byte count stops moving: its windows are full.
async fn wait_until_still(counter: &AtomicU64) -> Result<u64> {
    let give_up = Instant::now() + FULL_TIMEOUT;
    let mut last = counter.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now = counter.load(Ordering::Relaxed);
        if now != last || now == 0 {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= FULL_QUIET {
            return Ok(now);
        }
        ensure!(
            Instant::now() < give_up,
            "the stalled stream's writer never blocked ({now} bytes written): \
             no flow control held it"
        );
    }
}

// -------------------------------------------------------------- the run

/// Rows of the main table for one transport.
struct Measured {
    transport: Transport,
    many: Load,
    one: Load,
    down: Bulk,
    up: Bulk,
}

/// One row of the isolation table.
struct IsolationRow {
    transport: Transport,
    windows: &'static str,
    stall: Stall,
    result: Isolation,
    /// Exchanges/s of the same link's run without a stalled stream.
    baseline_rate: f64,
}

async fn run() -> Result<()> {
    let settings = Settings::from_env()?;
    let pki = pki()?;
    print_machine();
    let mut measured = Vec::new();
    let mut rows = Vec::new();
    for &transport in &settings.transports {
        check_mutual_tls(transport, &pki, &settings).await?;
        measured.push(measure(transport, &pki, &settings).await?);
        for (windows, config) in [
            ("tuned", settings.tuned),
            (
                "library defaults",
                LinkConfig {
                    windows: None,
                    h2_max_frame: None,
                    udp_buffer: None,
                    client_cert: true,
                },
            ),
        ] {
            rows.extend(isolation_rows(transport, windows, config, &pki, &settings).await?);
        }
    }
    print_tables(&settings, &measured, &rows);
    Ok(())
}

/// Node B must see node A's certificate, and refuse a node A without one.
async fn check_mutual_tls(transport: Transport, pki: &Pki, settings: &Settings) -> Result<()> {
    let pair = Pair::start(transport, pki, settings.tuned).await?;
    exchange(&pair.link).await?;
    ensure!(
        pair.shared.saw_client_cert.load(Ordering::Relaxed),
        "{}: node B did not see node A's certificate",
        transport.name()
    );
    let anonymous = LinkConfig {
        client_cert: false,
        ..settings.tuned
    };
    let attempt = async {
        let pair = Pair::start(transport, pki, anonymous).await?;
        exchange(&pair.link).await
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Err(refused)) => {
            eprintln!(
                "{}: mTLS ok (node B saw node A's certificate; a node A without one: {refused:#})",
                transport.name()
            );
            Ok(())
        }
        Ok(Ok(_)) => bail!(
            "{}: node B served a node A without a certificate",
            transport.name()
        ),
        Err(_) => bail!(
            "{}: a node A without a certificate hung instead of being refused",
            transport.name()
        ),
    }
}

async fn measure(transport: Transport, pki: &Pki, settings: &Settings) -> Result<Measured> {
    let name = transport.name();
    let pair = Pair::start(transport, pki, settings.tuned).await?;
    load(&pair.link, settings.concurrency, WARMUP).await?;
    eprintln!(
        "{name}: a. {} concurrent exchanges for {:?}",
        settings.concurrency, settings.duration
    );
    let many = load(&pair.link, settings.concurrency, settings.duration).await?;
    eprintln!(
        "{name}: b. one exchange at a time for {:?}",
        settings.duration
    );
    let one = load(&pair.link, 1, settings.duration).await?;
    drop(pair);
    // Bulk on a fresh link each, so one transfer's congestion state or
    // buffers do not carry into the other.
    eprintln!("{name}: c. {} MiB down, then up", settings.bulk >> 20);
    let pair = Pair::start(transport, pki, settings.tuned).await?;
    let down = bulk(&pair.link, settings.bulk, true).await?;
    print_quic_stats(&pair, "after the download");
    drop(pair);
    let pair = Pair::start(transport, pki, settings.tuned).await?;
    let up = bulk(&pair.link, settings.bulk, false).await?;
    print_quic_stats(&pair, "after the upload");
    Ok(Measured {
        transport,
        many,
        one,
        down,
        up,
    })
}

fn print_quic_stats(pair: &Pair, when: &str) {
    if let Link::Quic(connection) = &*pair.link {
        let path = connection.stats().path;
        eprintln!(
            "  quic {when}: {} packets sent, {} lost, MTU {}, RTT {:?}, cwnd {}",
            path.sent_packets, path.lost_packets, path.current_mtu, path.rtt, path.cwnd
        );
    }
}

async fn isolation_rows(
    transport: Transport,
    windows: &'static str,
    config: LinkConfig,
    pki: &Pki,
    settings: &Settings,
) -> Result<Vec<IsolationRow>> {
    let mut rows = Vec::new();
    let mut baseline_rate = f64::NAN;
    for stall in [Stall::None, Stall::Down, Stall::Up] {
        eprintln!(
            "{}: d. {windows} windows, stalled stream: {}",
            transport.name(),
            stall.label()
        );
        // A fresh link per row: a stall's leftovers never touch the next row.
        let pair = Pair::start(transport, pki, config).await?;
        load(&pair.link, settings.concurrency, WARMUP).await?;
        let result = isolation(&pair, stall, settings).await?;
        if stall == Stall::None {
            baseline_rate = result.load.rate();
        }
        rows.push(IsolationRow {
            transport,
            windows,
            stall,
            result,
            baseline_rate,
        });
    }
    Ok(rows)
}

// ------------------------------------------------------------- reporting

fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    eprintln!("machine: {cpus} CPUs, {model}, Linux {}", kernel.trim());
}

fn print_tables(settings: &Settings, measured: &[Measured], rows: &[IsolationRow]) {
    let windows = settings.tuned.windows.expect("tuned windows");
    println!(
        "\nTuned: stream window {} KiB, connection window {} KiB, HTTP/2 max frame {} B, \
         QUIC socket buffers {}, {} streams max; {} s per load run, {} MiB bulk, {} s stall.\n",
        windows.stream / 1024,
        windows.connection / 1024,
        settings.tuned.h2_max_frame.unwrap_or(16384),
        settings
            .tuned
            .udp_buffer
            .map_or("kernel default".into(), |b| format!("{} KiB", b / 1024)),
        MAX_STREAMS,
        settings.duration.as_secs_f64(),
        settings.bulk >> 20,
        settings.stall.as_secs_f64(),
    );
    println!(
        "| transport | a: exch/s ({c} conc.) | a: p50 ms | a: p99 ms | a: CPU µs/exch | \
         b: exch/s (1) | b: p50 ms | b: p99 ms | c: down MiB/s | down CPU ms/MiB | \
         c: up MiB/s | up CPU ms/MiB |",
        c = settings.concurrency
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for m in measured {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.1} | {:.0} | {:.3} | {:.3} | {:.0} | {:.2} | {:.0} | {:.2} |",
            m.transport.name(),
            m.many.rate(),
            m.many.percentile_ms(0.50),
            m.many.percentile_ms(0.99),
            m.many.cpu_per_exchange_us(),
            m.one.rate(),
            m.one.percentile_ms(0.50),
            m.one.percentile_ms(0.99),
            m.down.mib_per_s,
            m.down.cpu_ms_per_mib,
            m.up.mib_per_s,
            m.up.cpu_ms_per_mib,
        );
    }
    println!(
        "\n| transport | windows | stalled stream | pinned by it KiB | others exch/s | \
         vs none | others p50 ms | others p99 ms | others max ms |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let load = &row.result.load;
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2}× | {:.2} | {:.2} | {:.0} |",
            row.transport.name(),
            row.windows,
            row.stall.label(),
            row.result.pinned / 1024,
            load.rate(),
            load.rate() / row.baseline_rate,
            load.percentile_ms(0.50),
            load.percentile_ms(0.99),
            load.latencies
                .last()
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        );
    }
}
