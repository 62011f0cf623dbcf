//! Plans in a cluster (issue 28), end to end: a real `redis-server`, two
//! burrow nodes, stock `ssh`:
//!
//! * a key's usage on node 1 counts on node 2 (its `-- usage`, the admin
//!   API, a new tunnel refused there once the quota is used up);
//! * a key moving bytes on both nodes at once is held to its plan's
//!   bandwidth within the documented bound (rate × (T + 2.5 s)).

#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;

use std::time::{Duration, Instant};

use cluster_harness::{node_ip, Cluster};
use common::{Origin, Ssh, SshKeyPair, SshSpec, SshStdin, SSH_LIMITS_OFF};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SOON: Duration = Duration::from_secs(15);
const MIB: u64 = 1 << 20;

fn ssh_to(cluster: &Cluster, i: usize, key: &SshKeyPair, args: &[&str], cmd: &[&str]) -> Ssh {
    let host = node_ip(i).to_string();
    SshSpec {
        port: cluster.shared.ports.ssh,
        args,
        remote_cmd: cmd,
        host: &host,
        stdin: if cmd.is_empty() {
            SshStdin::Pipe
        } else {
            SshStdin::Null
        },
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

async fn download_via(cluster: &Cluster, via: usize, host: &str, n: u64) -> u64 {
    let url = cluster.https_url(host, &format!("/bytes?n={n}"));
    let mut resp = tokio::time::timeout(SOON, cluster.client_via(via).get(&url).send())
        .await
        .expect("download starts")
        .expect("download");
    assert_eq!(resp.status(), 200);
    let mut got = 0u64;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
        .await
        .expect("download moves")
        .expect("chunk")
    {
        got += chunk.len() as u64;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_on_one_node_counts_on_the_other() {
    let mut flags = vec!["--default-plan-transfer", "2MiB/day"];
    flags.extend(SSH_LIMITS_OFF);
    let cluster = Cluster::start(2, &flags).await;
    let origin = Origin::start("plans-cluster").await;
    let key = SshKeyPair::generate();
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let one = ssh_to(&cluster, 1, &key, &["-tt", "-R", &forward], &[]);
    let host = one.url().await.host();
    assert_eq!(download_via(&cluster, 1, &host, 3 * MIB).await, 3 * MIB);

    // Node 2 learns it from Redis within about a flush interval.
    let deadline = Instant::now() + SOON;
    let text = loop {
        let mut usage = ssh_to(&cluster, 2, &key, &[], &["--", "usage", "output=json"]);
        let status = usage.wait_exit(SOON).await.expect("usage exits");
        assert!(status.success(), "{}", usage.all_output());
        let text = usage.stdout.text();
        let event: serde_json::Value =
            serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
        if event["transfer"]["used"].as_u64().unwrap_or(0) >= 3 * MIB {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never saw the usage: {text}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(text.contains("\"plan\":\"default\""), "{text}");
    // A new tunnel on node 2 is refused: the quota is used up everywhere.
    let other = format!("0:127.0.0.1:{}", origin.port);
    let two = ssh_to(&cluster, 2, &key, &["-tt", "-R", &other], &[]);
    two.stdout
        .wait_contains("ERROR: transfer: the default plan's transfer quota", SOON)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", two.all_output()));
    let stats = cluster.stats(2).await;
    assert!(
        stats["plans"]["default"]["transfer_bytes"]
            .as_u64()
            .unwrap()
            >= 3 * MIB,
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_is_shared_between_nodes_within_the_bound() {
    const RATE: f64 = 512.0 * 1024.0;
    let range = common::free_port_range(8);
    let ranges = range.arg();
    let cluster = Cluster::start(
        2,
        &[
            "--default-plan-bandwidth",
            "512KiB/s",
            "--tcp-ports",
            &ranges,
        ],
    )
    .await;
    let origin = Origin::start("plans-cluster-bw").await;
    let key = SshKeyPair::generate();
    // The same key: an HTTP tunnel on node 1, a TCP tunnel on node 2.
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let http = ssh_to(&cluster, 1, &key, &["-tt", "-R", &forward], &[]);
    let host = http.url().await.host();
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = app.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = app.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let port = range.first + 1;
    let tcp_forward = format!("{port}:127.0.0.1:{app_port}");
    let tcp = ssh_to(&cluster, 2, &key, &["-tt", "-R", &tcp_forward], &[]);
    tcp.stdout
        .wait_contains(&format!("tcp://localhost:{port}"), SOON)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", tcp.all_output()));

    // 5 MiB in all: ~10 s at the plan's rate, ~5 s if each node took the
    // whole rate.
    let download = 5 * MIB / 2;
    let echo = 5 * MIB / 4; // counted twice (there and back)
    let started = Instant::now();
    let http_side = async {
        assert_eq!(download_via(&cluster, 1, &host, download).await, download);
        started.elapsed()
    };
    let tcp_side = async {
        let mut conn = tokio::net::TcpStream::connect((node_ip(2), port))
            .await
            .unwrap();
        let (mut r, mut w) = conn.split();
        let send = async { w.write_all(&vec![3u8; echo as usize]).await.unwrap() };
        let receive = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            while got < echo {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0, "echo ended early");
                got += n as u64;
            }
        };
        tokio::join!(send, receive);
        started.elapsed()
    };
    let (a, b) = tokio::time::timeout(Duration::from_secs(90), async {
        tokio::join!(http_side, tcp_side)
    })
    .await
    .expect("both sides finish");
    let elapsed = a.max(b).as_secs_f64();
    let total = (download + 2 * echo) as f64;
    // The documented bound: at most rate × (T + 2.5 s) (each node takes the
    // whole rate until the first flush after the other joined in).
    assert!(
        total <= RATE * (elapsed + 2.5),
        "{total} B in {elapsed:.1} s: over the bound"
    );
    assert!(
        elapsed >= 7.0,
        "{total} B in {elapsed:.1} s: the nodes did not share the rate"
    );
    drop((http, tcp));
}
