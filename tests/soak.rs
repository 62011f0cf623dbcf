//! The soak tests: burrow under churning tunnels and visitors for a
//! configurable time, asserting that RSS, open file descriptors and live
//! tasks do not grow beyond a bound. Ignored in `cargo test`; run them with
//!
//! ```sh
//! # one node (issue 7)
//! SOAK_SECS=1800 cargo test --test soak soak_churning -- --ignored --nocapture
//! # three nodes on Redis, one restarted every 20 minutes (issue 15)
//! SOAK_SECS=7200 cargo test --test soak soak_cluster -- --ignored --nocapture
//! ```
//!
//! They print one line per sample and the verdict; BENCHMARKS.md records
//! the runs.

#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;

use std::time::{Duration, Instant};

use cluster_harness::{node_ip, AutoSsh, Cluster, Haproxy};
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
#[ignore = "long-running: SOAK_SECS=1800 cargo test --test soak soak_churning -- --ignored"]
async fn soak_churning_tunnels_and_visitors() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let burrow = Burrow::start(&soak_flags()).await;
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

/// Flags for soak nodes: no limit gets in the way of the churn.
fn soak_flags() -> Vec<&'static str> {
    [
        &SSH_LIMITS_OFF[..],
        &[
            "--visitor-rate",
            "0",
            "--tunnel-rate",
            "0",
            "--no-browser-warning",
        ],
    ]
    .concat()
}

/// The footprint of one node incarnation: its baseline after warm-up and
/// the worst seen since.
#[derive(Debug, Clone, Copy, Default)]
struct Incarnation {
    started: Option<Instant>,
    baseline: Option<Footprint>,
    worst: Option<Footprint>,
}

impl Incarnation {
    fn new() -> Incarnation {
        Incarnation {
            started: Some(Instant::now()),
            ..Incarnation::default()
        }
    }

    fn sample(&mut self, now: Footprint, warm_up: Duration) {
        if self.started.is_some_and(|s| s.elapsed() < warm_up) {
            return;
        }
        self.baseline.get_or_insert(now);
        let worst = self.worst.get_or_insert(now);
        *worst = Footprint {
            rss: worst.rss.max(now.rss),
            fds: worst.fds.max(now.fds),
            tasks: worst.tasks.max(now.tasks),
        };
    }

    /// Panics when this incarnation grew beyond the soak's bounds.
    fn check(&self, node: usize) {
        let (Some(base), Some(worst)) = (self.baseline, self.worst) else {
            return;
        };
        assert!(
            worst.rss <= base.rss + base.rss / 2 + (16 << 20),
            "node {node}: RSS grew: {base:?} -> {worst:?}"
        );
        assert!(
            worst.fds <= base.fds + 64,
            "node {node}: file descriptors grew: {base:?} -> {worst:?}"
        );
        assert!(
            worst.tasks <= base.tasks + 256,
            "node {node}: tasks grew: {base:?} -> {worst:?}"
        );
    }
}

/// Redis's `used_memory`, in bytes.
async fn redis_memory(cluster: &Cluster) -> u64 {
    let info = cluster.redis.command(&["INFO", "memory"]).await;
    info.as_deref()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("used_memory:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One churning client on node `on`, its visitors through node `via`:
/// requests, and a WebSocket echo every third round.
async fn cluster_client_life(
    cluster: &Cluster,
    origin: &Origin,
    (on, via): (usize, usize),
    round: u64,
) -> u64 {
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let host_ip = node_ip(on).to_string();
    let ssh = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &["-R", &forward],
        host: &host_ip,
        ..SshSpec::default()
    }
    .spawn();
    let Ok(url) = tokio::time::timeout(Duration::from_secs(20), ssh.url()).await else {
        return 0;
    };
    let client = cluster.client_via(via);
    let mut served = 0;
    for i in 0..20u32 {
        let path = if i.is_multiple_of(5) {
            "/bytes?n=65536"
        } else {
            "/hello"
        };
        let url = cluster.https_url(&url.host(), path);
        if let Ok(resp) = client.get(url).send().await {
            if resp.status() == 200 && resp.bytes().await.is_ok() {
                served += 1;
            }
        }
    }
    if round.is_multiple_of(3) {
        use futures_util::{SinkExt, StreamExt};
        let (mut ws, _) = cluster.node(via).ws_connect(&url.host(), "/ws").await;
        let _ = ws
            .send(tokio_tungstenite::tungstenite::Message::Text("soak".into()))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    }
    served
}

/// The running node whose own clients hold `host` (from its stats).
async fn holder(cluster: &Cluster, host: &str) -> usize {
    let name = host.split('.').next().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for i in 1..=cluster.nodes.len() {
            if cluster.nodes[i - 1].is_none() {
                continue;
            }
            let url = format!(
                "http://{}:{}/?subdomains=true",
                node_ip(i),
                cluster.shared.ports.stats
            );
            let Ok(resp) = reqwest::get(url).await else {
                continue;
            };
            let stats: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap_or_default()).unwrap_or_default();
            let names = stats["subdomains"].as_array().cloned().unwrap_or_default();
            if names.iter().any(|n| n == name) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node holds {host}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `host` answers 200 through some running node; how long it
/// took, or `None` after `within`.
async fn served_again(cluster: &Cluster, host: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        for i in 1..=cluster.nodes.len() {
            if cluster.nodes[i - 1].is_none() {
                continue;
            }
            let url = cluster.https_url(host, "/hello");
            if let Ok(resp) = cluster.client_via(i).get(url).send().await {
                if resp.status() == 200 {
                    return Some(started.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// Issue 15's soak: three nodes on one Redis behind HAProxy; churning
/// clients on every node with visitors through other nodes and
/// WebSockets; three long-lived autossh clients (stable names) through
/// HAProxy. Every `SOAK_RESTART_SECS` (1200) one node is stopped, by
/// SIGTERM and kill -9 in turn, and started again: the long-lived names
/// must be served again within 45 s (no tunnel lost for good), and every
/// node's RSS, fds and tasks, and Redis's memory, must stay flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running: SOAK_SECS=7200 cargo test --test soak soak_cluster -- --ignored"]
async fn soak_cluster_three_nodes_with_restarts() {
    let env_secs = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let secs = env_secs("SOAK_SECS", 300);
    let restart_every = Duration::from_secs(env_secs("SOAK_RESTART_SECS", 1200));
    let warm_up = Duration::from_secs(env_secs("SOAK_WARMUP_SECS", 120));
    let mut cluster = Cluster::start(3, &soak_flags()).await;
    let haproxy = Haproxy::start(&cluster.shared, 3).await;
    let origin = Origin::start("soak").await;
    let keys: Vec<SshKeyPair> = (0..3).map(|_| SshKeyPair::generate()).collect();
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let long_lived: Vec<AutoSsh> = keys
        .iter()
        .map(|key| AutoSsh::start(haproxy.ssh, key, &forward))
        .collect();
    let mut hosts = Vec::new();
    for client in &long_lived {
        hosts.push(client.url(1).await.host());
    }

    let mut nodes = [Incarnation::new(), Incarnation::new(), Incarnation::new()];
    let (mut redis_base, mut redis_worst) = (None::<u64>, 0u64);
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut next_restart = started + restart_every;
    let (mut next_sample, mut round, mut requests, mut restarts) = (Instant::now(), 0u64, 0, 0);
    let mut worst_recovery = Duration::ZERO;
    println!("secs,node,rss_kib,fds,tasks,redis_kib,requests");
    while Instant::now() < end {
        let lives = (0..3u64).map(|i| {
            let on = ((round + i) % 3 + 1) as usize;
            let via = ((round + i + 1) % 3 + 1) as usize;
            cluster_client_life(&cluster, &origin, (on, via), round * 3 + i)
        });
        requests += futures_util::future::join_all(lives)
            .await
            .iter()
            .sum::<u64>();
        round += 1;
        if Instant::now() >= next_sample {
            next_sample = Instant::now() + Duration::from_secs(30);
            let redis = redis_memory(&cluster).await;
            if started.elapsed() >= warm_up {
                redis_base.get_or_insert(redis);
                redis_worst = redis_worst.max(redis);
            }
            for (i, incarnation) in nodes.iter_mut().enumerate() {
                let now = footprint(cluster.node(i + 1)).await;
                println!(
                    "{},{},{},{},{},{},{}",
                    started.elapsed().as_secs(),
                    i + 1,
                    now.rss / 1024,
                    now.fds,
                    now.tasks,
                    redis / 1024,
                    requests
                );
                incarnation.sample(now, warm_up);
            }
        }
        if Instant::now() >= next_restart {
            next_restart = Instant::now() + restart_every;
            // The node holding one of the long-lived names (each in turn),
            // so every restart costs some of them a reconnect.
            let victim = holder(&cluster, &hosts[restarts % hosts.len()]).await;
            let signal = if restarts % 2 == 0 { "TERM" } else { "KILL" };
            restarts += 1;
            nodes[victim - 1].check(victim);
            let mut node = cluster.stop(victim).expect("running");
            node.signal(signal);
            assert!(
                node.wait_exit(Duration::from_secs(30)).await.is_some(),
                "node {victim} exits on SIG{signal}"
            );
            drop(node);
            for host in &hosts {
                let took = served_again(&cluster, host, Duration::from_secs(45))
                    .await
                    .unwrap_or_else(|| {
                        panic!(
                            "{host} not served again within 45 s of SIG{signal} to node {victim}"
                        )
                    });
                worst_recovery = worst_recovery.max(took);
            }
            println!(
                "# {}s: node {victim} SIG{signal}; long-lived names served again within {worst_recovery:?}",
                started.elapsed().as_secs()
            );
            cluster.restart(victim).await;
            nodes[victim - 1] = Incarnation::new();
        }
    }
    for host in &hosts {
        assert!(
            served_again(&cluster, host, Duration::from_secs(45))
                .await
                .is_some(),
            "{host} served at the end"
        );
    }
    for (i, incarnation) in nodes.iter().enumerate() {
        incarnation.check(i + 1);
    }
    println!(
        "soak cluster: {secs} s, {round} rounds, {requests} requests, {restarts} restarts, \
         worst recovery {worst_recovery:?}, Redis {redis_base:?} -> worst {redis_worst} bytes"
    );
    assert!(requests > round * 3 * 10, "most requests were served");
    let base = redis_base.expect("the run outlasted its warm-up");
    assert!(
        redis_worst <= base + base / 2 + (1 << 20),
        "Redis memory grew: {base} -> {redis_worst}"
    );
    drop(long_lived);
}
