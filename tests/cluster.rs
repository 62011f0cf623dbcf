//! Several nodes as one service (issue 15), end to end: a real
//! `redis-server` of the test's own, three burrow nodes on 127.0.0.1,
//! 127.0.0.2 and 127.0.0.3 with the same ports, stock `ssh -R` clients, a
//! real origin, real HTTP/1.1, HTTP/2 and WebSocket clients, HAProxy in
//! front for failover.
//!
//! * `served_*`: a tunnel held on node 1 is served through nodes 2 and 3;
//! * `names_*`: one namespace (takeover, balancing) across nodes;
//! * `faults_*`: a node killed or stopped, Redis killed and restarted;
//! * `ops_*`: bans, the admin API and the stats across nodes;
//! * `secret_*`: a node with another secret is refused.

#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;

use std::net::IpAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster_harness::{node_ip, AutoSsh, Cluster, Haproxy};
use common::{
    expect_status, random_bytes, time_seed, Origin, Ssh, SshKeyPair, SshSpec, SSH_LIMITS_OFF,
};
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A generous bound for anything that should happen "at once".
const SOON: Duration = Duration::from_secs(10);

/// GETs `path` of `host` through node `via`; the response, or a panic
/// naming the node.
async fn get_via(cluster: &Cluster, via: usize, host: &str, path: &str) -> reqwest::Response {
    cluster
        .client_via(via)
        .get(cluster.https_url(host, path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path} via node {via}: {e}"))
}

/// Waits (bounded) until `host` answers `want` through node `via`.
async fn wait_status(cluster: &Cluster, via: usize, host: &str, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let client = cluster.client_via(via);
        let status = client
            .get(cluster.https_url(host, "/hello"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        if status.as_ref().is_ok_and(|s| *s == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{host} via node {via} never answered {want} within {within:?} (last: {status:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_through_every_node_http1_http2_and_the_real_visitor() {
    let cluster = Cluster::start(3, &[]).await;
    let origin = Origin::start("owner").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    for via in [1, 2, 3] {
        let resp = expect_status(get_via(&cluster, via, &host, "/hello").await, 200, "hello").await;
        assert_eq!(resp.text().await.unwrap(), common::HELLO, "via node {via}");
    }
    // HTTP/2 from the visitor, translated once, on node 2.
    let h2 = cluster.client_via(2);
    let resp = h2
        .get(cluster.https_url(&host, "/whoami"))
        .version(reqwest::Version::HTTP_2)
        .send()
        .await
        .expect("HTTP/2 via node 2");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "owner");
    // The real visitor's address reaches the app through node 3.
    let visitor: IpAddr = "127.0.0.9".parse().unwrap();
    let client = cluster.client_via_from(3, Some(visitor));
    let headers = json(
        client
            .get(cluster.https_url(&host, "/headers"))
            .send()
            .await
            .expect("headers via node 3"),
    )
    .await;
    assert_eq!(headers["x-forwarded-for"], "127.0.0.9", "{headers}");
    assert_eq!(headers["x-forwarded-proto"], "https", "{headers}");
    // The owner's terminal shows the requests that entered nodes 2 and 3.
    let seen = ssh
        .stdout
        .wait_for(SOON, |text| {
            let lines = text.lines().filter(|l| l.contains("/hello")).count();
            (lines >= 3 && text.contains("/headers") && text.contains("127.0.0.9")).then_some(())
        })
        .await;
    assert!(
        seen.is_ok(),
        "request log in the owner's terminal: {}",
        ssh.stdout.text()
    );
    // Counted once: by the node that served it.
    let stats = cluster.stats(1).await;
    assert_eq!(stats["total_requests"], 5, "{stats}");
    assert_eq!(cluster.stats(2).await["total_requests"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_websocket_and_100_mib_both_ways_through_another_node() {
    let cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("bulk").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    // WebSocket through node 2.
    let (mut ws, _) = cluster.node(2).ws_connect(&host, "/ws").await;
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "ping across".into(),
    ))
    .await
    .unwrap();
    let echoed = common::ws_next(&mut ws).await;
    assert_eq!(echoed.into_text().unwrap(), "ping across");
    drop(ws);
    // 100 MiB down, byte-exact (the origin's pattern), through node 2.
    const SIZE: u64 = 100 * 1024 * 1024;
    let client = cluster.client_via(2);
    let mut resp = client
        .get(cluster.https_url(&host, &format!("/bytes?n={SIZE}")))
        .send()
        .await
        .expect("100 MiB download via node 2");
    assert_eq!(resp.status(), 200);
    let mut offset = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("download chunk") {
        for (i, byte) in chunk.iter().enumerate() {
            let want = common::pattern_byte(offset + i as u64);
            assert_eq!(
                *byte,
                want,
                "byte {} of the download differs",
                offset + i as u64
            );
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, SIZE);
    // 100 MiB up, echoed back byte-exact, through node 2.
    let body = random_bytes(SIZE as usize, time_seed());
    let resp = client
        .post(cluster.https_url(&host, "/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("100 MiB upload via node 2");
    assert_eq!(resp.status(), 200);
    let back = resp.bytes().await.expect("echoed body");
    assert!(
        back.len() as u64 == SIZE && back[..] == body[..],
        "upload echo differs"
    );
}

/// A response's body as JSON.
async fn json(resp: reqwest::Response) -> serde_json::Value {
    let body = resp.bytes().await.expect("body");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// A TCP echo app: every byte back.
async fn echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_tcp_tunnel_on_every_node() {
    let range = common::free_port_range(10);
    let ranges = range.arg();
    let cluster = Cluster::start(3, &["--tcp-ports", &ranges]).await;
    let app = echo_app().await;
    let wanted = range.first + 3;
    let forward = format!("{wanted}:127.0.0.1:{app}");
    let host = node_ip(1).to_string();
    let args = ["-tt", "-R", forward.as_str()];
    let ssh = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &args,
        host: &host,
        ..SshSpec::default()
    }
    .spawn();
    ssh.stdout
        .wait_contains(&format!("tcp://localhost:{wanted}"), SOON)
        .await
        .unwrap_or_else(|e| panic!("no TCP tunnel: {e}\n{}", ssh.all_output()));
    for via in [1, 2, 3] {
        let deadline = Instant::now() + SOON;
        let mut stream = loop {
            // Nodes 2 and 3 start listening when they hear of the port.
            match TcpStream::connect((node_ip(via), wanted)).await {
                Ok(stream) => break stream,
                Err(err) if Instant::now() < deadline => {
                    let _ = err;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("node {via} never accepted on port {wanted}: {err}"),
            }
        };
        let data = random_bytes(256 * 1024, time_seed() + via as u64);
        stream.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(SOON, stream.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo read");
        assert!(back == data, "echo via node {via} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_tls_passthrough_through_another_node() {
    let cluster = Cluster::start(3, &[]).await;
    // The app terminates TLS itself, for any name under the domain.
    let ck = rcgen::generate_simple_self_signed(vec!["*.localhost".to_string()]).unwrap();
    let app_cert = ck.cert.der().clone();
    let config = common::tls_server_config(app_cert.clone(), ck.key_pair.serialize_der());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let mut line = [0u8; 5];
                    if tls.read_exact(&mut line).await.is_ok() {
                        let _ = tls.write_all(b"app saw ").await;
                        let _ = tls.write_all(&line).await;
                        let _ = tls.shutdown().await;
                    }
                }
            });
        }
    });
    let forward = format!("80:127.0.0.1:{app_port}");
    let host_ip = node_ip(1).to_string();
    let args = ["-tt", "-R", forward.as_str()];
    let ssh = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &args,
        host: &host_ip,
        remote_cmd: &["tls=passthrough"],
        ..SshSpec::default()
    }
    .spawn();
    let host = ssh.url().await.host();
    // Through node 3, trusting only the app's own certificate.
    let tls = common::tls_config_pinned(&app_cert, common::Alpn::Http1);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect((node_ip(3), cluster.shared.ports.https))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
    let mut stream = tokio::time::timeout(SOON, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("a handshake with the app itself, through node 3");
    stream.write_all(b"hello").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(SOON, stream.read_to_string(&mut answer))
        .await
        .expect("answer in time")
        .ok();
    assert_eq!(answer, "app saw hello");
}

/// A visitor's malformed body through a node that does not hold the
/// tunnel is still the visitor's fault: 400, not a 502 naming a node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_a_malformed_body_through_another_node_is_a_400() {
    let cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("owner").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    let tls = common::tls_config_accept_any();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = TcpStream::connect((node_ip(2), cluster.shared.ports.https))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from(host.clone()).unwrap();
    let mut stream = connector.connect(name, tcp).await.expect("TLS to node 2");
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\nzz\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SOON, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("Malformed request body"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_per_tunnel_rate_limit_holds_across_nodes() {
    let cluster = Cluster::start(3, &["--tunnel-rate", "1/m", "--tunnel-burst", "4"]).await;
    let origin = Origin::start("limited").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    let mut statuses = Vec::new();
    for i in 0..9 {
        let via = 1 + i % 3;
        statuses.push(
            get_via(&cluster, via, &host, "/hello")
                .await
                .status()
                .as_u16(),
        );
    }
    // The owner applies the tunnel's one bucket, whichever node it came in by.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_takeover_across_nodes() {
    let cluster = Cluster::start(2, &[]).await;
    let key = SshKeyPair::generate();
    let (first_app, second_app) = (Origin::start("first").await, Origin::start("second").await);
    let mut first = cluster.tunnel_to(1, &first_app, Some(&key));
    let host = first.url().await.host();
    let started = Instant::now();
    let second = cluster.tunnel_to(2, &second_app, Some(&key));
    assert_eq!(
        second.url().await.host(),
        host,
        "the same key gets the same name on every node"
    );
    first
        .stdout
        .wait_contains("taken over", Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("the old client was not told within 5 s: {e}"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        first.wait_exit(SOON).await.is_some(),
        "the old client exits"
    );
    for via in [1, 2] {
        let resp = expect_status(get_via(&cluster, via, &host, "/whoami").await, 200, "new").await;
        assert_eq!(resp.text().await.unwrap(), "second", "via node {via}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_round_robin_across_clients_on_two_nodes() {
    let cluster = Cluster::start(3, &["--balance", "round-robin"]).await;
    let key = SshKeyPair::generate();
    let (a, b) = (
        Origin::start("on-node-1").await,
        Origin::start("on-node-2").await,
    );
    let first = cluster.tunnel_to(1, &a, Some(&key));
    let host = first.url().await.host();
    let second = cluster.tunnel_to(2, &b, Some(&key));
    assert_eq!(second.url().await.host(), host);
    first
        .stdout
        .wait_contains("served by 2 clients", SOON)
        .await
        .unwrap_or_else(|e| panic!("the first client hears of the second: {e}"));
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..8 {
        let body = get_via(&cluster, 3, &host, "/whoami")
            .await
            .text()
            .await
            .unwrap();
        *seen.entry(body).or_insert(0) += 1;
    }
    assert_eq!(seen.get("on-node-1"), Some(&4), "{seen:?}");
    assert_eq!(seen.get("on-node-2"), Some(&4), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_kill_9_then_autossh_through_haproxy_gets_the_url_back() {
    let mut cluster = Cluster::start(3, &SSH_LIMITS_OFF).await;
    let haproxy = Haproxy::start(&cluster.shared, 3).await;
    let origin = Origin::start("survivor").await;
    let key = SshKeyPair::generate();
    let autossh = AutoSsh::start(haproxy.ssh, &key, &format!("80:127.0.0.1:{}", origin.port));
    let host = autossh.url(1).await.host();
    let holder = wait_holder(&cluster, &host).await;
    // kill -9 the node holding it.
    let killed = Instant::now();
    let mut node = cluster.stop(holder).expect("running");
    node.signal("KILL");
    node.wait_exit(SOON).await;
    // autossh reconnects through HAProxy to a node that is alive, and gets
    // the same (stable) URL back.
    let again = autossh.url(2).await.host();
    assert_eq!(again, host, "the same URL after the failover");
    let alive = if holder == 1 { 2 } else { 1 };
    wait_status(&cluster, alive, &host, 200, Duration::from_secs(20)).await;
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "served again after {:?}",
        killed.elapsed()
    );
    assert_ne!(wait_holder(&cluster, &host).await, holder);
}

/// The node whose terminal-less client holds `host` now (from the stats).
async fn wait_holder(cluster: &Cluster, host: &str) -> usize {
    let name = host.split('.').next().unwrap().to_string();
    let deadline = Instant::now() + SOON;
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
            let token = cluster.node(i).admin_token();
            let stats: serde_json::Value = json(admin_get(url, &token).await).await;
            let names = stats["subdomains"].as_array().cloned().unwrap_or_default();
            if names.iter().any(|n| n == name.as_str()) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node holds {host}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_graceful_stop_releases_names_at_once() {
    let mut cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("leaving").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    expect_status(get_via(&cluster, 2, &host, "/hello").await, 200, "before").await;
    let mut node = cluster.stop(1).unwrap();
    node.signal("TERM");
    assert!(node.wait_exit(SOON).await.is_some(), "node 1 stops");
    // Released at once: node 2 no longer routes to it (no TTL wait), and
    // the name is free to claim.
    let names = cluster
        .redis
        .command(&["KEYS", "{burrow}:name:*"])
        .await
        .unwrap();
    assert!(names.trim().is_empty(), "names left in Redis: {names}");
    expect_status(get_via(&cluster, 2, &host, "/hello").await, 404, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_a_dead_nodes_names_answer_503_then_free() {
    let mut cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("dead").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    expect_status(get_via(&cluster, 2, &host, "/hello").await, 200, "before").await;
    let mut node = cluster.stop(1).unwrap();
    node.signal("KILL");
    node.wait_exit(SOON).await;
    // Right after: a clear page with Retry-After, never a hang.
    let started = Instant::now();
    let resp = get_via(&cluster, 2, &host, "/hello").await;
    assert!(started.elapsed() < Duration::from_secs(5), "answered fast");
    assert!(
        [502, 503].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    assert!(resp.headers().contains_key("retry-after"));
    // After the node TTL (3 s here) the name is nobody's: 404, and every
    // answer until then comes at once (a name that went live is no longer
    // "announced", so nobody waits for it to come back).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let asked = Instant::now();
        let status = get_via(&cluster, 2, &host, "/hello").await.status();
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{status} took {:?}",
            asked.elapsed()
        );
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "still {status} after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ssh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_redis_killed_then_restarted_empty() {
    let mut cluster = Cluster::start(2, &[]).await;
    let origin = Origin::start("steady").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    expect_status(get_via(&cluster, 2, &host, "/hello").await, 200, "before").await;
    cluster.redis.kill();
    // The owner keeps serving, and node 2 its cached route.
    for via in [1, 2] {
        let context = format!("via node {via} with Redis down");
        expect_status(get_via(&cluster, via, &host, "/hello").await, 200, &context).await;
    }
    cluster
        .wait_stats(1, SOON, |s| s["cluster"]["redis"] == "down")
        .await;
    // A new tunnel is accepted meanwhile (on its node).
    let late_origin = Origin::start("late").await;
    let late = cluster.tunnel_to(2, &late_origin, None);
    let late_host = late.url().await.host();
    expect_status(
        get_via(&cluster, 2, &late_host, "/whoami").await,
        200,
        "local",
    )
    .await;
    // Redis comes back empty: both tunnels are registered again within 10 s.
    cluster.redis.restart().await;
    let back = Instant::now();
    wait_status(&cluster, 1, &late_host, 200, Duration::from_secs(10)).await;
    wait_status(&cluster, 2, &host, 200, Duration::from_secs(10)).await;
    assert!(back.elapsed() < Duration::from_secs(10));
    let names = cluster
        .redis
        .command(&["KEYS", "{burrow}:name:*"])
        .await
        .unwrap();
    assert_eq!(names.lines().count(), 2, "{names}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_a_ban_on_one_node_holds_on_the_others() {
    let cluster = Cluster::start(3, &[]).await;
    let origin = Origin::start("banned").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    let visitor: IpAddr = "127.0.0.7".parse().unwrap();
    let ban = reqwest::Client::new()
        .post(format!(
            "http://{}:{}/bans",
            node_ip(2),
            cluster.shared.ports.stats
        ))
        .bearer_auth(cluster.node(2).admin_token())
        .header("content-type", "application/json")
        .body(r#"{"ip": "127.0.0.7", "duration_secs": 600}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ban.status(), 201);
    for via in [1, 3] {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let status = cluster
                .client_via_from(via, Some(visitor))
                .get(cluster.https_url(&host, "/hello"))
                .send()
                .await
                .unwrap()
                .status();
            if status == 403 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {via} still serves the banned IP ({status})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = format!(
            "http://{}:{}/bans",
            node_ip(via),
            cluster.shared.ports.stats
        );
        let bans = json(admin_get(url, &cluster.node(via).admin_token()).await).await;
        assert_eq!(bans[0]["ip"], "127.0.0.7", "node {via}: {bans}");
    }
    // Others are still served.
    expect_status(
        get_via(&cluster, 3, &host, "/hello").await,
        200,
        "other visitor",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_admin_lists_and_kicks_across_nodes() {
    let cluster = Cluster::start(3, &[]).await;
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let on_one = cluster.tunnel_to(1, &a, None);
    let on_two = cluster.tunnel_to(2, &b, None);
    let (one, two) = (on_one.url().await.host(), on_two.url().await.host());
    let url = format!(
        "http://{}:{}/tunnels",
        node_ip(3),
        cluster.shared.ports.stats
    );
    let list = json(admin_get(url, &cluster.node(3).admin_token()).await).await;
    let entries = list.as_array().unwrap();
    let node_of = |host: &str| {
        let name = host.split('.').next().unwrap();
        entries
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["node"].clone())
    };
    assert_eq!(node_of(&one), Some("node-1".into()), "{list}");
    assert_eq!(node_of(&two), Some("node-2".into()), "{list}");
    // Kick the one on node 1 from node 3.
    let name = one.split('.').next().unwrap();
    let kicked = reqwest::Client::new()
        .delete(format!(
            "http://{}:{}/tunnels/{name}",
            node_ip(3),
            cluster.shared.ports.stats
        ))
        .bearer_auth(cluster.node(3).admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(kicked.status(), 200);
    assert_eq!(json(kicked).await["closed"], 1);
    on_one
        .stdout
        .wait_contains("closed by the server operator", SOON)
        .await
        .unwrap_or_else(|e| panic!("the kicked client is told: {e}"));
    wait_status(&cluster, 2, &one, 404, SOON).await;
    let stats = cluster.stats(3).await;
    let nodes = stats["cluster"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{stats}");
    assert!(nodes.iter().all(|n| n["alive"] == true), "{stats}");
    assert_eq!(stats["cluster"]["redis"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_a_node_with_another_secret_is_refused() {
    let cluster = Cluster::start(1, &[]).await;
    let dir = common::TempDir::new("burrow-other-secret");
    let other = dir.path().join("other.secret");
    let status = std::process::Command::new(common::burrow_bin())
        .args(["cluster", "init"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(status.success());
    let mut args = cluster.args(2, &[]);
    let at = args.iter().position(|a| a == "--cluster-secret").unwrap();
    args[at + 1] = other.display().to_string();
    let run =
        common::run_burrow_expect_exit(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_ne!(run.status.code(), Some(0));
    assert!(
        run.stderr.contains("cluster secret is not the cluster's"),
        "stderr: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_partitioned_node_loses_its_name_to_a_newer_claim() {
    let mut cluster = Cluster::start(0, &[]).await;
    let redis = std::net::SocketAddr::from(([127, 0, 0, 1], cluster.redis.port));
    let mut partition = cluster_harness::Relay::start(redis).await;
    let via_relay = format!("redis://127.0.0.1:{}", partition.port);
    let one = cluster.launch_with(1, &via_relay, &[]).await;
    cluster.nodes.push(Some(one));
    let two = cluster.launch(2, &[]).await;
    cluster.nodes.push(Some(two));
    let key = SshKeyPair::generate();
    let (old_app, new_app) = (Origin::start("old").await, Origin::start("new").await);
    let mut old = cluster.tunnel_to(1, &old_app, Some(&key));
    let host = old.url().await.host();
    // Node 1 loses Redis; its heartbeat expires (3 s); the same key
    // reconnects to node 2 and claims the name there.
    partition.cut();
    cluster
        .wait_stats(2, SOON, |s| {
            let nodes = s["cluster"]["nodes"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            nodes
                .iter()
                .any(|n| n["id"] == "node-1" && n["alive"] == false)
        })
        .await;
    let new = cluster.tunnel_to(2, &new_app, Some(&key));
    assert_eq!(new.url().await.host(), host);
    let served = get_via(&cluster, 2, &host, "/whoami")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(served, "new");
    // The partition heals: node 1 sees the newer claim, closes its tunnel
    // with a notice, and from then on forwards the name to node 2.
    partition.restore().await;
    old.stdout
        .wait_contains("taken over", Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("the partitioned client is told: {e}"));
    assert!(old.wait_exit(SOON).await.is_some(), "and it exits");
    let deadline = Instant::now() + SOON;
    loop {
        let body = get_via(&cluster, 1, &host, "/whoami")
            .await
            .text()
            .await
            .unwrap();
        if body == "new" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 still serves its stale tunnel: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_a_broken_link_gives_a_fast_502_then_recovers() {
    let mut cluster = Cluster::start(0, &[]).await;
    let link = std::net::SocketAddr::new(node_ip(1), cluster.shared.ports.link);
    let mut wire = cluster_harness::Relay::start(link).await;
    let advertise = format!("127.0.0.1:{}", wire.port);
    let redis = cluster.redis.url();
    let one = cluster
        .launch_with(1, &redis, &["--cluster-advertise", &advertise])
        .await;
    cluster.nodes.push(Some(one));
    let two = cluster.launch(2, &[]).await;
    cluster.nodes.push(Some(two));
    let origin = Origin::start("far").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    expect_status(get_via(&cluster, 2, &host, "/hello").await, 200, "before").await;
    wire.cut();
    for _ in 0..3 {
        let started = Instant::now();
        let resp = get_via(&cluster, 2, &host, "/hello").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a fast answer, not a hang"
        );
        assert_eq!(resp.status(), 502);
        assert!(resp.headers().contains_key("retry-after"));
        let page = resp.text().await.unwrap();
        assert!(page.contains("node-1"), "the page names the node: {page}");
    }
    // The log line may reach the harness's reader a moment after the 502s.
    let down = cluster
        .node(2)
        .stderr
        .wait_for(Duration::from_secs(5), |text| {
            let n = text.matches("cluster link down").count();
            (n > 0).then_some(n)
        })
        .await
        .unwrap_or_else(|text| panic!("no 'cluster link down' logged:\n{text}"));
    assert_eq!(down, 1, "logged once:\n{}", cluster.node(2).stderr.text());
    wire.restore().await;
    wait_status(&cluster, 2, &host, 200, Duration::from_secs(15)).await;
    drop(ssh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_tunnels_per_ip_count_across_nodes() {
    let cluster = Cluster::start(2, &["--max-tunnels-per-ip", "1"]).await;
    let origin = Origin::start("one-only").await;
    let first = cluster.tunnel_to(1, &origin, None);
    first.url().await;
    // The same IP on node 2: over the cluster-wide limit.
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let host = node_ip(2).to_string();
    let args = ["-tt", "-R", forward.as_str()];
    let second = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &args,
        host: &host,
        ..SshSpec::default()
    }
    .spawn();
    let refused = second
        .stdout
        .wait_contains("ERROR: max-tunnels-per-ip", SOON)
        .await;
    assert!(
        refused.is_ok(),
        "refused with the limit named:\n{}",
        second.all_output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_health_answers_draining_while_a_node_stops() {
    let mut cluster = Cluster::start(1, &["--shutdown-grace", "20s"]).await;
    let origin = Origin::start("slow").await;
    let ssh = cluster.tunnel_to(1, &origin, None);
    let host = ssh.url().await.host();
    let health = format!(
        "http://{}:{}/health",
        node_ip(1),
        cluster.shared.ports.health
    );
    let ok = reqwest::get(&health).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "ok\n");
    // A download in flight keeps the node draining.
    let mut download = get_via(&cluster, 1, &host, "/bytes?n=104857600").await;
    assert_eq!(download.status(), 200);
    download.chunk().await.unwrap();
    let node = cluster.stop(1).unwrap();
    node.signal("TERM");
    let deadline = Instant::now() + SOON;
    loop {
        let answer = reqwest::get(&health).await.unwrap();
        if answer.status() == 503 {
            assert_eq!(answer.text().await.unwrap(), "draining\n");
            break;
        }
        assert!(Instant::now() < deadline, "health never said draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(download);
    let mut node = node;
    assert!(
        node.wait_exit(Duration::from_secs(25)).await.is_some(),
        "the node stops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_nodes_warn_when_their_keys_files_differ() {
    let mut cluster = Cluster::start(0, &[]).await;
    let key = SshKeyPair::generate();
    let (same, other) = (
        cluster.shared.dir.path().join("keys-a"),
        cluster.shared.dir.path().join("keys-b"),
    );
    std::fs::write(&same, format!("names=api {}\n", key.public)).unwrap();
    std::fs::write(&other, format!("names=web {}\n", key.public)).unwrap();
    let redis = cluster.redis.url();
    let flags =
        |file: &std::path::Path| vec!["--keys-file".to_string(), file.display().to_string()];
    let (a, b) = (flags(&same), flags(&other));
    let (a, b): (Vec<&str>, Vec<&str>) = (
        a.iter().map(String::as_str).collect(),
        b.iter().map(String::as_str).collect(),
    );
    let one = cluster.launch_with(1, &redis, &a).await;
    cluster.nodes.push(Some(one));
    let two = cluster.launch_with(2, &redis, &a).await;
    cluster.nodes.push(Some(two));
    let three = cluster.launch_with(3, &redis, &b).await;
    cluster.nodes.push(Some(three));
    let warned = cluster
        .node(1)
        .stderr
        .wait_contains("node reads a different keys file", SOON)
        .await;
    assert!(
        warned.is_ok(),
        "node 1 warns:\n{}",
        cluster.node(1).stderr.text()
    );
    let log = cluster.node(1).stderr.text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("different keys file"))
        .collect();
    assert!(
        lines.iter().all(|l| l.contains("node-3")),
        "only node 3 differs: {lines:?}"
    );
}

/// `ssh -W TARGET` to node `i` with `key`, sending one HTTP request (the
/// origin plays the device's service); the output once it exits.
async fn stdio_forward_to(cluster: &Cluster, i: usize, key: &SshKeyPair, target: &str) -> Output {
    let args = common::keyed_ssh_opts(cluster.shared.ports.ssh, &key.path);
    let destination = format!("admin@{}", node_ip(i));
    common::ssh_w_get_hello(&args, target, &destination, SOON).await
}

/// [`stdio_forward_to`] node 2 with `key`, again until `done` says the
/// output is the one awaited (the directory learns an alias a moment after
/// its device binds it) or [`SOON`] has passed; the last output.
async fn forward_until(
    cluster: &Cluster,
    key: &SshKeyPair,
    target: &str,
    done: impl Fn(&Output) -> bool,
) -> Output {
    let deadline = Instant::now() + SOON;
    loop {
        let out = stdio_forward_to(cluster, 2, key, target).await;
        if done(&out) || Instant::now() > deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A device: `ssh -N -R FORWARD` to node `i` with `key`.
fn device_on(cluster: &Cluster, i: usize, key: &SshKeyPair, forward: &str) -> Ssh {
    let host = node_ip(i).to_string();
    SshSpec {
        port: cluster.shared.ports.ssh,
        args: &["-N", "-R", forward],
        host: &host,
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_a_private_alias_on_one_node_through_another() {
    let cluster = Cluster::start(2, &SSH_LIMITS_OFF).await;
    let origin = Origin::start("device").await;
    let (owner, stranger) = (SshKeyPair::generate(), SshKeyPair::generate());
    let forward = format!("pi-7:22:127.0.0.1:{}", origin.port);
    let _device = device_on(&cluster, 1, &owner, &forward);
    // Through node 2, once the directory knows the alias.
    let out = forward_until(&cluster, &owner, "pi-7:22", |out| out.status.success()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(common::HELLO),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another key is refused on node 2 too: the owner's key is known
    // cluster-wide.
    let out = stdio_forward_to(&cluster, 2, &stranger, "pi-7:22").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("may not connect to pi-7:22"), "{stderr}");

    // A device on node 1 that lets the stranger in with allow-keys=: node
    // 2 knows it from the directory.
    let forward = format!("pi-8:22:127.0.0.1:{}", origin.port);
    let host = node_ip(1).to_string();
    let allow = format!("allow-keys={}", stranger.fingerprint);
    let _shared = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &["-R", &forward],
        remote_cmd: &["--", &allow],
        host: &host,
        ..SshSpec::default()
    }
    .spawn_with_key(&owner);
    let out = forward_until(&cluster, &stranger, "pi-8:22", |out| out.status.success()).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(common::HELLO),
        "allow-keys= not honoured through node 2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = cluster.stats(2).await;
    assert!(stats["private_connections"].as_u64() >= Some(1), "{stats}");
}

/// A device on node 1 whose own service is down, reached through node 2:
/// node 1 reaches the device before it answers the link stream, so the
/// admin's ssh prints why, as on a single node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_alias_failing_on_another_node_is_an_open_failure() {
    let cluster = Cluster::start(2, &SSH_LIMITS_OFF).await;
    let owner = SshKeyPair::generate();
    let forward = format!("pi-9:22:127.0.0.1:{}", common::dead_port());
    let _device = device_on(&cluster, 1, &owner, &forward);
    let failure = "open failed: connect failed: pi-9:22 did not take the connection: \
                   the client could not open it: Connect failed";
    // Once the directory knows the alias.
    let answered = |out: &Output| {
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains(failure)
    };
    let out = forward_until(&cluster, &owner, "pi-9:22", answered).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "-W went through");
    assert!(stderr.contains(failure), "{stderr}");
}

/// `GET url` on a node's stats listener with its admin token.
async fn admin_get(url: String, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}
