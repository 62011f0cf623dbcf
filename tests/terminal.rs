//! What the SSH user's terminal shows (issue 7): the QR code under the URL,
//! decoded back from the half-block characters the session printed.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(15);
/// The colours burrow forces around every QR row: black on white.
const QR_COLORS: &str = "\x1b[38;5;16;48;5;231m";

/// The QR code rows in `text` (between the colour escape and the reset),
/// turned back into modules: `true` = dark.
fn qr_modules(text: &str) -> Vec<Vec<bool>> {
    let mut modules = Vec::new();
    for line in text.lines() {
        let Some(start) = line.find(QR_COLORS) else {
            continue;
        };
        let row = &line[start + QR_COLORS.len()..];
        let row = row.split("\x1b[0m").next().unwrap_or("");
        let (mut top, mut bottom) = (Vec::new(), Vec::new());
        for c in row.chars() {
            let (t, b) = match c {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                _ => (false, false),
            };
            top.push(t);
            bottom.push(b);
        }
        modules.push(top);
        modules.push(bottom);
    }
    modules
}

/// Decodes the modules with `rqrr`, as a phone camera would.
fn decode(modules: &[Vec<bool>]) -> Option<String> {
    const SCALE: usize = 4;
    let height = modules.len() * SCALE;
    let width = modules.iter().map(Vec::len).max()? * SCALE;
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(width, height, |x, y| {
        let dark = modules
            .get(y / SCALE)
            .and_then(|row| row.get(x / SCALE))
            .copied()
            .unwrap_or(false);
        if dark {
            0
        } else {
            255
        }
    });
    let grids = image.detect_grids();
    let (_, content) = grids.first()?.decode().ok()?;
    Some(content)
}

async fn banner(
    burrow: &Burrow,
    origin: &Origin,
    args: &[&str],
    options: &[&str],
) -> (String, Ssh) {
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let mut all = args.to_vec();
    all.extend(["-R", fwd.as_str()]);
    let ssh = Ssh::spawn_cmd(burrow, &all, options);
    let url = ssh.url().await;
    // The key line comes after the QR code's place in the banner: once it is
    // in, a QR code would be too.
    ssh.stdout
        .wait_contains("Stable URL from your SSH key", WAIT)
        .await
        .expect("the banner");
    (url.url, ssh)
}

/// On a terminal, the banner carries a QR code of the URL that decodes to
/// exactly that URL, in forced black-on-white.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_under_the_url_decodes_to_it() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("qr").await;
    let (url, ssh) = banner(&burrow, &origin, &["-tt"], &[]).await;
    // The code may reach ssh's stdout after the banner text: wait until what
    // arrived decodes (or time runs out).
    let decoded = ssh
        .stdout
        .wait_for(WAIT, |text| decode(&qr_modules(text)))
        .await
        .unwrap_or_else(|text| panic!("no decodable QR code was printed:\n{text}"));
    assert_eq!(decoded, url, "{}", ssh.stdout.text());
}

/// No QR code without a terminal, and none with `qr=off`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_code_skipped_without_a_terminal_or_with_qr_off() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("qr").await;
    let (_, no_pty) = banner(&burrow, &origin, &["-T"], &["--", "host=localhost"]).await;
    let (_, off) = banner(&burrow, &origin, &["-tt"], &["--", "qr=off"]).await;
    for (what, ssh) in [("no terminal", &no_pty), ("qr=off", &off)] {
        let text = ssh.stdout.text();
        assert!(!text.contains(QR_COLORS), "{what}: no QR code\n{text}");
        assert!(qr_modules(&text).is_empty(), "{what}");
    }
}

// ---------------------------------------------------------------------------
// The live request log (issue 7): one line per request in the terminal.

/// A tunnel to `origin_port` through stock `ssh` with `args` (`-tt` or
/// `-T`) and `options` after `--`; returns the client and its host.
async fn logged_tunnel(
    burrow: &Burrow,
    origin_port: u16,
    args: &[&str],
    options: &[&str],
) -> (Ssh, String) {
    let fwd = format!("80:127.0.0.1:{origin_port}");
    let mut all = args.to_vec();
    all.extend(["-R", fwd.as_str()]);
    let mut remote = vec!["--", "qr=off"];
    remote.extend(options);
    let ssh = Ssh::spawn_cmd(burrow, &all, &remote);
    let host = ssh.url().await.host();
    (ssh, host)
}

/// Waits until the session printed a line with every one of `needles`,
/// and returns that line.
async fn log_line(ssh: &Ssh, needles: &[&str]) -> String {
    ssh.stdout
        .wait_for(WAIT, |text| {
            text.split("\r\n")
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_string)
        })
        .await
        .unwrap_or_else(|text| panic!("no log line with {needles:?}:\n{text}"))
}

/// Each request is one line: UTC time, method, path, coloured status,
/// size, duration, visitor IP; a long path is shortened in the middle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_has_one_coloured_line_per_request() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("log").await;
    let (ssh, host) = logged_tunnel(&burrow, origin.port, &["-tt"], &[]).await;

    let before = std::time::SystemTime::now();
    let hello = expect_status(burrow.get(&host, "/hello").await, 200, "hello").await;
    assert_eq!(hello.text().await.unwrap(), HELLO);
    let line = log_line(&ssh, &["GET", "/hello"]).await;
    assert!(line.contains("\x1b[32m200\x1b[0m"), "green 200: {line:?}");
    assert!(line.contains("127.0.0.1"), "{line:?}");
    assert!(
        line.contains(" ms") || line.contains(" s "),
        "duration: {line:?}"
    );
    let size = format!("{} B", HELLO.len());
    assert!(line.contains(&size), "size {size}: {line:?}");
    // The time is UTC, to the second.
    let stamp = humantime::format_rfc3339_seconds(before).to_string();
    let hour_minute = &stamp[11..16];
    assert!(
        line.contains(hour_minute),
        "UTC time {hour_minute}: {line:?}"
    );

    let long = format!("/start-{}-end", "x".repeat(300));
    expect_status(burrow.get(&host, &long).await, 404, "long").await;
    let line = log_line(&ssh, &["/start-", "-end"]).await;
    assert!(line.contains('…'), "shortened: {line:?}");
    assert!(!line.contains(&long), "{line:?}");
    assert!(line.contains("\x1b[33m404"), "yellow 404: {line:?}");

    let body = vec![b'a'; 3000];
    let echoed = burrow
        .https_client()
        .post(burrow.https_url(&host, "/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    let echoed = expect_status(echoed, 200, "echo").await;
    assert_eq!(echoed.bytes().await.unwrap().len(), 3000);
    log_line(&ssh, &["POST", "/echo", "200", "3.0 kB"]).await;
}

/// Characters a visitor puts in the path cannot reach the terminal raw:
/// bidi overrides and controls are shown as escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_escapes_what_visitors_send() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("log").await;
    let (ssh, host) = logged_tunnel(&burrow, origin.port, &["-tt"], &[]).await;

    // Raw UTF-8 in the request target: HTTP clients percent-encode it, an
    // attacker's hand-written request does not.
    let mut tls = burrow.tls_connect(&host, Alpn::Http1).await;
    let request = format!(
        "GET /evil\u{202e}txt.exe\u{200b} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");

    let line = log_line(&ssh, &["/evil"]).await;
    assert!(line.contains("/evil\\u{202e}txt.exe\\u{200b}"), "{line:?}");
    let text = ssh.stdout.text();
    assert!(
        !text.contains('\u{202e}') && !text.contains('\u{200b}'),
        "{text:?}"
    );
}

/// When burrow refused or failed a request, a second line says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_explains_what_burrow_refused_or_failed() {
    let burrow = Burrow::start(&[
        "--visitor-rate",
        "1/m",
        "--visitor-burst",
        "3",
        "--max-body-size",
        "200KB",
    ])
    .await;
    let origin = Origin::start("log").await;
    let (ssh, host) = logged_tunnel(&burrow, origin.port, &["-T"], &[]).await;

    // A response bigger than max-body-size, without Content-Length: cut.
    // Over HTTP/2 the stream's reset can reach the client before it has
    // taken the head, so either the request or its body fails.
    let url = burrow.https_url(&host, "/chunked?n=1000000");
    let complete = match burrow.https_client().get(url).send().await {
        Ok(cut) => cut.bytes().await.is_ok(),
        Err(_) => false,
    };
    assert!(!complete, "the body must be cut");
    let line = log_line(&ssh, &["/chunked"]).await;
    assert!(line.contains("200"), "{line:?}");
    let why = log_line(&ssh, &["↳ response cut off after", "max-body-size"]).await;
    assert!(why.contains("kB"), "{why:?}");

    // Two more spend the burst; the next is refused by the visitor limit.
    for _ in 0..2 {
        expect_status(burrow.get(&host, "/hello").await, 200, "burst").await;
    }
    expect_status(burrow.get(&host, "/hello").await, 429, "limited").await;
    log_line(&ssh, &["GET", "/hello", "429"]).await;
    log_line(&ssh, &["↳ rate limit for this visitor (visitor-rate)"]).await;
    assert!(
        !ssh.stdout.text().contains('\x1b'),
        "no colour without a terminal"
    );

    // The local app is down: the reason OpenSSH gave is passed on.
    let down = dead_port();
    let (down_ssh, down_host) = logged_tunnel(&burrow, down, &["-T"], &[]).await;
    expect_status(burrow.get(&down_host, "/x").await, 502, "app down").await;
    log_line(&down_ssh, &["GET", "/x", "502"]).await;
    log_line(
        &down_ssh,
        &["↳ your local app refused the connection", "-R 80"],
    )
    .await;
}

/// A WebSocket gets an open line and a close line with its duration and
/// the bytes it moved each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_shows_websocket_open_and_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("log").await;
    let (ssh, host) = logged_tunnel(&burrow, origin.port, &["-T"], &[]).await;

    let (mut ws, _) = burrow.ws_connect(&host, "/ws").await;
    log_line(&ssh, &["WS", "/ws", "open", "127.0.0.1"]).await;
    ws.send(Message::Binary(vec![7u8; 1000])).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(echoed.is_some());
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, ws.next()).await {}
    drop(ws);
    let line = log_line(&ssh, &["WS", "/ws", "closed after"]).await;
    // A 1000-byte frame plus framing went each way.
    assert!(line.contains("1.0 kB in, 1.0 kB out"), "{line:?}");
}

/// With `output=json` the same events are JSON lines, including the
/// reason and the marker for lines that were not shown; lines for
/// requests burrow answered itself are rate-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_as_json_and_answered_lines_rate_limited() {
    let burrow = Burrow::start(&[
        "--request-log-answered-rate",
        "1/m",
        "--request-log-answered-burst",
        "2",
    ])
    .await;
    let origin = Origin::start("log").await;
    let (ssh, host) =
        logged_tunnel(&burrow, origin.port, &["-T"], &["output=json", "auth=u:p"]).await;

    // Ten requests without the password: burrow answers each with a 401.
    for _ in 0..10 {
        expect_status(burrow.get(&host, "/secret").await, 401, "no password").await;
    }
    // The app's own answers are never rate-limited.
    let authed = burrow
        .https_client()
        .get(burrow.https_url(&host, "/hello"))
        .basic_auth("u", Some("p"))
        .send()
        .await
        .unwrap();
    let authed = expect_status(authed, 200, "password").await;
    assert_eq!(authed.text().await.unwrap(), HELLO);

    let events = ssh
        .stdout
        .wait_for(WAIT, |text| {
            let events: Vec<serde_json::Value> = text
                .split("\r\n")
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|v: &serde_json::Value| {
                    v["event"] == "request" || v["event"] == "not_shown"
                })
                .collect();
            events
                .iter()
                .any(|v| v["path"] == "/hello")
                .then_some(events)
        })
        .await
        .unwrap_or_else(|text| panic!("no request events:\n{text}"));
    let refused: Vec<_> = events.iter().filter(|v| v["status"] == 401).collect();
    assert_eq!(refused.len(), 2, "burst of 2 answered lines: {events:?}");
    let why = refused[0]["why"].as_str().unwrap();
    assert!(why.contains("password required (auth=)"), "{why}");
    assert_eq!(refused[0]["path"], "/secret");
    assert_eq!(refused[0]["method"], "GET");
    assert_eq!(refused[0]["visitor"], "127.0.0.1");
    assert!(refused[0]["time"].as_str().unwrap().ends_with('Z'));
    let hello = events.iter().find(|v| v["path"] == "/hello").unwrap();
    assert_eq!(hello["status"], 200);
    assert_eq!(hello["bytes"], HELLO.len());
    assert!(hello["why"].is_null());
    // The markers (one, or a few if the requests were slow) count the 8.
    let not_shown: u64 = events
        .iter()
        .filter(|v| v["event"] == "not_shown")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(not_shown, 8, "{events:?}");
}

/// The same requests in text: the marker line says how many were not shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_log_marks_lines_not_shown() {
    let burrow = Burrow::start(&[
        "--request-log-answered-rate",
        "1/m",
        "--request-log-answered-burst",
        "1",
    ])
    .await;
    let origin = Origin::start("log").await;
    let (ssh, host) = logged_tunnel(&burrow, origin.port, &["-T"], &["auth=u:p"]).await;
    for _ in 0..4 {
        expect_status(burrow.get(&host, "/secret").await, 401, "no password").await;
    }
    // Markers (one, or a few if the requests were slow) count the other 3.
    let markers = |text: &str| -> u64 {
        text.split("(+")
            .skip(1)
            .filter_map(|rest| rest.split_once(" not shown)"))
            .map(|(n, _)| n.parse::<u64>().unwrap())
            .sum()
    };
    ssh.stdout
        .wait_for(WAIT, |text| (markers(text) == 3).then_some(()))
        .await
        .unwrap_or_else(|text| panic!("markers must count 3:\n{text}"));
    assert_eq!(ssh.stdout.text().matches("/secret").count(), 1);
}

/// A visitor's malformed request body (an invalid chunk size) is the
/// visitor's fault: 400, not a 502 blamed on the app; it is not counted as
/// the tunnel's error, and the log line says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_body_is_the_visitors_fault() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("log").await;
    let (ssh, host) = logged_tunnel(&burrow, origin.port, &["-T"], &[]).await;

    let mut tls = burrow.tls_connect(&host, Alpn::Http1).await;
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\nzz\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("Malformed request body"), "{answer}");

    log_line(&ssh, &["POST", "/echo", "400"]).await;
    log_line(&ssh, &["↳ the visitor sent a malformed request body"]).await;
    let url = format!("http://{}/tunnels", burrow.addrs.stats);
    let tunnels = burrow
        .http_client()
        .get(&url)
        .bearer_auth(burrow.admin_token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let tunnels: serde_json::Value = serde_json::from_str(&tunnels).unwrap();
    assert_eq!(tunnels[0]["requests"], 1, "{tunnels}");
    assert_eq!(tunnels[0]["errors"], 0, "not the app's error: {tunnels}");
    let metrics = burrow
        .http_client()
        .get(format!("http://{}/metrics", burrow.addrs.stats))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("burrow_http_requests_total{code=\"4xx\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("code=\"5xx\"} 1"), "{metrics}");
}
