//! The admin API is the operator's alone (issue 30 §3): the admin token
//! burrow writes at first start (0600, kept across restarts) or reads from
//! `--admin-token-file`, the counts that stay open unless
//! `--metrics-token-file` closes them, the dashboard's sign-in and cookie,
//! the Unix socket (`--stats-addr unix:…`, mode 0660), and the brake on
//! wrong tokens (429, one log line a minute).

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long to wait for something burrow logs or does.
const WAIT: Duration = Duration::from_secs(15);

/// `METHOD path` on the stats listener with `token` (none: no header).
async fn call(
    burrow: &Burrow,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let url = format!("http://{}{path}", burrow.addrs.stats);
    let mut req = burrow.http_client().request(method, &url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// The status and the JSON `error` of an answer.
async fn status_and_error(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let error = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(text);
    (status, error)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A token file written by the test, 0600.
fn token_file(dir: &Path, name: &str, token: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Without the token, the lists and every change are refused with 401
/// saying what is needed; a wrong token is refused as wrong; the right one
/// gets what it asked for. The counts stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_admin_token() {
    let burrow = Burrow::start(&[]).await;
    let token = burrow.admin_token();
    assert_eq!(token.len(), 64, "a generated token: {token:?}");

    for (method, path) in [
        (Method::GET, "/tunnels"),
        (Method::GET, "/bans"),
        (Method::GET, "/?subdomains=true"),
        (Method::DELETE, "/tunnels/some-name"),
        (Method::DELETE, "/bans/127.0.0.9"),
        (Method::GET, "/no-such-endpoint"),
    ] {
        let resp = call(&burrow, method.clone(), path, None).await;
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (status, error) = status_and_error(resp).await;
        assert_eq!(status, 401, "{method} {path} without a token: {error}");
        assert!(
            error.contains("needs the admin token") && error.contains("Authorization: Bearer"),
            "{method} {path}: the refusal says what is needed: {error}"
        );
        assert!(
            challenge.starts_with("Bearer"),
            "{method} {path}: {challenge:?}"
        );

        let wrong = call(&burrow, method.clone(), path, Some("not-the-admin-token")).await;
        let (status, error) = status_and_error(wrong).await;
        assert_eq!(status, 401, "{method} {path} with a wrong token: {error}");
        assert!(
            error.contains("the token is wrong"),
            "{method} {path}: {error}"
        );
    }
    let ban = burrow
        .admin(Method::POST, "/bans")
        .header("content-type", "application/json")
        .body(r#"{"ip": "127.0.0.9", "duration_secs": 60}"#);
    assert_eq!(ban.send().await.unwrap().status(), 201, "POST /bans");
    let unauthorised = burrow
        .http_client()
        .post(format!("http://{}/bans", burrow.addrs.stats))
        .header("content-type", "application/json")
        .body(r#"{"ip": "127.0.0.10"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised.status(), 401, "POST /bans without a token");
    let bans: Value = call(&burrow, Method::GET, "/bans", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    let ips: Vec<&str> = bans
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["ip"].as_str())
        .collect();
    assert_eq!(ips, ["127.0.0.9"], "only the authorised ban: {bans}");
    let resp = call(&burrow, Method::GET, "/tunnels", Some(&token)).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.unwrap().is_array());
    let resp = call(&burrow, Method::DELETE, "/bans/127.0.0.9", Some(&token)).await;
    assert_eq!(resp.status(), 200, "DELETE /bans with the token");

    // The counts stay open on loopback, as before.
    let stats = call(&burrow, Method::GET, "/", None).await;
    assert_eq!(stats.status(), 200);
    let stats: Value = stats.json().await.unwrap();
    assert!(stats["active_tunnels"].is_u64() && stats.get("subdomains").is_none());
    assert_eq!(
        call(&burrow, Method::GET, "/metrics", None).await.status(),
        200
    );
    assert_eq!(
        call(&burrow, Method::GET, "/history", None).await.status(),
        200
    );
    // The Host check still comes first.
    let resp = burrow
        .http_client()
        .get(format!("http://{}/tunnels", burrow.addrs.stats))
        .bearer_auth(&token)
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 421);
}

/// The dashboard asks for the token (a form, 401), its sign-in takes it as
/// JSON and sets an HttpOnly, SameSite=Strict cookie that is not the token;
/// the cookie reads the lists but changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_sign_in_sets_a_read_only_cookie() {
    let burrow = Burrow::start(&[]).await;
    let token = burrow.admin_token();
    let page = call(&burrow, Method::GET, "/dashboard", None).await;
    assert_eq!(page.status(), 401);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        html.contains("id=\"sign-in\"") && html.contains("/dashboard/login.js"),
        "{html}"
    );
    assert_eq!(
        call(&burrow, Method::GET, "/dashboard/login.js", None)
            .await
            .status(),
        200
    );

    let url = format!("http://{}/dashboard/login", burrow.addrs.stats);
    let sign_in = |content_type: &'static str, body: String| {
        burrow
            .http_client()
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let plain = sign_in("text/plain", format!(r#"{{"token": "{token}"}}"#))
        .await
        .unwrap();
    assert_eq!(plain.status(), 415, "a cross-site form cannot sign in");
    assert!(plain.headers().get("set-cookie").is_none());
    let wrong = sign_in("application/json", r#"{"token": "nope-nope-nope"}"#.into())
        .await
        .unwrap();
    assert!(wrong.headers().get("set-cookie").is_none());
    let (status, error) = status_and_error(wrong).await;
    assert_eq!(
        (status, error.contains("the token is wrong")),
        (401, true),
        "{error}"
    );
    let right = sign_in("application/json", format!(r#"{{"token": "{token}"}}"#))
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie:?}");
    }
    assert!(
        !cookie.contains(&token),
        "the cookie is not the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    assert!(pair.starts_with("burrow_admin="), "{pair}");

    let with_cookie = |method: Method, path: &str| {
        burrow
            .http_client()
            .request(method, format!("http://{}{path}", burrow.addrs.stats))
            .header("cookie", &pair)
            .send()
    };
    let page = with_cookie(Method::GET, "/dashboard").await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"tunnels\""));
    assert_eq!(
        with_cookie(Method::GET, "/tunnels").await.unwrap().status(),
        200
    );
    assert_eq!(
        with_cookie(Method::GET, "/bans").await.unwrap().status(),
        200
    );
    let delete = with_cookie(Method::DELETE, "/bans/127.0.0.9")
        .await
        .unwrap();
    assert_eq!(delete.status(), 401, "the cookie changes nothing");
    let forged = burrow
        .http_client()
        .get(format!("http://{}/tunnels", burrow.addrs.stats))
        .header("cookie", format!("burrow_admin={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401, "a made-up cookie");
}

/// At first start the token is written to the state directory with mode
/// 0600; a restart on the same directory keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_0600_and_kept_across_restarts() {
    let state = TempDir::new("burrow-admin-state");
    let state_dir = state.path().join("state");
    let flag = state_dir.display().to_string();
    let first = Burrow::start(&["--state-dir", &flag]).await;
    let file = state_dir.join("admin_token");
    assert_eq!(first.admin_token_file, file);
    assert_eq!(mode(&file), 0o600, "{}", file.display());
    let token = first.admin_token();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token:?}"
    );
    drop(first);

    let second = Burrow::start(&["--state-dir", &flag]).await;
    assert_eq!(
        second.admin_token(),
        token,
        "the same token after a restart"
    );
    assert_eq!(mode(&file), 0o600);
    let resp = call(&second, Method::GET, "/tunnels", Some(&token)).await;
    assert_eq!(resp.status(), 200, "the old token works on the new process");
}

/// `--admin-token-file` (and its variable) names another file: an existing
/// one is used as it is, a missing one is written (0600); a short token is
/// refused at start, naming the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_file_flag_and_variable() {
    let dir = TempDir::new("burrow-admin-file");
    let chosen = "operator-chosen-token-0123456789";
    let path = token_file(dir.path(), "chosen", chosen);
    let burrow = Burrow::start(&["--admin-token-file", &path]).await;
    assert_eq!(burrow.admin_token(), chosen);
    assert_eq!(
        call(&burrow, Method::GET, "/tunnels", Some(chosen))
            .await
            .status(),
        200
    );
    assert!(
        !burrow.dir.path().join("state/admin_token").exists(),
        "no second token in the state directory"
    );
    drop(burrow);

    let fresh = dir.path().join("fresh_token");
    let fresh_text = fresh.display().to_string();
    let burrow = Burrow::start_with_env(&[], &[("ADMIN_TOKEN_FILE", &fresh_text)]).await;
    assert_eq!(burrow.admin_token_file, fresh);
    assert_eq!(mode(&fresh), 0o600);
    let token = burrow.admin_token();
    assert_eq!(
        call(&burrow, Method::GET, "/bans", Some(&token))
            .await
            .status(),
        200
    );
    drop(burrow);

    let short = token_file(dir.path(), "short", "tooshort");
    let cli = TempDir::new("burrow-admin-cli");
    let mut args = cli_base_args(cli.path());
    args.extend(["--admin-token-file".to_string(), short]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_burrow_expect_exit(&args).await;
    assert!(!run.status.success(), "a short token must be refused");
    assert!(
        run.stderr.contains("--admin-token-file") && run.stderr.contains("shorter than"),
        "{:?}",
        run.stderr
    );
    assert!(!run.stdout.contains("burrow ready:"));
}

/// `--metrics-token-file` closes the counts: `/`, `/metrics` and
/// `/history` need that token or the admin's; it opens nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_closes_the_counts() {
    let dir = TempDir::new("burrow-metrics-token");
    let metrics = "metrics-scraper-token-42";
    let path = token_file(dir.path(), "metrics", metrics);
    let burrow = Burrow::start(&["--metrics-token-file", &path]).await;
    let admin = burrow.admin_token();
    for path in ["/", "/metrics", "/history"] {
        let (status, error) = status_and_error(call(&burrow, Method::GET, path, None).await).await;
        assert_eq!(status, 401, "{path} without a token");
        assert!(error.contains("metrics token"), "{path}: {error}");
        let (status, _) =
            status_and_error(call(&burrow, Method::GET, path, Some("wrong-wrong-wrong")).await)
                .await;
        assert_eq!(status, 401, "{path} with a wrong token");
        assert_eq!(
            call(&burrow, Method::GET, path, Some(metrics))
                .await
                .status(),
            200,
            "{path}"
        );
        assert_eq!(
            call(&burrow, Method::GET, path, Some(&admin))
                .await
                .status(),
            200,
            "{path}"
        );
    }
    let text = call(&burrow, Method::GET, "/metrics", Some(metrics))
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains("burrow_"), "{text}");
    let resp = call(&burrow, Method::GET, "/tunnels", Some(metrics)).await;
    assert_eq!(resp.status(), 401, "the metrics token is not the admin's");
}

/// `--metrics-token` (the token itself, for the env variable
/// `METRICS_TOKEN`) closes the counts the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_given_directly_closes_the_counts() {
    let metrics = "metrics-scraper-token-43";
    let burrow = Burrow::start(&["--metrics-token", metrics]).await;
    let resp = call(&burrow, Method::GET, "/metrics", None).await;
    assert_eq!(resp.status(), 401);
    let resp = call(&burrow, Method::GET, "/metrics", Some(metrics)).await;
    assert_eq!(resp.status(), 200);
}

/// One HTTP/1.1 exchange over the Unix socket: status and body.
async fn over_socket(path: &Path, request: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(path)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = tokio::time::timeout(WAIT, exchange)
        .await
        .expect("the socket answered in time");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (status, body.unwrap_or_default())
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

/// `--stats-addr unix:PATH`: a socket with mode 0660 serving the same
/// endpoints under the same rules, removed at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_on_a_unix_socket() {
    let dir = TempDir::new("burrow-admin-sock");
    let socket = dir.path().join("admin.sock");
    // A socket left by an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let run = TempDir::new("burrow-admin-sock-run");
    let mut args: Vec<String> = ["--ssh-addr", "--http-addr", "--https-addr"]
        .iter()
        .flat_map(|flag| [flag.to_string(), "127.0.0.1:0".to_string()])
        .collect();
    args.extend([
        "--stats-addr".to_string(),
        format!("unix:{}", socket.display()),
        "--host-key".to_string(),
        run.path().join("host_key").display().to_string(),
    ]);
    let mut burrow = Burrow::launch(run, TestCert::generate(), &args, &[]).await;
    assert_eq!(burrow.addrs.stats_unix.as_deref(), Some(socket.as_path()));
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let (status, body) = over_socket(&socket, &get("/", None)).await;
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["active_tunnels"], 0, "{stats}");
    let (status, body) = over_socket(&socket, &get("/tunnels", None)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("needs the admin token"), "{body}");
    let token = burrow.admin_token();
    let (status, body) = over_socket(&socket, &get("/tunnels", Some(&token))).await;
    assert_eq!((status, body.trim()), (200, "[]"));
    let foreign = "GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(
        over_socket(&socket, foreign).await.0,
        421,
        "the Host check stays"
    );

    burrow.signal("TERM");
    assert!(burrow.wait_exit(WAIT).await.is_some(), "burrow exits");
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

/// Wrong tokens spend `--admin-token-failures`; then every request with a
/// token, even the right one, is answered 429 with Retry-After without
/// being compared (counted as a refusal); wrong tokens are logged once a
/// minute, not once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_rate_limited_and_logged_once() {
    // Two a minute: two wrong tokens at once, then one every 30 s.
    let mut burrow = Burrow::start(&["--admin-token-failures", "120/h"]).await;
    let token = burrow.admin_token();
    for i in 0..2 {
        let resp = call(
            &burrow,
            Method::GET,
            "/tunnels",
            Some(&format!("guess-{i}")),
        )
        .await;
        assert_eq!(resp.status(), 401, "wrong token {i}");
    }
    let locked = call(&burrow, Method::GET, "/tunnels", Some("guess-2")).await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    let (_, error) = status_and_error(locked).await;
    assert!(error.contains("admin-token-failures"), "{error}");
    let right = call(&burrow, Method::GET, "/tunnels", Some(&token)).await;
    assert_eq!(
        right.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "not even compared while braked"
    );
    // Without a token nothing is guessed: the plain 401, and the counts.
    assert_eq!(
        call(&burrow, Method::GET, "/tunnels", None).await.status(),
        401
    );
    assert_eq!(call(&burrow, Method::GET, "/", None).await.status(), 200);
    let metrics = call(&burrow, Method::GET, "/metrics", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("limit=\"admin-token-failures\"") && !l.ends_with(" 0")),
        "counted as a refusal: {metrics}"
    );

    let line = "refused a wrong admin or metrics token";
    burrow
        .stderr
        .wait_contains(line, WAIT)
        .await
        .expect("the wrong tokens are logged");
    burrow.signal("TERM");
    assert!(burrow.wait_exit(WAIT).await.is_some(), "burrow exits");
    let deadline = Instant::now() + WAIT;
    while !burrow.stderr.is_closed() {
        assert!(Instant::now() < deadline, "stderr never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = burrow.stderr.text();
    assert_eq!(logs.matches(line).count(), 1, "one line a minute: {logs}");
}
