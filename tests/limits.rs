//! End-to-end tests of the abuse limits: the real `burrow` binary with its
//! limits lowered by flags, the real OpenSSH client, a real local origin,
//! and real HTTPS clients (reqwest, tungstenite, hand-written HTTP over
//! rustls). Every test runs its own burrow instance on loopback port 0.
//!
//! Timing assertions use generous windows around the configured limit (the
//! housekeeping loop ticks every second); every wait is bounded.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const TEXT_TIMEOUT: Duration = Duration::from_secs(10);

const CHROME_UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 \
                         (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Starts burrow with `args`, an origin labelled `label` (labels must be
/// unique in this binary: [`Origin::hits`] counts by label) and
/// `ssh -R 80:127.0.0.1:ORIGIN` in banner mode.
async fn tunnel_with(args: &[&str], label: &str) -> (Burrow, Origin, Ssh, TunnelUrl) {
    let burrow = Burrow::start(args).await;
    let origin = Origin::start(label).await;
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let url = ssh.url().await;
    (burrow, origin, ssh, url)
}

fn fwd(origin: &Origin) -> String {
    format!("80:127.0.0.1:{}", origin.port)
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The safety headers every page burrow generates itself must carry.
fn assert_page_headers(headers: &reqwest::header::HeaderMap, ctx: &str) {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        get("x-content-type-options"),
        Some("nosniff"),
        "{ctx}: X-Content-Type-Options; headers {headers:?}"
    );
    assert_eq!(
        get("x-frame-options"),
        Some("DENY"),
        "{ctx}: X-Frame-Options; headers {headers:?}"
    );
    assert_eq!(
        get("referrer-policy"),
        Some("strict-origin-when-cross-origin"),
        "{ctx}: Referrer-Policy; headers {headers:?}"
    );
    assert_eq!(
        get("cache-control"),
        Some("no-store"),
        "{ctx}: Cache-Control; headers {headers:?}"
    );
}

async fn get_with(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url} {headers:?}: {e}"))
}

/// GET `url` as visitor `ip` (through the trusted proxy's X-Forwarded-For).
async fn visitor_get(client: &reqwest::Client, url: &str, ip: &str) -> reqwest::Response {
    get_with(client, url, &[("x-forwarded-for", ip)]).await
}

fn retry_after_secs(resp: &reqwest::Response) -> u64 {
    header(resp, "retry-after")
        .unwrap_or_else(|| panic!("no Retry-After header: {:?}", resp.headers()))
        .parse()
        .unwrap_or_else(|e| panic!("Retry-After is not whole seconds: {e}"))
}

/// Waits (bounded) for ssh to exit; panics with its output otherwise.
async fn expect_exit(ssh: &mut Ssh, what: &str) -> std::process::ExitStatus {
    match ssh.wait_exit(EXIT_TIMEOUT).await {
        Some(st) => st,
        None => panic!("{what}: ssh did not exit: {}", ssh.all_output()),
    }
}

/// Waits for `needle` on `buf`, panicking with everything ssh printed.
async fn expect_text(ssh: &Ssh, buf: &OutputBuf, needle: &str, timeout: Duration) {
    if let Err(seen) = buf.wait_contains(needle, timeout).await {
        panic!(
            "expected {needle:?} from ssh; got {seen:?}\nall output:\n{}",
            ssh.all_output()
        );
    }
}

/// Reads one HTTP/1.1 response with a Content-Length from a raw stream.
async fn read_http1_response<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (String, Vec<u8>) {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = r.read(&mut chunk).await.expect("read response head");
            assert!(
                n > 0,
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("response without Content-Length: {head}"));
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = r.read(&mut chunk).await.expect("read response body");
            assert!(n > 0, "connection closed inside the response body");
            body.extend_from_slice(&chunk[..n]);
        }
        (head, body)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("reading an HTTP/1.1 response timed out")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn assert_between(d: Duration, lo: f64, hi: f64, what: &str) {
    assert!(
        secs(d) >= lo && secs(d) <= hi,
        "{what}: took {:.2} s, expected between {lo} s and {hi} s",
        secs(d)
    );
}

/// Reads a WebSocket until it ends (close frame, EOF or error), returning
/// the data messages seen on the way; panics if it is still open after
/// `timeout`.
async fn ws_until_closed<S>(ws: &mut S, timeout: Duration) -> (Vec<Message>, Instant)
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Instant::now(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => seen.push(m),
            }
        }
    })
    .await;
    match ended {
        Ok(at) => (seen, at),
        Err(_) => panic!("websocket still open after {timeout:?}"),
    }
}

async fn ws_echo<S>(ws: &mut S, msg: Message)
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + futures_util::Sink<Message, Error = tungstenite::Error>
        + Unpin,
{
    ws.send(msg.clone()).await.expect("websocket send");
    assert_eq!(ws_next(ws).await, msg, "websocket echo");
}

/// The 429 (or other) answer of a refused WebSocket handshake.
fn ws_refusal(
    result: Result<(impl Sized, tungstenite::handshake::client::Response), tungstenite::Error>,
    ctx: &str,
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match result {
        Ok((_, resp)) => panic!("{ctx}: websocket was accepted ({})", resp.status()),
        Err(tungstenite::Error::Http(resp)) => resp,
        Err(e) => panic!("{ctx}: expected an HTTP refusal, got {e}"),
    }
}

// ---------------------------------------------------------------------------
// SSH side: connection rate, violations and blocks
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_conn_rate_limit_disconnects_with_reason() {
    let burrow = Burrow::start(&[
        "--max-conns-per-minute",
        "2",
        "--violations-before-block",
        "0",
    ])
    .await;
    let origin = Origin::start("conn-rate").await;
    let first = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let url = first.url().await;
    let second = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    second.url().await;

    // The third connection within the minute is a violation: refused after
    // the key exchange with a disconnect reason OpenSSH prints.
    let mut third = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let st = expect_exit(&mut third, "third connection in a minute").await;
    assert!(
        !st.success(),
        "refused ssh must exit non-zero: {}",
        third.all_output()
    );
    expect_text(
        &third,
        &third.stderr,
        "max-conns-per-minute: more than 2 new SSH connections per minute from your IP; try again in ",
        TEXT_TIMEOUT,
    )
    .await;
    let err = third.stderr.text();
    assert!(
        err.contains("Received disconnect from"),
        "OpenSSH should report the server's disconnect: {err}"
    );
    // "try again in N s" with 0 < N <= 60.
    let wait: u64 = err
        .split("try again in ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `try again in N s` in {err:?}"));
    assert!((1..=60).contains(&wait), "retry hint {wait} s: {err}");
    assert!(
        find_tunnel_urls(&third.stdout.text()).is_empty(),
        "a refused connection must not get a tunnel: {}",
        third.all_output()
    );

    let s = burrow.stats().await;
    assert_eq!(s["active_tunnels"].as_u64(), Some(2), "{s}");
    assert!(s["total_rate_limited"].as_u64() >= Some(1), "{s}");
    assert_eq!(
        s["blocked_ips"].as_u64(),
        Some(0),
        "--violations-before-block 0 never blocks: {s}"
    );
    // Connections admitted before the limit are untouched.
    let resp = burrow.get(&url.host(), "/hello").await;
    let resp = expect_status(resp, 200, "tunnel of an earlier connection").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
}

/// Parses `YYYY-MM-DD HH:MM:SS UTC` at the start of `text`.
fn parse_utc(text: &str) -> std::time::SystemTime {
    let stamp = text
        .get(..19)
        .unwrap_or_else(|| panic!("no time in {text:?}"));
    assert_eq!(
        text.get(19..23),
        Some(" UTC"),
        "time must be followed by ` UTC`: {text:?}"
    );
    humantime::parse_rfc3339(&format!("{}Z", stamp.replace(' ', "T")))
        .unwrap_or_else(|e| panic!("bad time {stamp:?}: {e}"))
}

fn assert_about_an_hour_from_now(until: std::time::SystemTime, ctx: &str) {
    let now = std::time::SystemTime::now();
    let ahead = until
        .duration_since(now)
        .unwrap_or_else(|_| panic!("{ctx}: block end is in the past"));
    assert!(
        ahead > Duration::from_secs(3600 - 120) && ahead <= Duration::from_secs(3600 + 5),
        "{ctx}: block should end about 1 h from now, ends in {ahead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_violations_block_ip_and_close_its_tunnels() {
    let burrow = Burrow::start(&[
        "--max-conns-per-minute",
        "2",
        "--violations-before-block",
        "2",
        "--block-duration",
        "1h",
    ])
    .await;
    let origin = Origin::start("block-owner").await;
    // Two connections of the IP: one with a session, one with -N (none).
    let mut owner = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let url = owner.url().await;
    let mut quiet = Ssh::spawn(&burrow, &["-N", "-R", &fwd(&origin)]);
    burrow.wait_stat("active_tunnels", 2, URL_TIMEOUT).await;
    let quiet_host = burrow.stats_with_subdomains().await["subdomains"]
        .as_array()
        .expect("subdomains")
        .iter()
        .filter_map(|v| v.as_str())
        .find(|n| *n != url.name)
        .map(|n| format!("{n}.{DOMAIN}"))
        .expect("the -N connection's tunnel");
    let client = burrow.https_client();
    for host in [url.host(), quiet_host.clone()] {
        let resp = client
            .get(burrow.https_url(&host, "/hello"))
            .send()
            .await
            .unwrap();
        expect_status(resp, 200, "before the block").await;
    }

    // Violation 1: refused, not yet blocked.
    let mut v1 = Ssh::spawn(&burrow, &["-N"]);
    let st = expect_exit(&mut v1, "violation 1").await;
    assert!(!st.success(), "{}", v1.all_output());
    expect_text(&v1, &v1.stderr, "max-conns-per-minute", TEXT_TIMEOUT).await;
    let s = burrow.stats().await;
    assert_eq!(s["blocked_ips"].as_u64(), Some(0), "one violation: {s}");
    assert_eq!(s["active_tunnels"].as_u64(), Some(2), "{s}");

    // Violation 2: the IP is blocked; its live session is told and closed.
    let mut v2 = Ssh::spawn(&burrow, &["-N"]);
    let st = expect_exit(&mut v2, "violation 2").await;
    assert!(!st.success(), "{}", v2.all_output());

    expect_text(
        &owner,
        &owner.stdout,
        "all its tunnels are closed.",
        TEXT_TIMEOUT,
    )
    .await;
    let out = owner.stdout.text();
    let line = out
        .lines()
        .find(|l| l.starts_with("ERROR: your IP is blocked until "))
        .unwrap_or_else(|| panic!("no `ERROR: your IP is blocked until` line: {out:?}"));
    let rest = &line["ERROR: your IP is blocked until ".len()..];
    assert_about_an_hour_from_now(parse_utc(rest), line);
    assert!(
        rest[19..].starts_with(
            " UTC (2 violations: last one max-conns-per-minute); all its tunnels are closed."
        ),
        "block line should give the reason: {line:?}"
    );
    expect_exit(&mut owner, "blocked owner").await;
    // The session-less connection is disconnected too.
    expect_exit(&mut quiet, "blocked -N connection").await;
    expect_text(&quiet, &quiet.stderr, "Received disconnect", TEXT_TIMEOUT).await;

    let s = burrow.stats().await;
    assert_eq!(s["blocked_ips"].as_u64(), Some(1), "{s}");
    assert!(s["total_blocked"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["active_tunnels"].as_u64(), Some(0), "{s}");
    for host in [url.host(), quiet_host] {
        let resp = client
            .get(burrow.https_url(&host, "/hello"))
            .send()
            .await
            .unwrap();
        expect_status(resp, 404, "tunnel of a blocked IP").await;
    }

    // New connections are dropped before the SSH version exchange, with one
    // text line; OpenSSH gives up in kex_exchange_identification.
    let mut late = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let st = expect_exit(&mut late, "connection from a blocked IP").await;
    assert!(!st.success(), "{}", late.all_output());
    if late
        .stderr
        .wait_for(TEXT_TIMEOUT, |t| {
            (t.contains("kex_exchange_identification") || t.contains("Connection closed"))
                .then_some(())
        })
        .await
        .is_err()
    {
        panic!(
            "blocked ssh should fail in the version exchange: {}",
            late.all_output()
        );
    }
    assert!(find_tunnel_urls(&late.all_output()).is_empty());

    let mut raw = TcpStream::connect(burrow.addrs.ssh).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut raw, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "blocked raw connection must be closed");
    let text = String::from_utf8_lossy(&bytes);
    let rest = text
        .strip_prefix("burrow: your IP is blocked until ")
        .unwrap_or_else(|| panic!("blocked raw connection got {text:?}"));
    assert_about_an_hour_from_now(parse_utc(rest), &text);
    assert!(
        rest[19..].starts_with(" UTC (2 violations: last one max-conns-per-minute)")
            && text.ends_with("\r\n"),
        "blocked line: {text:?}"
    );
    assert!(
        !text.contains("SSH-2.0"),
        "a blocked IP must not get the SSH version line: {text:?}"
    );
    let s = burrow.stats().await;
    assert_eq!(s["blocked_ips"].as_u64(), Some(1), "{s}");
}

// ---------------------------------------------------------------------------
// SSH side: handshakes
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_handshake_timeout_drops_unauthenticated_connections() {
    let burrow = Burrow::start(&["--handshake-timeout", "2s", "--max-conns-per-minute", "0"]).await;
    let ssh_addr = burrow.addrs.ssh;

    // A client that connects and sends nothing at all.
    let silent = async {
        let mut s = TcpStream::connect(ssh_addr).await.unwrap();
        let start = Instant::now();
        let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        (start, bytes, closed)
    };
    // A client that sends its version line and then stalls in the key
    // exchange.
    let versioned = async {
        let mut s = TcpStream::connect(ssh_addr).await.unwrap();
        let start = Instant::now();
        s.write_all(b"SSH-2.0-OpenSSH_9.2p1 burrow-limits-test\r\n")
            .await
            .unwrap();
        let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(10)).await;
        (start, bytes, closed)
    };
    let ((s1, b1, c1), (s2, b2, c2)) = tokio::join!(silent, versioned);

    let c1 = c1.expect("silent connection still open 10 s after a 2 s handshake timeout");
    assert_between(c1 - s1, 1.5, 4.5, "silent connection closed");
    assert!(
        String::from_utf8_lossy(&b1).starts_with("SSH-2.0-"),
        "server version line expected first: {:?}",
        String::from_utf8_lossy(&b1)
    );

    // A client that sends its version line and then stalls the key
    // exchange is dropped too: a disconnect cannot be sent mid-kex, so the
    // socket itself is closed at the timeout (this test found that it once
    // stayed open, holding a handshake slot until the peer went away).
    let c2 = c2.expect("stalled connection still open 10 s after a 2 s handshake timeout");
    assert_between(c2 - s2, 1.5, 4.5, "stalled connection closed");
    assert!(
        String::from_utf8_lossy(&b2).starts_with("SSH-2.0-"),
        "server version line expected first: {:?}",
        String::from_utf8_lossy(&b2)
    );

    // A normal client still gets through (the timeout is only for slow ones).
    let origin = Origin::start("handshake-timeout").await;
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    ssh.url().await;
}

/// `--ssh-keepalive-interval` and `--ssh-keepalive-max`: a client that
/// stops answering (SIGSTOPped: its socket stays open, nothing comes back)
/// is closed with its tunnels after interval × (max + 1); a live client
/// that sends nothing for longer than that keeps its tunnel, because it
/// answers the keepalives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_keepalives_close_a_vanished_client_and_keep_an_idle_one() {
    let burrow =
        Burrow::start(&["--ssh-keepalive-interval", "1s", "--ssh-keepalive-max", "2"]).await;
    let origin = Origin::start("keepalive").await;
    let idle = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let idle_url = idle.url().await;
    let idle_since = Instant::now();
    let gone = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    gone.url().await;
    burrow
        .wait_stat("active_tunnels", 2, Duration::from_secs(5))
        .await;

    gone.signal("STOP");
    let stopped = Instant::now();
    burrow
        .wait_stat("active_tunnels", 1, Duration::from_secs(15))
        .await;
    gone.signal("CONT");
    // Three unanswered seconds: the keepalives at 1 s and 2 s, then the
    // one that is one too many.
    assert_between(stopped.elapsed(), 2.0, 8.0, "a vanished client closed");

    // The idle client has said nothing of its own for longer than the
    // silence the server allows (1 s × (2 + 2)); its answers kept it.
    let idle_for = Duration::from_secs(6);
    tokio::time::sleep(idle_for.saturating_sub(idle_since.elapsed())).await;
    let resp = burrow.get(&idle_url.host(), "/hello").await;
    expect_status(resp, 200, "an idle client that answers keepalives").await;
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));
}

/// A one-connection TCP relay to `target` that passes the client's version
/// line and key exchange through, then withholds everything the client sends
/// after its NEWKEYS (so authentication never reaches the server). The
/// server's bytes are always relayed. Returns the relay's port.
async fn stall_after_kex_relay(target: std::net::SocketAddr) -> (u16, tokio::task::JoinHandle<()>) {
    const NEWKEYS: u8 = 21;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let server = TcpStream::connect(target).await.expect("connect to burrow");
        let (mut client_rd, mut client_wr) = client.into_split();
        let (mut server_rd, mut server_wr) = server.into_split();
        let down = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
            let _ = client_wr.shutdown().await;
        });
        // Client → server, parsed: the version line, then cleartext binary
        // packets (uint32 length, then that many bytes) up to NEWKEYS.
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut version_done = false;
        'relay: loop {
            loop {
                if !version_done {
                    let Some(i) = buf.iter().position(|b| *b == b'\n') else {
                        break;
                    };
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    server_wr.write_all(&line).await.unwrap();
                    version_done = true;
                    continue;
                }
                if buf.len() < 6 {
                    break;
                }
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                if buf.len() < 4 + len {
                    break;
                }
                let packet: Vec<u8> = buf.drain(..4 + len).collect();
                server_wr.write_all(&packet).await.unwrap();
                if packet[5] == NEWKEYS {
                    break 'relay;
                }
            }
            match client_rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        // Keep both connections open, swallowing what the client sends.
        while let Ok(n) = client_rd.read(&mut chunk).await {
            if n == 0 {
                break;
            }
        }
        let _ = down.await;
        drop(server_wr);
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_handshake_timeout_disconnects_openssh_with_reason() {
    let burrow = Burrow::start(&["--handshake-timeout", "2s", "--max-conns-per-minute", "0"]).await;
    // Real OpenSSH whose authentication is held back after the key exchange.
    let (port, relay) = stall_after_kex_relay(burrow.addrs.ssh).await;
    let started = Instant::now();
    let mut ssh = Ssh::spawn_port(port, &["-N"]);
    let st = expect_exit(&mut ssh, "ssh stuck before authentication").await;
    assert!(!st.success(), "{}", ssh.all_output());
    assert_between(started.elapsed(), 1.5, 5.0, "handshake timeout");
    expect_text(
        &ssh,
        &ssh.stderr,
        "handshake-timeout: authentication did not finish within 2 s",
        TEXT_TIMEOUT,
    )
    .await;
    assert!(
        ssh.stderr.text().contains("Received disconnect from"),
        "{}",
        ssh.all_output()
    );
    relay.abort();
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(0));
}

/// Opens a raw TCP connection and waits for the server's version line, so
/// the connection is known to hold a handshake slot.
async fn hold_handshake(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = s.read(&mut buf).await.expect("read version line");
            assert!(
                n > 0,
                "connection closed before the version line: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("no SSH version line");
    assert!(
        got.starts_with(b"SSH-2.0-"),
        "expected the server's version line, got {:?}",
        String::from_utf8_lossy(&got)
    );
    s
}

/// A raw connection that must be refused at once with one text line.
async fn refused_line(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let (bytes, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "over-limit connection was not closed: {:?}",
        String::from_utf8_lossy(&bytes)
    );
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_max_handshakes_per_ip() {
    let burrow = Burrow::start(&[
        "--max-handshakes-per-ip",
        "2",
        "--max-conns-per-minute",
        "0",
        "--violations-before-block",
        "0",
    ])
    .await;
    let h1 = hold_handshake(burrow.addrs.ssh).await;
    let h2 = hold_handshake(burrow.addrs.ssh).await;

    let text = refused_line(burrow.addrs.ssh).await;
    assert_eq!(
        text,
        "burrow: max-handshakes-per-ip: too many SSH handshakes in progress from your IP (limit 2); finish or close the others\r\n",
        "third concurrent handshake"
    );
    let origin = Origin::start("handshakes-per-ip").await;
    let mut refused = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    let st = expect_exit(&mut refused, "ssh over the handshake limit").await;
    assert!(!st.success(), "{}", refused.all_output());
    let s = burrow.stats().await;
    assert!(s["total_rate_limited"].as_u64() >= Some(2), "{s}");

    // Closing one pending handshake frees its slot (the other stays held).
    drop(h1);
    let _ssh = ssh_until_admitted(&burrow, &origin, Duration::from_secs(5)).await;
    drop(h2);
}

/// Spawns `ssh -R` until one gets a tunnel URL (earlier attempts may still
/// be refused while the server notices closed connections), for at most
/// `within`.
async fn ssh_until_admitted(burrow: &Burrow, origin: &Origin, within: Duration) -> Ssh {
    let deadline = Instant::now() + within;
    loop {
        let mut ssh = Ssh::spawn(burrow, &["-R", &fwd(origin)]);
        let got = ssh
            .stdout
            .wait_for(URL_TIMEOUT, |t| find_tunnel_urls(t).into_iter().next())
            .await;
        if got.is_ok() {
            return ssh;
        }
        ssh.kill();
        assert!(
            Instant::now() < deadline,
            "ssh still refused after {within:?}: {}",
            ssh.all_output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_max_handshakes_total_is_not_a_violation() {
    let burrow = Burrow::start(&[
        "--max-handshakes",
        "2",
        "--max-handshakes-per-ip",
        "0",
        "--max-conns-per-minute",
        "0",
        "--violations-before-block",
        "1",
    ])
    .await;
    let h1 = hold_handshake(burrow.addrs.ssh).await;
    let h2 = hold_handshake(burrow.addrs.ssh).await;
    let text = refused_line(burrow.addrs.ssh).await;
    assert_eq!(
        text,
        "burrow: max-handshakes: the server has 2 SSH handshakes in progress; try again in a few seconds\r\n",
        "third handshake server-wide"
    );
    let s = burrow.stats().await;
    assert!(s["total_rate_limited"].as_u64() >= Some(1), "{s}");
    assert_eq!(
        s["blocked_ips"].as_u64(),
        Some(0),
        "the server-wide squeeze must not count as a violation (--violations-before-block 1): {s}"
    );
    drop((h1, h2));
    // Once the pending handshakes are gone, the same IP connects normally.
    let origin = Origin::start("handshakes-total").await;
    let _ssh = ssh_until_admitted(&burrow, &origin, Duration::from_secs(5)).await;
    assert_eq!(burrow.stats().await["blocked_ips"].as_u64(), Some(0));
}

// ---------------------------------------------------------------------------
// SSH side: tunnel counts
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_max_tunnels_per_ip() {
    let burrow = Burrow::start(&["--max-tunnels-per-ip", "3"]).await;
    let origin = Origin::start("tunnels-per-ip").await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let ssh = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
        ssh.url().await;
        open.push(ssh);
    }
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(3));

    // A 4th tunnel from the same IP: the session says why.
    let fourth = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    expect_text(
        &fourth,
        &fourth.stdout,
        "ERROR: max-tunnels-per-ip: your IP already has 3 tunnels open (limit 3); close one first",
        URL_TIMEOUT,
    )
    .await;
    expect_text(
        &fourth,
        &fourth.stderr,
        "remote port forwarding failed",
        URL_TIMEOUT,
    )
    .await;
    assert!(
        find_tunnel_urls(&fourth.stdout.text()).is_empty(),
        "refused forward must not print a URL: {}",
        fourth.all_output()
    );
    drop(fourth);

    // With ExitOnForwardFailure=yes, ssh exits non-zero.
    let mut strict = Ssh::spawn(
        &burrow,
        &["-o", "ExitOnForwardFailure=yes", "-R", &fwd(&origin)],
    );
    let st = expect_exit(&mut strict, "ExitOnForwardFailure over the tunnel limit").await;
    assert!(!st.success(), "{}", strict.all_output());

    let s = burrow.stats().await;
    assert_eq!(s["active_tunnels"].as_u64(), Some(3), "{s}");
    assert!(s["total_rate_limited"].as_u64() >= Some(2), "{s}");

    // Closing one makes room again.
    open[0].kill();
    burrow
        .wait_stat("active_tunnels", 2, Duration::from_secs(5))
        .await;
    let again = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    again.url().await;
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_max_tunnels_total() {
    let burrow = Burrow::start(&["--max-tunnels", "1", "--max-tunnels-per-ip", "0"]).await;
    let origin = Origin::start("tunnels-total").await;
    let first = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    first.url().await;
    let second = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    expect_text(
        &second,
        &second.stdout,
        "ERROR: max-tunnels: the server is at its limit of 1 tunnels; try again later",
        URL_TIMEOUT,
    )
    .await;
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));
}

// ---------------------------------------------------------------------------
// SSH side: tunnel idle timeout and lifetime
// ---------------------------------------------------------------------------

fn reconnect_hint(burrow: &Burrow) -> String {
    format!(
        "Reconnect with: ssh -p {} -R 80:localhost:3000 localhost",
        burrow.ssh_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_idle_timeout_closes_unused_tunnel() {
    let (burrow, _origin, mut ssh, url) =
        tunnel_with(&["--tunnel-idle-timeout", "2s"], "idle-unused").await;
    let seen = Instant::now();
    let closed = format!(
        "Tunnel {} closed: no traffic for 2 s (tunnel-idle-timeout). {}",
        url.url,
        reconnect_hint(&burrow)
    );
    expect_text(&ssh, &ssh.stdout, &closed, Duration::from_secs(8)).await;
    assert_between(seen.elapsed(), 1.0, 4.5, "idle tunnel closed");
    // Half-way (at most 10 minutes before), the user was told.
    let text = ssh.stdout.text();
    let notice = format!("NOTICE: {} closes in", url.url);
    let warned_at = text
        .find(&notice)
        .unwrap_or_else(|| panic!("no idle notice: {text}"));
    assert!(
        text[warned_at..].contains("unless it gets traffic"),
        "{text}"
    );
    assert!(
        warned_at < text.find("closed: no traffic").unwrap(),
        "the notice comes before the close: {text}"
    );
    // That was the connection's only tunnel: the connection ends.
    expect_exit(&mut ssh, "connection without tunnels").await;
    let s = burrow.stats().await;
    assert_eq!(s["active_tunnels"].as_u64(), Some(0), "{s}");
    let resp = burrow.get(&url.host(), "/hello").await;
    expect_status(resp, 404, "expired tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_idle_timeout_never_fires_while_busy() {
    let (burrow, _origin, ssh, url) =
        tunnel_with(&["--tunnel-idle-timeout", "2s"], "idle-busy").await;
    let client = burrow.https_client();

    // A slow stream (14 bytes, one every 300 ms: ~3.9 s) keeps a request
    // open for longer than the idle timeout.
    let started = Instant::now();
    let resp = client
        .get(burrow.https_url(&url.host(), "/drip?n=14&ms=300"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "slow stream").await;
    let body = resp.bytes().await.expect("slow stream body");
    assert!(
        started.elapsed() > Duration::from_millis(3500),
        "the slow stream should outlast the idle timeout"
    );
    let want: Vec<u8> = (0..14).map(pattern_byte).collect();
    assert_eq!(&body[..], &want[..], "slow stream arrived whole");
    assert!(
        !ssh.stdout.text().contains("closed:"),
        "tunnel closed during an open request: {}",
        ssh.all_output()
    );
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));

    // An open but silent WebSocket keeps it too.
    let (mut ws, _) = burrow.ws_connect(&url.host(), "/ws").await;
    tokio::time::sleep(Duration::from_secs(3)).await; // longer than the idle timeout
    assert!(
        !ssh.stdout.text().contains("closed:"),
        "tunnel closed while a WebSocket was open: {}",
        ssh.all_output()
    );
    ws_echo(&mut ws, Message::Text("still here".into())).await;
    ws.close(None).await.unwrap();
    ws_until_closed(&mut ws, Duration::from_secs(10)).await;
    drop(ws);
    burrow
        .wait_stat("active_websockets", 0, Duration::from_secs(5))
        .await;
    let idle_from = Instant::now();

    // Once nothing is open, the idle clock starts from the last activity.
    let closed = format!(
        "Tunnel {} closed: no traffic for 2 s (tunnel-idle-timeout)",
        url.url
    );
    expect_text(&ssh, &ssh.stdout, &closed, Duration::from_secs(8)).await;
    assert_between(
        idle_from.elapsed(),
        1.0,
        4.5,
        "idle close after the WebSocket ended",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_max_lifetime_notice_then_close() {
    let (burrow, _origin, mut ssh, url) =
        tunnel_with(&["--tunnel-max-lifetime", "4s"], "lifetime").await;
    let seen = Instant::now();
    // Keep a request open the whole time: the lifetime applies anyway.
    let client = burrow.https_client();
    let drip_url = burrow.https_url(&url.host(), "/drip?n=40&ms=250");
    let drip = tokio::spawn(async move {
        let resp = client.get(drip_url).send().await?;
        resp.bytes().await
    });

    let notice = format!("NOTICE: {} closes in ", url.url);
    expect_text(&ssh, &ssh.stdout, &notice, Duration::from_secs(6)).await;
    let noticed = seen.elapsed();
    let closed = format!(
        "Tunnel {} closed: it reached the maximum lifetime of 4 s (tunnel-max-lifetime). {}",
        url.url,
        reconnect_hint(&burrow)
    );
    expect_text(&ssh, &ssh.stdout, &closed, Duration::from_secs(6)).await;
    let closed_at = seen.elapsed();

    let out = ssh.stdout.text();
    let line = out
        .lines()
        .find(|l| l.starts_with(&notice))
        .expect("notice line");
    assert!(
        line.contains("(maximum tunnel lifetime)"),
        "notice should name the limit: {line:?}"
    );
    let left: u64 = line[notice.len()..]
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("notice without `closes in N s`: {line:?}"));
    assert!(
        (1..=2).contains(&left),
        "notice comes half-way through a 4 s lifetime: {line:?}"
    );
    assert!(
        out.find(&notice) < out.find("closed: it reached"),
        "notice must come before the close: {out:?}"
    );
    assert_between(noticed, 1.0, 3.9, "lifetime notice");
    assert_between(closed_at, 3.0, 6.5, "lifetime close");

    expect_exit(&mut ssh, "connection after its only tunnel expired").await;
    let s = burrow.stats().await;
    assert_eq!(s["active_tunnels"].as_u64(), Some(0), "{s}");
    let resp = burrow.get(&url.host(), "/hello").await;
    expect_status(resp, 404, "tunnel past its lifetime").await;
    let drip = tokio::time::timeout(Duration::from_secs(15), drip)
        .await
        .expect("open request did not end with the tunnel")
        .unwrap();
    assert!(
        !matches!(&drip, Ok(b) if b.len() == 40),
        "a request open when the lifetime ended cannot complete: {drip:?}"
    );
}

// ---------------------------------------------------------------------------
// HTTP side: rate limits
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn visitor_rate_limit_is_per_visitor() {
    let (burrow, origin, mut ssh, url) = tunnel_with(
        &[
            "--visitor-rate",
            "1/m",
            "--visitor-burst",
            "3",
            "--tunnel-rate",
            "0",
            "--trusted-proxies",
            "127.0.0.1/32",
            // Any SSH violation would block at once: visitors' 429s must not.
            "--violations-before-block",
            "1",
        ],
        "visitor-rate",
    )
    .await;
    let client = burrow.https_client();
    let u = burrow.https_url(&url.host(), "/hello");
    let as_visitor = |ip: &'static str| visitor_get(&client, &u, ip);

    for i in 0..3 {
        let resp = as_visitor("203.0.113.5").await;
        expect_status(resp, 200, &format!("visitor request {i} within the burst")).await;
    }
    for i in 0..5 {
        let resp = as_visitor("203.0.113.5").await;
        let resp = expect_status(
            resp,
            429,
            &format!("visitor request {} over the burst", i + 3),
        )
        .await;
        let wait = retry_after_secs(&resp);
        assert!((1..=60).contains(&wait), "Retry-After {wait} for 1/m");
        assert_page_headers(resp.headers(), "429 page");
        let body = resp.text().await.unwrap();
        assert!(
            body.contains("visitor-rate"),
            "429 page must name the limit: {body}"
        );
    }
    // Another visitor (through the trusted proxy) is not affected.
    let resp = as_visitor("203.0.113.6").await;
    expect_status(resp, 200, "another visitor").await;

    // IPv6 visitors are grouped by /64.
    for _ in 0..3 {
        expect_status(as_visitor("2001:db8:1:2::1").await, 200, "IPv6 visitor").await;
    }
    expect_status(
        as_visitor("2001:db8:1:2:ffff:ffff:ffff:ffff").await,
        429,
        "same /64 shares the bucket",
    )
    .await;
    expect_status(as_visitor("2001:db8:1:3::1").await, 200, "another /64").await;

    assert_eq!(
        origin.hits("/hello"),
        3 + 1 + 3 + 1,
        "throttled requests must never reach the app"
    );
    let s = burrow.stats().await;
    assert!(s["total_rate_limited"].as_u64() >= Some(6), "{s}");
    assert_eq!(
        s["blocked_ips"].as_u64(),
        Some(0),
        "visitor 429s are no SSH violation: {s}"
    );
    assert_eq!(s["total_blocked"].as_u64(), Some(0), "{s}");
    assert_eq!(s["active_tunnels"].as_u64(), Some(1), "{s}");
    assert!(
        ssh.wait_exit(Duration::from_millis(10)).await.is_none(),
        "the tunnel owner must stay connected: {}",
        ssh.all_output()
    );
    // And the owner's IP can still open SSH connections.
    let other = Ssh::spawn(&burrow, &["-R", &fwd(&origin)]);
    other.url().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_rate_limit_and_throttled_visitor_spares_it() {
    let (burrow, origin, _ssh, url) = tunnel_with(
        &[
            "--visitor-rate",
            "1/m",
            "--visitor-burst",
            "1",
            "--tunnel-rate",
            "1/m",
            "--tunnel-burst",
            "3",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
        "tunnel-rate",
    )
    .await;
    let client = burrow.https_client();
    let u = burrow.https_url(&url.host(), "/hello");
    let as_visitor = |ip: &'static str| visitor_get(&client, &u, ip);

    expect_status(as_visitor("198.51.100.1").await, 200, "A's first").await;
    for _ in 0..10 {
        let resp = expect_status(as_visitor("198.51.100.1").await, 429, "A throttled").await;
        let body = resp.text().await.unwrap();
        assert!(body.contains("visitor-rate"), "{body}");
    }
    // A's ten refusals spent nothing of the tunnel's burst of 3.
    expect_status(as_visitor("198.51.100.2").await, 200, "B").await;
    expect_status(as_visitor("198.51.100.3").await, 200, "C").await;
    let resp = expect_status(
        as_visitor("198.51.100.4").await,
        429,
        "D: tunnel bucket empty",
    )
    .await;
    let wait = retry_after_secs(&resp);
    assert!((1..=60).contains(&wait), "Retry-After {wait}");
    assert_page_headers(resp.headers(), "tunnel-rate 429");
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("tunnel-rate"),
        "429 page must name the limit: {body}"
    );
    assert_eq!(origin.hits("/hello"), 3);
    let s = burrow.stats().await;
    assert!(s["total_rate_limited"].as_u64() >= Some(11), "{s}");
}

// ---------------------------------------------------------------------------
// HTTP side: concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_limits_per_visitor_and_per_tunnel() {
    let (burrow, origin, _ssh, url) = tunnel_with(
        &[
            "--max-inflight-per-visitor",
            "2",
            "--max-inflight-per-tunnel",
            "3",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
        "inflight",
    )
    .await;
    let client = burrow.https_client();
    let slow = burrow.https_url(&url.host(), "/delay?ms=4000");
    let spawn_slow = |ip: &'static str| {
        let (client, slow) = (client.clone(), slow.clone());
        tokio::spawn(async move {
            let resp = get_with(&client, &slow, &[("x-forwarded-for", ip)]).await;
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        })
    };

    let a1 = spawn_slow("198.51.100.10");
    let a2 = spawn_slow("198.51.100.10");
    burrow
        .wait_stat("active_requests", 2, Duration::from_secs(3))
        .await;
    let resp = get_with(&client, &slow, &[("x-forwarded-for", "198.51.100.10")]).await;
    let resp = expect_status(resp, 429, "third request of one visitor").await;
    assert!(retry_after_secs(&resp) >= 1);
    assert_page_headers(resp.headers(), "in-flight 429");
    let body = resp.text().await.unwrap();
    assert!(body.contains("max-inflight-per-visitor"), "{body}");

    let b1 = spawn_slow("198.51.100.11");
    burrow
        .wait_stat("active_requests", 3, Duration::from_secs(3))
        .await;
    let resp = get_with(&client, &slow, &[("x-forwarded-for", "198.51.100.12")]).await;
    let resp = expect_status(resp, 503, "fourth request on the tunnel").await;
    assert!(retry_after_secs(&resp) >= 1);
    assert_page_headers(resp.headers(), "in-flight 503");
    let body = resp.text().await.unwrap();
    assert!(body.contains("max-inflight-per-tunnel"), "{body}");

    for t in [a1, a2, b1] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("slow request timed out")
            .unwrap();
        assert_eq!((status, body.as_str()), (200, HELLO));
    }
    burrow
        .wait_stat("active_requests", 0, Duration::from_secs(5))
        .await;
    assert_eq!(
        origin.hits("/delay"),
        3,
        "refused requests never reach the app"
    );
    // Slots are released when requests finish.
    let resp = get_with(
        &client,
        &burrow.https_url(&url.host(), "/hello"),
        &[("x-forwarded-for", "198.51.100.10")],
    )
    .await;
    expect_status(resp, 200, "after the slow requests finished").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_limits_per_visitor_and_per_tunnel() {
    let (burrow, _origin, _ssh, url) = tunnel_with(
        &[
            "--max-websockets-per-visitor",
            "1",
            "--max-websockets-per-tunnel",
            "2",
            "--trusted-proxies",
            "127.0.0.1/32",
        ],
        "ws-limits",
    )
    .await;
    let host = url.host();
    let xff = |ip| [("x-forwarded-for", ip)];

    let (mut a1, _) = burrow
        .ws_try_connect(&host, "/ws", &xff("198.51.100.20"))
        .await
        .expect("first websocket of A");
    ws_echo(&mut a1, Message::Text("a1".into())).await;

    let resp = ws_refusal(
        burrow
            .ws_try_connect(&host, "/ws", &xff("198.51.100.20"))
            .await,
        "second websocket of A",
    );
    assert_eq!(resp.status(), 429, "second websocket of one visitor");
    assert!(resp.headers().contains_key("retry-after"), "{resp:?}");
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("max-websockets-per-visitor"), "{body}");

    let (mut b1, _) = burrow
        .ws_try_connect(&host, "/ws", &xff("198.51.100.21"))
        .await
        .expect("first websocket of B");
    ws_echo(&mut b1, Message::Text("b1".into())).await;

    let resp = ws_refusal(
        burrow
            .ws_try_connect(&host, "/ws", &xff("198.51.100.22"))
            .await,
        "third websocket on the tunnel",
    );
    assert_eq!(resp.status(), 429, "third websocket on the tunnel");
    let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned();
    assert!(body.contains("max-websockets-per-tunnel"), "{body}");
    assert_eq!(burrow.stats().await["active_websockets"].as_u64(), Some(2));

    // Closing one frees a slot.
    a1.close(None).await.unwrap();
    ws_until_closed(&mut a1, Duration::from_secs(10)).await;
    drop(a1);
    burrow
        .wait_stat("active_websockets", 1, Duration::from_secs(5))
        .await;
    let (mut c1, _) = burrow
        .ws_try_connect(&host, "/ws", &xff("198.51.100.22"))
        .await
        .expect("websocket after one closed");
    ws_echo(&mut c1, Message::Text("c1".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_byte_cap_and_idle_timeout() {
    let (burrow, _origin, _ssh, url) = tunnel_with(
        &[
            "--websocket-max-bytes",
            "100KiB",
            "--websocket-idle-timeout",
            "2s",
        ],
        "ws-bytes-idle",
    )
    .await;
    let host = url.host();

    // Byte cap: 40 000 bytes pass; 80 000 more exceed 100 KiB one way.
    let (mut ws, _) = burrow.ws_connect(&host, "/ws").await;
    ws_echo(&mut ws, Message::Binary(random_bytes(40_000, 1))).await;
    ws.send(Message::Binary(random_bytes(80_000, 2)))
        .await
        .expect("send");
    let (seen, _) = ws_until_closed(&mut ws, Duration::from_secs(5)).await;
    assert!(
        seen.iter().all(|m| m.len() != 80_000),
        "the message over the cap must not be relayed"
    );
    drop(ws);
    burrow
        .wait_stat("active_websockets", 0, Duration::from_secs(5))
        .await;

    // Idle timeout: a WebSocket that keeps talking outlives it...
    let (mut ws, _) = burrow.ws_connect(&host, "/ws").await;
    let opened = Instant::now();
    for i in 0..7 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ws_echo(&mut ws, Message::Text(format!("tick {i}"))).await;
    }
    assert!(opened.elapsed() > Duration::from_secs(3));
    // ...and is closed once nothing moves for 2 s.
    let quiet = Instant::now();
    let (seen, ended) = ws_until_closed(&mut ws, Duration::from_secs(8)).await;
    assert!(seen.is_empty(), "unexpected messages: {seen:?}");
    assert_between(ended - quiet, 1.5, 4.5, "idle websocket closed");
    burrow
        .wait_stat("active_websockets", 0, Duration::from_secs(5))
        .await;
}

// ---------------------------------------------------------------------------
// HTTP side: body size and request idle timeout
// ---------------------------------------------------------------------------

/// A request body of `n` bytes, streamed in 1000-byte pieces with no
/// Content-Length.
fn streamed_body(n: usize) -> reqwest::Body {
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = random_bytes(n, 7)
        .chunks(1000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))
}

/// Reads a response body until it ends or fails; returns the byte count and
/// whether it ended cleanly.
async fn drain_body(mut resp: reqwest::Response) -> (usize, bool) {
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), resp.chunk()).await {
            Err(_) => panic!("response body neither ended nor failed in 15 s"),
            Ok(Ok(Some(c))) => n += c.len(),
            Ok(Ok(None)) => return (n, true),
            Ok(Err(_)) => return (n, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_size_requests_and_responses() {
    let (burrow, origin, _ssh, url) = tunnel_with(&["--max-body-size", "10000"], "body-size").await;
    let host = url.host();
    let echo = burrow.https_url(&host, "/echo");

    for (client, proto) in [
        (burrow.https_client_h1(), "HTTP/1.1"),
        (burrow.https_client_h2(), "HTTP/2"),
    ] {
        // Content-Length over the cap: refused up front.
        let resp = client
            .post(&echo)
            .body(random_bytes(20_000, 3))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 413, &format!("{proto}: Content-Length 20000")).await;
        assert_page_headers(resp.headers(), "413 page");
        let body = resp.text().await.unwrap();
        assert!(body.contains("max-body-size"), "{body}");
        assert_eq!(
            origin.hits("/echo"),
            0,
            "{proto}: a body over the cap by Content-Length must not reach the app"
        );
    }
    for (client, proto) in [
        (burrow.https_client_h1(), "HTTP/1.1"),
        (burrow.https_client_h2(), "HTTP/2"),
    ] {
        // Under the cap: passes.
        let small = random_bytes(5_000, 4);
        let resp = client.post(&echo).body(small.clone()).send().await.unwrap();
        let resp = expect_status(resp, 200, &format!("{proto}: 5000-byte body")).await;
        assert!(resp.bytes().await.unwrap()[..] == small[..]);

        // No Content-Length (chunked / plain HTTP/2 DATA): counted while
        // streaming.
        let resp = client
            .post(&echo)
            .body(streamed_body(30_000))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{proto}: streamed 30000-byte body: {e}"));
        let resp = expect_status(resp, 413, &format!("{proto}: streamed 30000 bytes")).await;
        let body = resp.text().await.unwrap();
        assert!(body.contains("max-body-size"), "{body}");
    }

    let client = burrow.https_client();
    // Response with Content-Length over the cap: 502 before the headers.
    let resp = client
        .get(burrow.https_url(&host, "/bytes?n=20000"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 502, "response Content-Length 20000").await;
    assert_page_headers(resp.headers(), "502 response-too-large page");
    let body = resp.text().await.unwrap();
    assert!(body.contains("max-body-size"), "{body}");
    // Exactly the cap: fine.
    let resp = client
        .get(burrow.https_url(&host, "/bytes?n=10000"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "response of exactly the cap").await;
    assert_eq!(resp.bytes().await.unwrap().len(), 10_000);

    // Chunked response over the cap: cut off.
    for (client, proto) in [
        (burrow.https_client_h1(), "HTTP/1.1"),
        (burrow.https_client_h2(), "HTTP/2"),
    ] {
        // The cap can be hit before or after hyper has flushed the response
        // head: before, the visitor's stream is reset (no response at all);
        // after, the body is cut short. Either way it never ends cleanly.
        match client
            .get(burrow.https_url(&host, "/chunked?n=50000"))
            .send()
            .await
        {
            Err(err) => eprintln!("{proto}: chunked response over the cap reset early: {err}"),
            Ok(resp) => {
                let resp = expect_status(resp, 200, &format!("{proto}: chunked response")).await;
                let (n, clean) = drain_body(resp).await;
                assert!(
                    !clean && n <= 10_000,
                    "{proto}: a chunked response over the cap must be cut (got {n} bytes, clean end: {clean})"
                );
            }
        }
        let resp = client
            .get(burrow.https_url(&host, "/chunked?n=8000"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, &format!("{proto}: small chunked response")).await;
        assert_eq!(drain_body(resp).await, (8000, true), "{proto}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_idle_timeout_cuts_stalled_requests_only() {
    let (burrow, _origin, _ssh, url) =
        tunnel_with(&["--request-idle-timeout", "1s"], "request-idle").await;
    let host = url.host();
    let client = burrow.https_client();

    // The app never answers: 504.
    let hang = async {
        let started = Instant::now();
        let resp = client
            .get(burrow.https_url(&host, "/hang"))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 504, "app never answers").await;
        let took = started.elapsed();
        assert_page_headers(resp.headers(), "504 page");
        let body = resp.text().await.unwrap();
        assert!(body.contains("request-idle-timeout"), "{body}");
        assert_between(took, 0.8, 4.0, "504 for a silent app");
    };
    // The app stalls mid-body: the response is cut.
    let stall = async {
        let resp = client
            .get(burrow.https_url(&host, "/stall?first=100"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, "stalling response").await;
        let started = Instant::now();
        let (n, clean) = drain_body(resp).await;
        assert!(!clean, "stalled body must fail, not end cleanly");
        assert_eq!(n, 100, "bytes before the stall arrive");
        assert_between(started.elapsed(), 0.7, 4.0, "stalled body cut");
    };
    // A slow but moving stream outlives the timeout: 10 bytes, 300 ms apart.
    let drip = async {
        let started = Instant::now();
        let resp = client
            .get(burrow.https_url(&host, "/drip?n=10&ms=300"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, "slow stream").await;
        let body = resp.bytes().await.expect("slow stream must not be cut");
        let want: Vec<u8> = (0..10).map(pattern_byte).collect();
        assert_eq!(&body[..], &want[..]);
        assert!(started.elapsed() > Duration::from_millis(2500));
    };
    // A slow upload (a byte every 300 ms for ~2.4 s) is not cut either.
    let upload = async {
        let pieces = futures_util::stream::unfold(0u8, |i| async move {
            if i >= 9 {
                return None;
            }
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Some((Ok::<_, std::io::Error>(vec![b'a' + i]), i + 1))
        });
        let resp = client
            .post(burrow.https_url(&host, "/echo"))
            .body(reqwest::Body::wrap_stream(pieces))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, "slow upload").await;
        assert_eq!(resp.text().await.unwrap(), "abcdefghi");
    };
    tokio::join!(hang, stall, drip, upload);
}

// ---------------------------------------------------------------------------
// HTTP side: connection-level limits (slow-loris, head size, keep-alive)
// ---------------------------------------------------------------------------

/// `--tls-handshake-timeout`: a visitor on :443 that sends nothing, or a
/// ClientHello it never finishes, is cut when the time is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_timeout_cuts_silent_and_stalled_handshakes() {
    let burrow = Burrow::start(&["--tls-handshake-timeout", "2s"]).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", burrow.https_port()));
    let silent = async {
        let mut tcp = connect().await.unwrap();
        let start = Instant::now();
        let (bytes, closed) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
        let closed = closed.expect("a silent connection still open after 10 s");
        assert_between(closed - start, 1.5, 4.5, "silent connection closed");
        assert!(bytes.is_empty(), "{bytes:?}");
    };
    // A handshake record header announcing 512 bytes, then a few of them.
    let stalled = async {
        let mut tcp = connect().await.unwrap();
        let start = Instant::now();
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .await
            .unwrap();
        let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
        let closed = closed.expect("a stalled ClientHello still open after 10 s");
        assert_between(closed - start, 1.5, 4.5, "stalled ClientHello closed");
    };
    tokio::join!(silent, stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_timeout_and_max_header_size() {
    let burrow = Burrow::start(&[
        "--header-timeout",
        "2s",
        "--keepalive-timeout",
        "30s",
        "--max-header-size",
        "8KiB",
    ])
    .await;
    let b = &burrow;

    // Nothing at all after the TLS handshake.
    let silent = async {
        let mut tls = b.tls_connect("localhost", Alpn::Http1).await;
        let start = Instant::now();
        let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        let closed = closed.expect("silent TLS connection still open after 10 s");
        assert_between(closed - start, 1.5, 4.5, "silent connection closed");
        assert!(bytes.is_empty() || !bytes.starts_with(b"HTTP/1.1 2"));
    };
    // Half a request head, then nothing.
    let partial = async {
        let mut tls = b.tls_connect("localhost", Alpn::Http1).await;
        let start = Instant::now();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            .await
            .unwrap();
        let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        let closed = closed.expect("partial head still open after 10 s");
        assert_between(closed - start, 1.5, 4.5, "partial head closed");
        assert!(
            !bytes.starts_with(b"HTTP/1.1 2"),
            "an unfinished head must not be answered: {:?}",
            String::from_utf8_lossy(&bytes)
        );
    };
    // Slow-loris proper: a head trickled a byte every 250 ms never finishes
    // in time, though bytes keep moving.
    let trickle = async {
        let tls = b.tls_connect("localhost", Alpn::Http1).await;
        let start = Instant::now();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let writer = async move {
            let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
            let mut bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
            while start.elapsed() < Duration::from_secs(10) {
                let byte = bytes.next().unwrap();
                if wr.write_all(&[byte]).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let reader = async {
            let (_, closed) = read_until_closed(&mut rd, Duration::from_secs(10)).await;
            closed
        };
        let closed = tokio::select! {
            closed = reader => closed,
            _ = writer => None,
        };
        let closed = closed.expect("trickled head still open after 10 s");
        assert_between(closed - start, 1.5, 4.5, "trickled head closed");
    };
    // After a completed request, the next head gets the header timeout too
    // (not the 30 s keep-alive timeout).
    let second_head = async {
        let mut tls = b.tls_connect("localhost", Alpn::Http1).await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (head, _) = read_http1_response(&mut tls).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let start = Instant::now();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: loc").await.unwrap();
        let (_, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
        let closed = closed.expect("second partial head still open after 10 s");
        assert_between(closed - start, 1.5, 4.5, "second partial head closed");
    };
    // A head over --max-header-size: 431 or closed, never served.
    let oversized = async {
        let mut tls = b.tls_connect("localhost", Alpn::Http1).await;
        let big = "a".repeat(16 * 1024);
        let req = format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n");
        let _ = tls.write_all(req.as_bytes()).await;
        let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(5)).await;
        assert!(closed.is_some(), "oversized head: connection left open");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "oversized head must get 431 or a closed connection: {text:?}"
        );
    };
    tokio::join!(silent, partial, trickle, second_head, oversized);

    // Through real clients: a head within the limit is served, one over it
    // is not (HTTP/1.1 and HTTP/2).
    let big = "b".repeat(16 * 1024);
    let fine = "c".repeat(4 * 1024);
    for (client, proto) in [
        (burrow.https_client_h1(), "HTTP/1.1"),
        (burrow.https_client_h2(), "HTTP/2"),
    ] {
        let u = burrow.https_url("localhost", "/");
        let resp = get_with(&client, &u, &[("x-fine", &fine)]).await;
        expect_status(resp, 200, &format!("{proto}: 4 KiB header")).await;
        match client.get(&u).header("x-big", &big).send().await {
            Err(_) => {}
            Ok(resp) => assert_eq!(
                resp.status(),
                431,
                "{proto}: a 16 KiB header over an 8 KiB limit"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_timeout_closes_idle_connection() {
    let burrow = Burrow::start(&["--header-timeout", "30s", "--keepalive-timeout", "2s"]).await;
    let mut tls = burrow.tls_connect("localhost", Alpn::Http1).await;
    for i in 0..2 {
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_http1_response(&mut tls).await;
        assert!(head.starts_with("HTTP/1.1 200"), "request {i}: {head}");
        assert!(!body.is_empty());
        if i == 0 {
            // Idle for less than the timeout: the connection stays usable.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let idle = Instant::now();
    let (bytes, closed) = read_until_closed(&mut tls, Duration::from_secs(10)).await;
    let closed = closed.expect("idle keep-alive connection still open after 10 s");
    assert!(bytes.is_empty(), "unexpected bytes: {bytes:?}");
    assert_between(closed - idle, 1.5, 4.5, "idle keep-alive connection closed");
}

// ---------------------------------------------------------------------------
// Browser warning page
// ---------------------------------------------------------------------------

/// Extracts `value="..."` of the hidden input named `name`.
fn hidden_input(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden input {name:?} in {html}"))
        + marker.len();
    let len = html[start..].find('"').expect("unterminated value");
    html[start..start + len].to_string()
}

fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_warning_page_for_browser_navigations_only() {
    let (burrow, origin, _ssh, url) = tunnel_with(&[], "warning-page").await;
    let name = url.name.clone();
    let client = burrow.https_client();
    let page_url = burrow.https_url(&url.host(), "/headers?x=1");
    let navigate = [
        ("user-agent", CHROME_UA),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
    ];

    // A browser navigation gets the warning, not the app.
    let resp = get_with(&client, &page_url, &navigate).await;
    let resp = expect_status(resp, 200, "warning page").await;
    assert!(
        header(&resp, "content-type").is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        resp.headers()
    );
    assert_page_headers(resp.headers(), "warning page");
    let cookies = set_cookies(&resp);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains(&name),
        "warning must name the subdomain: {html}"
    );
    assert!(
        html.contains("action=\"/__burrow/continue\"") && html.contains("method=\"post\""),
        "warning must post to /__burrow/continue: {html}"
    );
    assert_eq!(hidden_input(&html, "next"), "/headers?x=1");
    let token = hidden_input(&html, "token");
    assert!(token.len() >= 16, "token too short: {token:?}");
    let want = format!("burrow_csrf_{name}={token}");
    assert!(
        cookies
            .iter()
            .any(|c| c.split(';').next() == Some(want.as_str())),
        "warning must set {want}: {cookies:?}"
    );
    assert_eq!(
        origin.hits("/headers"),
        0,
        "the app must not see a warned request"
    );

    // Without Fetch Metadata, Accept: text/html marks a navigation.
    let resp = get_with(
        &client,
        &page_url,
        &[("user-agent", CHROME_UA), ("accept", "text/html")],
    )
    .await;
    let html = expect_status(resp, 200, "").await.text().await.unwrap();
    assert!(
        html.contains("/__burrow/continue"),
        "Accept: text/html: {html}"
    );
    // A warned cookie for another subdomain does not count.
    let mut other = navigate.to_vec();
    let foreign = "burrow_warned_other-name-00000000=1".to_string();
    other.push(("cookie", &foreign));
    let html = get_with(&client, &page_url, &other)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("/__burrow/continue"),
        "foreign warned cookie: {html}"
    );
    assert_eq!(origin.hits("/headers"), 0);

    // Everything else goes straight to the app.
    let warned = format!("a=1; burrow_warned_{name}=1; burrow_csrf_{name}={token}; b=2");
    let skip: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "curl",
            vec![("user-agent", "curl/8.5.0"), ("accept", "text/html")],
        ),
        (
            "fetch()",
            vec![
                ("user-agent", CHROME_UA),
                ("sec-fetch-mode", "cors"),
                ("accept", "*/*"),
            ],
        ),
        ("burrow-skip-warning", {
            let mut h = navigate.to_vec();
            h.push(("burrow-skip-warning", "1"));
            h
        }),
        ("warned cookie", {
            let mut h = navigate.to_vec();
            h.push(("cookie", &warned));
            h
        }),
    ];
    for (what, headers) in &skip {
        let resp = get_with(&client, &page_url, headers).await;
        let resp = expect_status(resp, 200, what).await;
        let text = resp.text().await.unwrap();
        let seen: std::collections::BTreeMap<String, String> = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{what}: expected the app's JSON, got {text:?}: {e}"));
        assert!(
            !seen.values().any(|v| v.contains("burrow_")),
            "{what}: burrow's cookies must be stripped before the app: {seen:?}"
        );
        if *what == "warned cookie" {
            assert_eq!(
                seen.get("cookie").map(String::as_str),
                Some("a=1; b=2"),
                "the app's own cookies are kept"
            );
        }
    }
    assert_eq!(origin.hits("/headers"), skip.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_warning_continue_is_csrf_protected() {
    let (burrow, origin, _ssh, url) = tunnel_with(&[], "warning-continue").await;
    let name = url.name.clone();
    let client = burrow.https_client();
    let continue_url = burrow.https_url(&url.host(), "/__burrow/continue");
    let same_origin = format!("https://{}:{}", url.host(), burrow.https_port());

    // Get a real token from the warning page.
    let resp = get_with(
        &client,
        &burrow.https_url(&url.host(), "/headers?from=warning"),
        &[("user-agent", CHROME_UA), ("sec-fetch-mode", "navigate")],
    )
    .await;
    let html = expect_status(resp, 200, "warning page")
        .await
        .text()
        .await
        .unwrap();
    let token = hidden_input(&html, "token");
    let next = hidden_input(&html, "next");
    let csrf = format!("burrow_csrf_{name}={token}");

    let post = |cookie: Option<String>, origin_hdr: Option<&str>, body: String| {
        let mut req = client
            .post(&continue_url)
            .header("user-agent", CHROME_UA)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(o) = origin_hdr {
            req = req.header("origin", o.to_string());
        }
        req.send()
    };

    // Refusals: no cookie, no token, wrong token, foreign Origin, cross-site.
    let refusals: Vec<(&str, reqwest::Response)> = vec![
        (
            "no cookie",
            post(
                None,
                Some(&same_origin),
                form(&[("next", "/"), ("token", &token)]),
            )
            .await
            .unwrap(),
        ),
        (
            "no token",
            post(
                Some(csrf.clone()),
                Some(&same_origin),
                form(&[("next", "/")]),
            )
            .await
            .unwrap(),
        ),
        (
            "wrong token",
            post(
                Some(csrf.clone()),
                Some(&same_origin),
                form(&[("next", "/"), ("token", &"0".repeat(token.len()))]),
            )
            .await
            .unwrap(),
        ),
        (
            "foreign Origin",
            post(
                Some(csrf.clone()),
                Some("https://evil.example"),
                form(&[("next", "/"), ("token", &token)]),
            )
            .await
            .unwrap(),
        ),
        (
            "cross-site fetch metadata",
            client
                .post(&continue_url)
                .header("cookie", csrf.clone())
                .header("sec-fetch-site", "cross-site")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(&[("next", "/"), ("token", &token)]))
                .send()
                .await
                .unwrap(),
        ),
    ];
    for (what, resp) in refusals {
        assert!(
            !set_cookies(&resp)
                .iter()
                .any(|c| c.starts_with("burrow_warned_")),
            "{what}: refused Continue must not set the warned cookie"
        );
        expect_status(resp, 403, what).await;
    }

    // The real thing: 303 back to the page, warned cookie set.
    let resp = post(
        Some(format!("other=1; {csrf}")),
        Some(&same_origin),
        form(&[("next", &next), ("token", &token)]),
    )
    .await
    .unwrap();
    let resp = expect_status(resp, 303, "valid Continue").await;
    assert_eq!(header(&resp, "location"), Some("/headers?from=warning"));
    let want =
        format!("burrow_warned_{name}=1; Path=/; Max-Age=86400; HttpOnly; Secure; SameSite=Lax");
    let cookies = set_cookies(&resp);
    assert!(
        cookies.iter().any(|c| c == &want),
        "Continue must set exactly {want:?}: {cookies:?}"
    );

    // Open redirects are refused: only same-host paths.
    for evil in [
        "//evil.com",
        "//evil.com/x",
        "https://evil.com/",
        "/\\evil.com",
    ] {
        let resp = post(
            Some(csrf.clone()),
            Some(&same_origin),
            form(&[("next", evil), ("token", &token)]),
        )
        .await
        .unwrap();
        let resp = expect_status(resp, 303, &format!("next={evil}")).await;
        assert_eq!(header(&resp, "location"), Some("/"), "next={evil}");
    }
    // Any same-host path (with its query) is kept as the target.
    let resp = post(
        Some(csrf.clone()),
        Some(&same_origin),
        form(&[("next", "/a/b?c=d"), ("token", &token)]),
    )
    .await
    .unwrap();
    let resp = expect_status(resp, 303, "Continue to /a/b?c=d").await;
    assert_eq!(header(&resp, "location"), Some("/a/b?c=d"));
    assert_eq!(
        origin.hits("/__burrow/continue"),
        0,
        "Continue is burrow's own"
    );

    // With the warned cookie, the navigation reaches the app.
    let resp = get_with(
        &client,
        &burrow.https_url(&url.host(), "/headers?from=warning"),
        &[
            ("user-agent", CHROME_UA),
            ("sec-fetch-mode", "navigate"),
            ("cookie", &format!("burrow_warned_{name}=1")),
        ],
    )
    .await;
    let text = expect_status(resp, 200, "after Continue")
        .await
        .text()
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("expected the app after Continue, got {text:?}: {e}"));
    assert!(
        seen.get("cookie").is_none(),
        "burrow's cookie stripped: {seen}"
    );
    assert_eq!(origin.hits("/headers"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_browser_warning_flag_disables_the_page() {
    let (burrow, origin, _ssh, url) = tunnel_with(&["--no-browser-warning"], "no-warning").await;
    let resp = get_with(
        &burrow.https_client(),
        &burrow.https_url(&url.host(), "/hello"),
        &[
            ("user-agent", CHROME_UA),
            ("sec-fetch-mode", "navigate"),
            ("accept", "text/html"),
        ],
    )
    .await;
    let resp = expect_status(resp, 200, "browser navigation, warning disabled").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
    assert_eq!(origin.hits("/hello"), 1);
}

// ---------------------------------------------------------------------------
// Safety headers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_headers_on_generated_and_proxied_pages() {
    let (burrow, _origin, _ssh, url) = tunnel_with(&[], "safety-headers").await;
    let dead = Ssh::spawn(&burrow, &["-R", &format!("80:127.0.0.1:{}", dead_port())]);
    let dead_url = dead.url().await;

    for (client, proto) in [
        (burrow.https_client_h1(), "HTTP/1.1"),
        (burrow.https_client_h2(), "HTTP/2"),
    ] {
        for accept in ["text/html", "*/*"] {
            let ctx = |what: &str| format!("{proto}, Accept {accept}: {what}");
            // Landing page: + HSTS.
            let resp = get_with(
                &client,
                &burrow.https_url("localhost", "/"),
                &[("accept", accept)],
            )
            .await;
            let resp = expect_status(resp, 200, &ctx("landing")).await;
            assert_page_headers(resp.headers(), &ctx("landing"));
            assert!(
                header(&resp, "strict-transport-security").is_some(),
                "{}: landing page needs HSTS",
                ctx("landing")
            );
            // 404.
            let resp = get_with(
                &client,
                &burrow.https_url("nope-nope-00000000.localhost", "/"),
                &[("accept", accept)],
            )
            .await;
            let resp = expect_status(resp, 404, &ctx("404")).await;
            assert_page_headers(resp.headers(), &ctx("404"));
            // 502 (nothing on the local port).
            let resp = get_with(
                &client,
                &burrow.https_url(&dead_url.host(), "/"),
                &[("accept", accept), ("user-agent", "curl/8.5.0")],
            )
            .await;
            let resp = expect_status(resp, 502, &ctx("502")).await;
            assert_page_headers(resp.headers(), &ctx("502"));
        }

        // Proxied: nosniff, Referrer-Policy and X-Robots-Tag added, framing
        // left to the app.
        let resp = get_with(&client, &burrow.https_url(&url.host(), "/hello"), &[]).await;
        let resp = expect_status(resp, 200, proto).await;
        let h = resp.headers();
        assert_eq!(
            h.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{proto}: proxied {h:?}"
        );
        assert_eq!(
            h.get("referrer-policy").map(|v| v.as_bytes()),
            Some(&b"strict-origin-when-cross-origin"[..]),
            "{proto}: proxied {h:?}"
        );
        assert_eq!(
            h.get("x-robots-tag").map(|v| v.as_bytes()),
            Some(&b"noindex, nofollow"[..]),
            "{proto}: proxied {h:?}"
        );
        assert!(
            !h.contains_key("x-frame-options"),
            "{proto}: X-Frame-Options must not be added to proxied responses: {h:?}"
        );

        // The app's own Referrer-Policy wins.
        let resp = get_with(&client, &burrow.https_url(&url.host(), "/own-headers"), &[]).await;
        let resp = expect_status(resp, 200, proto).await;
        let h = resp.headers();
        let policies: Vec<&[u8]> = h
            .get_all("referrer-policy")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(
            policies,
            vec![&b"no-referrer"[..]],
            "{proto}: the app's Referrer-Policy must be kept alone: {h:?}"
        );
        assert_eq!(
            h.get("x-content-type-options").map(|v| v.as_bytes()),
            Some(&b"nosniff"[..]),
            "{proto}: {h:?}"
        );
        assert_eq!(
            h.get("x-robots-tag").map(|v| v.as_bytes()),
            Some(&b"noindex, nofollow"[..]),
            "{proto}: {h:?}"
        );
    }
}
