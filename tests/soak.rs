//! The soak test (issue 7): burrow under churning tunnels and visitors for
//! a configurable time, asserting that RSS, open file descriptors and live
//! tasks do not grow beyond a bound. Ignored in `cargo test`; run it with
//!
//! ```sh
//! SOAK_SECS=1800 cargo test --test soak -- --ignored --nocapture
//! ```
//!
//! It prints one line per sample (time, RSS, fds, tasks, tunnels, requests)
//! and the verdict; BENCHMARKS.md records a 30-minute run.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// One sample of the server's footprint.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss: u64,
    fds: u64,
    tasks: u64,
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

async fn tasks(burrow: &Burrow) -> u64 {
    let text = burrow
        .http_client()
        .get(format!("http://{}/metrics", burrow.addrs.stats))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("burrow_tokio_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .expect("burrow_tokio_alive_tasks in /metrics")
}

async fn footprint(burrow: &Burrow) -> Footprint {
    Footprint {
        rss: burrow.rss_bytes().unwrap_or(0),
        fds: fds(burrow.pid()),
        tasks: tasks(burrow).await,
    }
}

/// One client's life: connect, serve some requests (plain, a WebSocket
/// echo), leave; `round` picks the flavour.
async fn client_life(burrow: &Burrow, origin: &Origin, round: u64) -> u64 {
    let ssh = Ssh::spawn(burrow, &["-R", &format!("80:127.0.0.1:{}", origin.port)]);
    let url = ssh.url().await;
    let client = burrow.https_client();
    let mut served = 0;
    for i in 0..20u32 {
        let path = if i.is_multiple_of(5) {
            "/bytes?n=65536"
        } else {
            "/hello"
        };
        if let Ok(resp) = client.get(burrow.https_url(&url.host(), path)).send().await {
            if resp.bytes().await.is_ok() {
                served += 1;
            }
        }
    }
    if round.is_multiple_of(3) {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = burrow.ws_connect(&url.host(), "/ws").await;
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::Text("soak".into()))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    }
    drop(ssh);
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running: SOAK_SECS=1800 cargo test --test soak -- --ignored"]
async fn soak_churning_tunnels_and_visitors() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let burrow = Burrow::start(
        &[
            &SSH_LIMITS_OFF[..],
            &[
                "--visitor-rate",
                "0",
                "--tunnel-rate",
                "0",
                "--no-browser-warning",
            ],
        ]
        .concat(),
    )
    .await;
    let origin = Origin::start("soak").await;
    // Before any client: what "at rest" must come back to.
    let idle = footprint(&burrow).await;
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    // The baseline is taken after a warm-up (allocator arenas, pools, the
    // first spool buffers), a tenth of the run but at least 20 s.
    let warm_up = Duration::from_secs((secs / 10).max(20));
    let mut baseline: Option<Footprint> = None;
    let mut worst = Footprint {
        rss: 0,
        fds: 0,
        tasks: 0,
    };
    let mut round = 0u64;
    let mut requests = 0u64;
    let mut next_sample = Instant::now();
    println!("secs,rss_kib,fds,tasks,requests");
    while Instant::now() < end {
        // Three clients at a time, each living through its own requests.
        let lives = (0..3).map(|i| client_life(&burrow, &origin, round * 3 + i));
        requests += futures_util::future::join_all(lives)
            .await
            .iter()
            .sum::<u64>();
        round += 1;
        if Instant::now() >= next_sample {
            next_sample = Instant::now() + Duration::from_secs(10);
            let now = footprint(&burrow).await;
            println!(
                "{},{},{},{},{}",
                started.elapsed().as_secs(),
                now.rss / 1024,
                now.fds,
                now.tasks,
                requests
            );
            if started.elapsed() >= warm_up {
                baseline.get_or_insert(now);
                worst = Footprint {
                    rss: worst.rss.max(now.rss),
                    fds: worst.fds.max(now.fds),
                    tasks: worst.tasks.max(now.tasks),
                };
            }
        }
    }
    // Let the last clients' connections wind down (SSH kill grace, visitor
    // keep-alives, channel pumps), then measure at rest: tasks and fds must
    // come back to where they were before the first client, within 30 s.
    let base = baseline.expect("the run outlasted its warm-up");
    let settle = Instant::now() + Duration::from_secs(30);
    let mut last = footprint(&burrow).await;
    while Instant::now() < settle && (last.tasks > idle.tasks + 4 || last.fds > idle.fds + 2) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = footprint(&burrow).await;
    }
    println!(
        "soak: {secs} s, {round} rounds, {requests} requests; before {idle:?}, baseline {base:?}, worst {worst:?}, at rest {last:?}"
    );
    assert!(requests > round * 3 * 10, "most requests were served");
    // Bounds: RSS may grow by allocator slack, not by the hour.
    assert!(
        worst.rss <= base.rss + base.rss / 2 + (16 << 20),
        "RSS grew: {base:?} -> {worst:?}"
    );
    assert!(
        worst.fds <= base.fds + 64,
        "file descriptors grew: {base:?} -> {worst:?}"
    );
    assert!(
        last.fds <= idle.fds + 2,
        "file descriptors left open: {idle:?} -> {last:?}"
    );
    assert!(
        worst.tasks <= base.tasks + 256,
        "tasks grew: {base:?} -> {worst:?}"
    );
    assert!(
        last.tasks <= idle.tasks + 4,
        "tasks left alive: {idle:?} -> {last:?}"
    );
}
