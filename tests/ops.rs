//! End-to-end tests for running burrow as a service (issue 7, operator
//! side): graceful shutdown, certificate reloads, systemd notifications and
//! JSON logs, through the real binary and the stock OpenSSH client.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::net::TcpStream;

/// How long to wait for something burrow logs or sends.
const WAIT: Duration = Duration::from_secs(15);

/// A live tunnel to an origin: burrow, the origin, the ssh client, its name.
async fn tunnel(extra: &[&str]) -> (Burrow, Origin, Ssh, String) {
    let burrow = Burrow::start(extra).await;
    let origin = Origin::start("ops").await;
    let ssh = Ssh::spawn(&burrow, &["-R", &format!("80:127.0.0.1:{}", origin.port)]);
    let name = ssh.url().await.name;
    (burrow, origin, ssh, name)
}

/// Whether a TCP connection to `port` on loopback is refused now.
async fn refused(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Err(_))
    )
}

/// SIGTERM with a slow request in flight: no new connections are accepted,
/// the SSH user is told, the request finishes with its full answer, and
/// burrow exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request() {
    let (mut burrow, _origin, ssh, name) = tunnel(&[]).await;
    let url = burrow.https_url(&format!("{name}.{DOMAIN}"), "/delay?ms=2000");
    let client = burrow.https_client();
    let request = tokio::spawn(async move {
        let resp = client.get(&url).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((status, body))
    });
    burrow
        .wait_stat("active_requests", 1, Duration::from_secs(10))
        .await;
    let signalled = Instant::now();
    burrow.signal("TERM");

    ssh.stdout
        .wait_contains("server restarting", WAIT)
        .await
        .unwrap_or_else(|seen| panic!("no restart notice on the session: {seen}"));
    let https_port = burrow.https_port();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !refused(https_port).await {
        assert!(
            Instant::now() < deadline,
            "the HTTPS listener still accepts after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, body) = request.await.unwrap().expect("the in-flight request");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, HELLO, "the in-flight request got its whole answer");
    let st = burrow
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("burrow exits after draining");
    assert_eq!(st.code(), Some(0), "{st:?}");
    assert!(
        signalled.elapsed() >= Duration::from_millis(1500),
        "burrow waited for the request ({:?})",
        signalled.elapsed()
    );
}

/// A request that never ends is cut when `--shutdown-grace` runs out, and
/// burrow still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_bounds_the_drain() {
    let (mut burrow, _origin, _ssh, name) = tunnel(&["--shutdown-grace", "1s"]).await;
    let url = burrow.https_url(&format!("{name}.{DOMAIN}"), "/hang");
    let client = burrow.https_client();
    let request = tokio::spawn(async move { client.get(&url).send().await });
    burrow
        .wait_stat("active_requests", 1, Duration::from_secs(10))
        .await;
    let signalled = Instant::now();
    burrow.signal("TERM");
    let st = burrow
        .wait_exit(Duration::from_secs(8))
        .await
        .expect("burrow exits once the grace period is over");
    assert_eq!(st.code(), Some(0), "{st:?}");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "the grace period was given: {took:?}"
    );
    assert!(
        burrow.stderr.text().contains("grace period over"),
        "{}",
        burrow.stderr.text()
    );
    let _ = request.await;
}

/// A second signal during the drain exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_signal_exits_at_once() {
    let (mut burrow, _origin, _ssh, name) = tunnel(&["--shutdown-grace", "60s"]).await;
    let url = burrow.https_url(&format!("{name}.{DOMAIN}"), "/hang");
    let client = burrow.https_client();
    let _request = tokio::spawn(async move { client.get(&url).send().await });
    burrow
        .wait_stat("active_requests", 1, Duration::from_secs(10))
        .await;
    burrow.signal("TERM");
    burrow
        .stderr
        .wait_contains("shutdown requested", WAIT)
        .await
        .expect("the first signal starts the drain");
    let second = Instant::now();
    burrow.signal("INT");
    let st = burrow
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("the second signal exits at once");
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(!st.success(), "a forced exit is not a clean one: {st:?}");
}

/// A certificate renewed on disk is served after SIGHUP (and, without a
/// signal, after the files change); a broken one is rejected and the last
/// good one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_the_certificate() {
    let (burrow, _origin, _ssh, name) = tunnel(&[]).await;
    let host = format!("{name}.{DOMAIN}");
    let url = burrow.https_url(&host, "/hello");
    let trusting = |cert: &TestCert| {
        reqwest::Client::builder()
            .no_proxy()
            .resolve(&host, std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .use_preconfigured_tls(tls_config_pinned(&cert.cert_der, Alpn::Any))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let served_by = |cert: &TestCert| {
        let client = trusting(cert);
        let url = url.clone();
        async move { client.get(&url).send().await.is_ok() }
    };
    assert!(served_by(&burrow.cert).await, "the first certificate");

    // Renewed in place, then SIGHUP.
    let renewed = TestCert::generate();
    renewed.write_to(burrow.dir.path());
    burrow.signal("HUP");
    wait_until("the renewed certificate is served after SIGHUP", || {
        served_by(&renewed)
    })
    .await;
    assert!(!served_by(&burrow.cert).await, "the old one is gone");

    // A broken file: rejected, the renewed one stays.
    std::fs::write(burrow.dir.path().join("cert.pem"), "not a certificate").unwrap();
    burrow.signal("HUP");
    burrow
        .stderr
        .wait_contains("TLS certificate rejected", WAIT)
        .await
        .expect("the broken certificate is rejected with a log line");
    assert!(served_by(&renewed).await, "the last good certificate stays");

    // Renewed again, no signal: picked up from the files.
    let again = TestCert::generate();
    again.write_to(burrow.dir.path());
    wait_until("a certificate changed on disk is picked up", || {
        served_by(&again)
    })
    .await;
}

/// Polls `check` (bounded) until it holds.
async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Under systemd (`NOTIFY_SOCKET`), burrow says READY=1 once it serves,
/// RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_notifications() {
    let dir = TempDir::new("burrow-notify");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let socket = Arc::new(socket);
    let next = || {
        let socket = Arc::clone(&socket);
        async move {
            tokio::task::spawn_blocking(move || {
                let mut buf = [0u8; 4096];
                let n = socket.recv(&mut buf).expect("a notification in time");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
            .await
            .unwrap()
        }
    };
    let mut burrow =
        Burrow::start_with_env(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap())]).await;
    let ready = next().await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    burrow.signal("HUP");
    let reloading = next().await;
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1")
            && reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = next().await;
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded:?}");

    burrow.signal("TERM");
    let stopping = next().await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let st = burrow.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(st.and_then(|s| s.code()), Some(0));
}

/// `--log-format json`: every log line is one JSON object with a level, a
/// message and the event's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let (burrow, _origin, _ssh, name) = tunnel(&["--log-format", "json"]).await;
    burrow
        .stderr
        .wait_contains("tunnel opened", WAIT)
        .await
        .expect("a tunnel log line");
    let text = burrow.stderr.text();
    let mut opened = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
        assert!(event["level"].is_string(), "{line}");
        assert!(event["timestamp"].is_string(), "{line}");
        if event["message"] == "tunnel opened" {
            opened = Some(event);
        }
    }
    let opened = opened.expect("the tunnel opened event");
    assert_eq!(opened["subdomain"], name, "{opened}");
    assert_eq!(opened["ip"], "127.0.0.1", "{opened}");
    assert_eq!(opened["level"], "INFO", "{opened}");
}

/// `--access-log` puts one line per request in the server log (JSON here,
/// with its fields); without it there is none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_is_opt_in() {
    let (burrow, _origin, _ssh, name) = tunnel(&["--log-format", "json", "--access-log"]).await;
    let host = format!("{name}.{DOMAIN}");
    expect_status(burrow.get(&host, "/hello?q=1").await, 200, "hello").await;
    let line = burrow
        .stderr
        .wait_for(WAIT, |text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["target"] == "burrow::access")
        })
        .await
        .unwrap_or_else(|text| panic!("no access log line:\n{text}"));
    let fields = &line;
    assert_eq!(fields["path"], "/hello?q=1", "{line}");
    assert_eq!(fields["method"], "GET", "{line}");
    assert_eq!(fields["status"], 200, "{line}");
    // The Host header as the visitor sent it (here with the port).
    assert!(
        fields["host"].as_str().unwrap().starts_with(&host),
        "{line}"
    );
    assert_eq!(fields["visitor"], "127.0.0.1", "{line}");
    assert_eq!(fields["bytes"], HELLO.len(), "{line}");

    // Off by default: the same request leaves no per-request line.
    let (quiet, _origin, quiet_ssh, quiet_name) = tunnel(&[]).await;
    let quiet_host = format!("{quiet_name}.{DOMAIN}");
    expect_status(quiet.get(&quiet_host, "/hello").await, 200, "hello").await;
    // The request's own terminal line proves it was served and logged.
    quiet_ssh
        .stdout
        .wait_contains("/hello", WAIT)
        .await
        .expect("the request in the terminal");
    assert!(
        !quiet.stderr.text().contains("/hello"),
        "{}",
        quiet.stderr.text()
    );
}

/// One sample of a scrape: its value, if present.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|got| got == *v))
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

async fn scrape(burrow: &Burrow) -> (String, prometheus_parse::Scrape) {
    let resp = burrow
        .http_client()
        .get(format!("http://{}/metrics", burrow.addrs.stats))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    (text, parsed)
}

/// `GET /metrics` parses as Prometheus text, names follow the conventions,
/// and the counters move with what happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move() {
    let (burrow, _origin, _ssh, name) =
        tunnel(&["--visitor-rate", "1/h", "--visitor-burst", "3"]).await;
    let client = burrow.https_client();
    let (before_text, before) = scrape(&burrow).await;
    for line in before_text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("burrow_"), "unprefixed metric: {line}");
    }
    assert_eq!(
        sample(&before, "burrow_tunnels", &[("kind", "http")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&before, "burrow_tunnels", &[("kind", "tcp")]),
        Some(0.0)
    );
    assert!(
        sample(
            &before,
            "burrow_ssh_connections_total",
            &[("outcome", "accepted")]
        ) >= Some(1.0),
        "{before_text}"
    );

    let url = burrow.https_url(&format!("{name}.{DOMAIN}"), "/hello");
    for _ in 0..3 {
        let resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.text().await.unwrap();
    }
    // The bucket is empty now: refused, by the visitor-rate limit.
    assert_eq!(
        client.get(&url).send().await.unwrap().status().as_u16(),
        429
    );
    let missing = burrow.https_url(&format!("nope-nope-00000000.{DOMAIN}"), "/");
    assert_eq!(
        client.get(&missing).send().await.unwrap().status().as_u16(),
        404
    );

    let (text, after) = scrape(&burrow).await;
    let get = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels).unwrap_or(0.0);
    assert_eq!(
        get("burrow_http_requests_total", &[("code", "2xx")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        get("burrow_http_requests_total", &[("code", "4xx")]),
        2.0,
        "{text}"
    );
    assert_eq!(
        get("burrow_refusals_total", &[("limit", "visitor-rate")]),
        1.0,
        "{text}"
    );
    assert!(
        get("burrow_http_request_duration_seconds", &[]) >= 5.0,
        "{text}"
    );
    assert!(
        get("burrow_channel_open_duration_seconds", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        get("burrow_tunnel_bytes_total", &[("direction", "in")]) > 0.0,
        "{text}"
    );
    assert!(
        get("burrow_tunnel_bytes_total", &[("direction", "out")]) >= 3.0 * HELLO.len() as f64,
        "{text}"
    );
    assert_eq!(get("burrow_ssh_connections_open", &[]), 1.0, "{text}");
    assert_eq!(get("burrow_http_requests_in_flight", &[]), 0.0, "{text}");
}

/// Ctrl+C ends the session with a summary of what the tunnel did:
/// `Stopped. 3 requests, … served, 1 error.`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_prints_a_summary() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("summary").await;
    // A second tunnel to a port nothing listens on: its request is an error.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut ssh = Ssh::spawn(
        &burrow,
        &[
            "-tt",
            "-R",
            &format!("80:127.0.0.1:{}", origin.port),
            "-R",
            &format!("0:127.0.0.1:{dead_port}"),
        ],
    );
    let urls = ssh.urls(2).await;
    let name = urls[0].name.clone();
    ssh.stdout
        .wait_contains("Press Ctrl+C to stop", WAIT)
        .await
        .expect("banner");
    let client = burrow.https_client();
    let host = format!("{name}.{DOMAIN}");
    for path in ["/bytes?n=1000000", "/hello"] {
        let resp = client
            .get(burrow.https_url(&host, path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.bytes().await.unwrap();
    }
    // Nothing listens behind the second tunnel: 502, one error.
    let resp = client
        .get(burrow.https_url(&urls[1].host(), "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 502);

    ssh.write_stdin(b"\x03");
    let line = ssh
        .stdout
        .wait_for(WAIT, |t| {
            t.lines()
                .find(|l| l.contains("Stopped."))
                .map(|l| l.trim().to_string())
        })
        .await
        .expect("the summary line");
    assert!(
        line.starts_with("Stopped. 3 requests, 1.0 MB served, 1 error."),
        "{line}"
    );
    assert!(line.contains("2 tunnels closed"), "{line}");
    assert!(ssh.wait_exit(WAIT).await.is_some(), "ssh exits");
}
