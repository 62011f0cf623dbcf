//! Flow control end to end: slow or stalled visitors (and slow apps) must
//! never stall the other traffic of a tunnel's SSH connection, spools stay
//! inside their limits, and keep-alive channels to the app are reused.
//!
//! Every test drives the real binary through stock OpenSSH `ssh`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Visitor limits out of the way: these tests are about flow, not abuse.
const OPEN_LIMITS: [&str; 10] = [
    "--visitor-rate",
    "100000/s",
    "--visitor-burst",
    "100000",
    "--tunnel-rate",
    "100000/s",
    "--tunnel-burst",
    "100000",
    "--max-body-size",
    "1GiB",
];

/// The tests that compare latencies run one at a time: on a 2-core
/// machine, the other tests' bulk transfers would be noise in both tunnels.
static LATENCY_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn start(extra: &[&str]) -> Burrow {
    let mut args: Vec<&str> = OPEN_LIMITS.to_vec();
    args.extend_from_slice(extra);
    Burrow::start(&args).await
}

/// Latency of `n` GET /hello requests, `concurrency` at a time.
async fn latencies(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.to_string(), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n as u64 {
                let started = Instant::now();
                let resp = client.get(&url).send().await.expect("request");
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.text().await.unwrap(), HELLO);
                times.push(started.elapsed());
            }
            times
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    all
}

/// Latencies of `n` GET /hello requests to each of two tunnels, `a` and
/// `b`, alternating, `concurrency` pairs at a time. Both see the same
/// machine load, so comparing them isolates what one tunnel suffers.
async fn paired_latencies(
    client: &reqwest::Client,
    a: &str,
    b: &str,
    n: usize,
    concurrency: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (a, b) = tokio::join!(
        latencies(client, a, n, concurrency),
        latencies(client, b, n, concurrency)
    );
    (a, b)
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

/// Polls the stats endpoint until `check` holds for `field` (bounded).
async fn wait_stat_where(
    burrow: &Burrow,
    field: &str,
    check: impl Fn(u64) -> bool,
    timeout: Duration,
) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let value = burrow.stats().await[field].as_u64().expect(field);
        if check(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{field} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no spool holds anything (memory or disk).
async fn wait_spools_empty(burrow: &Burrow) {
    for field in ["spool_disk_bytes", "spool_memory_bytes"] {
        wait_stat_where(burrow, field, |b| b == 0, Duration::from_secs(10)).await;
    }
}

/// A tunnel from a stock `ssh -R` (pty session) to `origin`: the client and
/// its public host name.
async fn tunnel_to(burrow: &Burrow, origin: &Origin, ssh_args: &[&str]) -> (Ssh, String) {
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let mut args = ssh_args.to_vec();
    args.extend(["-R", &fwd]);
    let ssh = Ssh::spawn(burrow, &args);
    let host = ssh.url().await.host();
    (ssh, host)
}

/// A visitor on HTTP/1.1 over TLS with a small receive buffer, who asks for
/// `path` and then reads at most `rate` bytes per second (0 = never reads).
/// Returns the bytes it read, checked against the origin's pattern, once
/// `stop` is set or the response ends.
async fn slow_visitor(
    burrow: &Burrow,
    host: &str,
    path: &str,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(burrow.addrs.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(burrow.tls_config(Alpn::Http1)));
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: slow\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut seen: Vec<u8> = Vec::new();
        let mut body_at: Option<usize> = None;
        let mut buf = vec![0u8; 4096];
        while !stop.load(Ordering::SeqCst) {
            if rate == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            // Pace the reads: never ahead of `rate` bytes per second.
            let due = Duration::from_secs_f64(seen.len() as f64 / rate as f64);
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
            let n = match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.extend_from_slice(&buf[..n]);
            if body_at.is_none() {
                body_at = seen
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|p| p + 4);
            }
        }
        let body = &seen[body_at.unwrap_or(seen.len())..];
        for (i, byte) in body.iter().enumerate() {
            assert_eq!(
                *byte,
                pattern_byte(i as u64),
                "slow visitor: byte {i} differs"
            );
        }
        drop(tls);
        body.len() as u64
    })
}

/// Two tunnels to `origin` on two SSH connections: the first takes the
/// load under test, the second is the unloaded control measured alongside.
async fn loaded_and_control(burrow: &Burrow, origin: &Origin) -> (Ssh, String, Ssh, String) {
    // Each spawn has its own fresh key, hence its own name.
    let (loaded, a) = tunnel_to(burrow, origin, &[]).await;
    let (control, b) = tunnel_to(burrow, origin, &[]).await;
    assert_ne!(a, b);
    (loaded, a, control, b)
}

/// A loaded tunnel and an unloaded control tunnel to one app over two SSH
/// connections, warmed up; held alone among the latency tests.
struct LatencyRig {
    burrow: Burrow,
    origin: Origin,
    host: String,
    client: reqwest::Client,
    hello: String,
    control_hello: String,
    _clients: (Ssh, Ssh),
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl LatencyRig {
    async fn start(label: &str) -> LatencyRig {
        let alone = LATENCY_TESTS.lock().await;
        let burrow = start(&[]).await;
        let origin = Origin::start(label).await;
        let (loaded, host, control, control_host) = loaded_and_control(&burrow, &origin).await;
        let client = burrow.https_client_h1();
        let hello = burrow.https_url(&host, "/hello");
        let control_hello = burrow.https_url(&control_host, "/hello");
        paired_latencies(&client, &hello, &control_hello, 20, 4).await; // warm-up
        LatencyRig {
            burrow,
            origin,
            host,
            client,
            hello,
            control_hello,
            _clients: (loaded, control),
            _alone: alone,
        }
    }
}

/// The latency check of the issue: the loaded tunnel's p99 within 2x of an
/// unloaded tunnel's, measured at the same time on the same machine (plus
/// 25 ms of slack for a busy CI machine; a stalled SSH session costs far
/// more: 125 ms per 32 KiB a 256 KiB/s reader takes).
fn assert_not_stalled(loaded: &[Duration], control: &[Duration], what: &str) {
    eprintln!(
        "{what}: p99 {:?}, unloaded tunnel p99 {:?}",
        p99(loaded),
        p99(control)
    );
    assert!(
        p99(loaded) <= p99(control) * 2 + Duration::from_millis(25),
        "{what}: p99 {:?} vs {:?} on an unloaded tunnel",
        p99(loaded),
        p99(control)
    );
}

/// One visitor downloads a big response slowly: the tunnel's other requests
/// keep the latency of an unloaded tunnel. (The 200 MiB at 50 KiB/s,
/// scaled to run in seconds: what matters is that the response is far
/// larger than SSH's window plus russh's channel queue, ~5 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_visitor_does_not_slow_other_requests() {
    let LatencyRig {
        burrow,
        origin: _origin,
        host,
        client,
        hello,
        control_hello,
        _clients,
        _alone,
    } = LatencyRig::start("flow-slow").await;

    let stop = Arc::new(AtomicBool::new(false));
    let slow = slow_visitor(
        &burrow,
        &host,
        "/bytes?n=67108864",
        256 * 1024,
        Arc::clone(&stop),
    )
    .await;
    // The whole response left the app at once (what would sit in russh's
    // queue is in burrow's spool): the visitor now downloads it slowly.
    // Only the initial burst shares the SSH connection with other
    // requests, as it would with any SSH server.
    wait_stat_where(
        &burrow,
        "spool_disk_bytes",
        |b| b > 58 << 20,
        Duration::from_secs(30),
    )
    .await;
    let (loaded, unloaded) = paired_latencies(&client, &hello, &control_hello, 200, 4).await;
    let memory = burrow.stats().await["spool_memory_bytes"].as_u64().unwrap();

    stop.store(true, Ordering::SeqCst);
    let read = slow.await.unwrap();
    assert!(read > 0, "the slow visitor got its bytes");
    assert_not_stalled(&loaded, &unloaded, "with a slow download");
    assert!(
        memory <= 2 << 20,
        "spool memory {memory} over the per-stream cap"
    );
    // The visitor left: its spool is freed.
    wait_spools_empty(&burrow).await;
}

/// A visitor who never reads does not stop the SSH connection: keepalives
/// are answered (the client gives up after 3 s without), other requests
/// go through, and the backlog goes to disk, not memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_visitor_stops_neither_keepalives_nor_requests() {
    let burrow = start(&[]).await;
    let origin = Origin::start("flow-stalled").await;
    let keepalive = ["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"];
    let (mut ssh, host) = tunnel_to(&burrow, &origin, &keepalive).await;
    let client = burrow.https_client_h1();
    let hello = burrow.https_url(&host, "/hello");
    latencies(&client, &hello, 20, 2).await;
    let rss_before = burrow.rss_bytes().expect("VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let stalled = slow_visitor(&burrow, &host, "/bytes?n=67108864", 0, Arc::clone(&stop)).await;
    // The bytes leave russh although nobody reads them (all but what the
    // memory part and the socket buffers towards the visitor hold).
    wait_stat_where(
        &burrow,
        "spool_disk_bytes",
        |b| b >= 48 << 20,
        Duration::from_secs(60),
    )
    .await;
    let rss_spooled = burrow.rss_bytes().expect("VmRSS");

    // Keep using the tunnel for longer than the client's keepalive limit.
    let started = Instant::now();
    let mut requests = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let resp = client
            .get(&hello)
            .send()
            .await
            .expect("request during the stall");
        assert_eq!(resp.status(), 200);
        requests += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(requests > 20, "only {requests} requests in 4 s");
    assert!(
        ssh.wait_exit(Duration::ZERO).await.is_none(),
        "ssh gave up: {}",
        ssh.all_output()
    );
    assert!(
        !ssh.all_output().contains("Timeout"),
        "{}",
        ssh.all_output()
    );
    let growth = rss_spooled.saturating_sub(rss_before);
    assert!(
        growth < 24 << 20,
        "RSS grew {growth} bytes while 64 MiB were spooled"
    );

    stop.store(true, Ordering::SeqCst);
    assert_eq!(stalled.await.unwrap(), 0);
    wait_spools_empty(&burrow).await;
}

/// When a stream's spool is full it is cut with a log line naming the
/// limit; the tunnel and its other requests carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_spool_cuts_only_its_stream() {
    let burrow = start(&[
        "--spool-memory-per-stream",
        "256KiB",
        "--spool-disk-per-stream",
        "1MiB",
    ])
    .await;
    let origin = Origin::start("flow-cut").await;
    let (mut ssh, host) = tunnel_to(&burrow, &origin, &[]).await;
    let hello = burrow.https_url(&host, "/hello");

    let stop = Arc::new(AtomicBool::new(false));
    let stalled = slow_visitor(&burrow, &host, "/bytes?n=8388608", 0, Arc::clone(&stop)).await;
    wait_stat_where(&burrow, "streams_cut", |n| n == 1, Duration::from_secs(30)).await;
    burrow
        .stderr
        .wait_contains(
            "spool-disk-per-stream (1.0 MiB) reached",
            Duration::from_secs(5),
        )
        .await
        .expect("a log line names the limit");
    // The cut stream's spool is gone; the visitor's connection ends early.
    wait_spools_empty(&burrow).await;
    stop.store(true, Ordering::SeqCst);
    assert!(stalled.await.unwrap() < 8 << 20);

    let resp = burrow.https_client().get(&hello).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), HELLO);
    assert!(
        ssh.wait_exit(Duration::ZERO).await.is_none(),
        "the tunnel stays up"
    );
}

/// A local app reading an upload slowly slows that upload only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_app_reading_an_upload_does_not_stall_others() {
    let LatencyRig {
        burrow,
        origin: _origin,
        host,
        client,
        hello,
        control_hello,
        _clients,
        _alone,
    } = LatencyRig::start("flow-upload").await;

    const UPLOAD: usize = 24 << 20;
    let body = random_bytes(UPLOAD, 7);
    let upload = {
        let client = burrow.https_client_no_timeout();
        let url = burrow.https_url(&host, "/slowsink?kbps=4096");
        tokio::spawn(async move {
            client
                .post(url)
                .body(body)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        })
    };
    // Measure once the app takes the upload at its own pace: past the first
    // burst that fills the SSH window (2 MiB), which shares the connection
    // with other requests as it would with any SSH server.
    let deadline = Instant::now() + Duration::from_secs(20);
    while slowsink_bytes() < 4 << 20 {
        assert!(
            Instant::now() < deadline,
            "the upload is not reaching the app"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (loaded, unloaded) = paired_latencies(&client, &hello, &control_hello, 200, 4).await;
    assert!(
        !upload.is_finished(),
        "the upload should still be in progress while we measure"
    );
    assert_not_stalled(&loaded, &unloaded, "during a slow upload");
    assert_eq!(
        upload.await.unwrap(),
        UPLOAD.to_string(),
        "the app got every byte"
    );
}

/// Sequential requests share one keep-alive channel to the app.
#[tokio::test]
async fn requests_reuse_pooled_channels() {
    let burrow = start(&[]).await;
    let origin = Origin::start("flow-pool").await;
    let (_ssh, host) = tunnel_to(&burrow, &origin, &[]).await;
    for _ in 0..20 {
        let resp = burrow.get(&host, "/hello").await;
        assert_eq!(resp.text().await.unwrap(), HELLO);
    }
    let stats = burrow.stats().await;
    let opened = stats["channels_opened"].as_u64().unwrap();
    let reused = stats["channels_reused"].as_u64().unwrap();
    assert!(opened <= 2, "{opened} channels for 20 sequential requests");
    assert_eq!(opened + reused, 20, "{stats}");
}

/// A burst of concurrent requests (well inside the in-flight cap) leaves
/// every channel it opened in the pool, and the next burst reuses them all
/// instead of opening and closing a channel per request beyond the pool.
#[tokio::test]
async fn a_burst_reuses_every_channel_it_opened() {
    const BURST: usize = 100;
    let burrow = start(&["--channel-pool-idle", "30s"]).await;
    let origin = Origin::start("flow-burst").await;
    let (_ssh, host) = tunnel_to(&burrow, &origin, &[]).await;
    let burst = || {
        // Each request holds its channel long enough for all to overlap.
        let requests = (0..BURST).map(|_| burrow.get(&host, "/delay?ms=500"));
        futures_util::future::join_all(requests)
    };
    for resp in burst().await {
        assert_eq!(resp.text().await.unwrap(), HELLO);
    }
    let stats = burrow.stats().await;
    let opened = stats["channels_opened"].as_u64().unwrap();
    let reused = stats["channels_reused"].as_u64().unwrap();
    assert!(
        opened > 64,
        "the burst overlapped on only {opened} channels"
    );
    wait_stat_where(
        &burrow,
        "idle_channels",
        |n| n == opened,
        Duration::from_secs(10),
    )
    .await;
    for resp in burst().await {
        assert_eq!(resp.text().await.unwrap(), HELLO);
    }
    let stats = burrow.stats().await;
    assert_eq!(stats["channels_opened"], opened, "{stats}");
    assert_eq!(stats["channels_reused"], reused + BURST as u64, "{stats}");
}

/// `Connection: close` from the app and an app that closed an idle
/// connection both mean a fresh channel, never a failed request.
#[tokio::test]
async fn closed_app_connections_are_not_reused() {
    let burrow = start(&["--channel-pool-idle", "30s"]).await;
    let origin = Origin::start("flow-close").await;
    let (_ssh, host) = tunnel_to(&burrow, &origin, &[]).await;
    for _ in 0..5 {
        let resp = burrow.get(&host, "/close").await;
        assert_eq!(resp.text().await.unwrap(), HELLO);
    }
    let stats = burrow.stats().await;
    assert_eq!(stats["channels_opened"], 5, "{stats}");
    assert_eq!(stats["channels_reused"], 0, "{stats}");
}

/// A pooled channel whose app went away is dropped, and the next request
/// reaches the new app.
#[tokio::test]
async fn a_restarted_app_gets_fresh_channels() {
    let burrow = start(&["--channel-pool-idle", "30s"]).await;
    let first = Origin::start("flow-first").await;
    let port = first.port;
    let fwd = format!("80:127.0.0.1:{port}");
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let host = ssh.url().await.host();
    assert_eq!(
        burrow.get(&host, "/whoami").await.text().await.unwrap(),
        "flow-first"
    );
    // Replace the app on the same port: the old one's connections close,
    // and burrow notices before anyone asks.
    drop(first);
    wait_stat_where(
        &burrow,
        "idle_channels",
        |n| n == 0,
        Duration::from_secs(10),
    )
    .await;
    let second = Origin::start_on(port, "flow-second").await;
    for _ in 0..3 {
        assert_eq!(
            burrow.get(&host, "/whoami").await.text().await.unwrap(),
            "flow-second"
        );
    }
    drop(second);
}

/// A stock `ssh -N` client has Nagle's algorithm on (OpenSSH only disables
/// it for interactive sessions): when the app writes a response in two
/// pieces, the client holds the second until burrow ACKs the first, and a
/// delayed ACK makes that ~40 ms on Linux. Responses must come back
/// without such stalls.
#[tokio::test]
async fn no_delayed_ack_stalls_with_an_n_client() {
    let _alone = LATENCY_TESTS.lock().await;
    let burrow = start(&[]).await;
    let origin = Origin::start("flow-nagle").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn_keyless(&burrow, &["-N", "-R", &fwd]);
    let host = ssh.url_from_stderr().await.host();
    let client = burrow.https_client_h1();
    let split = burrow.https_url(&host, "/split");
    latencies(&client, &split, 20, 1).await;
    let times = latencies(&client, &split, 300, 1).await;
    eprintln!(
        "-N client: p50 {:?} p99 {:?}",
        times[times.len() / 2],
        p99(&times)
    );
    assert!(
        p99(&times) < Duration::from_millis(30),
        "p99 {:?}",
        p99(&times)
    );
}

/// An app that answers the first request on each connection (keeping it
/// alive) and closes the connection, unanswered, when the next request
/// arrives: the race of an app closing an idle keep-alive connection just
/// as a request comes in.
async fn first_request_only_origin() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            conns.spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst";
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // The next request's first bytes: close without a word.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (port, task)
}

/// A pooled connection the app closes under a request: a GET is sent again
/// over a fresh channel; a POST is not (the app may have acted on it).
#[tokio::test]
async fn safe_requests_are_replayed_when_a_pooled_connection_dies() {
    let burrow = start(&["--channel-pool-idle", "30s"]).await;
    let (port, _origin) = first_request_only_origin().await;
    let fwd = format!("80:127.0.0.1:{port}");
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let host = ssh.url().await.host();

    let first = burrow.get(&host, "/a").await;
    assert_eq!(first.text().await.unwrap(), "first");
    wait_stat_where(&burrow, "idle_channels", |n| n == 1, Duration::from_secs(5)).await;
    let replayed = burrow.get(&host, "/b").await;
    assert_eq!(replayed.status(), 200);
    assert_eq!(replayed.text().await.unwrap(), "first");
    let stats = burrow.stats().await;
    assert_eq!(stats["channels_opened"], 2, "{stats}");

    wait_stat_where(&burrow, "idle_channels", |n| n == 1, Duration::from_secs(5)).await;
    let post = burrow
        .https_client()
        .post(burrow.https_url(&host, "/c"))
        .body("order one pizza")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502, "a POST must not be sent twice");
}
