//! End-to-end tests for ACME certificates (issue 8) against Debian's
//! `pebble` (a test ACME CA) with `pebble-challtestsrv` or `knotd` as the
//! DNS server pebble checks DNS-01 records in, all on random loopback ports
//! (the harness is tests/common/pebble.rs).

mod common;
#[path = "common/pebble.rs"]
mod pebble;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pebble::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Burrow with ACME flags, its own domain and a fixed HTTP port.
struct AcmeBurrow {
    child: Option<Proc>,
    pub addrs: ReadyLine,
    pub stderr: OutputBuf,
}

impl AcmeBurrow {
    /// Burrow for `domain` getting its certificates from `pebble` (whose
    /// HTTP-01 checks reach its redirector), plus `extra` flags.
    async fn start(state: &Path, domain: &str, pebble: &Pebble, extra: &[&str]) -> AcmeBurrow {
        let mut child = Command::new(burrow_bin())
            .args(["--domain", domain])
            .args(["--ssh-addr", "127.0.0.1:0"])
            .args(["--http-addr", &format!("127.0.0.1:{}", pebble.http)])
            .args(["--acme-directory", &pebble.directory()])
            .arg("--acme-ca-root")
            .arg(&pebble.https_ca)
            .args(["--https-addr", "127.0.0.1:0", "--stats-addr", "127.0.0.1:0"])
            .arg("--host-key")
            .arg(state.join("host_key"))
            .arg("--state-dir")
            .arg(state.join("state"))
            .args(["--acme-email", "ops@example.com"])
            .args(["--acme-retry-min", "1s", "--acme-retry-max", "2s"])
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,burrow=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn burrow");
        let (stdout, stderr) = capture_output(&mut child, Some("burrow"));
        let child = Proc(child);
        let addrs = stdout
            .wait_for(Duration::from_secs(20), |t| {
                t.lines().find_map(parse_ready_line)
            })
            .await
            .unwrap_or_else(|seen| panic!("no ready line: {seen:?} {}", stderr.text()));
        AcmeBurrow {
            child: Some(child),
            addrs,
            stderr,
        }
    }

    fn stop(&mut self) {
        self.child.take();
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.addrs.stats);
        reqwest::get(url).await.unwrap().text().await.unwrap()
    }
}

/// One HTTP/1.1 request on an open TLS connection; the status line.
async fn request(tls: &mut Tls, host: &str) -> String {
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A hook script that logs its calls and sets/clears the TXT record in
/// challtestsrv.
/// After each `set`, it logs how many TXT values the DNS server answers
/// for the name (`visible N`), so the test sees them coexist.
fn hook_script(dir: &Path, dns_mgmt: u16, dns: u16) -> (PathBuf, PathBuf) {
    let log = dir.join("hook.log");
    let script = dir.join("hook.sh");
    let text = format!(
        r#"#!/bin/sh
set -e
echo "$1 $2 $3" >> '{log}'
case "$1" in
  set) curl -sf -X POST -d "{{\"host\":\"$2.\",\"value\":\"$3\"}}" http://127.0.0.1:{dns_mgmt}/set-txt
       echo "visible $(kdig @127.0.0.1 -p {dns} +short TXT "$2" | grep -c .)" >> '{log}' ;;
  unset) curl -sf -X POST -d "{{\"host\":\"$2.\"}}" http://127.0.0.1:{dns_mgmt}/clear-txt ;;
  *) echo "unknown action $1" >&2; exit 2 ;;
esac
"#,
        log = log.display()
    );
    std::fs::write(&script, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

#[tokio::test]
async fn wildcard_via_exec_hook() {
    let pebble = Pebble::launch(0).await;
    let dir = TempDir::new("acme-hook");
    let (script, log) = hook_script(dir.path(), pebble.dns_mgmt, pebble.dns);
    let domain = "hook.example.com";
    let burrow = AcmeBurrow::start(
        dir.path(),
        domain,
        &pebble,
        &[
            "--acme-dns-hook",
            &script.display().to_string(),
            "--acme-dns-propagation",
            "0s",
        ],
    )
    .await;
    let root = pebble.root().await;
    for sni in [domain.to_string(), format!("x.{domain}")] {
        wait_verified(burrow.addrs.https, &sni, &root).await;
    }
    // Both values published before either is withdrawn (the DNS server
    // answers both at once), then both withdrawn.
    let calls = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 6, "hook calls: {calls}");
    let fqdn = format!("_acme-challenge.{domain}");
    for (i, want) in [(0, "set"), (2, "set"), (4, "unset"), (5, "unset")] {
        assert!(lines[i].starts_with(&format!("{want} {fqdn} ")), "{calls}");
    }
    assert_eq!((lines[1], lines[3]), ("visible 1", "visible 2"), "{calls}");
    let value = |l: &str| l.rsplit(' ').next().unwrap().to_string();
    assert_ne!(value(lines[0]), value(lines[2]), "two distinct TXT values");
    let metrics = burrow.metrics().await;
    assert!(
        metrics.contains(&format!(
            "burrow_certificate_expiry_timestamp_seconds{{name=\"{domain}\"}}"
        )),
        "{metrics}"
    );
    let stats = reqwest::get(format!("http://{}/", burrow.addrs.stats))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        stats["certificates"][domain].as_u64().unwrap() > 0,
        "{stats}"
    );
    // The files are private.
    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("state/acme/certs/main.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn failing_hook_is_logged_with_its_stderr_and_server_keeps_serving() {
    let pebble = Pebble::launch(0).await;
    let dir = TempDir::new("acme-badhook");
    let script = dir.path().join("hook.sh");
    std::fs::write(&script, "#!/bin/sh\necho 'provider says no' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let burrow = AcmeBurrow::start(
        dir.path(),
        "bad.example.com",
        &pebble,
        &["--acme-dns-hook", &script.display().to_string()],
    )
    .await;
    burrow
        .stderr
        .wait_contains("provider says no", ISSUE_WAIT)
        .await
        .unwrap();
    assert!(burrow.stderr.text().contains("certificate issuance failed"));
    // Still serving (the self-signed certificate).
    let accept_any = Arc::new(tls_config_accept_any());
    let tcp = TcpStream::connect(burrow.addrs.https).await.unwrap();
    tokio_rustls::TlsConnector::from(accept_any)
        .connect(ServerName::try_from("bad.example.com").unwrap(), tcp)
        .await
        .expect("burrow still serves TLS");
}

#[tokio::test]
async fn apex_via_http01_and_stored_cert_served_after_restart() {
    let mut pebble = Pebble::launch(0).await;
    let dir = TempDir::new("acme-apex");
    let domain = "apex.example.com";
    let mut burrow = AcmeBurrow::start(dir.path(), domain, &pebble, &[]).await;
    let root = pebble.root().await;
    let tls = wait_verified(burrow.addrs.https, domain, &root).await;
    let first = serial(&tls);
    drop(tls);
    // Tunnel names are not covered by an apex-only certificate.
    assert!(connect(burrow.addrs.https, &format!("x.{domain}"), &root)
        .await
        .is_err());
    burrow.stop();
    // The CA goes away; the stored certificate is served at once anyway.
    pebble.stop();
    let burrow = AcmeBurrow::start(dir.path(), domain, &pebble, &[]).await;
    let tls = connect(burrow.addrs.https, domain, &root)
        .await
        .expect("stored certificate served right after start");
    assert_eq!(serial(&tls), first, "the stored certificate, not a new one");
    assert!(burrow
        .stderr
        .text()
        .contains("serving the stored certificate"));
}

#[tokio::test]
async fn renewal_swaps_the_certificate_without_dropping_connections() {
    // 12 s certificates: renewal is due after 8 s.
    let pebble = Pebble::launch(12).await;
    let dir = TempDir::new("acme-renew");
    let domain = "renew.example.com";
    let burrow = AcmeBurrow::start(dir.path(), domain, &pebble, &[]).await;
    let root = pebble.root().await;
    let mut open = wait_verified(burrow.addrs.https, domain, &root).await;
    let first = serial(&open);
    assert!(request(&mut open, domain).await.starts_with("HTTP/1.1"));
    let renewed = poll("a renewed certificate", Duration::from_secs(30), || {
        let root = root.clone();
        let first = first.clone();
        async move {
            let tls = connect(burrow.addrs.https, domain, &root).await.ok()?;
            let now = serial(&tls);
            (now != first).then_some(now)
        }
    })
    .await;
    assert_ne!(renewed, first);
    assert!(burrow.stderr.text().contains("certificate renewed"));
    // The connection opened before the swap still works.
    assert!(request(&mut open, domain).await.starts_with("HTTP/1.1"));
}

#[tokio::test]
async fn acme_server_down_at_start_then_up() {
    let http = free_port();
    let mut pebble = Pebble::configure(http, 0);
    let dir = TempDir::new("acme-down");
    let domain = "down.example.com";
    let burrow = AcmeBurrow::start(dir.path(), domain, &pebble, &[]).await;
    burrow
        .stderr
        .wait_contains("certificate issuance failed", ISSUE_WAIT)
        .await
        .unwrap();
    // Serving meanwhile, with the self-signed certificate.
    let tcp = TcpStream::connect(burrow.addrs.https).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls_config_accept_any()))
        .connect(ServerName::try_from(domain).unwrap(), tcp)
        .await
        .expect("serves while the CA is down");
    let dns = pebble.start_challtestsrv().await;
    pebble.start(dns).await;
    let root = pebble.root().await;
    wait_verified(burrow.addrs.https, domain, &root).await;
}

/// knotd serving `domain` on a loopback port, accepting TSIG-signed
/// updates from `key`.
fn start_knot(dir: &Path, domain: &str, port: u16, key_b64: &str) -> Proc {
    let zone = format!(
        "$ORIGIN {domain}.\n$TTL 60\n@ SOA ns admin 1 60 60 600 60\n@ NS ns\nns A 127.0.0.1\n@ A 127.0.0.1\n"
    );
    std::fs::write(dir.join(format!("{domain}.zone")), zone).unwrap();
    let d = dir.display();
    let conf = format!(
        "server:\n  rundir: \"{d}\"\n  listen: 127.0.0.1@{port}\n\
         database:\n  storage: \"{d}\"\n\
         key:\n  - id: burrow\n    algorithm: hmac-sha256\n    secret: {key_b64}\n\
         acl:\n  - id: update\n    key: burrow\n    action: update\n\
         control:\n  listen: \"{d}/knot.sock\"\n\
         zone:\n  - domain: {domain}\n    storage: \"{d}\"\n    file: \"{domain}.zone\"\n    acl: update\n"
    );
    let conf_path = dir.join("knot.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new("knotd")
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("knotd is not installed: apt-get install -y knot (or run .ci/run)");
    Proc(child)
}

/// The TXT values `kdig` finds at `name` on the knot server.
fn txt_values(port: u16, name: &str) -> Vec<String> {
    let out = Command::new("kdig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+short", "TXT", name])
        .output()
        .expect("kdig is not installed: apt-get install -y knot-dnsutils (or run .ci/run)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim_matches('"').to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[tokio::test]
async fn wildcard_via_rfc2136_against_knot() {
    let http = free_port();
    let mut pebble = Pebble::configure(http, 0);
    let dir = TempDir::new("acme-knot");
    let domain = "knot.example.com";
    let dns_port = free_port();
    let key = "c2VjcmV0LXRzaWcta2V5LWZvci1idXJyb3ctdGVzdHM=";
    let _knot = start_knot(dir.path(), domain, dns_port, key);
    poll("knotd", Duration::from_secs(10), || async move {
        (!txt_values(dns_port, domain).is_empty() || kdig_answers(dns_port, domain)).then_some(())
    })
    .await;
    pebble
        .start(SocketAddr::from(([127, 0, 0, 1], dns_port)))
        .await;
    // The key comes from a file, as an operator keeps it out of `ps`.
    let key_file = dir.path().join("tsig.key");
    std::fs::write(&key_file, format!("burrow:hmac-sha256:{key}\n")).unwrap();
    let burrow = AcmeBurrow::start(
        dir.path(),
        domain,
        &pebble,
        &[
            "--acme-rfc2136",
            &format!("127.0.0.1:{dns_port}"),
            "--acme-rfc2136-tsig",
            &format!("@{}", key_file.display()),
            "--acme-dns-propagation",
            "0s",
        ],
    )
    .await;
    let root = pebble.root().await;
    for sni in [domain.to_string(), format!("x.{domain}")] {
        wait_verified(burrow.addrs.https, &sni, &root).await;
    }
    // Cleaned up afterwards.
    assert!(txt_values(dns_port, &format!("_acme-challenge.{domain}")).is_empty());
}

/// Whether knot answers for the zone's SOA.
fn kdig_answers(port: u16, domain: &str) -> bool {
    Command::new("kdig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "SOA",
            domain,
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false)
}

/// `issue_single` through the library (the custom-domain path calls it):
/// HTTP-01 answered by a tiny stand-in for the redirector, the result
/// stored and served for its SNI, and the issuance rate enforced.
#[tokio::test]
async fn issue_single_name_and_rate_limit() {
    use burrow::acme::{http01::Challenges, Acme};
    use clap::Parser;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap().port();
    let challenges = Arc::new(Challenges::default());
    let answering = Arc::clone(&challenges);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let challenges = Arc::clone(&answering);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body = challenges.respond(&path).flatten().unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    let mut pebble = Pebble::configure(http, 0);
    let dns = pebble.start_challtestsrv().await;
    pebble.start(dns).await;
    let dir = TempDir::new("acme-single");
    let state = dir.path().join("state");
    let config = burrow::config::Config::try_parse_from([
        "burrow",
        "--domain",
        "single.example.com",
        "--state-dir",
        &state.display().to_string(),
        "--acme-email",
        "ops@example.com",
        "--acme-directory",
        &pebble.directory(),
        "--acme-ca-root",
        &pebble.https_ca.display().to_string(),
        "--acme-issue-rate",
        "1/h",
        "--acme-issue-burst",
        "1",
    ])
    .unwrap()
    .validate()
    .unwrap();
    let certs = burrow::tls::Certs::load(&config).unwrap();
    let shutdown = burrow::shutdown::Shutdown::new();
    let refusals = Arc::new(burrow::limits::Refusals::default());
    let acme = Acme::new(
        &config,
        Arc::clone(&certs),
        challenges,
        (refusals, shutdown.clone()),
    )
    .unwrap()
    .expect("ACME on");
    let name = "app.customer.example.org";
    let certified = tokio::time::timeout(ISSUE_WAIT, acme.issue_single(name))
        .await
        .expect("issued in time")
        .expect("issued");
    let (_, cert) = x509_parser::parse_x509_certificate(certified.cert[0].as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        format!("{:?}", san.value.general_names),
        format!("[DNSName(\"{name}\")]")
    );
    assert!(certs.named(name).is_some(), "served for its SNI");
    // Asking again for a name in hand costs no issuance (the burst is 1).
    let again = acme
        .issue_single(name)
        .await
        .expect("the certificate in hand");
    assert_eq!(again.cert[0], certified.cert[0]);
    assert!(state.join(format!("acme/certs/{name}.crt")).exists());
    let refused = acme
        .issue_single("other.customer.example.org")
        .await
        .unwrap_err();
    let text = format!("{refused:#}");
    assert!(
        text.contains("--acme-issue-rate") && text.contains("next possible in"),
        "{text}"
    );
    shutdown.trigger();
}

/// Wrong ACME flag combinations stop burrow at start with one line naming
/// the flag, before anything is written.
#[tokio::test]
async fn bad_acme_flags_are_one_line_errors() {
    let dir = TempDir::new("acme-flags");
    let tsig_file = dir.path().join("missing.key");
    let cases: &[(&[&str], &str)] = &[
        (&["--acme-dns-hook", "/bin/true"], "--acme-email"),
        (
            &[
                "--acme-email",
                "ops@example.com",
                "--acme-rfc2136",
                "127.0.0.1:53",
            ],
            "--acme-rfc2136-tsig",
        ),
        (&["--acme-email", "ops"], "--acme-email"),
        (
            &[
                "--acme-email",
                "ops@example.com",
                "--acme-directory",
                "ftp://x",
            ],
            "--acme-directory",
        ),
        (
            &["--acme-email", "ops@example.com", "--acme-issue-rate", "0"],
            "--acme-issue-rate",
        ),
    ];
    for (extra, flag) in cases {
        let mut args: Vec<String> = cli_base_args(dir.path());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = run_burrow_expect_exit(&args).await;
        assert_eq!(run.status.code(), Some(2), "{extra:?}: {}", run.stderr);
        assert_eq!(
            run.stderr.trim().lines().count(),
            1,
            "{extra:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(flag), "{extra:?}: {}", run.stderr);
    }
    // A TSIG key file that cannot be read: refused at start, no host key.
    let mut args: Vec<String> = cli_base_args(dir.path());
    let tsig = format!("@{}", tsig_file.display());
    args.extend(
        [
            "--acme-email",
            "ops@example.com",
            "--acme-rfc2136",
            "127.0.0.1:53",
            "--acme-rfc2136-tsig",
            &tsig,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_burrow_expect_exit(&args).await;
    assert!(!run.status.success());
    assert!(run.stderr.contains("--acme-rfc2136-tsig"), "{}", run.stderr);
    assert!(!dir.path().join("host_key").exists());
}

/// `--tls-cert/--tls-key` win over the ACME flags: the static certificate
/// is served and the log says ACME is ignored.
#[tokio::test]
async fn static_certificate_wins_over_acme() {
    let dir = TempDir::new("acme-static");
    let cert = TestCert::generate();
    let (crt, key) = cert.write_to(dir.path());
    // A CA that is never started: ACME must not even try it.
    let pebble = Pebble::configure(free_port(), 0);
    let burrow = AcmeBurrow::start(
        dir.path(),
        "localhost",
        &pebble,
        &[
            "--tls-cert",
            &crt.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ],
    )
    .await;
    burrow
        .stderr
        .wait_contains("the ACME flags are ignored", Duration::from_secs(10))
        .await
        .unwrap();
    let tcp = TcpStream::connect(burrow.addrs.https).await.unwrap();
    let config = Arc::new(tls_config_pinned(&cert.cert_der, Alpn::Http1));
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("the static certificate is served");
    assert!(!dir.path().join("state/acme").exists(), "ACME stayed off");
}

/// burrow with ACME from `pebble` and custom domains resolved through
/// pebble's DNS (challtestsrv answers 127.0.0.1 for every name: "pointing
/// here").
async fn custom_acme_burrow(state: &Path, domain: &str, pebble: &Pebble) -> AcmeBurrow {
    let resolver = pebble.dns_addr().to_string();
    let args = [
        "--dns-resolver",
        &resolver,
        "--custom-domain-ips",
        "127.0.0.1",
        "--no-browser-warning",
    ];
    AcmeBurrow::start(state, domain, pebble, &args).await
}

/// A client with a fresh key that proves and binds the custom domain
/// `name` to the app on `port`, once burrow shows its URL.
async fn bind_custom(burrow: &AcmeBurrow, pebble: &Pebble, name: &str, port: u16) -> Ssh {
    let key = SshKeyPair::generate();
    let txt = serde_json::json!({"host": format!("_burrow.{name}."), "value": key.fingerprint});
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/set-txt", pebble.dns_mgmt))
        .body(txt.to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    let spec = format!("{name}:80:127.0.0.1:{port}");
    let ssh = SshSpec {
        port: burrow.addrs.ssh.port(),
        args: &["-R", &spec],
        ..SshSpec::default()
    }
    .spawn_with_key(&key);
    ssh.stdout
        .wait_contains(&format!("https://{name}"), ISSUE_WAIT)
        .await
        .unwrap_or_else(|seen| panic!("no URL for {name}: {seen}\n{}", ssh.all_output()));
    ssh
}

/// A custom domain's certificate is renewed while a tunnel binds the name,
/// and retired at the renewal after none does: not ordered again, no
/// longer in the state directory or the metrics.
#[tokio::test]
async fn custom_domain_certificate_is_renewed_only_while_bound() {
    // 12 s certificates: renewal is due after 8 s.
    let pebble = Pebble::launch(12).await;
    let dir = TempDir::new("acme-custom-renew");
    let name = "kept.example.org";
    let burrow = custom_acme_burrow(dir.path(), "tunnels.example.com", &pebble).await;
    let root = pebble.root().await;
    let origin = Origin::start("custom-renew").await;
    let ssh = bind_custom(&burrow, &pebble, name, origin.port).await;
    let first = serial(&wait_verified(burrow.addrs.https, name, &root).await);

    // Bound: renewed like any certificate.
    poll(
        "a renewed certificate while bound",
        Duration::from_secs(30),
        || {
            let (root, first) = (root.clone(), first.clone());
            async move {
                let tls = connect(burrow.addrs.https, name, &root).await.ok()?;
                (serial(&tls) != first).then_some(())
            }
        },
    )
    .await;

    // Nobody binds it: the next renewal retires it instead.
    drop(ssh);
    burrow
        .stderr
        .wait_contains("certificate retired", Duration::from_secs(30))
        .await
        .unwrap_or_else(|seen| panic!("never retired: {seen}"));
    let log = burrow.stderr.text();
    let retired = log.find("certificate retired").unwrap();
    assert!(
        !log[retired..].contains("certificate renewed"),
        "ordered again after it was retired: {log}"
    );
    let stored = dir.path().join(format!("state/acme/certs/{name}.crt"));
    assert!(!stored.exists(), "{} is still stored", stored.display());
    let metrics = burrow.metrics().await;
    assert!(
        !metrics.contains(&format!("name=\"{name}\"")),
        "a retired certificate is not tracked: {metrics}"
    );
}

/// Custom domains with ACME on: a name the client's key proves in DNS gets
/// a certificate from the CA over HTTP-01 (through burrow's redirector) as
/// soon as it is bound, served by SNI; the request reaches the local app.
#[tokio::test]
async fn custom_domain_gets_its_certificate_from_the_ca() {
    let pebble = Pebble::launch(0).await;
    let dir = TempDir::new("acme-custom");
    let domain = "tunnels.example.com";
    let name = "app.example.org";
    let burrow = custom_acme_burrow(dir.path(), domain, &pebble).await;
    let root = pebble.root().await;
    let origin = Origin::start("custom-acme").await;
    let ssh = bind_custom(&burrow, &pebble, name, origin.port).await;

    // Verified against pebble's root only: the CA issued it for the name.
    let mut tls = wait_verified(burrow.addrs.https, name, &root).await;
    let req = format!("GET /whoami HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("custom-acme"),
        "the local app answered: {answer}"
    );
    assert!(
        burrow
            .stderr
            .text()
            .contains("custom domain certificate issued"),
        "{}",
        burrow.stderr.text()
    );
    assert!(
        burrow.metrics().await.contains(&format!(
            "burrow_certificate_expiry_timestamp_seconds{{name=\"{name}\"}}"
        )),
        "the custom name's certificate is tracked for renewal"
    );
    // Stored for the next start.
    assert!(dir
        .path()
        .join(format!("state/acme/certs/{name}.crt"))
        .exists());
    drop(ssh);
}
