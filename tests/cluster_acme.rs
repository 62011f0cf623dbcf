//! Certificates in cluster mode (issue 15), end to end: a `redis-server`
//! of the test's own, burrow nodes on 127.0.0.1–3 with the same ports,
//! Debian's pebble as the ACME CA and challtestsrv as the DNS server (the
//! harness tests/acme.rs uses, tests/common/pebble.rs), stock `ssh -R`
//! clients, a real origin.
//!
//! * `acme_*`: one order for the whole cluster, served by every node (and
//!   at once by a node started later), keys sealed in Redis; a renewal
//!   happens once;
//! * `custom_*`: a custom domain bound on one node is served by every
//!   node with one certificate: from the CA (whose HTTP-01 check reaches
//!   another node than the one ordering), or self-signed without ACME.

#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;
#[path = "common/pebble.rs"]
mod pebble;

use std::sync::Arc;
use std::time::Duration;

use cluster_harness::{node_ip, Cluster, NodeCerts, Ports};
use common::{tls_config_accept_any, Origin, Ssh, SshKeyPair, SshSpec};
use pebble::{connect, poll, serial, wait_verified, Pebble, Tls};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The cluster's domain when it gets its certificates over ACME.
const DOMAIN: &str = "cluster.example.com";
/// A custom domain a client proves in DNS.
const NAME: &str = "app.example.org";
/// A generous bound for a URL, a certificate, a renewal.
const WAIT: Duration = Duration::from_secs(30);

/// The ACME flags every node gets: `pebble` as the CA, quick retries.
fn acme_args(pebble: &Pebble) -> Vec<String> {
    let ca = pebble.https_ca.display().to_string();
    [
        "--acme-email",
        "ops@example.com",
        "--acme-directory",
        &pebble.directory(),
        "--acme-ca-root",
        &ca,
        "--acme-retry-min",
        "1s",
        "--acme-retry-max",
        "2s",
    ]
    .map(String::from)
    .to_vec()
}

/// Flags for custom domains proven in challtestsrv's DNS, pointing at any
/// node.
fn custom_args(pebble: &Pebble) -> Vec<String> {
    [
        "--dns-resolver",
        &pebble.dns_addr().to_string(),
        "--custom-domain-ips",
        "127.0.0.1,127.0.0.2,127.0.0.3",
        "--no-browser-warning",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `n` nodes getting their certificates for [`DOMAIN`] from `pebble`.
async fn acme_cluster(n: usize, ports: Ports, pebble: &Pebble, more: &[String]) -> Cluster {
    let mut args = acme_args(pebble);
    args.extend(more.iter().cloned());
    let certs = NodeCerts::Own {
        domain: DOMAIN.into(),
    };
    Cluster::start_with(n, &strs(&args), ports, certs).await
}

/// Certificates the nodes `1..=n` got from the CA, summed.
async fn orders(cluster: &Cluster, n: usize) -> u64 {
    let mut total = 0;
    for i in 1..=n {
        let stats = cluster.stats(i).await;
        total += stats["acme_orders"]
            .as_u64()
            .unwrap_or_else(|| panic!("node {i}: no acme_orders in {stats}"));
    }
    total
}

/// Whether one line of node `i`'s log holds all of `needles`.
fn logged(cluster: &Cluster, i: usize, needles: &[&str]) -> bool {
    let text = cluster.node(i).stderr.text();
    let found = text.lines().any(|l| needles.iter().all(|n| l.contains(n)));
    found
}

/// A key's text in Redis (`redis-cli --raw`: binary comes out lossy).
async fn redis_text(cluster: &Cluster, args: &[&str]) -> String {
    cluster
        .redis
        .command(args)
        .await
        .unwrap_or_else(|| panic!("redis-cli {args:?}"))
}

#[tokio::test]
async fn acme_one_order_for_the_cluster_served_by_every_node() {
    let ports = Ports::free(3);
    let pebble = Pebble::launch_on(ports.http, 0).await;
    let mut cluster = acme_cluster(2, ports, &pebble, &[]).await;
    let root = pebble.root().await;

    // No DNS-01 provider: the apex over HTTP-01, served for SNI DOMAIN.
    let first = serial(&wait_verified(cluster.https_addr(1), DOMAIN, &root).await);
    let second = serial(&wait_verified(cluster.https_addr(2), DOMAIN, &root).await);
    assert_eq!(first, second, "both nodes serve the one certificate");

    // A node joining later serves it from its first handshake on.
    cluster.add(3).await;
    let third = connect(cluster.https_addr(3), DOMAIN, &root)
        .await
        .expect("the cluster's certificate, served at start");
    assert_eq!(serial(&third), first);
    assert!(
        logged(&cluster, 3, &["serving the cluster's certificate"]),
        "{}",
        cluster.node(3).stderr.text()
    );

    assert_eq!(orders(&cluster, 3).await, 1, "one order for three nodes");
    assert_eq!(
        pebble.issued(),
        1,
        "pebble issued once: {}",
        pebble.log.text()
    );
    let ordering: Vec<usize> = (1..=3)
        .filter(|&i| logged(&cluster, i, &["certificate issued"]))
        .collect();
    assert_eq!(ordering.len(), 1, "one node ordered: {ordering:?}");

    // In Redis, the private keys sealed; nothing in the state directories.
    let chain = redis_text(&cluster, &["HGET", "{burrow}:acme:cert:main", "chain"]).await;
    assert!(chain.contains("BEGIN CERTIFICATE"), "{chain}");
    let key = redis_text(&cluster, &["HGET", "{burrow}:acme:cert:main", "key"]).await;
    assert!(
        key.len() > 32 && !key.contains("PRIVATE KEY"),
        "sealed: {key}"
    );
    let accounts = redis_text(&cluster, &["KEYS", "{burrow}:acme:account:*"]).await;
    let accounts: Vec<&str> = accounts.lines().collect();
    assert_eq!(accounts.len(), 1, "one account: {accounts:?}");
    let account = redis_text(&cluster, &["GET", accounts[0]]).await;
    assert!(
        !account.contains("pkcs8") && !account.contains("localhost"),
        "sealed: {account}"
    );
    for i in 1..=3 {
        let dir = cluster.node(i).dir.path().join("state/acme");
        assert!(!dir.exists(), "node {i} wrote {}", dir.display());
    }
}

#[tokio::test]
async fn acme_renewal_happens_once() {
    // 15 s certificates: a renewal is due after 10 s.
    let ports = Ports::free(3);
    let pebble = Pebble::launch_on(ports.http, 15).await;
    let cluster = acme_cluster(3, ports, &pebble, &[]).await;
    let root = pebble.root().await;
    let first = serial(&wait_verified(cluster.https_addr(1), DOMAIN, &root).await);
    for i in 2..=3 {
        let served = serial(&wait_verified(cluster.https_addr(i), DOMAIN, &root).await);
        assert_eq!(served, first, "node {i}");
    }

    let renewed = poll("node 1 serving a renewed certificate", WAIT, || {
        let (root, first) = (root.clone(), first.clone());
        let addr = cluster.https_addr(1);
        async move {
            let now = serial(&connect(addr, DOMAIN, &root).await.ok()?);
            (now != first).then_some(now)
        }
    })
    .await;
    for i in 2..=3 {
        let addr = cluster.https_addr(i);
        poll(&format!("node {i} serving the renewal"), WAIT, || {
            let (root, renewed) = (root.clone(), renewed.clone());
            async move {
                let now = serial(&connect(addr, DOMAIN, &root).await.ok()?);
                (now == renewed).then_some(())
            }
        })
        .await;
    }
    // Counted before the next renewal is due (10 s after this one).
    assert_eq!(
        pebble.issued(),
        2,
        "issued, renewed once: {}",
        pebble.log.text()
    );
    assert_eq!(orders(&cluster, 3).await, 2);
    let renewing: Vec<usize> = (1..=3)
        .filter(|&i| logged(&cluster, i, &["certificate renewed"]))
        .collect();
    assert_eq!(renewing.len(), 1, "one node renewed: {renewing:?}");
}

/// `ssh -R NAME:80:…` to node `i` with `key` (the one the TXT record
/// names).
fn custom_tunnel(cluster: &Cluster, i: usize, key: &SshKeyPair, origin: &Origin) -> Ssh {
    let forward = format!("{NAME}:80:127.0.0.1:{}", origin.port);
    let host = node_ip(i).to_string();
    let args = ["-R", forward.as_str()];
    let spec = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &args,
        host: &host,
        ..SshSpec::default()
    };
    spec.spawn_with_key(key)
}

/// Proves [`NAME`] for `key` in challtestsrv, pointing at node `node`.
async fn prove_name(pebble: &Pebble, key: &SshKeyPair, node: usize) {
    let txt = serde_json::json!({"host": format!("_burrow.{NAME}."), "value": key.fingerprint});
    pebble.dns_set("set-txt", txt).await;
    let ip = node_ip(node).to_string();
    let a = serde_json::json!({"host": format!("{NAME}."), "addresses": [ip]});
    pebble.dns_set("add-a", a).await;
}

/// `GET /whoami` for [`NAME`] on an open TLS connection; the whole answer.
async fn whoami<S: AsyncRead + AsyncWrite + Unpin>(tls: &mut S) -> String {
    let req = format!("GET /whoami HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no whole answer in time");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn custom_domain_certificate_from_the_ca_served_by_every_node() {
    let ports = Ports::free(3);
    let pebble = Pebble::launch_on(ports.http, 0).await;
    let key = SshKeyPair::generate();
    // The tunnel (so the order) is on node 1; the CA's HTTP-01 check for
    // the name reaches node 2, which answers from Redis.
    prove_name(&pebble, &key, 2).await;
    let cluster = acme_cluster(3, ports, &pebble, &custom_args(&pebble)).await;
    let root = pebble.root().await;
    let origin = Origin::start("custom-cluster").await;
    let ssh = custom_tunnel(&cluster, 1, &key, &origin);
    ssh.stdout
        .wait_contains(&format!("https://{NAME}"), WAIT)
        .await
        .unwrap_or_else(|seen| panic!("no URL for {NAME}: {seen}\n{}", ssh.all_output()));

    let mut serials = Vec::new();
    for i in 1..=3 {
        let mut tls: Tls = wait_verified(cluster.https_addr(i), NAME, &root).await;
        serials.push(serial(&tls));
        let answer = whoami(&mut tls).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("custom-cluster"),
            "via node {i}: {answer}"
        );
    }
    assert!(serials.iter().all(|s| *s == serials[0]), "{serials:?}");
    assert!(
        logged(&cluster, 1, &["certificate issued", NAME]),
        "node 1 ordered it: {}",
        cluster.node(1).stderr.text()
    );
    for i in 2..=3 {
        assert!(
            !logged(&cluster, i, &["certificate issued", NAME]),
            "node {i} ordered it too"
        );
    }
    // The main certificate and this one, each once.
    assert_eq!(pebble.issued(), 2, "{}", pebble.log.text());
    assert_eq!(orders(&cluster, 3).await, 2);
    drop(ssh);
}

/// A custom domain nobody binds any more is retired at its renewal by every
/// node: its certificate leaves Redis (hash and list) instead of being
/// ordered again.
#[tokio::test]
async fn custom_domain_certificate_nobody_binds_leaves_redis() {
    // 15 s certificates: a renewal is due after 10 s.
    let ports = Ports::free(2);
    let pebble = Pebble::launch_on(ports.http, 15).await;
    let key = SshKeyPair::generate();
    prove_name(&pebble, &key, 1).await;
    let cluster = acme_cluster(2, ports, &pebble, &custom_args(&pebble)).await;
    let root = pebble.root().await;
    let origin = Origin::start("custom-retire").await;
    let ssh = custom_tunnel(&cluster, 1, &key, &origin);
    for i in 1..=2 {
        wait_verified(cluster.https_addr(i), NAME, &root).await;
    }
    let hash = format!("{{burrow}}:acme:cert:{NAME}");
    assert_eq!(redis_text(&cluster, &["EXISTS", &hash]).await.trim(), "1");

    drop(ssh);
    let cluster = &cluster;
    for i in 1..=2 {
        poll(&format!("node {i} retiring {NAME}"), WAIT, || async move {
            logged(cluster, i, &["certificate retired", NAME]).then_some(())
        })
        .await;
    }
    assert_eq!(redis_text(cluster, &["EXISTS", &hash]).await.trim(), "0");
    let listed = redis_text(cluster, &["SISMEMBER", "{burrow}:acme:stored:cert", NAME]).await;
    assert_eq!(listed.trim(), "0", "still listed");
    for i in 1..=2 {
        assert!(
            !logged(cluster, i, &["certificate renewed", NAME]),
            "node {i} ordered it again: {}",
            cluster.node(i).stderr.text()
        );
    }
}

/// A TLS connection for [`NAME`] to `addr` accepting any certificate, and
/// the certificate it got (DER).
async fn handshake_any(addr: std::net::SocketAddr) -> (Tls, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = Arc::new(tls_config_accept_any());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("handshake for {NAME} with {addr}: {e}"));
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (tls, der)
}

#[tokio::test]
async fn custom_domain_self_signed_certificate_is_one_for_the_cluster() {
    // DNS only: challtestsrv, no CA (the nodes serve the test certificate,
    // so ACME is off and custom domains get self-signed ones).
    let mut dns = Pebble::configure(pebble::free_port(), 0);
    dns.start_challtestsrv().await;
    let key = SshKeyPair::generate();
    prove_name(&dns, &key, 3).await;
    let cluster = Cluster::start(3, &strs(&custom_args(&dns))).await;
    let origin = Origin::start("custom-self-signed").await;
    let ssh = custom_tunnel(&cluster, 2, &key, &origin);
    ssh.stdout
        .wait_contains(&format!("https://{NAME}"), WAIT)
        .await
        .unwrap_or_else(|seen| panic!("no URL for {NAME}: {seen}\n{}", ssh.all_output()));

    let mut served = Vec::new();
    for i in [1, 3, 2] {
        let (mut tls, der) = handshake_any(cluster.https_addr(i)).await;
        let answer = whoami(&mut tls).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("custom-self-signed"),
            "via node {i}: {answer}"
        );
        served.push(der);
    }
    let names_it = served[0].windows(NAME.len()).any(|w| w == NAME.as_bytes());
    assert!(names_it, "the certificate names {NAME}");
    assert_ne!(
        served[0],
        cluster.shared.cert.cert_der.to_vec(),
        "not the server's own"
    );
    assert!(
        served.iter().all(|d| *d == served[0]),
        "one certificate on every node"
    );
    let key = format!("{{burrow}}:acme:self-signed:{NAME}");
    let sealed = redis_text(&cluster, &["HGET", &key, "key"]).await;
    assert!(
        sealed.len() > 32 && !sealed.contains("PRIVATE KEY"),
        "sealed: {sealed}"
    );
    drop(ssh);
}
