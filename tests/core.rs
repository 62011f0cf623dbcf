//! End-to-end tests: the real `burrow` binary, the real OpenSSH client and a
//! real local origin app. Every test runs its own burrow instance.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use reqwest::Version;
use tokio_tungstenite::tungstenite::Message;

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts burrow, an origin and `ssh -R 80:127.0.0.1:ORIGIN` (banner mode).
async fn tunnel_setup(label: &str) -> (Burrow, Origin, Ssh, TunnelUrl) {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start(label).await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    (burrow, origin, ssh, url)
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn get_headers_json(
    client: &reqwest::Client,
    url: &str,
    extra: &[(&str, &str)],
) -> (Version, BTreeMap<String, String>) {
    let mut req = client.get(url);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let resp = expect_status(resp, 200, &format!("GET {url}")).await;
    let version = resp.version();
    let text = resp.text().await.unwrap();
    let map = serde_json::from_str(&text).unwrap_or_else(|e| panic!("/headers JSON {text:?}: {e}"));
    (version, map)
}

async fn assert_get_post(
    client: &reqwest::Client,
    burrow: &Burrow,
    url: &TunnelUrl,
    want: Version,
) {
    // GET
    let resp = client
        .get(burrow.https_url(&url.host(), "/hello"))
        .send()
        .await
        .expect("GET /hello through the tunnel");
    let resp = expect_status(resp, 200, "").await;
    assert_eq!(resp.version(), want, "negotiated HTTP version for GET");
    assert_eq!(resp.text().await.unwrap(), HELLO);

    // POST 1 MiB of random bytes, echoed byte-exact.
    let body = random_bytes(1 << 20, time_seed());
    let resp = client
        .post(burrow.https_url(&url.host(), "/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("POST /echo through the tunnel");
    let resp = expect_status(resp, 200, "").await;
    assert_eq!(resp.version(), want, "negotiated HTTP version for POST");
    let got = resp.bytes().await.expect("echo body");
    assert_eq!(got.len(), body.len(), "echoed length");
    assert!(got[..] == body[..], "echoed body differs from the one sent");
}

// ---------------------------------------------------------------------------
// Proxying
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_get_post_http1() {
    let (burrow, _origin, _ssh, url) = tunnel_setup("a").await;
    assert_eq!(
        url.port,
        Some(burrow.https_port()),
        "printed URL must carry the actual HTTPS port (not 443): {}",
        url.url
    );
    assert_get_post(&burrow.https_client_h1(), &burrow, &url, Version::HTTP_11).await;

    // Routing is case-insensitive and ignores the port in Host.
    let client = burrow.https_client_h1();
    for host in [
        url.host().to_ascii_uppercase(),
        format!(
            "{}:{}",
            url.host().to_ascii_uppercase(),
            burrow.https_port()
        ),
        format!("{}:1234", url.host()),
    ] {
        let resp = client
            .get(burrow.https_url("localhost", "/hello"))
            .header("host", &host)
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, &format!("Host: {host}")).await;
        assert_eq!(resp.text().await.unwrap(), HELLO, "Host: {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_get_post_http2() {
    let (burrow, _origin, _ssh, url) = tunnel_setup("a").await;
    // h2 only (ALPN h2 + prior knowledge).
    assert_get_post(&burrow.https_client_h2(), &burrow, &url, Version::HTTP_2).await;
    // Offering h2 and http/1.1: the server must pick h2.
    assert_get_post(&burrow.https_client(), &burrow, &url, Version::HTTP_2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_multiplexed_over_h2() {
    let (burrow, _origin, _ssh, url) = tunnel_setup("a").await;
    let client = burrow.https_client_h2();
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let client = client.clone();
        let u = burrow.https_url(&url.host(), "/echo");
        tasks.push(tokio::spawn(async move {
            let body = random_bytes(20_000 + i as usize * 1000, i + 1);
            let resp = client.post(u).body(body.clone()).send().await.unwrap();
            let resp = expect_status(resp, 200, "").await;
            assert_eq!(resp.version(), Version::HTTP_2);
            let got = resp.bytes().await.unwrap();
            assert!(got[..] == body[..], "request {i}: echo differs");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("concurrent request timed out")
            .expect("concurrent request task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_replaced() {
    let (burrow, _origin, _ssh, url) = tunnel_setup("a").await;
    let spoofed = [
        ("x-forwarded-for", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6;proto=http"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "http"),
        ("x-custom-header", "kept"),
    ];
    let sent_host = format!("{}:{}", url.host(), burrow.https_port());
    for (client, want) in [
        (burrow.https_client_h1(), Version::HTTP_11),
        (burrow.https_client_h2(), Version::HTTP_2),
    ] {
        let (version, h) = get_headers_json(
            &client,
            &burrow.https_url(&url.host(), "/headers"),
            &spoofed,
        )
        .await;
        assert_eq!(version, want);
        let ctx = format!("{want:?}: origin saw {h:?}");
        assert_eq!(
            h.get("x-forwarded-for").map(String::as_str),
            Some("127.0.0.1"),
            "{ctx}"
        );
        assert_eq!(
            h.get("x-forwarded-proto").map(String::as_str),
            Some("https"),
            "{ctx}"
        );
        assert_eq!(
            h.get("x-forwarded-host").map(String::as_str),
            Some(sent_host.as_str()),
            "{ctx}"
        );
        assert!(
            !h.contains_key("forwarded"),
            "Forwarded must be dropped; {ctx}"
        );
        assert!(
            !h.values()
                .any(|v| v.contains("6.6.6.6") || v.contains("evil.example")),
            "spoofed values leaked; {ctx}"
        );
        let host = h.get("host").expect("origin got no Host header");
        assert!(
            host == &sent_host || host == &url.host(),
            "Host must stay the public host ({sent_host}); {ctx}"
        );
        assert_eq!(
            h.get("x-custom-header").map(String::as_str),
            Some("kept"),
            "{ctx}"
        );
    }
}

/// Next data message (pings/pongs skipped), bounded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_over_tls() {
    let (burrow, _origin, _ssh, url) = tunnel_setup("a").await;
    let (mut ws, resp) = burrow.ws_connect(&url.host(), "/ws").await;
    assert_eq!(resp.status(), 101);

    // Sent immediately after the handshake: must not be lost.
    ws.send(Message::Text("first".into())).await.unwrap();
    let bin: Vec<u8> = (0..=255u8).collect();
    ws.send(Message::Binary(bin.clone())).await.unwrap();
    let big = random_bytes(200_000, time_seed());
    ws.send(Message::Binary(big.clone())).await.unwrap();

    assert_eq!(ws_next(&mut ws).await, Message::Text("first".into()));
    assert_eq!(ws_next(&mut ws).await, Message::Binary(bin));
    assert_eq!(ws_next(&mut ws).await, Message::Binary(big));

    assert!(
        burrow.stats().await["active_websockets"].as_u64() == Some(1),
        "active_websockets while a socket is open"
    );
    // Complete the close handshake the way a browser would, then hang up.
    ws.close(None).await.unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(drained.is_ok(), "close handshake did not finish");
    drop(ws);
    burrow
        .wait_stat("active_websockets", 0, Duration::from_secs(5))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_forwards_on_one_connection() {
    let burrow = Burrow::start(&[]).await;
    let a = Origin::start("origin-A").await;
    let b = Origin::start("origin-B").await;
    let fa = format!("80:127.0.0.1:{}", a.port);
    let fb = format!("443:127.0.0.1:{}", b.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fa, "-R", &fb]);
    let urls = ssh.urls(2).await;
    assert_ne!(urls[0].name, urls[1].name, "each forward gets its own name");

    let client = burrow.https_client();
    let mut labels = Vec::new();
    for u in &urls {
        let resp = client
            .get(burrow.https_url(&u.host(), "/whoami"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, &u.url).await;
        labels.push(resp.text().await.unwrap());
    }
    labels.sort();
    assert_eq!(
        labels,
        ["origin-A", "origin-B"],
        "each URL reaches its own origin"
    );
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_forward_on_one_connection_refused() {
    let burrow = Burrow::start(&[]).await;
    let a = Origin::start("origin-A").await;
    let b = Origin::start("origin-B").await;
    let fa = format!("80:127.0.0.1:{}", a.port);
    let fb = format!("80:127.0.0.1:{}", b.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fa, "-R", &fb]);
    let url = ssh.url().await;
    ssh.stderr
        .wait_contains("remote port forwarding failed", URL_TIMEOUT)
        .await
        .expect("the second identical -R 80 must be refused");
    // The session says why, and what to do instead.
    ssh.stdout
        .wait_contains(
            "ERROR: -R localhost:80 is already forwarded on this connection and OpenSSH could \
             not tell the two apart; use -R 0:localhost:PORT for another tunnel",
            URL_TIMEOUT,
        )
        .await
        .unwrap_or_else(|e| panic!("no reason for the refusal: {e}"));
    let s = burrow.stats_with_subdomains().await;
    assert_eq!(s["active_tunnels"].as_u64(), Some(1), "{s}");
    assert_eq!(subdomains(&s), vec![url.name.clone()]);
    let resp = burrow.get(&url.host(), "/whoami").await;
    let resp = expect_status(resp, 200, "").await;
    assert_eq!(resp.text().await.unwrap(), "origin-A", "first -R 80 wins");
}

/// `ssh HOST` without -R: the session says there is no tunnel yet and
/// how to ask for one. The line on when tunnels close follows the limits:
/// none at all, or the defaults (2 h idle, 24 h at most, with the time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_says_how_to_ask_and_when_tunnels_close() {
    let unlimited =
        Burrow::start(&["--tunnel-idle-timeout", "0", "--tunnel-max-lifetime", "0"]).await;
    let bare = Ssh::spawn(&unlimited, &[]);
    for line in [
        "burrow: connected, but no tunnel yet.",
        "Ask for one with -R, e.g.  ssh -R 80:localhost:3000 <this host>",
        "Lasts as long as this SSH connection stays open.",
    ] {
        bare.stdout
            .wait_contains(line, URL_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("no {line:?}: {e}"));
    }
    assert_eq!(unlimited.stats().await["active_tunnels"].as_u64(), Some(0));

    let (_burrow, _origin, ssh, _url) = tunnel_setup("expiry").await;
    let a_day_on = std::time::SystemTime::now() + Duration::from_secs(24 * 3600);
    let line = ssh
        .stdout
        .wait_for(URL_TIMEOUT, |text| {
            text.lines()
                .find(|l| l.contains("Closes after"))
                .map(str::to_string)
        })
        .await
        .unwrap_or_else(|e| panic!("no expiry line: {e}"));
    assert!(
        line.contains("Closes after 2 h without traffic, and at the latest 24 h after it opened ("),
        "{line:?}"
    );
    // The latest close, to the second, in UTC: a day after the tunnel opened.
    let at = line
        .split_once("opened (")
        .and_then(|(_, rest)| rest.split_once(" UTC)."))
        .map(|(at, _)| at.replace(' ', "T") + "Z")
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    let at = humantime::parse_rfc3339(&at).unwrap_or_else(|e| panic!("{at}: {e}"));
    let off = at.duration_since(a_day_on).unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(60),
        "{line:?} is {off:?} from a day after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_port_zero_is_allocated() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("0:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    ssh.stderr
        .wait_contains("Allocated port", URL_TIMEOUT)
        .await
        .expect("OpenSSH should print `Allocated port N` for -R 0");
    let resp = burrow.get(&url.host(), "/hello").await;
    let resp = expect_status(resp, 200, "").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dash_n_mode_url_on_stderr() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    // Keyless: the URL comes during login (keyboard-interactive
    // instructions), before OpenSSH even sends its tcpip-forward request.
    let ssh = Ssh::spawn_keyless(&burrow, &["-N", "-R", &fwd]);
    let url = ssh.url_from_stderr().await;
    // Requested at once: the server holds requests for an announced name
    // until its forward arrives, so this must not 404.
    let resp = burrow.get(&url.host(), "/hello").await;
    let resp = expect_status(resp, 200, "").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
    let s = burrow.stats_with_subdomains().await;
    assert_eq!(
        subdomains(&s),
        vec![url.name.clone()],
        "the URL shown during login is the registered one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_eof_keeps_tunnel() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let mut ssh = Ssh::spawn_full(&burrow, &["-R", &fwd], &[], SshStdin::Null);
    let url = ssh.url().await;
    // Give the channel EOF time to reach the server before checking.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ssh.wait_exit(Duration::from_millis(10)).await.is_none(),
        "ssh exited after stdin EOF: {}",
        ssh.all_output()
    );
    let resp = burrow.get(&url.host(), "/hello").await;
    expect_status(resp, 200, "tunnel must survive EOF on stdin").await;
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));
}

// ---------------------------------------------------------------------------
// Burrow's own pages
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_redirects_to_https() {
    let burrow = Burrow::start(&[]).await;
    let client = burrow.http_client();
    let hp = burrow.https_port();
    for (host, path, want) in [
        (
            "anything.localhost",
            "/p/a%20b?q=1&x=y",
            format!("https://anything.localhost:{hp}/p/a%20b?q=1&x=y"),
        ),
        ("localhost", "/", format!("https://localhost:{hp}/")),
        (
            "Mixed.LocalHost",
            "/x?y",
            format!("https://Mixed.LocalHost:{hp}/x?y"),
        ),
    ] {
        let resp = client
            .get(burrow.http_url(host, path))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 301, &format!("http://{host}{path}")).await;
        let loc = header(&resp, "location").unwrap_or("<none>");
        assert_eq!(
            header(&resp, "content-type"),
            Some("text/plain; charset=utf-8"),
            "the redirect's text says what it is"
        );
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            // The host may come back lower-cased; path and query must not.
            assert!(
                loc.eq_ignore_ascii_case(&want) && loc.ends_with(path),
                "Location for http://{host}{path}: got {loc:?}, want {want:?}"
            );
        } else {
            assert_eq!(loc, want, "Location for http://{host}{path}");
        }
    }
    for host in ["example.com", "evillocalhost", "localhost.example.com"] {
        let resp = client.get(burrow.http_url(host, "/")).send().await.unwrap();
        expect_status(resp, 400, &format!("foreign Host {host} on :80")).await;
    }
}

/// `--http-mode proxy`: tunnels answer on plain HTTP too (the app sees
/// `X-Forwarded-Proto: http`); the apex and foreign hosts behave as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_mode_proxy_serves_tunnels_over_http() {
    let burrow = Burrow::start(&["--http-mode", "proxy"]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let host = ssh.url().await.host();
    let client = burrow.http_client();

    let resp = client
        .get(burrow.http_url(&host, "/hello"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "tunnel over plain HTTP").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
    let (_, h) = get_headers_json(&client, &burrow.http_url(&host, "/headers"), &[]).await;
    assert_eq!(
        h.get("x-forwarded-proto").map(String::as_str),
        Some("http"),
        "{h:?}"
    );

    let resp = client
        .get(burrow.http_url("localhost", "/"))
        .send()
        .await
        .unwrap();
    expect_status(resp, 301, "the apex still redirects").await;
    let resp = client
        .get(burrow.http_url("example.com", "/"))
        .send()
        .await
        .unwrap();
    expect_status(resp, 400, "foreign host").await;
    let resp = client
        .get(burrow.http_url("nobody-here.localhost", "/"))
        .send()
        .await
        .unwrap();
    expect_status(resp, 404, "unknown tunnel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_https_port_443_omits_port() {
    let burrow = Burrow::start(&["--public-https-port", "443"]).await;
    let resp = burrow
        .http_client()
        .get(burrow.http_url("x.localhost", "/p?q=1"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 301, "").await;
    assert_eq!(header(&resp, "location"), Some("https://x.localhost/p?q=1"));

    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    assert_eq!(url.port, None, "URL must not show :443: {}", url.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tunnel_404_and_foreign_host_400() {
    let burrow = Burrow::start(&[]).await;
    let client = burrow.https_client();
    for host in [
        "nope-nope-00000000.localhost",
        "foo.localhost",
        "a.b.localhost",
        "UPPER-CASE-ABCDEF12.localhost",
    ] {
        let resp = client
            .get(burrow.https_url(host, "/"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 404, &format!("unknown tunnel {host}")).await;
        assert_eq!(
            header(&resp, "x-content-type-options"),
            Some("nosniff"),
            "{host}"
        );
    }
    // Foreign hosts (TLS goes to localhost, Host header says otherwise).
    let h1 = burrow.https_client_h1();
    for host in ["example.com", "evillocalhost", "localhost.example.com"] {
        let resp = h1
            .get(burrow.https_url("localhost", "/"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        expect_status(resp, 400, &format!("foreign Host {host} on :443")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn landing_page_on_bare_domain() {
    let burrow = Burrow::start(&[]).await;
    for client in [burrow.https_client_h1(), burrow.https_client()] {
        let resp = client
            .get(burrow.https_url("localhost", "/"))
            .send()
            .await
            .unwrap();
        let resp = expect_status(resp, 200, "").await;
        assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
        let body = resp.text().await.unwrap();
        let want = format!(
            "ssh -p {} -R 80:localhost:3000 localhost",
            burrow.ssh_port()
        );
        assert!(body.contains(&want), "landing page lacks {want:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_app_down_gives_502() {
    let burrow = Burrow::start(&[]).await;
    let port = dead_port();
    let fwd = format!("80:127.0.0.1:{port}");
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    let started = Instant::now();
    let resp = burrow.get(&url.host(), "/hello").await;
    let resp = expect_status(resp, 502, "").await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "502 should be quick"
    );
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    let body = resp.text().await.unwrap().to_ascii_lowercase();
    assert!(
        body.contains("local") && body.contains("nothing"),
        "502 page should say nothing answers on the local port: {body}"
    );
}

/// A client that stops answering (SIGSTOP) never confirms the channel
/// open: after `--stream-open-timeout` the visitor gets a 504 that names
/// it, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_channel_open_gives_504() {
    let burrow = Burrow::start(&["--stream-open-timeout", "2s"]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    ssh.signal("STOP");
    let started = Instant::now();
    let resp = burrow
        .https_client_no_timeout()
        .get(burrow.https_url(&url.host(), "/hello"))
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    ssh.signal("CONT");
    let resp = expect_status(resp, 504, "").await;
    assert!(
        waited >= Duration::from_millis(1800) && waited < Duration::from_secs(8),
        "504 should come after the 2 s --stream-open-timeout, came after {waited:?}"
    );
    assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("within 2 s (stream-open-timeout)"),
        "the page names the limit: {page}"
    );
}

/// An open the client answers only after the visitor got its 504 is not
/// left dangling: burrow closes the channel as soon as it is confirmed, so
/// the client closes its connection to the app instead of holding it for
/// as long as the SSH connection lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_confirmed_after_the_visitor_left_is_closed() {
    use tokio::io::AsyncReadExt;
    let burrow = Burrow::start(&[]).await;
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fwd = format!("80:127.0.0.1:{}", app.local_addr().unwrap().port());
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    ssh.signal("STOP");
    let resp = burrow
        .https_client_no_timeout()
        .get(burrow.https_url(&url.host(), "/hello"))
        .send()
        .await
        .unwrap();
    expect_status(resp, 504, "the client is stopped").await;
    // Now the client wakes, connects to the app and confirms the open.
    ssh.signal("CONT");
    let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), app.accept())
        .await
        .expect("the woken client connects to the app")
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the app connection of an abandoned open should be closed, got {read:?}"
    );
}

// ---------------------------------------------------------------------------
// Tunnel lifecycle and stats
// ---------------------------------------------------------------------------

const STAT_FIELDS: [&str; 9] = [
    "active_tunnels",
    "unique_ips",
    "total_connections",
    "total_requests",
    "active_websockets",
    "active_requests",
    "blocked_ips",
    "total_blocked",
    "total_rate_limited",
];

fn assert_stat_fields(s: &serde_json::Value) {
    assert!(s.is_object(), "stats must be a JSON object: {s}");
    for f in STAT_FIELDS {
        assert!(
            s[f].is_u64(),
            "stats field {f} must be a non-negative integer: {s}"
        );
    }
}

fn subdomains(s: &serde_json::Value) -> Vec<String> {
    s["subdomains"]
        .as_array()
        .unwrap_or_else(|| panic!("`subdomains` must be an array: {s}"))
        .iter()
        .map(|v| v.as_str().expect("subdomain must be a string").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reflect_tunnel_lifecycle() {
    let burrow = Burrow::start(&[]).await;
    let s0 = burrow.stats().await;
    assert_stat_fields(&s0);
    assert_eq!(s0["active_tunnels"].as_u64(), Some(0));
    assert!(
        s0.get("subdomains").is_none(),
        "plain GET / has no subdomains: {s0}"
    );
    assert_eq!(
        subdomains(&burrow.stats_with_subdomains().await),
        Vec::<String>::new()
    );

    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let mut ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;

    let s1 = burrow.stats_with_subdomains().await;
    assert_stat_fields(&s1);
    assert_eq!(s1["active_tunnels"].as_u64(), Some(1), "{s1}");
    assert_eq!(subdomains(&s1), vec![url.name.clone()]);

    let before = s1["total_requests"].as_u64().unwrap();
    let resp = burrow.get(&url.host(), "/hello").await;
    let resp = expect_status(resp, 200, "").await;
    resp.text().await.unwrap();
    let s2 = burrow.stats().await;
    assert!(
        s2["total_requests"].as_u64().unwrap() > before,
        "total_requests must move after a proxied request: {s1} -> {s2}"
    );
    burrow
        .wait_stat("active_requests", 0, Duration::from_secs(5))
        .await;

    ssh.kill();
    let s3 = burrow
        .wait_stat("active_tunnels", 0, Duration::from_secs(5))
        .await;
    assert_stat_fields(&s3);
    assert_eq!(
        subdomains(&burrow.stats_with_subdomains().await),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_tunnel() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let mut ssh = Ssh::spawn(&burrow, &["-tt", "-R", &fwd]);
    let url = ssh.url().await;
    ssh.stdout
        .wait_contains("Press Ctrl+C to stop", URL_TIMEOUT)
        .await
        .expect("banner must say `Press Ctrl+C to stop`");
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));

    ssh.write_stdin(b"\x03");
    ssh.stdout
        .wait_contains("Stopped", STOP_TIMEOUT)
        .await
        .expect("burrow should print `Stopped` after Ctrl+C");
    let st = ssh.wait_exit(STOP_TIMEOUT).await;
    assert!(
        st.is_some(),
        "ssh did not exit after Ctrl+C: {}",
        ssh.all_output()
    );

    // Removed at once: no polling here.
    let s = burrow.stats_with_subdomains().await;
    assert_eq!(s["active_tunnels"].as_u64(), Some(0), "after Ctrl+C: {s}");
    assert_eq!(subdomains(&s), Vec::<String>::new());
    let resp = burrow.get(&url.host(), "/hello").await;
    expect_status(resp, 404, "stopped tunnel must be gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_ssh_removes_tunnel() {
    let (burrow, _origin, mut ssh, url) = tunnel_setup("a").await;
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));
    ssh.kill();
    burrow
        .wait_stat("active_tunnels", 0, Duration::from_secs(5))
        .await;
    let resp = burrow.get(&url.host(), "/hello").await;
    expect_status(resp, 404, "tunnel of a killed ssh must be gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_http_remote_port_refused() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("8080:127.0.0.1:{}", origin.port);
    let mut ssh = Ssh::spawn(
        &burrow,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &fwd],
    );
    let st = ssh
        .wait_exit(STOP_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("ssh should exit on refused -R 8080: {}", ssh.all_output()));
    assert!(
        !st.success(),
        "ssh must exit non-zero: {}",
        ssh.all_output()
    );
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_command_prints_error() {
    let burrow = Burrow::start(&[]).await;
    let mut ssh = Ssh::spawn_cmd(&burrow, &[], &["somecmd"]);
    let st = ssh
        .wait_exit(STOP_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("ssh with exec command did not exit: {}", ssh.all_output()));
    // Readers may still be draining: wait for the text (bounded).
    let mut found = ssh
        .stdout
        .wait_contains("ERROR:", Duration::from_secs(2))
        .await
        .is_ok();
    if !found {
        found = ssh
            .stderr
            .wait_contains("ERROR:", Duration::from_secs(2))
            .await
            .is_ok();
    }
    assert!(found, "no `ERROR:` line: {}", ssh.all_output());
    assert!(
        !st.success(),
        "exec must exit non-zero: {}",
        ssh.all_output()
    );
}

// ---------------------------------------------------------------------------
// Process behaviour
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero() {
    let (mut burrow, _origin, _ssh, _url) = tunnel_setup("a").await;
    burrow.signal("TERM");
    let st = burrow.wait_exit(Duration::from_secs(5)).await;
    let st = st.expect("burrow did not exit within 5 s of SIGTERM (with a live tunnel)");
    assert_eq!(st.code(), Some(0), "exit status after SIGTERM: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_zero() {
    let mut burrow = Burrow::start(&[]).await;
    burrow.signal("INT");
    let st = burrow.wait_exit(Duration::from_secs(5)).await;
    let st = st.expect("burrow did not exit within 5 s of SIGINT");
    assert_eq!(st.code(), Some(0), "exit status after SIGINT: {st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_key_generated_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let burrow = Burrow::start(&[]).await;
    let path = burrow.dir.path().join("host_key");
    let meta = std::fs::metadata(&path).expect("host key file must be created");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "host key mode");
    assert!(meta.len() > 0, "host key file is empty");
}

async fn assert_cli_error(args: &[&str], must_mention: Option<&str>) {
    let run = run_burrow_expect_exit(args).await;
    eprintln!(
        "burrow {args:?} -> {:?}, stderr: {:?}",
        run.status, run.stderr
    );
    assert!(!run.status.success(), "burrow {args:?} must exit non-zero");
    assert!(
        !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
        "burrow {args:?} panicked: {}",
        run.stderr
    );
    assert!(
        !run.stderr.trim().is_empty(),
        "burrow {args:?}: empty stderr"
    );
    if let Some(flag) = must_mention {
        assert!(
            run.stderr.contains(flag),
            "burrow {args:?}: stderr should mention {flag}: {:?}",
            run.stderr
        );
    }
    assert!(
        !run.stdout.contains("burrow ready:"),
        "burrow {args:?} must not report ready"
    );
    // Flags are checked before anything is written: no host key left over.
    if let Some(i) = args.iter().position(|a| *a == "--host-key") {
        let host_key = std::path::Path::new(args[i + 1]);
        assert!(
            !host_key.exists(),
            "burrow {args:?} failed but still wrote {}",
            host_key.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tls_cert_without_key_fails() {
    let dir = TempDir::new("burrow-cli");
    let (cert, _key) = TestCert::generate().write_to(dir.path());
    let mut args = cli_base_args(dir.path());
    args.extend(["--tls-cert".to_string(), cert.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_cli_error(&args, Some("--tls-key")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_missing_cert_file_fails() {
    let dir = TempDir::new("burrow-cli");
    let (_cert, key) = TestCert::generate().write_to(dir.path());
    let missing = dir.path().join("no-such-cert.pem");
    let mut args = cli_base_args(dir.path());
    args.extend([
        "--tls-cert".to_string(),
        missing.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_cli_error(&args, Some("--tls-cert")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_ssh_addr_in_use_fails() {
    let dir = TempDir::new("burrow-cli");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut args = cli_base_args(dir.path());
    let i = args.iter().position(|a| a == "--ssh-addr").unwrap();
    args[i + 1] = addr;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_cli_error(&args, Some("--ssh-addr")).await;
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_unparsable_addr_fails() {
    let dir = TempDir::new("burrow-cli");
    let mut args = cli_base_args(dir.path());
    let i = args.iter().position(|a| a == "--ssh-addr").unwrap();
    args[i + 1] = "nonsense".to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_cli_error(&args, Some("--ssh-addr")).await;
}

// ---------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_download_keeps_memory_flat() {
    const N: u64 = 1 << 30;
    const LIMIT: u64 = 150 << 20;
    // burrow caps relayed bodies (--max-body-size, 128 MiB by default); this
    // test is about memory while streaming, so lift the cap above 1 GiB.
    let burrow = Burrow::start(&["--max-body-size", "2GiB"]).await;
    let origin = Origin::start("a").await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let url = ssh.url().await;
    let client = burrow.https_client();

    // Warm up (first TLS handshake, first channel) before the baseline.
    let resp = client
        .get(burrow.https_url(&url.host(), "/bytes?n=100000"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "").await;
    assert_eq!(resp.bytes().await.unwrap().len(), 100_000);
    let baseline = burrow.rss_bytes().expect("read VmRSS");

    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done, pid) = (peak.clone(), done.clone(), burrow.pid());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                if let Some(r) = rss_bytes(pid) {
                    peak.fetch_max(r, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    const CMP: usize = 64 * 1024;
    let pattern: Vec<u8> = (0..(CMP as u64 + 251)).map(pattern_byte).collect();
    let started = Instant::now();
    let download = async {
        let resp = burrow
            .https_client_no_timeout()
            .get(burrow.https_url(&url.host(), &format!("/bytes?n={N}")))
            .send()
            .await
            .unwrap();
        let mut resp = expect_status(resp, 200, "").await;
        let version = resp.version();
        let mut total: u64 = 0;
        while let Some(chunk) = resp.chunk().await.expect("download chunk") {
            for piece in chunk.chunks(CMP) {
                let start = (total % 251) as usize;
                assert!(
                    piece == &pattern[start..start + piece.len()],
                    "content differs near offset {total}"
                );
                total += piece.len() as u64;
            }
        }
        (total, version)
    };
    let (total, version) = tokio::time::timeout(Duration::from_secs(300), download)
        .await
        .expect("1 GiB download timed out");
    let secs = started.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "one_gib_download_keeps_memory_flat: {version:?}, {total} bytes in {secs:.1} s \
         ({:.0} MiB/s); burrow VmRSS baseline {:.1} MiB, peak {:.1} MiB",
        total as f64 / secs / 1048576.0,
        baseline as f64 / 1048576.0,
        peak as f64 / 1048576.0
    );
    assert_eq!(total, N, "downloaded byte count");
    assert!(
        peak < LIMIT,
        "burrow peak RSS {:.1} MiB exceeds {} MiB",
        peak as f64 / 1048576.0,
        LIMIT >> 20
    );
}
