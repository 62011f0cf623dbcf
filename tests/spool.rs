//! Spool disk end to end: a response that spooled to disk for a slow
//! visitor gives the disk back as soon as it has been read, so a keep-alive
//! channel idling in the pool holds none, and the next slow visitor (on
//! that channel or another tunnel) gets the whole budget.
//!
//! Every test drives the real binary through stock OpenSSH `ssh`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

/// Small memory caps, so responses spill to disk at once, and one disk
/// budget (32 MiB) for a stream and for the whole process: a spool that
/// kept its disk while idle would leave too little for the next slow
/// visitor.
const SPOOL_LIMITS: [&str; 8] = [
    "--spool-memory-per-stream",
    "256KiB",
    "--spool-memory-total",
    "512KiB",
    "--spool-disk-per-stream",
    "32MiB",
    "--spool-disk-total",
    "32MiB",
];

/// The first download, and what it has spooled to disk before its visitor
/// starts reading.
const FIRST: (u64, u64) = (24 * MIB, 16 * MIB);

/// The second download needs almost the whole budget: a response of the
/// budget's size, whose visitor reads nothing until three quarters of it
/// are on disk (the rest is in the memory part, the socket buffers towards
/// the visitor and on its way: a few MiB on loopback). Had the first
/// download's spool kept its 16 MiB or more, this would exceed the total.
const SECOND: (u64, u64) = (32 * MIB, 24 * MIB);

/// Visitor limits out of the way, spool limits as above, and idle pooled
/// channels kept for longer than any test takes.
async fn start() -> Burrow {
    let mut args = vec![
        "--visitor-rate",
        "100000/s",
        "--visitor-burst",
        "100000",
        "--tunnel-rate",
        "100000/s",
        "--tunnel-burst",
        "100000",
        "--channel-pool-idle",
        "120s",
    ];
    args.extend_from_slice(&SPOOL_LIMITS);
    Burrow::start(&args).await
}

/// A tunnel from a stock `ssh -R` to `origin`: the client and its host.
async fn tunnel_to(burrow: &Burrow, origin: &Origin) -> (Ssh, String) {
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(burrow, &["-R", &fwd]);
    let host = ssh.url().await.host();
    (ssh, host)
}

/// A stats field as a number.
fn stat(stats: &serde_json::Value, field: &str) -> u64 {
    stats[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field}: {stats}"))
}

/// Polls the stats endpoint until `check` holds (bounded, `what` names the
/// wait); returns the stats that passed.
async fn wait_stats(
    burrow: &Burrow,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let stats = burrow.stats().await;
        if check(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A visitor on HTTP/1.1 over TLS with a small receive buffer who asks for
/// `n` bytes of the origin's pattern, reads nothing until its response has
/// put `spooled` more bytes on disk (or a stream was cut), then reads the
/// whole response as fast as it can. Panics unless the body is complete and
/// byte-exact.
async fn stalled_download(burrow: &Burrow, host: &str, (n, spooled): (u64, u64)) {
    let before = burrow.stats().await;
    let (disk_before, cut_before) = (
        stat(&before, "spool_disk_bytes"),
        stat(&before, "streams_cut"),
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let tcp = socket.connect(burrow.addrs.https).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(burrow.tls_config(Alpn::Http1)));
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let head = format!("GET /bytes?n={n} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: stalled\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();

    wait_stats(
        burrow,
        "the response to spool to disk",
        |stats| {
            stat(stats, "spool_disk_bytes") >= disk_before + spooled
                || stat(stats, "streams_cut") > cut_before
        },
        Duration::from_secs(60),
    )
    .await;

    let mut seen = Vec::new();
    let body_at = loop {
        if let Some(p) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        read_some(&mut tls, &mut seen).await;
    };
    let head = String::from_utf8_lossy(&seen[..body_at]).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    while ((seen.len() - body_at) as u64) < n {
        read_some(&mut tls, &mut seen).await;
    }
    let body = &seen[body_at..];
    assert_eq!(body.len() as u64, n, "more bytes than the response has");
    if let Some(i) = (0..n).find(|&i| body[i as usize] != pattern_byte(i)) {
        panic!("byte {i} of the body differs");
    }
}

/// Appends what one read returns to `seen` (bounded: a stream that was cut
/// ends early, which fails the test here).
async fn read_some(tls: &mut (impl AsyncReadExt + Unpin), seen: &mut Vec<u8>) {
    let mut buf = vec![0u8; 64 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(30), tls.read(&mut buf))
        .await
        .expect("the response stopped moving");
    match read {
        Ok(0) => panic!("the response ended early after {} bytes", seen.len()),
        Ok(k) => seen.extend_from_slice(&buf[..k]),
        Err(err) => panic!("the response failed after {} bytes: {err}", seen.len()),
    }
}

/// After spooled downloads, with no request in flight and `idle` channels
/// back in the pool, no spool holds anything: checked as soon as the
/// channels are idle, not eventually.
async fn assert_idle_and_empty(burrow: &Burrow, idle: u64) {
    let stats = wait_stats(
        burrow,
        "channels back in the pool",
        |stats| stat(stats, "idle_channels") >= idle,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(stats["spool_disk_bytes"], 0, "an idle channel holds disk");
    assert_eq!(stats["spool_memory_bytes"], 0, "{stats}");
}

/// The case: a large download spooled to disk through a keep-alive
/// channel; once read, the idle pooled channel holds no disk, and the same
/// channel then takes a second slow download needing almost its whole
/// per-stream budget without being cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pooled_channel_gives_its_disk_back_once_read() {
    let burrow = start().await;
    let origin = Origin::start("spool-pooled").await;
    let (_ssh, host) = tunnel_to(&burrow, &origin).await;

    stalled_download(&burrow, &host, FIRST).await;
    assert_idle_and_empty(&burrow, 1).await;

    stalled_download(&burrow, &host, SECOND).await;
    assert_idle_and_empty(&burrow, 1).await;
    let stats = burrow.stats().await;
    assert_eq!(stats["streams_cut"], 0, "{stats}");
    assert_eq!(
        stats["channels_opened"], 1,
        "one keep-alive channel: {stats}"
    );
    assert_eq!(stats["channels_reused"], 1, "{stats}");
}

/// A drained channel idling in one tunnel's pool leaves the process-wide
/// disk budget whole: a slow visitor of another tunnel who needs almost all
/// of it is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_channel_leaves_the_disk_total_to_others() {
    let burrow = start().await;
    let origin = Origin::start("spool-total").await;
    let (_first, first_host) = tunnel_to(&burrow, &origin).await;
    let (_second, second_host) = tunnel_to(&burrow, &origin).await;
    assert_ne!(first_host, second_host);

    stalled_download(&burrow, &first_host, FIRST).await;
    assert_idle_and_empty(&burrow, 1).await;

    stalled_download(&burrow, &second_host, SECOND).await;
    assert_idle_and_empty(&burrow, 2).await;
    let stats = burrow.stats().await;
    assert_eq!(stats["streams_cut"], 0, "{stats}");
    assert_eq!(stats["channels_opened"], 2, "{stats}");
}
