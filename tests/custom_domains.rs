//! Custom domains end to end: the real `burrow` binary, the real `ssh`
//! client, and Debian's `pebble-challtestsrv` as the DNS server burrow's
//! resolver asks (`--dns-resolver`), its records set through its HTTP
//! management API.

mod common;
#[path = "common/dns.rs"]
mod dns;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use dns::Dns;
use rustls::pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(15);

/// burrow asking `dns`, with the SSH-side limits out of the way.
async fn start(dns: &Dns, extra: &[&str]) -> Burrow {
    let resolver = dns.addr.to_string();
    let mut args = vec!["--dns-resolver", &resolver, "--dns-timeout", "5s"];
    args.extend_from_slice(&SSH_LIMITS_OFF);
    args.extend_from_slice(extra);
    Burrow::start(&args).await
}

/// `ssh -R NAME:80:127.0.0.1:ORIGIN` with `key`.
fn forward(burrow: &Burrow, key: &SshKeyPair, name: &str, origin: &Origin) -> Ssh {
    let spec = format!("{name}:80:127.0.0.1:{}", origin.port);
    SshSpec {
        port: burrow.ssh_port(),
        args: &["-R", &spec],
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

async fn wait_out(ssh: &Ssh, needle: &str) {
    if let Err(seen) = ssh.stdout.wait_contains(needle, WAIT).await {
        panic!("ssh did not print {needle:?}: {seen}\n{}", ssh.all_output());
    }
}

/// `custom_certs.FIELD` of the stats JSON.
async fn cert_stat(burrow: &Burrow, field: &str) -> u64 {
    burrow.stats().await["custom_certs"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("custom_certs.{field} in the stats"))
}

/// Polls until `custom_certs.FIELD` is `want`.
async fn wait_cert_stat(burrow: &Burrow, field: &str, want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = cert_stat(burrow, field).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "custom_certs.{field} stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The certificate burrow presents for SNI `name`, or the handshake error.
async fn presented_cert(burrow: &Burrow, name: &str) -> Result<CertificateDer<'static>, String> {
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(burrow.addrs.https)
            .await
            .map_err(|e| e.to_string())?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config_accept_any()));
        let server = ServerName::try_from(name.to_string()).unwrap();
        let tls = connector
            .connect(server, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        certs
            .first()
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| "no certificate".to_string())
    };
    tokio::time::timeout(WAIT, connect)
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
}

fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let needle = name.as_bytes();
    cert.as_ref().windows(needle.len()).any(|w| w == needle)
}

/// A client that trusts exactly `cert` and checks the host name against
/// it, every name resolving to the loopback HTTPS listener.
fn client_trusting(burrow: &Burrow, cert: &CertificateDer<'static>, host: &str) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .expect("certificate as trust anchor");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve(host, burrow.addrs.https)
        .use_preconfigured_tls(tls)
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// TXT + CNAME → accepted; the banner shows the custom URL; the name gets
/// its own certificate (issued once, at bind, and waited for by the first
/// handshake), the HTTPS request with that SNI/Host reaches the origin
/// without the browser warning page (DNS ownership is a grant), plain HTTP
/// redirects to it, and the stats list the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verified_custom_domain_is_served_with_its_own_certificate() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &[]).await;
    let origin = Origin::start("custom-origin").await;
    let key = SshKeyPair::generate();
    let name = "app.example.org";
    dns.prove(name, &key).await;

    let ssh = forward(&burrow, &key, name, &origin);
    let url = format!("https://{name}:{}", burrow.https_port());
    wait_out(&ssh, &url).await;
    // The very first handshake right after the bind gets the name's own
    // certificate (it waits for the issuance), not the server's.
    let cert = presented_cert(&burrow, name).await.expect("handshake");
    assert_eq!(cert_stat(&burrow, "issued").await, 1);
    assert_eq!(
        burrow.stats().await["custom_certs"]["issuer"],
        "self-signed"
    );
    assert!(names(&cert, name), "the certificate for {name} names it");
    let client = client_trusting(&burrow, &cert, name);
    // A browser navigation: a name without a grant would get the warning
    // page here.
    let resp = client
        .get(format!("{url}/whoami"))
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        )
        .header("accept", "text/html")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "custom-origin");

    let http = burrow.http_client();
    let resp = http
        .get(burrow.http_url(name, "/x?y=1"))
        .send()
        .await
        .expect("plain GET");
    assert_eq!(resp.status(), 301);
    assert_eq!(resp.headers()["location"], format!("{url}/x?y=1").as_str());

    let stats = burrow.stats_with_subdomains().await;
    let listed = stats["subdomains"].as_array().unwrap();
    assert!(listed.iter().any(|n| n == name), "{stats}");
    drop(ssh);
}

/// A records among DOMAIN's addresses also point a name here, and the TXT
/// value may leave out the `SHA256:` prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_and_a_bare_fingerprint_prove_a_name() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &["--no-browser-warning"]).await;
    let origin = Origin::start("custom-a").await;
    let key = SshKeyPair::generate();
    let name = "www.example.net";
    let bare = key.fingerprint.strip_prefix("SHA256:").unwrap();
    dns.set_txt(name, bare).await;
    dns.add_a(name, "127.0.0.1").await;

    let ssh = forward(&burrow, &key, name, &origin);
    wait_out(&ssh, &format!("https://{name}:{}", burrow.https_port())).await;
    wait_cert_stat(&burrow, "issued", 1).await;
    let cert = presented_cert(&burrow, name).await.expect("handshake");
    let client = client_trusting(&burrow, &cert, name);
    let resp = client
        .get(burrow.https_url(name, "/whoami"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "custom-a");
}

/// Each refusal is one ERROR line naming the record that is missing or
/// wrong and what it should hold; nothing is bound or issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_missing_or_wrong_record() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &[]).await;
    let origin = Origin::start("custom-refused").await;
    let key = SshKeyPair::generate();
    let other = SshKeyPair::generate();
    let fp = &key.fingerprint;

    // No TXT record at all.
    dns.set_cname("none.example.org", DOMAIN).await;
    let ssh = forward(&burrow, &key, "none.example.org", &origin);
    wait_out(&ssh, &format!(
        "ERROR: custom domain none.example.org: there is no TXT record _burrow.none.example.org: add a TXT record _burrow.none.example.org with the value {fp}"
    ))
    .await;

    // Someone else's fingerprint.
    dns.set_txt("wrong.example.org", &other.fingerprint).await;
    dns.set_cname("wrong.example.org", DOMAIN).await;
    let ssh = forward(&burrow, &key, "wrong.example.org", &origin);
    wait_out(&ssh, &format!(
        "ERROR: custom domain wrong.example.org: the TXT record _burrow.wrong.example.org holds {:?}, not your key's fingerprint {fp}",
        other.fingerprint
    ))
    .await;

    // Owned, but pointing elsewhere.
    dns.set_txt("away.example.org", fp).await;
    dns.add_a("away.example.org", "203.0.113.9").await;
    let ssh = forward(&burrow, &key, "away.example.org", &origin);
    wait_out(&ssh, &format!(
        "ERROR: custom domain away.example.org: away.example.org points at 203.0.113.9, not at this server: expected a CNAME to {DOMAIN} or A/AAAA records among 127.0.0.1"
    ))
    .await;

    // A CNAME to someone else's name.
    dns.set_txt("elsewhere.example.org", fp).await;
    dns.set_cname("elsewhere.example.org", "other.example.com")
        .await;
    let ssh = forward(&burrow, &key, "elsewhere.example.org", &origin);
    wait_out(&ssh, "ERROR: custom domain elsewhere.example.org: elsewhere.example.org is a CNAME to other.example.com, which is not this server").await;

    // No key: no fingerprint to look for.
    dns.prove("keyless.example.org", &key).await;
    let spec = format!("keyless.example.org:80:127.0.0.1:{}", origin.port);
    let keyless = Ssh::spawn_keyless(&burrow, &["-R", &spec]);
    if let Err(seen) = keyless
        .stdout
        .wait_contains(
            "ERROR: custom domain keyless.example.org: needs an SSH key",
            WAIT,
        )
        .await
    {
        panic!("keyless refusal: {seen}\n{}", keyless.all_output());
    }

    let stats = burrow.stats_with_subdomains().await;
    let listed = stats["subdomains"].as_array().unwrap();
    assert!(
        !listed
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains('.'))),
        "no custom name is bound: {stats}"
    );
    assert_eq!(stats["custom_certs"]["issued"], 0, "{stats}");
}

/// An SNI for a name nobody bound gets no certificate (the handshake is
/// refused) and the issuer is not called, even when DNS would prove the
/// name; binding it is what issues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_sni_gets_no_certificate_and_no_issuance() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &[]).await;
    let origin = Origin::start("custom-sni").await;
    let key = SshKeyPair::generate();
    let name = "later.example.org";
    dns.prove(name, &key).await;

    for sni in [name, "evil.example.com"] {
        let refused = presented_cert(&burrow, sni).await;
        assert!(refused.is_err(), "SNI {sni} got a certificate");
    }
    assert_eq!(cert_stat(&burrow, "issued").await, 0);
    assert_eq!(cert_stat(&burrow, "cached").await, 0);

    let ssh = forward(&burrow, &key, name, &origin);
    wait_out(&ssh, &format!("https://{name}:")).await;
    wait_cert_stat(&burrow, "issued", 1).await;
    let cert = presented_cert(&burrow, name).await.expect("bound name");
    assert!(names(&cert, name));
    // Other foreign names stay refused while one custom name is bound.
    assert!(presented_cert(&burrow, "evil.example.com").await.is_err());
    assert_eq!(cert_stat(&burrow, "issued").await, 1);
}

/// `--custom-cert-rate 1/h --custom-cert-burst 1`: the first name gets its
/// certificate, a second name is refused with the limit and the wait, and
/// the first name (certificate cached) can be bound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_issuance_is_rate_limited() {
    let dns = Dns::start().await;
    let limits = ["--custom-cert-rate", "1/h", "--custom-cert-burst", "1"];
    let burrow = start(&dns, &limits).await;
    let origin = Origin::start("custom-rate").await;
    let key = SshKeyPair::generate();
    dns.prove("one.example.org", &key).await;
    dns.prove("two.example.org", &key).await;

    let first = forward(&burrow, &key, "one.example.org", &origin);
    wait_out(&first, "https://one.example.org:").await;
    wait_cert_stat(&burrow, "issued", 1).await;

    let second = forward(&burrow, &key, "two.example.org", &origin);
    wait_out(&second, "ERROR: custom-cert-rate: no certificate for two.example.org: this server issues at most 1/h certificates, burst 1 for custom domains (--custom-cert-rate/--custom-cert-burst); try again in").await;
    assert_eq!(cert_stat(&burrow, "refused").await, 1);
    drop(first);

    let again = forward(&burrow, &key, "one.example.org", &origin);
    wait_out(&again, "https://one.example.org:").await;
    assert_eq!(
        cert_stat(&burrow, "issued").await,
        1,
        "cached, not issued again"
    );
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}/metrics", burrow.addrs.stats))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    for line in [
        "burrow_custom_certs_total{outcome=\"issued\"} 1",
        "burrow_refusals_total{limit=\"custom-cert-rate\"} 1",
        "burrow_custom_certs_cached 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
}

/// `--custom-domains off`: a custom bind address is refused with a line
/// saying so, before any DNS lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_domains_off_refuses_with_a_line() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &["--custom-domains", "off"]).await;
    let origin = Origin::start("custom-off").await;
    let key = SshKeyPair::generate();
    dns.prove("off.example.org", &key).await;
    let ssh = forward(&burrow, &key, "off.example.org", &origin);
    wait_out(&ssh, "ERROR: custom domain off.example.org: this server does not serve custom domains (--custom-domains off)").await;
}

/// A TLS app for `host` with its own self-signed certificate: answers one
/// line with the SNI it saw. Returns its port and certificate.
async fn tls_app(host: &str) -> (u16, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec![host.to_string()]).unwrap();
    let cert = generated.cert.der().clone();
    let key =
        rustls::pki_types::PrivateKeyDer::try_from(generated.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
                let mut tls = tokio::io::BufReader::new(tls);
                let mut line = String::new();
                if tls.read_line(&mut line).await.is_ok() {
                    let answer = format!("tls-app sni={sni} got={}\n", line.trim_end());
                    let _ = tls.get_mut().write_all(answer.as_bytes()).await;
                    let _ = tls.get_mut().shutdown().await;
                }
            });
        }
    });
    (port, cert)
}

/// `tls=passthrough` on a custom domain: the visitor's TLS reaches the
/// app, which presents its own certificate for the name (checked by name),
/// and burrow issues none for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_custom_domain_relays_tls_and_gets_no_certificate() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dns = Dns::start().await;
    let burrow = start(&dns, &[]).await;
    let key = SshKeyPair::generate();
    let name = "tls.example.org";
    dns.prove(name, &key).await;
    let (port, app_cert) = tls_app(name).await;

    let spec = format!("{name}:443:127.0.0.1:{port}");
    let ssh = SshSpec {
        port: burrow.ssh_port(),
        args: &["-R", &spec],
        remote_cmd: &["tls=passthrough"],
        ..SshSpec::default()
    }
    .spawn_with_key(&key);
    wait_out(&ssh, &format!("https://{name}:")).await;
    wait_cert_stat(&burrow, "passthrough", 1).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(app_cert).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(burrow.addrs.https)
            .await
            .unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let server = ServerName::try_from(name.to_string()).unwrap();
        let mut tls = connector
            .connect(server, tcp)
            .await
            .expect("handshake with the app");
        tls.write_all(b"ping\n").await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(tls)
            .read_line(&mut line)
            .await
            .unwrap();
        line
    };
    let line = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("exchange in time");
    assert_eq!(line, format!("tls-app sni={name} got=ping\n"));
    assert_eq!(cert_stat(&burrow, "issued").await, 0);
    assert_eq!(cert_stat(&burrow, "cached").await, 0);
}

/// `--balance round-robin`: two keys both listed in TXT records share the
/// name and requests alternate between their apps; a third key, not
/// listed, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_listed_in_dns_share_a_name_when_balancing() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &["--balance", "round-robin"]).await;
    let (a, b) = (
        Origin::start("shared-a").await,
        Origin::start("shared-b").await,
    );
    let (k1, k2, k3) = (
        SshKeyPair::generate(),
        SshKeyPair::generate(),
        SshKeyPair::generate(),
    );
    let name = "shared.example.org";
    dns.set_txt(name, &k1.fingerprint).await;
    dns.set_txt(name, &k2.fingerprint).await;
    dns.set_cname(name, DOMAIN).await;

    let first = forward(&burrow, &k1, name, &a);
    wait_out(&first, &format!("https://{name}:")).await;
    let second = forward(&burrow, &k2, name, &b);
    wait_out(&second, "is now served by 2 clients (round-robin)").await;

    let cert = presented_cert(&burrow, name).await.expect("handshake");
    let client = client_trusting(&burrow, &cert, name);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let resp = client
            .get(burrow.https_url(name, "/whoami"))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status(), 200);
        seen.insert(resp.text().await.unwrap());
    }
    let both: std::collections::BTreeSet<String> =
        ["shared-a".to_string(), "shared-b".to_string()].into();
    assert_eq!(seen, both, "requests alternate between the two apps");

    let third = forward(&burrow, &k3, name, &a);
    wait_out(
        &third,
        &format!("ERROR: custom domain {name}: the TXT record _burrow.{name} holds"),
    )
    .await;
    assert_eq!(
        cert_stat(&burrow, "issued").await,
        1,
        "one certificate for the shared name"
    );
}

/// A resolver that never answers (UDP swallowed, TCP accepted and left
/// silent): the bind is refused after `--dns-timeout`, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_resolver_is_refused_after_the_dns_timeout() {
    // A UDP port whose TCP twin is free too (another test may hold it).
    let mut pair = None;
    for _ in 0..50 {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
            pair = Some((udp, addr, tcp));
            break;
        }
    }
    let (udp, addr, tcp) = pair.expect("a UDP and TCP port pair");
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = tcp.accept().await {
            held.push(stream);
        }
    });
    let resolver = addr.to_string();
    let burrow = Burrow::start(&["--dns-resolver", &resolver, "--dns-timeout", "1s"]).await;
    let origin = Origin::start("custom-slow").await;
    let key = SshKeyPair::generate();
    let started = std::time::Instant::now();
    let ssh = forward(&burrow, &key, "slow.example.org", &origin);
    wait_out(&ssh, "ERROR: custom domain slow.example.org: the DNS lookups for slow.example.org took longer than 1 s (--dns-timeout); try again").await;
    assert!(started.elapsed() >= Duration::from_secs(1));
    silent.abort();
    drop(udp);
}

/// `--custom-cert-cache 1`: a new certificate pushes out the one of a name
/// no longer bound, and binding that name again issues a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_of_unbound_names_leave_a_full_cache() {
    let dns = Dns::start().await;
    let burrow = start(&dns, &["--custom-cert-cache", "1"]).await;
    let origin = Origin::start("custom-cache").await;
    let key = SshKeyPair::generate();
    dns.prove("first.example.org", &key).await;
    dns.prove("second.example.org", &key).await;

    let mut first = forward(&burrow, &key, "first.example.org", &origin);
    wait_out(&first, "https://first.example.org:").await;
    wait_cert_stat(&burrow, "issued", 1).await;
    first.kill();
    burrow.wait_stat("active_tunnels", 0, WAIT).await;

    let second = forward(&burrow, &key, "second.example.org", &origin);
    wait_out(&second, "https://second.example.org:").await;
    wait_cert_stat(&burrow, "issued", 2).await;
    wait_cert_stat(&burrow, "cached", 1).await;

    let again = forward(&burrow, &key, "first.example.org", &origin);
    wait_out(&again, "https://first.example.org:").await;
    wait_cert_stat(&burrow, "issued", 3).await;
    // Both are bound now: neither is dropped.
    assert_eq!(cert_stat(&burrow, "cached").await, 2);
}

/// Bound names are checked again (`--custom-domain-recheck`): once the
/// owner withdraws the TXT record, the tunnel is closed after two failed
/// checks in a row, with a line saying why, and the name is no longer
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_proof_closes_the_tunnel() {
    let dns = Dns::start().await;
    let burrow = start(
        &dns,
        &["--custom-domain-recheck", "1s", "--dns-cache-ttl", "0"],
    )
    .await;
    let origin = Origin::start("custom-origin").await;
    let key = SshKeyPair::generate();
    let name = "gone.example.org";
    dns.prove(name, &key).await;
    let mut ssh = forward(&burrow, &key, name, &origin);
    wait_out(&ssh, &format!("https://{name}:{}", burrow.https_port())).await;
    burrow
        .stderr
        .wait_contains("custom domain certificate issued", WAIT)
        .await
        .expect("bound and certified");

    dns.post(
        "/clear-txt",
        serde_json::json!({ "host": format!("_burrow.{name}.") }),
    )
    .await;
    wait_out(&ssh, "its DNS proof no longer holds").await;
    let text = ssh.stdout.text();
    assert!(
        text.contains("TXT record _burrow.gone.example.org"),
        "{text}"
    );
    assert!(
        ssh.wait_exit(WAIT).await.is_some(),
        "its only tunnel: ssh ends"
    );
    let stats = burrow.stats_with_subdomains().await;
    let listed = stats["subdomains"].as_array().unwrap();
    assert!(!listed.iter().any(|n| n == name), "{stats}");
}
