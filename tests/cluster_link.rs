//! The cluster link's request path (issue 29 §1), end to end: two burrow
//! nodes on 127.0.0.1 and 127.0.0.2 with a real `redis-server`, a stock
//! `ssh -R` client on node 1, visitors entering at node 2, whose requests
//! travel to node 1 as plain HTTP/2 requests of the link.
//!
//! * the link's own headers, sent by a visitor, never reach the owner as
//!   the link's (nor the app);
//! * visitors that stop reading hold no flow-control window of the link:
//!   everyone else's requests on it go on;
//! * requests with a body and HTTP/2 visitors go the same way.
//!
//! WebSocket upgrades through another node (which still take a stream) are
//! covered in `tests/cluster.rs`.

#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cluster_harness::{node_ip, Cluster};
use common::{expect_status, random_bytes, time_seed, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A generous bound for anything that should happen "at once".
const SOON: Duration = Duration::from_secs(10);

/// The headers the app got, as JSON.
async fn app_headers(resp: reqwest::Response) -> serde_json::Value {
    let resp = expect_status(resp, 200, "/headers").await;
    let body = resp.bytes().await.expect("body");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_headers_a_visitor_sends_are_stripped_at_the_entry_node() {
    let cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("owner").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    let visitor: IpAddr = "127.0.0.9".parse().unwrap();
    let forged = [
        ("burrow-visitor", "10.6.6.6:666"),
        ("burrow-local", "10.7.7.7:777"),
        ("burrow-key", "someone-else"),
        ("burrow-carry", "raw"),
        ("burrow-from", "node-9"),
    ];
    for version in [reqwest::Version::HTTP_11, reqwest::Version::HTTP_2] {
        let mut request = cluster
            .client_via_from(2, Some(visitor))
            .get(cluster.https_url(&host, "/headers"))
            .version(version);
        for (name, value) in forged {
            request = request.header(name, value);
        }
        let headers = app_headers(request.send().await.expect("GET via node 2")).await;
        assert_eq!(
            headers["x-forwarded-for"], "127.0.0.9",
            "{version:?}: the visitor's real address, not the forged one: {headers}"
        );
        assert_eq!(
            headers["x-forwarded-proto"], "https",
            "{version:?}: {headers}"
        );
        let leaked: Vec<&String> = headers
            .as_object()
            .expect("a JSON object")
            .keys()
            .filter(|name| name.starts_with("burrow-"))
            .collect();
        assert!(
            leaked.is_empty(),
            "{version:?}: link headers reached the app: {leaked:?}"
        );
    }
    // The owner's request log names the real visitor too.
    let seen = ssh
        .stdout
        .wait_for(SOON, |text| text.contains("127.0.0.9").then_some(()))
        .await;
    assert!(seen.is_ok(), "owner's terminal: {}", ssh.stdout.text());
    assert!(!ssh.stdout.text().contains("10.6.6.6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_http2_visitors_through_another_node_arrive_whole() {
    let cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("owner").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    // A 3 MiB upload (more than one link stream window) from an HTTP/2
    // visitor, echoed back.
    let body = random_bytes(3 * 1024 * 1024, time_seed());
    for version in [reqwest::Version::HTTP_11, reqwest::Version::HTTP_2] {
        let resp = cluster
            .client_via(2)
            .post(cluster.https_url(&host, "/echo"))
            .version(version)
            .body(body.clone())
            .send()
            .await
            .expect("POST via node 2");
        let resp = expect_status(resp, 200, "/echo").await;
        if version == reqwest::Version::HTTP_2 {
            assert_eq!(resp.version(), version);
        }
        let back = resp.bytes().await.expect("echo");
        assert!(back[..] == body[..], "{version:?}: the echo differs");
    }
    // Counted once, by the node that served them.
    let stats = cluster.stats(1).await;
    assert_eq!(stats["total_requests"], 2, "{stats}");
    assert_eq!(cluster.stats(2).await["total_requests"], 0);
}

/// How many visitors stop reading: together their streams' windows are
/// more than the link's connection window (40 × 2 MiB > 64 MiB), so
/// without the spool the link would stall for everyone.
const STALLED: usize = 40;
/// What each of them asks for.
const STALLED_BYTES: u64 = 5 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_visitors_through_another_node_stall_no_one_else() {
    let cluster = Cluster::start(2, &["--http-mode", "proxy"]).await;
    let origin = Origin::start("owner").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    let entry = SocketAddr::new(node_ip(2), cluster.shared.ports.http);
    // Visitors that ask for 5 MiB each and never read a byte (with the
    // smallest receive buffer, so the kernel takes little of it).
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut stream = socket.connect(entry).await.expect("connect to node 2");
        let request = format!("GET /bytes?n={STALLED_BYTES} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        stalled.push(stream);
    }
    // Node 2 takes what the owner sends them into its spools.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = cluster.stats(2).await;
        let spooled = stats["spool_memory_bytes"].as_u64().unwrap_or(0)
            + stats["spool_disk_bytes"].as_u64().unwrap_or(0);
        // More than the link's whole connection window (64 MiB): without
        // the spool the link would have stopped here, for everyone.
        if spooled >= 72 * 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never spooled the stalled downloads: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Meanwhile everyone else through node 2 is served, small and large.
    let client = cluster.client_via(2);
    let hello = tokio::time::timeout(SOON, async {
        let resp = client
            .get(cluster.https_url(&host, "/hello"))
            .send()
            .await
            .expect("GET via node 2");
        resp.text().await.expect("hello")
    })
    .await
    .expect("a small request through node 2 stalled");
    assert_eq!(hello, common::HELLO);
    const SIZE: u64 = 8 * 1024 * 1024;
    let got = tokio::time::timeout(SOON, async {
        let resp = client
            .get(cluster.https_url(&host, &format!("/bytes?n={SIZE}")))
            .send()
            .await
            .expect("download via node 2");
        resp.bytes().await.expect("download")
    })
    .await
    .expect("a download through node 2 stalled behind the slow visitors");
    assert_eq!(got.len() as u64, SIZE);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, b)| *b == common::pattern_byte(i as u64)));
    // The slow visitors still get all of theirs when they do read.
    let mut first = stalled.swap_remove(0);
    let mut head_and_body = Vec::new();
    let read_all = async {
        let mut buf = vec![0u8; 64 * 1024];
        while (head_and_body.len() as u64) < STALLED_BYTES {
            let n = first.read(&mut buf).await.expect("read");
            assert!(n > 0, "the stalled download ended early");
            head_and_body.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read_all)
        .await
        .expect("the stalled download, read at last");
    drop(stalled);
}
