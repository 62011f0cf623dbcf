//! End-to-end tests for the tunnels beyond HTTP (issue 6), through the real
//! `burrow` binary and the stock OpenSSH client:
//!
//! * `tcp_*`: raw TCP tunnels (`-R PORT:…`, `-R tcp:0:…`): byte-exact relay
//!   under 100 concurrent connections; requested, random, key-owned and
//!   out-of-range ports; the refusal when TCP is disabled; connection
//!   limits, idle timeout and bandwidth cap; PROXY protocol v1/v2 parsed
//!   back by the app; the JSON events.
//! * `passthrough_*`: TLS routed by SNI to an app that terminates TLS with
//!   its own certificate, next to a terminated tunnel on the same port.
//! * `balance_*`: two clients with one key on one name: round-robin,
//!   failover, replace.
//! * `admin_*`: the admin API on the stats listener: `/tunnels`, `/bans`
//!   and its errors.
//!
//! Raw TCP tunnels listen on a range of loopback ports chosen per test
//! ([`free_port_range`]); visitors from a second IP bind `127.0.0.2` (or
//! `127.0.0.3`) before connecting to `127.0.0.1`.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// How long to wait for text from ssh (URLs, notes, notices).
const TEXT_WAIT: Duration = Duration::from_secs(15);
/// How long to wait for a client to exit once it should.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long a refused TCP visitor connection may stay open ("at once").
const CUT_WAIT: Duration = Duration::from_secs(2);
/// Bound for one visitor-side network step (connect, greeting, echo).
const IO_WAIT: Duration = Duration::from_secs(10);

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The "other" visitor / client IP (also on loopback).
const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const THIRD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

// ---------------------------------------------------------------------------
// burrow and ssh
// ---------------------------------------------------------------------------

/// Starts burrow without the per-IP SSH caps (every client here comes from
/// loopback; tests/limits.rs covers those caps), plus `extra`.
async fn start(extra: &[&str]) -> Burrow {
    let mut args = SSH_LIMITS_OFF.to_vec();
    args.extend_from_slice(extra);
    Burrow::start(&args).await
}

/// [`start`] with raw TCP tunnels on `range`, bound to 127.0.0.1.
async fn start_tcp(range: PortRange, extra: &[&str]) -> Burrow {
    let ports = range.arg();
    let mut args = vec!["--tcp-ports", ports.as_str(), "--tcp-bind", "127.0.0.1"];
    args.extend_from_slice(extra);
    start(&args).await
}

/// The last `max` bytes of `text` (on a char boundary).
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut i = text.len() - max;
    while !text.is_char_boundary(i) {
        i += 1;
    }
    &text[i..]
}

/// burrow's log, for failure messages.
fn burrow_log(burrow: &Burrow) -> String {
    format!(
        "--- burrow stderr (tail) ---\n{}",
        tail(&burrow.stderr.text(), 6000)
    )
}

/// An ssh client's output and burrow's log, for failure messages.
fn context(ssh: &Ssh, burrow: &Burrow) -> String {
    format!("{}\n{}", ssh.all_output(), burrow_log(burrow))
}

/// `ssh ARGS test@127.0.0.1 REMOTE…` authenticating with `key`.
fn ssh_key(burrow: &Burrow, key: &SshKeyPair, args: &[&str], remote: &[&str]) -> Ssh {
    SshSpec {
        port: burrow.ssh_port(),
        args,
        remote_cmd: remote,
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

/// Like [`Ssh::spawn_cmd`] (throwaway key) but from the local address `ip`.
fn ssh_from(burrow: &Burrow, ip: IpAddr, args: &[&str], remote: &[&str]) -> Ssh {
    let bind = format!("BindAddress={ip}");
    let mut all = vec!["-o", bind.as_str()];
    all.extend_from_slice(args);
    Ssh::spawn_cmd(burrow, &all, remote)
}

/// `-R SPEC:127.0.0.1:PORT`'s value.
fn fwd(spec: &str, local_port: u16) -> String {
    format!("{spec}:127.0.0.1:{local_port}")
}

/// Waits for `needle` on ssh's stdout; panics with all output otherwise.
async fn wait_out(ssh: &Ssh, burrow: &Burrow, needle: &str) {
    if ssh.stdout.wait_contains(needle, TEXT_WAIT).await.is_err() {
        panic!(
            "expected {needle:?} on ssh stdout\n{}",
            context(ssh, burrow)
        );
    }
}

/// Waits (polling, bounded) for `needle` anywhere in ssh's output (stdout
/// or stderr: a session line or a disconnect message).
async fn wait_output(ssh: &Ssh, burrow: &Burrow, needle: &str) {
    let deadline = Instant::now() + TEXT_WAIT;
    while !ssh.all_output().contains(needle) {
        if Instant::now() >= deadline {
            panic!(
                "expected {needle:?} in ssh output\n{}",
                context(ssh, burrow)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Session lines (trimmed) starting with `prefix` and containing `word`.
fn lines_with(text: &str, prefix: &str, word: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with(prefix) && l.contains(word))
        .map(str::to_string)
        .collect()
}

/// Waits for a stdout line starting with `prefix` that contains `word`.
async fn wait_line(ssh: &Ssh, burrow: &Burrow, prefix: &str, word: &str) -> String {
    match ssh
        .stdout
        .wait_for(TEXT_WAIT, |t| {
            lines_with(t, prefix, word).into_iter().next()
        })
        .await
    {
        Ok(l) => l,
        Err(_) => panic!(
            "expected a stdout line starting {prefix:?} containing {word:?}\n{}",
            context(ssh, burrow)
        ),
    }
}

/// Every `tcp://localhost:PORT` in `text`, de-duplicated, in order.
fn tcp_ports_in(text: &str) -> Vec<u16> {
    let marker = format!("tcp://{DOMAIN}:");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&marker) {
        rest = &rest[i + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(p) = digits.parse::<u16>() {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Waits until the session banner shows `n` TCP tunnel URLs.
async fn tcp_ports(ssh: &Ssh, burrow: &Burrow, n: usize) -> Vec<u16> {
    match ssh
        .stdout
        .wait_for(TEXT_WAIT, |t| {
            let p = tcp_ports_in(t);
            (p.len() >= n).then_some(p)
        })
        .await
    {
        Ok(p) => p,
        Err(_) => panic!(
            "ssh stdout did not show {n} tcp://{DOMAIN}:PORT URL(s)\n{}",
            context(ssh, burrow)
        ),
    }
}

/// The public port of the session's (first) TCP tunnel, from its banner.
async fn tcp_port(ssh: &Ssh, burrow: &Burrow) -> u16 {
    tcp_ports(ssh, burrow, 1).await[0]
}

/// OpenSSH's `Allocated port N for remote forward to 127.0.0.1:TARGET` on
/// stderr (printed for `-R …0:…`).
async fn allocated_port(ssh: &Ssh, burrow: &Burrow, target: u16) -> u16 {
    let tail = format!(" for remote forward to 127.0.0.1:{target}");
    let found = ssh
        .stderr
        .wait_for(TEXT_WAIT, |t| {
            t.lines().find_map(|l| {
                let rest = l.trim().strip_prefix("Allocated port ")?;
                let (n, after) = rest.split_once(' ')?;
                (format!(" {after}") == tail).then(|| n.parse::<u16>().ok())?
            })
        })
        .await;
    found.unwrap_or_else(|_| {
        panic!(
            "no `Allocated port N{tail}` on ssh stderr\n{}",
            context(ssh, burrow)
        )
    })
}

/// Waits for ssh to exit by itself; panics with its output otherwise.
async fn expect_exit(ssh: &mut Ssh, burrow: &Burrow, what: &str) -> ExitStatus {
    match ssh.wait_exit(EXIT_WAIT).await {
        Some(st) => st,
        None => panic!("{what}: ssh did not exit\n{}", context(ssh, burrow)),
    }
}

/// JSON objects among the complete lines of `text` (other lines skipped).
fn json_events(text: &str) -> Vec<Value> {
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

// ---------------------------------------------------------------------------
// Local TCP apps and visitors
// ---------------------------------------------------------------------------

/// A loopback app's accept loop: runs `serve` on every connection in a task
/// of its own. Dropping it stops the loop (and the port closes).
struct AcceptLoop {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl AcceptLoop {
    async fn start<F, Fut>(serve: F) -> AcceptLoop
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream));
            }
        });
        AcceptLoop { port, task }
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A local raw TCP app on 127.0.0.1: greets every connection with
/// `LABEL\n`, then echoes every byte back. Stopped on drop.
struct TcpApp {
    port: u16,
    label: String,
    _app: AcceptLoop,
}

impl TcpApp {
    async fn start(label: &str) -> TcpApp {
        let greeting = format!("{label}\n");
        let app = AcceptLoop::start(move |mut stream| {
            let greeting = greeting.clone();
            async move {
                let _ = stream.set_nodelay(true);
                let (mut r, mut w) = stream.split();
                if w.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            }
        })
        .await;
        TcpApp {
            port: app.port,
            label: label.to_string(),
            _app: app,
        }
    }

    fn greeting(&self) -> String {
        format!("{}\n", self.label)
    }
}

/// A local app that sends `n` pattern bytes on every connection, then
/// closes it.
struct TcpSource {
    port: u16,
    _app: AcceptLoop,
}

impl TcpSource {
    async fn start(n: usize) -> TcpSource {
        let data: Arc<Vec<u8>> = Arc::new((0..n as u64).map(pattern_byte).collect());
        let app = AcceptLoop::start(move |mut stream| {
            let data = Arc::clone(&data);
            async move {
                let _ = stream.write_all(&data).await;
                let _ = stream.shutdown().await;
            }
        })
        .await;
        TcpSource {
            port: app.port,
            _app: app,
        }
    }
}

/// A local app that expects a HAProxy PROXY header (v1 or v2) as the first
/// bytes of every connection, parses it with `ppp` and answers one line:
/// `v1 SRC DST` / `v2 SRC DST` (or `ERR …`), then echoes.
struct ProxyApp {
    port: u16,
    _app: AcceptLoop,
}

const PROXY_V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

impl ProxyApp {
    async fn start() -> ProxyApp {
        Self::start_with(false).await
    }

    /// The same, speaking HTTP/1.1 after the header: every response (the
    /// connection is kept alive) has the header's description as its body.
    async fn start_http() -> ProxyApp {
        Self::start_with(true).await
    }

    async fn start_with(http: bool) -> ProxyApp {
        let app = AcceptLoop::start(move |stream| async move {
            if http {
                proxy_http_conn(stream).await;
            } else {
                proxy_app_conn(stream).await;
            }
        })
        .await;
        ProxyApp {
            port: app.port,
            _app: app,
        }
    }
}

/// Reads the PROXY header, then answers every HTTP request on the
/// connection with its description.
async fn proxy_http_conn(mut stream: TcpStream) {
    let answer = match read_proxy_header(&mut stream).await {
        Err(e) => format!("ERR {e}\n"),
        Ok(header) => describe_proxy_header(&header),
    };
    let svc = hyper::service::service_fn(move |_req| {
        let body = answer.clone();
        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(body)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
}

/// Reads exactly one PROXY header (byte by byte: nothing after it is
/// consumed), then answers what it says.
async fn proxy_app_conn(mut stream: TcpStream) {
    let answer = match read_proxy_header(&mut stream).await {
        Err(e) => format!("ERR {e}\n"),
        Ok(header) => describe_proxy_header(&header),
    };
    if stream.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}

/// Reads exactly one PROXY header, byte by byte.
async fn read_proxy_header(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let mut b = [0u8; 1];
        match tokio::time::timeout(IO_WAIT, stream.read_exact(&mut b)).await {
            Ok(Ok(_)) => buf.push(b[0]),
            _ => {
                return Err(format!(
                    "connection ended inside the header after {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
        }
        let n = buf.len();
        let v1_so_far = b"PROXY ".starts_with(&buf[..n.min(6)]);
        let v2_so_far = PROXY_V2_SIGNATURE.starts_with(&buf[..n.min(12)]);
        if !v1_so_far && !v2_so_far {
            return Err(format!(
                "not a PROXY header: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
        if v1_so_far && n >= 6 && buf.ends_with(b"\r\n") {
            return Ok(buf);
        }
        if v2_so_far && n >= 16 && n == 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]])) {
            return Ok(buf);
        }
        if n > 600 {
            return Err("PROXY header too long".to_string());
        }
    }
}

fn describe_proxy_header(header: &[u8]) -> String {
    use ppp::{v1, v2, HeaderResult};
    // `vN SOURCE DESTINATION` from the parsed fields of either family.
    fn line<A: Into<IpAddr>>(version: &str, src: (A, u16), dst: (A, u16)) -> String {
        let src = SocketAddr::new(src.0.into(), src.1);
        let dst = SocketAddr::new(dst.0.into(), dst.1);
        format!("{version} {src} {dst}\n")
    }
    macro_rules! from {
        ($version:expr, $a:expr) => {
            line(
                $version,
                ($a.source_address, $a.source_port),
                ($a.destination_address, $a.destination_port),
            )
        };
    }
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => match h.addresses {
            v1::Addresses::Tcp4(a) => from!("v1", a),
            v1::Addresses::Tcp6(a) => from!("v1", a),
            v1::Addresses::Unknown => "v1 UNKNOWN\n".to_string(),
        },
        HeaderResult::V2(Ok(h)) if h.command != v2::Command::Proxy => {
            format!("ERR v2 command {:?}\n", h.command)
        }
        HeaderResult::V2(Ok(h)) => match h.addresses {
            v2::Addresses::IPv4(a) => from!("v2", a),
            v2::Addresses::IPv6(a) => from!("v2", a),
            other => format!("v2 {other:?}\n"),
        },
        other => format!("ERR unparsable PROXY header: {other:?}\n"),
    }
}

/// Connects to `127.0.0.1:port` from the local address `ip` (bounded).
async fn connect_from(ip: IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(ip, 0))?;
    match tokio::time::timeout(IO_WAIT, sock.connect(SocketAddr::new(LOOPBACK, port))).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Reads one `\n`-terminated line byte by byte (nothing after it is
/// consumed), bounded by [`IO_WAIT`].
async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, String> {
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut b = [0u8; 1];
            match r.read(&mut b).await {
                Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&buf))),
                Ok(_) => {
                    buf.push(b[0]);
                    if b[0] == b'\n' {
                        return Ok(String::from_utf8_lossy(&buf).into_owned());
                    }
                }
                Err(e) => {
                    return Err(format!(
                        "read error {e} after {:?}",
                        String::from_utf8_lossy(&buf)
                    ))
                }
            }
        }
    };
    match tokio::time::timeout(IO_WAIT, read).await {
        Ok(r) => r,
        Err(_) => Err("no complete line within 10 s".to_string()),
    }
}

/// Opens a visitor connection from `ip` to the tunnel on `port` and reads
/// the app's greeting (proof the connection reaches the app).
async fn open_visitor(ip: IpAddr, port: u16, app: &TcpApp) -> Result<TcpStream, String> {
    let mut s = connect_from(ip, port)
        .await
        .map_err(|e| format!("connect {ip} -> 127.0.0.1:{port}: {e}"))?;
    let _ = s.set_nodelay(true);
    let line = read_line(&mut s)
        .await
        .map_err(|e| format!("greeting from {ip} on port {port}: {e}"))?;
    if line != app.greeting() {
        return Err(format!(
            "greeting on port {port}: got {line:?}, want {:?}",
            app.greeting()
        ));
    }
    Ok(s)
}

/// Writes `data` and reads exactly as many bytes back, comparing them. The
/// write half stays open until everything is back, so nothing depends on
/// half-close support.
async fn echo_exact(stream: TcpStream, data: Arc<Vec<u8>>) -> Result<TcpStream, String> {
    let (mut r, mut w) = stream.into_split();
    let to_send = Arc::clone(&data);
    let writer = tokio::spawn(async move {
        let res = w.write_all(&to_send).await;
        (w, res)
    });
    let mut got = vec![0u8; data.len()];
    let read = tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got)).await;
    let (w, wres) = writer.await.map_err(|e| format!("writer task: {e}"))?;
    wres.map_err(|e| format!("write: {e}"))?;
    match read {
        Err(_) => return Err(format!("echo of {} bytes not back within 30 s", data.len())),
        Ok(Err(e)) => return Err(format!("echo read: {e}")),
        Ok(Ok(_)) => {}
    }
    if got != *data {
        let at = got.iter().zip(data.iter()).position(|(a, b)| a != b);
        return Err(format!(
            "echo of {} bytes differs, first at offset {at:?}",
            data.len()
        ));
    }
    Ok(r.reunite(w).expect("halves of one stream"))
}

/// Asserts a visitor connection is closed at once with nothing relayed.
async fn expect_cut(stream: &mut TcpStream, what: &str, burrow: &Burrow) {
    let started = Instant::now();
    let (bytes, closed) = read_until_closed(stream, CUT_WAIT + Duration::from_secs(3)).await;
    let Some(at) = closed else {
        panic!(
            "{what}: the connection is still open after {:?}\n{}",
            CUT_WAIT + Duration::from_secs(3),
            burrow_log(burrow)
        );
    };
    assert!(
        bytes.is_empty(),
        "{what}: nothing may be relayed, got {:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(
        at.duration_since(started) <= CUT_WAIT,
        "{what}: closed only after {:?}",
        at.duration_since(started)
    );
}

/// A visitor connection from `ip` to `port` is refused or closed at once
/// with nothing relayed.
async fn expect_refused_or_cut(ip: IpAddr, port: u16, what: &str, burrow: &Burrow) {
    match connect_from(ip, port).await {
        Err(_) => {}
        Ok(mut s) => expect_cut(&mut s, what, burrow).await,
    }
}

// ---------------------------------------------------------------------------
// TLS app and clients
// ---------------------------------------------------------------------------

/// A local app that terminates TLS itself with its own self-signed
/// certificate for `host`. Per connection it reads one line and answers
/// `tls-app sni=SNI got=LINE`.
struct TlsApp {
    port: u16,
    cert: CertificateDer<'static>,
    _app: AcceptLoop,
}

impl TlsApp {
    async fn start(host: &str) -> TlsApp {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()])
            .expect("rcgen: app certificate");
        let cert = ck.cert.der().clone();
        let config = tls_server_config(cert.clone(), ck.key_pair.serialize_der());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app = AcceptLoop::start(move |stream| {
            let acceptor = acceptor.clone();
            async move {
                let Ok(Ok(mut tls)) = tokio::time::timeout(IO_WAIT, acceptor.accept(stream)).await
                else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let Ok(line) = read_line(&mut tls).await else {
                    return;
                };
                let answer = format!("tls-app sni={sni} got={}\n", line.trim_end());
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.flush().await;
                let _ = tls.shutdown().await;
            }
        })
        .await;
        TlsApp {
            port: app.port,
            cert,
            _app: app,
        }
    }
}

type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS handshake with burrow's HTTPS listener with SNI `sni`, bounded by
/// [`IO_WAIT`] (a timeout is an error too: "not a hang").
async fn tls_handshake(
    burrow: &Burrow,
    sni: &str,
    config: rustls::ClientConfig,
) -> Result<ClientTls, String> {
    let tcp = TcpStream::connect(burrow.addrs.https)
        .await
        .map_err(|e| format!("connect to the HTTPS listener: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(sni.to_string()).expect("server name");
    match tokio::time::timeout(IO_WAIT, connector.connect(name, tcp)).await {
        Err(_) => Err(format!("TLS handshake with SNI {sni} hung for {IO_WAIT:?}")),
        Ok(Err(e)) => Err(format!("TLS handshake with SNI {sni}: {e}")),
        Ok(Ok(tls)) => Ok(tls),
    }
}

/// Through a passthrough tunnel: a handshake trusting only `app`'s own
/// certificate, then one line there and back. Returns the app's answer.
async fn passthrough_exchange(burrow: &Burrow, host: &str, app: &TlsApp, msg: &str) -> String {
    let mut tls = tls_handshake(burrow, host, tls_config_pinned(&app.cert, Alpn::Http1))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "passthrough to {host} (trusting only the app's cert): {e}\n{}",
                burrow_log(burrow)
            )
        });
    let shown = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    assert_eq!(
        shown.as_deref(),
        Some(app.cert.as_ref()),
        "the certificate seen through the tunnel must be the app's own"
    );
    tls.write_all(format!("{msg}\n").as_bytes())
        .await
        .expect("write through the passthrough tunnel");
    tls.flush().await.expect("flush");
    read_line(&mut tls).await.unwrap_or_else(|e| {
        panic!(
            "answer through the passthrough tunnel: {e}\n{}",
            burrow_log(burrow)
        )
    })
}

// ---------------------------------------------------------------------------
// HTTP and admin API
// ---------------------------------------------------------------------------

/// `GET /whoami` on tunnel `name`: status and body (errors as status 0).
async fn whoami(client: &reqwest::Client, burrow: &Burrow, name: &str) -> (u16, String) {
    let url = burrow.https_url(&format!("{name}.{DOMAIN}"), "/whoami");
    match client.get(&url).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap_or_default())
        }
        Err(e) => (0, format!("GET {url}: {e}")),
    }
}

/// One admin API answer.
#[derive(Debug)]
struct AdminResp {
    status: u16,
    content_type: String,
    json: Value,
}

/// `METHOD http://STATS/PATH` with an optional raw body; the answer must be
/// JSON.
async fn admin(burrow: &Burrow, method: &str, path: &str, body: Option<&str>) -> AdminResp {
    let url = format!("http://{}{path}", burrow.addrs.stats);
    let method_v = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = burrow
        .http_client()
        .request(method_v, &url)
        .bearer_auth(burrow.admin_token());
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!("{method} {path}: status {status}, body is not JSON ({e}): {text:?}")
    });
    AdminResp {
        status,
        content_type,
        json,
    }
}

/// `GET /tunnels`, which must be a 200 JSON array.
async fn tunnels(burrow: &Burrow) -> Vec<Value> {
    let r = admin(burrow, "GET", "/tunnels", None).await;
    assert_eq!(r.status, 200, "GET /tunnels: {r:?}");
    r.json
        .as_array()
        .unwrap_or_else(|| panic!("GET /tunnels must be an array: {}", r.json))
        .clone()
}

/// `GET /bans`, which must be a 200 JSON array.
async fn bans(burrow: &Burrow) -> Vec<Value> {
    let r = admin(burrow, "GET", "/bans", None).await;
    assert_eq!(r.status, 200, "GET /bans: {r:?}");
    r.json
        .as_array()
        .unwrap_or_else(|| panic!("GET /bans must be an array: {}", r.json))
        .clone()
}

/// Asserts an admin error: `status`, a JSON content type and
/// `{"error": "<non-empty>"}`.
fn assert_admin_error(r: &AdminResp, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{what}: errors must be JSON: {r:?}"
    );
    assert!(
        r.json["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: body must be {{\"error\": \"…\"}}: {}",
        r.json
    );
}

/// Parses an RFC 3339 UTC timestamp (`…Z`).
fn utc(v: &Value, what: &str) -> SystemTime {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} must be an RFC 3339 string: {v}"));
    assert!(s.ends_with('Z'), "{what} must be UTC (…Z): {s:?}");
    humantime::parse_rfc3339(s).unwrap_or_else(|e| panic!("{what}: {s:?} is not RFC 3339: {e}"))
}

/// Seconds from now until `t` (negative: in the past).
fn secs_from_now(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

// ===========================================================================
// Raw TCP tunnels
// ===========================================================================

/// Done-when: a TCP echo app through a requested tunnel port, byte-exact
/// with 100 concurrent connections each sending its own 64 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_100_concurrent_connections_byte_exact() {
    let range = free_port_range(20);
    let burrow = start_tcp(range, &[]).await;
    let app = Arc::new(TcpApp::start("tcp-echo").await);
    let wanted = range.first + 5;
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd(&wanted.to_string(), app.port)]);
    let port = tcp_port(&ssh, &burrow).await;
    assert_eq!(
        port,
        wanted,
        "a free requested port in range must be honoured\n{}",
        context(&ssh, &burrow)
    );

    const CONNS: usize = 100;
    const SIZE: usize = 64 * 1024;
    let seed = time_seed();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..CONNS {
        let app = Arc::clone(&app);
        let data = Arc::new(random_bytes(SIZE, seed.wrapping_add(i as u64 * 7919)));
        set.spawn(async move {
            let s = open_visitor(LOOPBACK, port, &app)
                .await
                .map_err(|e| format!("conn {i}: {e}"))?;
            echo_exact(s, data)
                .await
                .map(|_| ())
                .map_err(|e| format!("conn {i}: {e}"))
        });
    }
    let mut failures = Vec::new();
    let all = async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(e),
                Err(e) => failures.push(format!("task: {e}")),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(45), all)
        .await
        .is_err()
    {
        panic!(
            "{CONNS} concurrent echoes did not finish within 45 s\n{}",
            context(&ssh, &burrow)
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {CONNS} connections failed: {:?}\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        context(&ssh, &burrow)
    );
}

/// Requested (in range, free), in use, out of range and random (`tcp:0`)
/// ports; plain `-R 0` stays an HTTPS tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_requested_in_use_out_of_range_and_random_ports() {
    let range = free_port_range(10);
    let burrow = start_tcp(range, &[]).await;
    let app = TcpApp::start("tcp-ports").await;
    let origin = Origin::start("tcp-ports-http").await;

    // Requested, in range and free: exactly that port, no note.
    let wanted = range.first + 3;
    let a = Ssh::spawn(&burrow, &["-R", &fwd(&wanted.to_string(), app.port)]);
    assert_port_honoured(&a, &burrow, wanted, &app, "requested free port").await;

    // The same port again (another client): in use, a random one instead.
    let b = Ssh::spawn(&burrow, &["-R", &fwd(&wanted.to_string(), app.port)]);
    let note = wait_line(&b, &burrow, "NOTE: ", "instead").await;
    let pb = tcp_port(&b, &burrow).await;
    assert!(
        range.contains(pb) && pb != wanted,
        "port in use: got {pb}, want another port of {range:?} ({note})\n{}",
        context(&b, &burrow)
    );
    open_visitor(LOOPBACK, pb, &app).await.unwrap_or_else(|e| {
        panic!(
            "port given instead of one in use: {e}\n{}",
            context(&b, &burrow)
        )
    });
    // The original keeps its port.
    open_visitor(LOOPBACK, wanted, &app)
        .await
        .unwrap_or_else(|e| panic!("first client's port after the clash: {e}"));

    // Out of range: a random one in range instead; the asked port is not
    // opened.
    let outside = dead_port();
    assert!(!range.contains(outside));
    let c = Ssh::spawn(&burrow, &["-R", &fwd(&outside.to_string(), app.port)]);
    let note = wait_line(&c, &burrow, "NOTE: ", "instead").await;
    let pc = tcp_port(&c, &burrow).await;
    assert!(
        range.contains(pc) && pc != wanted && pc != pb,
        "out of range {outside}: got {pc}, want a free port of {range:?} ({note})\n{}",
        context(&c, &burrow)
    );
    open_visitor(LOOPBACK, pc, &app)
        .await
        .unwrap_or_else(|e| panic!("port given for an out-of-range request: {e}"));
    assert!(
        TcpStream::connect(("127.0.0.1", outside)).await.is_err(),
        "burrow must not listen on the out-of-range port {outside}"
    );

    // Random: `tcp:0`, reported to OpenSSH (`Allocated port N`) and in the
    // banner. Plain `-R 0` on the same connection stays HTTPS.
    let d = Ssh::spawn(
        &burrow,
        &["-R", &fwd("tcp:0", app.port), "-R", &fwd("0", origin.port)],
    );
    let pd = allocated_port(&d, &burrow, app.port).await;
    assert!(
        range.contains(pd) && ![wanted, pb, pc].contains(&pd),
        "tcp:0 got {pd}, want a free port of {range:?}\n{}",
        context(&d, &burrow)
    );
    assert_eq!(
        tcp_ports(&d, &burrow, 1).await,
        vec![pd],
        "the banner shows the allocated TCP port (and only that one)\n{}",
        context(&d, &burrow)
    );
    open_visitor(LOOPBACK, pd, &app)
        .await
        .unwrap_or_else(|e| panic!("tcp:0 port: {e}"));
    let url = d.url().await;
    let resp = burrow.get(&url.host(), "/whoami").await;
    let resp = expect_status(resp, 200, "plain -R 0 is an HTTPS tunnel").await;
    assert_eq!(resp.text().await.unwrap(), "tcp-ports-http");
}

/// When every port of the range is taken, a TCP forward is refused with
/// the range and when to try again; the holders keep their ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_range_exhausted_is_refused_with_the_range() {
    let range = free_port_range(2);
    let burrow = start_tcp(range, &[]).await;
    let app = TcpApp::start("tcp-full").await;
    let holders: Vec<Ssh> = (0..2)
        .map(|_| Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", app.port)]))
        .collect();
    let mut ports = Vec::new();
    for holder in &holders {
        ports.push(allocated_port(holder, &burrow, app.port).await);
    }
    ports.sort_unstable();
    assert_eq!(ports, [range.first, range.last]);

    let second = Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", app.port)]);
    let line = wait_line(&second, &burrow, "ERROR: ", "TCP port").await;
    assert!(
        line.contains(&format!(
            "no free TCP port left in this server's range ({}-{}); try again later",
            range.first, range.last
        )),
        "{line}"
    );
    second
        .stderr
        .wait_contains("remote port forwarding failed", TEXT_WAIT)
        .await
        .unwrap_or_else(|e| panic!("OpenSSH was told too: {e}"));
    for port in ports {
        open_visitor(LOOPBACK, port, &app)
            .await
            .unwrap_or_else(|e| panic!("a holder's port {port}: {e}"));
    }
}

/// A key that owns a port (keys file `ports=`) gets exactly it, also after
/// reconnecting; another key asking for it gets another port and a note;
/// random allocation never hands it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_reserved_port_belongs_to_its_key() {
    let range = free_port_range(2);
    let (owned, other) = (range.first, range.last);
    let owner = SshKeyPair::generate();
    let stranger = SshKeyPair::generate();
    let dir = TempDir::new("burrow-tunnels-keys");
    let keys_file = dir.path().join("keys");
    std::fs::write(
        &keys_file,
        format!("ports={owned} {}\n{}\n", owner.public, stranger.public),
    )
    .expect("write keys file");
    let keys_arg = keys_file.to_str().expect("utf-8 path").to_string();
    let burrow = start_tcp(range, &["--keys-file", &keys_arg]).await;
    let app_owner = TcpApp::start("tcp-owner").await;
    let app_stranger = TcpApp::start("tcp-stranger").await;

    // Another key asks for the owned port while it is free: refused, with
    // the other port instead.
    let mut s = ssh_key(
        &burrow,
        &stranger,
        &["-R", &fwd(&owned.to_string(), app_stranger.port)],
        &[],
    );
    let note = wait_line(&s, &burrow, "NOTE: ", "instead").await;
    assert_eq!(
        tcp_port(&s, &burrow).await,
        other,
        "another key asking for an owned port ({note})\n{}",
        context(&s, &burrow)
    );
    assert!(
        TcpStream::connect(("127.0.0.1", owned)).await.is_err(),
        "the owned port must not be opened for another key"
    );

    // The owner gets it, connection after connection.
    for round in 1..=2 {
        let mut o = ssh_key(
            &burrow,
            &owner,
            &["-R", &fwd(&owned.to_string(), app_owner.port)],
            &[],
        );
        let what = format!("owner, connection {round}");
        assert_port_honoured(&o, &burrow, owned, &app_owner, &what).await;
        open_visitor(LOOPBACK, other, &app_stranger)
            .await
            .unwrap_or_else(|e| panic!("stranger's port: {e}"));
        o.kill();
        wait_port_closed(owned, &burrow).await;
    }

    // Random allocation never hands out the owned port, even while it is
    // free: with only `other` left to give, every `tcp:0` gets it.
    s.kill();
    wait_port_closed(other, &burrow).await;
    for round in 1..=4 {
        let mut r = Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", app_stranger.port)]);
        let p = allocated_port(&r, &burrow, app_stranger.port).await;
        assert_eq!(
            p,
            other,
            "tcp:0 (round {round}) must never get the owned port {owned}\n{}",
            context(&r, &burrow)
        );
        r.kill();
        wait_port_closed(other, &burrow).await;
    }
}

/// Polls until nothing accepts on `127.0.0.1:port` any more (bounded).
async fn wait_port_closed(port: u16, burrow: &Burrow) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        if Instant::now() >= deadline {
            panic!(
                "port {port} still accepts 10 s after its client went away\n{}",
                burrow_log(burrow)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Done-when: `proxy=v1` and `proxy=v2` put a PROXY header first on every
/// connection, with the visitor's real address as source and the public
/// listener as destination; the app parses it back (ppp).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_protocol_v1_and_v2_carry_the_visitor_address() {
    let range = free_port_range(10);
    let burrow = start_tcp(range, &[]).await;
    let app = ProxyApp::start().await;
    for version in ["v1", "v2"] {
        let option = format!("proxy={version}");
        let ssh = Ssh::spawn_cmd(&burrow, &["-R", &fwd("tcp:0", app.port)], &["--", &option]);
        let port = tcp_port(&ssh, &burrow).await;
        for ip in [LOOPBACK, OTHER_IP] {
            let mut s = connect_from(ip, port)
                .await
                .unwrap_or_else(|e| panic!("connect from {ip}: {e}"));
            let visitor = s.local_addr().unwrap();
            let line = read_line(&mut s).await.unwrap_or_else(|e| {
                panic!(
                    "{option}: the app's answer: {e}\n{}",
                    context(&ssh, &burrow)
                )
            });
            assert_eq!(
                line.trim_end(),
                format!("{version} {visitor} 127.0.0.1:{port}"),
                "{option}: the app must parse a {version} header with the visitor's address \
                 as source and the public listener as destination\n{}",
                context(&ssh, &burrow)
            );
            // The stream after the header is relayed as is.
            let s = echo_exact(s, Arc::new(b"after the header\n".to_vec()))
                .await
                .unwrap_or_else(|e| panic!("{option}: data after the header: {e}"));
            drop(s);
        }
    }
}

/// `proxy=v1` on an HTTP tunnel: every request reaches the app on a
/// connection of its own that starts with a header naming that request's
/// visitor (a pooled connection would name whoever opened it), and the
/// HTTPS listener as destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_proxy_protocol_names_each_requests_visitor() {
    let burrow = start(&[]).await;
    let app = ProxyApp::start_http().await;
    let ssh = Ssh::spawn_cmd(&burrow, &["-R", &fwd("80", app.port)], &["--", "proxy=v1"]);
    let url = ssh.url().await;
    let https = burrow.https_port();
    for round in 0..2 {
        for ip in [LOOPBACK, OTHER_IP, THIRD_IP] {
            let (status, body) = whoami(&burrow.https_client_from(ip), &burrow, &url.name).await;
            assert_eq!(status, 200, "{body}\n{}", context(&ssh, &burrow));
            let mut words = body.split_whitespace();
            assert_eq!(words.next(), Some("v1"), "{body}");
            let source: SocketAddr = words.next().unwrap_or("").parse().expect("source");
            assert_eq!(
                source.ip(),
                ip,
                "round {round}: the header names this visitor: {body}"
            );
            assert_eq!(
                words.next(),
                Some(format!("127.0.0.1:{https}").as_str()),
                "destination is the HTTPS listener: {body}"
            );
        }
    }
}

/// Asserts `ssh` got exactly TCP port `port` with no NOTE about it, and that
/// the port reaches `app`.
async fn assert_port_honoured(ssh: &Ssh, burrow: &Burrow, port: u16, app: &TcpApp, what: &str) {
    assert_eq!(
        tcp_port(ssh, burrow).await,
        port,
        "{what}: the asked port\n{}",
        context(ssh, burrow)
    );
    assert!(
        lines_with(&ssh.stdout.text(), "NOTE: ", "").is_empty(),
        "{what}: an honoured port needs no NOTE\n{}",
        context(ssh, burrow)
    );
    open_visitor(LOOPBACK, port, app)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", context(ssh, burrow)));
}

/// Without `--tcp-ports`, a TCP forward is refused: OpenSSH reports the
/// failed forward and the session says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_disabled_refuses_with_clear_error() {
    let burrow = start(&[]).await;
    let app = TcpApp::start("tcp-disabled").await;
    let asked = dead_port();
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd(&asked.to_string(), app.port)]);
    let warning = format!("remote port forwarding failed for listen port {asked}");
    if ssh.stderr.wait_contains(&warning, TEXT_WAIT).await.is_err() {
        panic!("expected {warning:?} on stderr\n{}", context(&ssh, &burrow));
    }
    wait_line(&ssh, &burrow, "ERROR: ", "TCP tunnels are disabled").await;
    assert!(
        TcpStream::connect(("127.0.0.1", asked)).await.is_err(),
        "nothing may listen on {asked}"
    );

    // With ExitOnForwardFailure, ssh gives up (also for `tcp:0`).
    let mut strict = Ssh::spawn(
        &burrow,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &fwd("tcp:0", app.port),
        ],
    );
    let st = expect_exit(
        &mut strict,
        &burrow,
        "refused tcp:0 with ExitOnForwardFailure",
    )
    .await;
    assert!(
        !st.success(),
        "ssh must exit non-zero\n{}",
        context(&strict, &burrow)
    );
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(0));
}

/// Over `--tcp-max-conns-per-visitor` or `--tcp-max-conns-per-tunnel`, a
/// new connection is closed at once with nothing relayed; a freed slot can
/// be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_limits_per_visitor_and_per_tunnel() {
    let range = free_port_range(10);
    let burrow = start_tcp(
        range,
        &[
            "--tcp-max-conns-per-visitor",
            "2",
            "--tcp-max-conns-per-tunnel",
            "3",
        ],
    )
    .await;
    let app = TcpApp::start("tcp-limits").await;
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", app.port)]);
    let port = tcp_port(&ssh, &burrow).await;
    let open = |ip: IpAddr, what: &'static str| {
        let app = &app;
        let ssh = &ssh;
        let burrow = &burrow;
        async move {
            open_visitor(ip, port, app)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}\n{}", context(ssh, burrow)))
        }
    };

    let a1 = open(LOOPBACK, "visitor A, connection 1").await;
    let a2 = open(LOOPBACK, "visitor A, connection 2").await;
    let mut a3 = connect_from(LOOPBACK, port).await.expect("connect");
    expect_cut(
        &mut a3,
        "visitor A over --tcp-max-conns-per-visitor 2",
        &burrow,
    )
    .await;

    // Another visitor still gets in: the third connection of the tunnel.
    let b1 = open(OTHER_IP, "visitor B, connection 1").await;
    let mut c1 = connect_from(THIRD_IP, port).await.expect("connect");
    expect_cut(
        &mut c1,
        "visitor C over --tcp-max-conns-per-tunnel 3",
        &burrow,
    )
    .await;

    // The admitted ones still relay.
    let a1 = echo_exact(a1, Arc::new(b"still here\n".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("an admitted connection after the refusals: {e}"));
    let b1 = echo_exact(b1, Arc::new(b"me too\n".to_vec()))
        .await
        .unwrap_or_else(|e| panic!("visitor B after the refusals: {e}"));

    // A closed connection frees its slot (bounded poll: the close travels
    // through the relay first).
    drop(a2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let again = loop {
        match open_visitor(LOOPBACK, port, &app).await {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                panic!(
                    "visitor A never got its slot back: {e}\n{}",
                    context(&ssh, &burrow)
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    drop((a1, b1, again));
}

/// `--tcp-idle-timeout`: a connection with no bytes either way is closed
/// after about that long; one with traffic stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_idle_timeout_closes_silent_connections() {
    let range = free_port_range(10);
    let burrow = start_tcp(range, &["--tcp-idle-timeout", "1s"]).await;
    let app = TcpApp::start("tcp-idle").await;
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", app.port)]);
    let port = tcp_port(&ssh, &burrow).await;

    let mut quiet = open_visitor(LOOPBACK, port, &app)
        .await
        .unwrap_or_else(|e| panic!("quiet connection: {e}\n{}", context(&ssh, &burrow)));
    let quiet_since = Instant::now();
    let mut busy = open_visitor(LOOPBACK, port, &app)
        .await
        .unwrap_or_else(|e| panic!("busy connection: {e}"));

    let quiet_task = tokio::spawn(async move {
        let (bytes, closed) = read_until_closed(&mut quiet, Duration::from_secs(8)).await;
        (bytes, closed)
    });
    // Keep `busy` talking every 250 ms until the quiet one is gone and at
    // least 2.5 s (2.5 idle timeouts) have passed.
    let started = Instant::now();
    let mut n = 0u32;
    while !quiet_task.is_finished() || started.elapsed() < Duration::from_millis(2500) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the quiet connection was not closed within 10 s\n{}",
            burrow_log(&burrow)
        );
        n += 1;
        busy = echo_exact(busy, Arc::new(format!("ping {n}\n").into_bytes()))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "a connection with traffic was cut after {:?}: {e}",
                    started.elapsed()
                )
            });
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (bytes, closed) = quiet_task.await.expect("quiet task");
    let closed = closed.expect("quiet connection closed");
    let idle_for = closed.duration_since(quiet_since);
    assert!(
        bytes.is_empty(),
        "nothing was sent to the quiet connection: {bytes:?}"
    );
    assert!(
        idle_for >= Duration::from_millis(800) && idle_for <= Duration::from_secs(5),
        "--tcp-idle-timeout 1s closed the quiet connection after {idle_for:?}"
    );
}

/// `--tcp-bandwidth`: a tunnel's transfer is paced to about that many
/// bytes per second, byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_bandwidth_cap_paces_a_download() {
    const SIZE: usize = 768 * 1024;
    let range = free_port_range(10);
    let burrow = start_tcp(range, &["--tcp-bandwidth", "256KiB"]).await;
    let source = TcpSource::start(SIZE).await;
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", source.port)]);
    let port = tcp_port(&ssh, &burrow).await;

    let mut s = connect_from(LOOPBACK, port).await.expect("connect");
    let started = Instant::now();
    let mut got = vec![0u8; SIZE];
    match tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut got)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("download: {e}\n{}", context(&ssh, &burrow)),
        Err(_) => panic!(
            "768 KiB at 256 KiB/s not done in 20 s\n{}",
            context(&ssh, &burrow)
        ),
    }
    let took = started.elapsed();
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64)),
        "the paced download must be byte-exact"
    );
    // Nominally 3 s; allow a first-second burst.
    assert!(
        took >= Duration::from_millis(1800),
        "768 KiB under --tcp-bandwidth 256KiB took only {took:?}"
    );
}

/// `output=json`: each tunnel event says its kind; a TCP one carries
/// `tcp://localhost:PORT` and the port OpenSSH was told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_json_events_carry_kind_url_and_port() {
    let range = free_port_range(10);
    let burrow = start_tcp(range, &[]).await;
    let app = TcpApp::start("tcp-json").await;
    let origin = Origin::start("tcp-json-http").await;
    let ssh = Ssh::spawn_cmd(
        &burrow,
        &["-R", &fwd("80", origin.port), "-R", &fwd("tcp:0", app.port)],
        &["--", "output=json"],
    );
    let events = ssh
        .stdout
        .wait_for(TEXT_WAIT, |t| {
            let ev = json_events(t);
            let n = ev.iter().filter(|e| e["event"] == "tunnel").count();
            (n >= 2).then_some(ev)
        })
        .await
        .unwrap_or_else(|_| panic!("two tunnel events expected\n{}", context(&ssh, &burrow)));
    let allocated = allocated_port(&ssh, &burrow, app.port).await;
    let tcp = events
        .iter()
        .find(|e| e["event"] == "tunnel" && e["kind"] == "tcp")
        .unwrap_or_else(|| panic!("no tunnel event with kind tcp: {events:?}"));
    assert_eq!(tcp["url"], format!("tcp://{DOMAIN}:{allocated}"), "{tcp}");
    assert_eq!(tcp["port"].as_u64(), Some(u64::from(allocated)), "{tcp}");
    assert!(range.contains(allocated), "{allocated} not in {range:?}");
    let http = events
        .iter()
        .find(|e| e["event"] == "tunnel" && e["kind"] == "http")
        .unwrap_or_else(|| panic!("no tunnel event with kind http: {events:?}"));
    let url = http["url"].as_str().unwrap_or_default();
    assert!(
        url.starts_with("https://") && url.ends_with(&format!(".{DOMAIN}:{}", burrow.https_port())),
        "{http}"
    );
    open_visitor(LOOPBACK, allocated, &app)
        .await
        .unwrap_or_else(|e| panic!("the port from the JSON event: {e}"));
}

// ===========================================================================
// TLS passthrough by SNI
// ===========================================================================

/// Done-when: TLS with SNI `NAME.localhost` of a `tls=passthrough` tunnel
/// reaches the app untouched: the client, trusting only the app's own
/// certificate, completes the handshake and talks to it, while a normal
/// terminated tunnel works on the same HTTPS port at the same time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_sni_reaches_app_certificate_next_to_terminated_tunnel() {
    let burrow = start(&[]).await;
    let host = format!("secure-app.{DOMAIN}");
    let app = TlsApp::start(&host).await;
    let origin = Origin::start("passthrough-neighbour").await;

    let pt = Ssh::spawn_cmd(
        &burrow,
        &["-R", &fwd("secure-app:443", app.port)],
        &["--", "tls=passthrough"],
    );
    wait_out(
        &pt,
        &burrow,
        &format!("https://{host}:{}", burrow.https_port()),
    )
    .await;
    let http = Ssh::spawn(&burrow, &["-R", &fwd("80", origin.port)]);
    let url = http.url().await;
    let client = burrow.https_client();

    for round in 0..3 {
        let msg = format!("round {round}");
        let (answer, resp) = tokio::join!(
            passthrough_exchange(&burrow, &host, &app, &msg),
            client.get(burrow.https_url(&url.host(), "/whoami")).send()
        );
        assert_eq!(
            answer.trim_end(),
            format!("tls-app sni={host} got={msg}"),
            "the app must see the client's SNI and bytes"
        );
        let resp = resp.unwrap_or_else(|e| panic!("terminated tunnel next to passthrough: {e}"));
        let resp = expect_status(resp, 200, "terminated tunnel next to passthrough").await;
        assert_eq!(resp.text().await.unwrap(), "passthrough-neighbour");
    }

    // A client trusting only burrow's certificate cannot complete it: the
    // edge never shows its own certificate for this name.
    if let Ok(tls) = tls_handshake(&burrow, &host, burrow.tls_config(Alpn::Http1)).await {
        panic!(
            "a passthrough name was terminated with burrow's certificate ({:?})",
            tls.get_ref().1.peer_certificates().map(|c| c.len())
        );
    }
}

/// SNI outside the domain gets a prompt TLS failure (alert or close), not a
/// hang; names inside the domain are still terminated by burrow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_foreign_sni_fails_fast() {
    let burrow = start(&[]).await;
    let host = format!("fast-fail.{DOMAIN}");
    let app = TlsApp::start(&host).await;
    let pt = Ssh::spawn_cmd(
        &burrow,
        &["-R", &fwd("fast-fail:443", app.port)],
        &["--", "tls=passthrough"],
    );
    wait_out(
        &pt,
        &burrow,
        &format!("https://{host}:{}", burrow.https_port()),
    )
    .await;

    for sni in ["example.com", "fast-fail.example.com"] {
        let started = Instant::now();
        // Any certificate accepted: only the server can end this handshake.
        let res = tls_handshake(&burrow, sni, tls_config_accept_any()).await;
        let took = started.elapsed();
        match res {
            Ok(_) => panic!("SNI {sni} (outside {DOMAIN}) must not get a TLS session"),
            Err(e) => assert!(
                took < Duration::from_secs(5) && !e.contains("hung"),
                "SNI {sni}: the failure must be prompt, took {took:?}: {e}"
            ),
        }
    }
    // Control: an unknown name inside the domain is terminated as before.
    tls_handshake(
        &burrow,
        &format!("no-such-name.{DOMAIN}"),
        tls_config_accept_any(),
    )
    .await
    .unwrap_or_else(|e| panic!("in-domain SNI must still be terminated by burrow: {e}"));
}

// ===========================================================================
// Several clients on one name
// ===========================================================================

/// Two connections with one key asking for `shared`, each with its own
/// origin; waits until the second is announced to both.
async fn two_clients(burrow: &Burrow, key: &SshKeyPair, a: &Origin, b: &Origin) -> (Ssh, Ssh) {
    let first = ssh_key(burrow, key, &["-R", &fwd("shared:80", a.port)], &[]);
    wait_out(&first, burrow, &format!("https://shared.{DOMAIN}:")).await;
    let second = ssh_key(burrow, key, &["-R", &fwd("shared:80", b.port)], &[]);
    wait_out(&second, burrow, &format!("https://shared.{DOMAIN}:")).await;
    (first, second)
}

/// Checks the "2 clients" texts: in the second client's banner and as a
/// NOTICE to the first.
async fn assert_two_clients_announced(first: &Ssh, second: &Ssh, burrow: &Burrow) {
    wait_out(second, burrow, "2 clients").await;
    wait_line(first, burrow, "NOTICE: ", "2 clients").await;
}

/// `--balance round-robin`: requests spread over both clients; stats count
/// one name with two clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_round_robin_spreads_requests_over_two_clients() {
    let burrow = start(&["--balance", "round-robin"]).await;
    let a = Origin::start("rr-a").await;
    let b = Origin::start("rr-b").await;
    let key = SshKeyPair::generate();
    let (first, second) = two_clients(&burrow, &key, &a, &b).await;
    assert_two_clients_announced(&first, &second, &burrow).await;

    let client = burrow.https_client();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let (status, body) = whoami(&client, &burrow, "shared").await;
        assert_eq!(status, 200, "{body}\n{}", burrow_log(&burrow));
        *seen.entry(body).or_default() += 1;
    }
    assert!(
        seen.get("rr-a").copied().unwrap_or(0) > 0 && seen.get("rr-b").copied().unwrap_or(0) > 0,
        "round-robin must use both clients over 20 requests: {seen:?}"
    );
    assert_eq!(seen.len(), 2, "{seen:?}");

    let s = burrow.stats_with_subdomains().await;
    assert_eq!(s["active_names"].as_u64(), Some(1), "{s}");
    assert_eq!(s["clients"], json!({"shared": 2}), "{s}");
    assert_eq!(burrow.stats().await["active_names"].as_u64(), Some(1));
}

/// `--balance failover`: the oldest client serves everything; when it is
/// killed under a loop of requests the other takes over, with at most the
/// in-flight request failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_failover_switches_when_the_oldest_is_killed() {
    let burrow = start(&["--balance", "failover"]).await;
    let a = Origin::start("fo-a").await;
    let b = Origin::start("fo-b").await;
    let key = SshKeyPair::generate();
    let (mut first, second) = two_clients(&burrow, &key, &a, &b).await;
    assert_two_clients_announced(&first, &second, &burrow).await;

    let client = burrow.https_client();
    for i in 0..10 {
        let (status, body) = whoami(&client, &burrow, "shared").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "fo-a"),
            "request {i}: the oldest client serves"
        );
    }

    struct Probe {
        started: Instant,
        finished: Instant,
        result: Result<String, String>,
    }
    let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let looper = {
        let (probes, stop, client) = (Arc::clone(&probes), Arc::clone(&stop), client.clone());
        let url = burrow.https_url(&format!("shared.{DOMAIN}"), "/whoami");
        tokio::spawn(async move {
            for _ in 0..2000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let started = Instant::now();
                let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                    let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
                    let status = resp.status().as_u16();
                    let body = resp.text().await.map_err(|e| e.to_string())?;
                    if status == 200 {
                        Ok(body)
                    } else {
                        Err(format!("status {status}: {body}"))
                    }
                })
                .await;
                let result = attempt.unwrap_or_else(|_| Err("no answer within 5 s".into()));
                probes.lock().unwrap().push(Probe {
                    started,
                    finished: Instant::now(),
                    result,
                });
            }
        })
    };
    let count = |f: &dyn Fn(&Probe) -> bool| probes.lock().unwrap().iter().filter(|p| f(p)).count();

    // A few requests in, kill the serving client.
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&|_| true) < 5 {
        assert!(Instant::now() < deadline, "the request loop does not run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kill_at = Instant::now();
    first.kill();
    let killed = Instant::now();

    // Then at least 10 answers from the other.
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(&|p| p.started > killed && p.result.as_deref() == Ok("fo-b")) < 10 {
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(Duration::from_secs(10), looper).await;

    let probes = probes.lock().unwrap();
    let summary: Vec<String> = probes
        .iter()
        .map(|p| {
            let when = if p.finished < kill_at {
                "before"
            } else if p.started < killed {
                "in flight"
            } else {
                "after"
            };
            format!("{when}: {:?}", p.result)
        })
        .collect();
    let failures = probes.iter().filter(|p| p.result.is_err()).count();
    assert!(
        failures <= 1,
        "at most the in-flight request may fail, {failures} did: {summary:#?}\n{}",
        burrow_log(&burrow)
    );
    // The request in flight at the kill may fail or be served by either.
    assert!(
        probes
            .iter()
            .filter(|p| p.finished < kill_at)
            .all(|p| p.result.as_deref() == Ok("fo-a")),
        "before the kill the oldest client serves everything: {summary:#?}"
    );
    assert!(
        probes
            .iter()
            .filter(|p| p.started > killed)
            .all(|p| p.result.as_deref() != Ok("fo-a")),
        "nothing can come from the killed client: {summary:#?}"
    );
    let after = probes
        .iter()
        .filter(|p| p.started > killed && p.result.as_deref() == Ok("fo-b"))
        .count();
    assert!(
        after >= 10,
        "the remaining client must serve after the kill ({after} answers): {summary:#?}\n{}",
        burrow_log(&burrow)
    );
    drop(second);
}

/// `--balance replace` (the default): the newer connection of the key
/// takes the name; the older one is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_replace_newest_connection_takes_the_name() {
    let burrow = start(&[]).await;
    let a = Origin::start("rp-a").await;
    let b = Origin::start("rp-b").await;
    let key = SshKeyPair::generate();
    let (first, second) = two_clients(&burrow, &key, &a, &b).await;
    wait_output(&first, &burrow, "taken over").await;

    let client = burrow.https_client();
    for i in 0..10 {
        let (status, body) = whoami(&client, &burrow, "shared").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "rp-b"),
            "request {i}: the newer connection serves the name"
        );
    }
    assert!(
        !second.stdout.text().contains("2 clients"),
        "replace never shares a name\n{}",
        context(&second, &burrow)
    );
    let s = burrow.stats_with_subdomains().await;
    assert_eq!(s["active_names"].as_u64(), Some(1), "{s}");
    assert_eq!(s["clients"], json!({"shared": 1}), "{s}");
}

// ===========================================================================
// Admin API
// ===========================================================================

/// Finds the `/tunnels` entry named `name`.
fn entry<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tunnel named {name:?} in {list:#?}"))
}

/// `GET /tunnels` lists every tunnel (http, tcp, tls) with its client,
/// key, times and counters that move with traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_get_tunnels_lists_every_kind_with_counters() {
    let test_start = SystemTime::now();
    let range = free_port_range(10);
    let burrow = start_tcp(range, &[]).await;
    let origin = Origin::start("adm-http").await;
    let app = TcpApp::start("adm-tcp").await;
    let tls_host = format!("adm-tls.{DOMAIN}");
    let tls_app = TlsApp::start(&tls_host).await;
    let key = SshKeyPair::generate();

    let c1 = ssh_key(
        &burrow,
        &key,
        &["-R", &fwd("80", origin.port), "-R", &fwd("tcp:0", app.port)],
        &[],
    );
    let http_url = c1.url().await;
    let tcp = tcp_port(&c1, &burrow).await;
    // The TLS one from another client IP.
    let c2 = ssh_from(
        &burrow,
        OTHER_IP,
        &["-R", &fwd("adm-tls:443", tls_app.port)],
        &["--", "tls=passthrough"],
    );
    wait_out(&c2, &burrow, &format!("https://{tls_host}:")).await;
    // A keyless one: no fingerprint.
    let c3 = Ssh::spawn_keyless(&burrow, &["-R", &fwd("80", origin.port)]);
    let anon_url = c3.url().await;

    // Traffic: 5 requests, 3 TCP connections with 1000 bytes each way plus
    // one held open, one TLS exchange.
    let client = burrow.https_client();
    for _ in 0..5 {
        let resp = burrow.get(&http_url.host(), "/hello").await;
        let resp = expect_status(resp, 200, "through the HTTP tunnel").await;
        assert_eq!(resp.text().await.unwrap(), HELLO);
    }
    for i in 0..3 {
        let s = open_visitor(LOOPBACK, tcp, &app)
            .await
            .unwrap_or_else(|e| panic!("tcp connection {i}: {e}"));
        echo_exact(s, Arc::new(random_bytes(1000, i)))
            .await
            .unwrap_or_else(|e| panic!("tcp connection {i}: {e}"));
    }
    let held = open_visitor(LOOPBACK, tcp, &app)
        .await
        .unwrap_or_else(|e| panic!("held tcp connection: {e}"));
    let answer = passthrough_exchange(&burrow, &tls_host, &tls_app, "counted").await;
    assert!(answer.contains("got=counted"), "{answer}");
    drop(client);

    let list = tunnels(&burrow).await;
    assert_eq!(list.len(), 4, "four tunnels: {list:#?}");
    let common_fields = |t: &Value, kind: &str, client_ip: &str| {
        assert_eq!(t["kind"], kind, "{t}");
        assert_eq!(t["client_ip"], client_ip, "{t}");
        assert_eq!(t["clients"].as_u64(), Some(1), "{t}");
        let created = utc(&t["created"], "created");
        let last = utc(&t["last_active"], "last_active");
        assert!(
            created + Duration::from_secs(2) >= test_start && secs_from_now(created) < 2.0,
            "created must be during this test: {t}"
        );
        assert!(
            last >= created - Duration::from_secs(1),
            "last_active before created: {t}"
        );
        assert!(secs_from_now(last) < 2.0, "last_active in the future: {t}");
        for f in ["requests", "bytes_in", "bytes_out", "open_connections"] {
            assert!(t[f].is_u64(), "{f} must be a count: {t}");
        }
    };

    let h = entry(&list, &http_url.name);
    common_fields(h, "http", "127.0.0.1");
    assert_eq!(
        h["url"],
        format!("https://{}.{DOMAIN}:{}", http_url.name, burrow.https_port()),
        "{h}"
    );
    assert!(h["port"].is_null(), "{h}");
    assert_eq!(h["fingerprint"], key.fingerprint.as_str(), "{h}");
    assert!(h["requests"].as_u64().unwrap() >= 5, "{h}");
    assert!(h["bytes_in"].as_u64().unwrap() > 0, "{h}");
    assert!(
        h["bytes_out"].as_u64().unwrap() >= 5 * HELLO.len() as u64,
        "{h}"
    );

    let t = entry(&list, &format!("tcp:{tcp}"));
    common_fields(t, "tcp", "127.0.0.1");
    assert_eq!(t["url"], format!("tcp://{DOMAIN}:{tcp}"), "{t}");
    assert_eq!(t["port"].as_u64(), Some(u64::from(tcp)), "{t}");
    assert_eq!(t["fingerprint"], key.fingerprint.as_str(), "{t}");
    assert!(t["requests"].as_u64().unwrap() >= 4, "4 connections: {t}");
    assert!(t["bytes_in"].as_u64().unwrap() >= 3000, "{t}");
    assert!(t["bytes_out"].as_u64().unwrap() >= 3000, "{t}");
    assert!(
        t["open_connections"].as_u64().unwrap() >= 1,
        "one is held open: {t}"
    );

    let s = entry(&list, "adm-tls");
    common_fields(s, "tls", "127.0.0.2");
    assert_eq!(
        s["url"],
        format!("https://{tls_host}:{}", burrow.https_port()),
        "{s}"
    );
    assert!(
        s["fingerprint"]
            .as_str()
            .is_some_and(|f| f.starts_with("SHA256:")),
        "{s}"
    );
    assert!(s["requests"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["bytes_in"].as_u64().unwrap() > 0, "{s}");
    assert!(s["bytes_out"].as_u64().unwrap() > 0, "{s}");

    let k = entry(&list, &anon_url.name);
    common_fields(k, "http", "127.0.0.1");
    assert!(k["fingerprint"].is_null(), "keyless client: {k}");
    assert_eq!(k["requests"].as_u64(), Some(0), "{k}");
    drop((held, c1, c2, c3));
}

/// `DELETE /tunnels/{name}` closes every client of the name with a notice
/// (HTTP: then 404; TCP: the port refuses); unknown names are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_delete_tunnel_closes_every_client_with_a_notice() {
    let range = free_port_range(10);
    let burrow = start_tcp(range, &["--balance", "round-robin"]).await;
    let a = Origin::start("del-a").await;
    let b = Origin::start("del-b").await;
    let app = TcpApp::start("del-tcp").await;
    let key = SshKeyPair::generate();
    let (first, second) = two_clients(&burrow, &key, &a, &b).await;
    wait_out(&second, &burrow, "2 clients").await;
    let raw = Ssh::spawn(&burrow, &["-R", &fwd("tcp:0", app.port)]);
    let port = tcp_port(&raw, &burrow).await;
    let client = burrow.https_client();
    assert_eq!(whoami(&client, &burrow, "shared").await.0, 200);

    let r = admin(&burrow, "DELETE", "/tunnels/shared", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json, json!({"name": "shared", "closed": 2}), "{r:?}");
    let (status, body) = whoami(&client, &burrow, "shared").await;
    assert_eq!(status, 404, "a deleted name answers 404 at once: {body}");
    for c in [&first, &second] {
        wait_output(c, &burrow, "closed by the server operator").await;
    }
    assert!(
        tunnels(&burrow).await.iter().all(|t| t["name"] != "shared"),
        "deleted tunnels leave the list"
    );

    let tcp_name = format!("tcp:{port}");
    open_visitor(LOOPBACK, port, &app)
        .await
        .unwrap_or_else(|e| panic!("tcp tunnel before DELETE: {e}"));
    let r = admin(&burrow, "DELETE", &format!("/tunnels/{tcp_name}"), None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json, json!({"name": tcp_name, "closed": 1}), "{r:?}");
    wait_output(&raw, &burrow, "closed by the server operator").await;
    expect_refused_or_cut(LOOPBACK, port, "a deleted TCP tunnel's port", &burrow).await;

    let r = admin(&burrow, "DELETE", "/tunnels/shared", None).await;
    assert_admin_error(&r, 404, "DELETE of a name that is gone");
    let r = admin(&burrow, "DELETE", "/tunnels/no-such-tunnel", None).await;
    assert_admin_error(&r, 404, "DELETE of an unknown name");
}

/// `POST /bans` closes the IP's live SSH connections and refuses new ones,
/// its visitors get 403 (HTTP) and are cut (TCP); `GET /bans` lists it;
/// `DELETE /bans/{ip}` lifts it. Without `duration_secs`, the ban lasts
/// `--block-duration`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bans_close_live_tunnels_and_refuse_the_ip() {
    let range = free_port_range(10);
    let burrow = start_tcp(range, &["--block-duration", "2h"]).await;
    let origin = Origin::start("ban-http").await;
    let app = TcpApp::start("ban-tcp").await;

    let good = Ssh::spawn(
        &burrow,
        &["-R", &fwd("80", origin.port), "-R", &fwd("tcp:0", app.port)],
    );
    let good_url = good.url().await;
    let tcp = tcp_port(&good, &burrow).await;
    let mut victim = ssh_from(&burrow, OTHER_IP, &["-R", &fwd("80", origin.port)], &[]);
    let victim_url = victim.url().await;

    let from_other = burrow.https_client_from(OTHER_IP);
    assert_eq!(
        whoami(&from_other, &burrow, &good_url.name).await,
        (200, "ban-http".to_string())
    );
    let mut live = open_visitor(OTHER_IP, tcp, &app)
        .await
        .unwrap_or_else(|e| panic!("TCP visitor from {OTHER_IP} before the ban: {e}"));

    // Ban.
    let r = admin(
        &burrow,
        "POST",
        "/bans",
        Some(r#"{"ip":"127.0.0.2","duration_secs":600}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["ip"], "127.0.0.2", "{r:?}");
    assert_eq!(r.json["duration_secs"].as_u64(), Some(600), "{r:?}");
    let until = secs_from_now(utc(&r.json["until"], "until"));
    assert!(
        (590.0..=601.0).contains(&until),
        "until ~600 s ahead: {r:?}"
    );
    assert!(
        r.json["closed_connections"].as_u64().unwrap_or(0) >= 1,
        "the victim's SSH connection was closed: {r:?}"
    );

    // Its open TCP connection to someone else's tunnel is cut at once.
    expect_cut(
        &mut live,
        "open TCP connection of a banned visitor",
        &burrow,
    )
    .await;

    // The victim's connection and tunnel are gone.
    expect_exit(&mut victim, &burrow, "SSH client of a banned IP").await;
    let (status, _) = whoami(&burrow.https_client(), &burrow, &victim_url.name).await;
    assert_eq!(status, 404, "the banned client's tunnel must be gone");

    // New SSH connections from it are refused.
    let mut late = ssh_from(&burrow, OTHER_IP, &["-R", &fwd("80", origin.port)], &[]);
    let st = expect_exit(&mut late, &burrow, "new SSH connection from a banned IP").await;
    assert!(!st.success(), "{}", context(&late, &burrow));
    assert!(
        find_tunnel_urls(&late.all_output()).is_empty(),
        "a banned IP gets no tunnel\n{}",
        context(&late, &burrow)
    );

    // Its visitors: 403 on HTTP, cut on TCP; others are unaffected.
    let (status, body) = whoami(&burrow.https_client_from(OTHER_IP), &burrow, &good_url.name).await;
    assert_eq!(status, 403, "HTTP visitor from a banned IP: {body}");
    assert_eq!(
        whoami(&burrow.https_client(), &burrow, &good_url.name).await,
        (200, "ban-http".to_string()),
        "other visitors are unaffected"
    );
    let mut cut = connect_from(OTHER_IP, tcp).await.expect("connect");
    expect_cut(&mut cut, "TCP visitor from a banned IP", &burrow).await;
    open_visitor(LOOPBACK, tcp, &app)
        .await
        .unwrap_or_else(|e| panic!("TCP visitor from 127.0.0.1 during the ban: {e}"));

    // Listed.
    let list = bans(&burrow).await;
    let ban = list
        .iter()
        .find(|b| b["ip"] == "127.0.0.2")
        .unwrap_or_else(|| panic!("127.0.0.2 not in GET /bans: {list:#?}"));
    utc(&ban["until"], "until");
    let remaining = ban["remaining_secs"].as_u64().unwrap_or(0);
    assert!((580..=600).contains(&remaining), "{ban}");
    assert!(ban["reason"].is_string(), "{ban}");

    // Lifted.
    let r = admin(&burrow, "DELETE", "/bans/127.0.0.2", None).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.json,
        json!({"ip": "127.0.0.2", "unbanned": true}),
        "{r:?}"
    );
    assert!(
        bans(&burrow).await.iter().all(|b| b["ip"] != "127.0.0.2"),
        "lifted bans leave the list"
    );
    assert_eq!(
        whoami(&burrow.https_client_from(OTHER_IP), &burrow, &good_url.name).await,
        (200, "ban-http".to_string()),
        "after DELETE /bans the IP is a visitor again"
    );
    open_visitor(OTHER_IP, tcp, &app)
        .await
        .unwrap_or_else(|e| panic!("TCP visitor from {OTHER_IP} after the ban: {e}"));
    let back = ssh_from(&burrow, OTHER_IP, &["-R", &fwd("80", origin.port)], &[]);
    back.url().await;
    let r = admin(&burrow, "DELETE", "/bans/127.0.0.2", None).await;
    assert_admin_error(&r, 404, "DELETE of an IP that is not banned");

    // Default duration: --block-duration.
    let r = admin(&burrow, "POST", "/bans", Some(r#"{"ip":"127.0.0.3"}"#)).await;
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json["duration_secs"].as_u64(), Some(7200), "{r:?}");
    let until = secs_from_now(utc(&r.json["until"], "until"));
    assert!((7190.0..=7201.0).contains(&until), "{r:?}");
    assert!(
        bans(&burrow).await.iter().any(|b| b["ip"] == "127.0.0.3"),
        "the second ban is listed"
    );
    drop(good);
}

/// Admin errors are JSON with proper codes: 400 for bad input, 404 for
/// unknown paths and objects, 405 for wrong methods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_errors_are_json_with_status_codes() {
    let burrow = start(&[]).await;
    assert!(tunnels(&burrow).await.is_empty(), "no tunnels yet");
    assert!(bans(&burrow).await.is_empty(), "no bans yet");

    for (body, what) in [
        ("{", "malformed JSON"),
        (r#"{"ip":"not-an-ip"}"#, "bad ip"),
        (r#"{"ip":"127.0.0.9","duration_secs":0}"#, "duration 0"),
        (r#"{"duration_secs":60}"#, "no ip"),
    ] {
        let r = admin(&burrow, "POST", "/bans", Some(body)).await;
        assert_admin_error(&r, 400, &format!("POST /bans with {what}"));
    }
    assert!(
        bans(&burrow).await.is_empty(),
        "refused bans are not listed"
    );

    let r = admin(&burrow, "DELETE", "/bans/not-an-ip", None).await;
    assert_admin_error(&r, 400, "DELETE /bans with a bad IP");
    let r = admin(&burrow, "DELETE", "/bans/127.0.0.9", None).await;
    assert_admin_error(&r, 404, "DELETE /bans of an IP that is not banned");
    let r = admin(&burrow, "DELETE", "/tunnels/nope", None).await;
    assert_admin_error(&r, 404, "DELETE /tunnels of an unknown name");
    let r = admin(&burrow, "GET", "/no-such-endpoint", None).await;
    assert_admin_error(&r, 404, "unknown path");
    let r = admin(&burrow, "PUT", "/tunnels", Some("[]")).await;
    assert_admin_error(&r, 405, "PUT /tunnels");
    let r = admin(&burrow, "PUT", "/bans", Some("[]")).await;
    assert_admin_error(&r, 405, "PUT /bans");

    // The stats document still answers on `/`.
    assert!(burrow.stats().await["active_tunnels"].is_u64());
}

/// A web page in the operator's browser must not drive the admin API: a
/// cross-site "simple" POST (text/plain) is refused, and so is any request
/// whose Host is not a loopback name (DNS rebinding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_cross_site_posts_and_foreign_hosts() {
    let burrow = start(&[]).await;
    let url = format!("http://{}/bans", burrow.addrs.stats);
    let resp = burrow
        .http_client()
        .post(&url)
        .bearer_auth(burrow.admin_token())
        .header("content-type", "text/plain")
        .body(r#"{"ip":"127.0.0.9","duration_secs":60}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415, "text/plain POST /bans");
    assert!(bans(&burrow).await.is_empty(), "nothing was banned");

    let stats_port = burrow.addrs.stats.port();
    for (host, want) in [
        ("evil.example".to_string(), 421),
        (format!("rebind.example:{stats_port}"), 421),
        (format!("localhost:{stats_port}"), 200),
        (format!("127.0.0.1:{stats_port}"), 200),
    ] {
        for path in ["/", "/tunnels"] {
            let resp = burrow
                .http_client()
                .get(format!("http://{}{path}", burrow.addrs.stats))
                .bearer_auth(burrow.admin_token())
                .header("host", &host)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), want, "GET {path} with Host {host}");
        }
    }
}

/// One connection cannot join itself on a name (two `-R` for one name with
/// `--balance round-robin`): the second forward is refused with a clear
/// line, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_one_connection_cannot_serve_a_name_twice() {
    let burrow = start(&["--balance", "round-robin"]).await;
    let origin = Origin::start("twice").await;
    let ssh = Ssh::spawn(
        &burrow,
        &[
            "-R",
            &fwd("twice:80", origin.port),
            "-R",
            &fwd("twice:443", origin.port),
        ],
    );
    wait_line(&ssh, &burrow, "ERROR: ", "already served by another -R").await;
    let (status, body) = whoami(&burrow.https_client(), &burrow, "twice").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "twice"),
        "{}",
        context(&ssh, &burrow)
    );
    let s = burrow.stats_with_subdomains().await;
    assert_eq!(s["clients"], json!({"twice": 1}), "{s}");
}

/// `--balance failover`: the standby gets no traffic by design, and must
/// not be closed by the tunnel idle timeout while its name is in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_failover_standby_survives_the_idle_timeout() {
    let burrow = start(&["--balance", "failover", "--tunnel-idle-timeout", "2s"]).await;
    let a = Origin::start("idle-a").await;
    let b = Origin::start("idle-b").await;
    let key = SshKeyPair::generate();
    let (first, second) = two_clients(&burrow, &key, &a, &b).await;
    assert_two_clients_announced(&first, &second, &burrow).await;

    // Keep the name busy (through the oldest client) for twice the timeout.
    let client = burrow.https_client();
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let (status, body) = whoami(&client, &burrow, "shared").await;
        assert_eq!((status, body.as_str()), (200, "idle-a"));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for ssh in [&first, &second] {
        assert!(
            !ssh.all_output().contains("closed: no traffic"),
            "a client of a busy name was closed as idle\n{}",
            context(ssh, &burrow)
        );
    }
    let s = burrow.stats_with_subdomains().await;
    assert_eq!(s["clients"], json!({"shared": 2}), "{s}");

    // Once the whole name is quiet, both go.
    wait_output(&first, &burrow, "closed: no traffic").await;
    wait_output(&second, &burrow, "closed: no traffic").await;
}

/// HTTP-only options on a connection with a TCP tunnel: the banner says
/// they do not protect it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_banner_warns_that_http_options_do_not_apply() {
    let range = free_port_range(5);
    let burrow = start_tcp(range, &[]).await;
    let app = TcpApp::start("opts").await;
    let ssh = Ssh::spawn_cmd(
        &burrow,
        &["-R", &fwd("tcp:0", app.port)],
        &["--", "auth=u:p"],
    );
    wait_line(&ssh, &burrow, "NOTE: ", "apply to HTTP tunnels only").await;
}

// ===========================================================================
// SSH on the HTTPS port
// ===========================================================================

/// `ssh -p HTTPS_PORT -R …` gets its tunnels (an HTTP one and a
/// passthrough one) while HTTPS visitors on that same port are served as
/// before, over HTTP/1.1 and HTTP/2, and passthrough still reaches the
/// app's own TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_on_the_https_port_next_to_https_h2_and_passthrough() {
    let burrow = start(&[]).await;
    let origin = Origin::start("via-the-https-port").await;
    let forward = fwd("80", origin.port);
    let ssh = SshSpec {
        port: burrow.https_port(),
        args: &["-R", &forward],
        ..SshSpec::default()
    }
    .spawn();
    let url = ssh.url().await;
    for (client, version) in [
        (burrow.https_client_h1(), reqwest::Version::HTTP_11),
        (burrow.https_client_h2(), reqwest::Version::HTTP_2),
    ] {
        let resp = client
            .get(burrow.https_url(&url.host(), "/whoami"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{version:?} through the same port: {e}"));
        assert_eq!(resp.version(), version);
        let resp = expect_status(resp, 200, "a tunnel made over the HTTPS port").await;
        assert_eq!(resp.text().await.unwrap(), "via-the-https-port");
    }

    let host = format!("pt-on-https.{DOMAIN}");
    let app = TlsApp::start(&host).await;
    let forward = fwd("pt-on-https:443", app.port);
    let pt = SshSpec {
        port: burrow.https_port(),
        args: &["-R", &forward],
        remote_cmd: &["--", "tls=passthrough"],
        ..SshSpec::default()
    }
    .spawn();
    wait_out(
        &pt,
        &burrow,
        &format!("https://{host}:{}", burrow.https_port()),
    )
    .await;
    let answer = passthrough_exchange(&burrow, &host, &app, "over one port").await;
    assert_eq!(
        answer.trim_end(),
        format!("tls-app sni={host} got=over one port")
    );
}

/// `--ssh-on-https off`: the HTTPS port speaks only TLS, so an SSH client
/// there fails (and HTTPS still works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_on_https_off_leaves_the_port_to_tls() {
    let burrow = start(&["--ssh-on-https", "off"]).await;
    let origin = Origin::start("tls-only").await;
    let forward = fwd("80", origin.port);
    let mut ssh = SshSpec {
        port: burrow.https_port(),
        args: &["-o", "ConnectTimeout=5", "-R", &forward],
        ..SshSpec::default()
    }
    .spawn();
    let status = ssh
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("ssh gives up on a TLS-only port");
    assert!(!status.success(), "{}", ssh.all_output());
    assert!(find_tunnel_urls(&ssh.all_output()).is_empty());
    let landing = burrow.get("localhost", "/").await;
    expect_status(landing, 200, "HTTPS on the same port").await;
}

/// SSH through the HTTPS port counts toward the same SSH limits: with one
/// handshake allowed per IP, a handshake held on :443 makes the next one
/// (on the SSH port or the HTTPS port) get the limit's line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_on_the_https_port_counts_toward_the_ssh_limits() {
    let burrow = Burrow::start(&[
        "--max-handshakes-per-ip",
        "1",
        "--max-conns-per-minute",
        "0",
        "--violations-before-block",
        "0",
    ])
    .await;
    let mut held = ssh_client_on(burrow.addrs.https).await;
    let (greeting, closed) = read_until_closed_or(&mut held, "\r\n").await;
    assert!(greeting.starts_with("SSH-2.0-burrow"), "{greeting:?}");
    assert!(!closed, "the held handshake stays open");

    for (port, addr) in [("ssh", burrow.addrs.ssh), ("https", burrow.addrs.https)] {
        let mut stream = ssh_client_on(addr).await;
        let (text, closed) = read_until_closed_or(&mut stream, "\0").await;
        assert!(closed, "over the limit on the {port} port: closed");
        assert!(
            text.starts_with("burrow: max-handshakes-per-ip: too many SSH handshakes"),
            "over the limit on the {port} port: {text:?}"
        );
    }
    drop(held);
}

/// A raw client that sends an SSH identification line, as OpenSSH does
/// first thing.
async fn ssh_client_on(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"SSH-2.0-test\r\n").await.unwrap();
    stream
}

/// Reads until `until` shows up or the server closes (bounded). Returns
/// the text and whether it closed (`"\0"` never shows up in text lines,
/// but does in the binary key exchange that follows an admitted greeting).
async fn read_until_closed_or(stream: &mut TcpStream, until: &str) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&got).contains(until) {
                return false;
            }
        }
    };
    let closed = tokio::time::timeout(IO_WAIT, read)
        .await
        .expect("an answer in time");
    (String::from_utf8_lossy(&got).into_owned(), closed)
}
