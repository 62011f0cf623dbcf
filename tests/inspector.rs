//! The request inspector (`ssh -R 80:… -L PORT:localhost:4040`), end to
//! end against the real binary with stock OpenSSH and a real origin: the
//! JSON API through the `-L` forward (capture, details, masking, replay,
//! isolation between connections, caps, capture off while nobody
//! inspects, the DNS-rebinding and CSRF defences), the refusal of every
//! other `direct-tcpip`, and the page itself in headless Chromium (its
//! screenshot goes to `target/screenshots/inspector.png`).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// Upper bound for anything the inspector should show.
const WAIT: Duration = Duration::from_secs(20);
/// What a masked secret shows.
const MASK: &str = "••••••";

/// burrow with the browser warning off (its page would stand in for the
/// app's answers to browsers).
async fn burrow(extra: &[&str]) -> Burrow {
    let mut args = vec!["--no-browser-warning"];
    args.extend_from_slice(extra);
    Burrow::start(&args).await
}

/// A client with its tunnel to `origin` and its inspector on a free local port.
struct Inspected {
    /// The client: its tunnel and forward live as long as it does.
    _ssh: Ssh,
    tunnel: TunnelUrl,
    port: u16,
}

async fn connect(burrow: &Burrow, origin: &Origin) -> Inspected {
    connect_with(burrow, origin, &[]).await
}

/// [`connect`], with `options` as the SSH command.
async fn connect_with(burrow: &Burrow, origin: &Origin, options: &[&str]) -> Inspected {
    let port = dead_port();
    let ssh = Ssh::spawn_cmd(
        burrow,
        &[
            "-R",
            &format!("80:127.0.0.1:{}", origin.port),
            "-L",
            &format!("127.0.0.1:{port}:localhost:4040"),
        ],
        options,
    );
    let tunnel = ssh.url().await;
    wait_listening(port, &ssh).await;
    Inspected {
        _ssh: ssh,
        tunnel,
        port,
    }
}

/// Waits until ssh listens on its `-L` port.
async fn wait_listening(port: u16, ssh: &Ssh) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "ssh never listened on {port}: {}",
            ssh.all_output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Inspected {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Opens the inspector: a connection through the forward, held open,
    /// that has had an answer (so burrow counts it as watching).
    async fn open(&self) -> TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect -L");
        let request = "GET /api/entries HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let read = async {
            while !(seen.ends_with(b"}") && seen.windows(9).any(|w| w == b"\"tunnels\"")) {
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await.expect("read inspector");
                assert!(
                    n > 0,
                    "the inspector closed: {}",
                    String::from_utf8_lossy(&seen)
                );
                seen.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("the inspector answers");
        stream
    }

    async fn get(&self, path: &str) -> Value {
        let resp = client()
            .get(self.url(path))
            .send()
            .await
            .expect("GET inspector");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
    }

    async fn entries(&self) -> Vec<Value> {
        self.get("/api/entries").await["entries"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until the list has `n` entries, and returns them.
    async fn wait_entries(&self, n: usize) -> Vec<Value> {
        poll(WAIT, &format!("{n} entries"), || async {
            let entries = self.entries().await;
            (entries.len() >= n).then_some(entries)
        })
        .await
    }

    async fn replay(&self, id: u64, edits: Value) -> reqwest::Response {
        client()
            .post(self.url(&format!("/api/entries/{id}/replay")))
            .header("x-burrow-inspector", "1")
            .header("content-type", "application/json")
            .body(edits.to_string())
            .send()
            .await
            .expect("POST replay")
    }
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header<'a>(part: &'a Value, name: &str) -> Option<&'a Value> {
    part["headers"].as_array()?.iter().find(|h| {
        h["name"]
            .as_str()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

/// A visitor's POST /echo with a JSON body and credentials.
async fn visit_echo(burrow: &Burrow, host: &str, body: &str) {
    let resp = burrow
        .https_client()
        .post(burrow.https_url(host, "/echo"))
        .header("authorization", "Bearer s3cret-token")
        .header("cookie", "session=hush")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("visitor POST");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), body);
}

/// A request shows up with its method, path, status, sizes and visitor;
/// its details have the headers as sent to the app (secrets masked until
/// asked for) and both bodies, JSON pretty-printed. Replay reaches the app
/// a second time and is a new entry marked as a replay. WebSockets get an
/// open and a close entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_details_masks_and_replays() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-e2e").await;
    let me = connect(&burrow, &origin).await;
    let _open = me.open().await;
    let body = r#"{"name":"burrow","tags":["a","b"]}"#;
    visit_echo(&burrow, &me.tunnel.host(), body).await;

    let entries = me.wait_entries(1).await;
    let entry = &entries[0];
    assert_eq!(entry["method"], "POST", "{entry}");
    assert_eq!(entry["path"], "/echo");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["kind"], "request");
    assert_eq!(entry["tunnel"], me.tunnel.name.as_str());
    assert_eq!(entry["request_bytes"], body.len());
    assert_eq!(entry["response_bytes"], body.len());
    assert_eq!(entry["visitor"], "127.0.0.1");
    assert!(entry["at_ms"].as_u64().unwrap() > 0 && entry["duration_ms"].is_u64());
    let list_text = client()
        .get(me.url("/api/entries"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !list_text.contains("s3cret") && !list_text.contains("hush"),
        "{list_text}"
    );

    let id = entry["id"].as_u64().unwrap();
    let detail = me.get(&format!("/api/entries/{id}")).await;
    let auth = header(&detail["request"], "authorization").expect("authorization header");
    assert_eq!(
        (auth["value"].as_str(), auth["secret"].as_bool()),
        (Some(MASK), Some(true))
    );
    assert_eq!(header(&detail["request"], "cookie").unwrap()["value"], MASK);
    assert!(!detail.to_string().contains("s3cret"), "masked: {detail}");
    assert!(
        header(&detail["request"], "x-forwarded-for").is_some(),
        "headers as sent to the app"
    );
    let pretty = "{\n  \"name\": \"burrow\",\n  \"tags\": [\n    \"a\",\n    \"b\"\n  ]\n}";
    assert_eq!(detail["request"]["body"]["kind"], "json");
    assert_eq!(detail["request"]["body"]["text"], pretty);
    assert_eq!(detail["response"]["body"]["text"], pretty);
    let revealed = me.get(&format!("/api/entries/{id}?reveal=1")).await;
    let auth = header(&revealed["request"], "authorization").unwrap();
    assert_eq!(auth["value"], "Bearer s3cret-token");

    // Replay: the app sees it again, and it is a new entry.
    assert_eq!(origin.hits("/echo"), 1);
    let resp = me.replay(id, json!({})).await;
    assert_eq!(resp.status(), 200);
    let replayed = json_of(resp).await["id"].as_u64().unwrap();
    assert!(replayed > id);
    assert_eq!(origin.hits("/echo"), 2, "the replay reached the app");
    let again = me.get(&format!("/api/entries/{replayed}")).await;
    assert_eq!(again["replay_of"], id);
    assert_eq!(again["status"], 200);
    assert_eq!(again["response"]["body"]["text"], pretty);
    assert_eq!(me.entries().await.len(), 2);

    // An edited replay.
    let resp = me
        .replay(id, json!({"path": "/hello", "method": "GET", "body": ""}))
        .await;
    let edited = json_of(resp).await["id"].as_u64().unwrap();
    let edited = me.get(&format!("/api/entries/{edited}")).await;
    assert_eq!(
        (edited["method"].as_str(), edited["path"].as_str()),
        (Some("GET"), Some("/hello"))
    );
    assert_eq!(edited["response"]["body"]["text"], HELLO);

    // A WebSocket: an entry for its open and one for its close.
    let (mut ws, _) = burrow.ws_connect(&me.tunnel.host(), "/ws").await;
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text("ping"))
        .await
        .unwrap();
    let _ = ws_next(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let entries = me.wait_entries(5).await;
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        &kinds[3..],
        ["websocket_open", "websocket_close"],
        "{entries:?}"
    );
    assert_eq!(entries[3]["status"], 101);

    // Clear.
    let resp = client()
        .post(me.url("/api/clear"))
        .header("x-burrow-inspector", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(me.entries().await.is_empty());
}

/// Another page may resolve its own name to 127.0.0.1 (DNS rebinding) or
/// post to the inspector from a browser (CSRF): neither gets anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_cross_site_posts_are_refused() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-csrf").await;
    let me = connect(&burrow, &origin).await;
    let _open = me.open().await;
    visit_echo(&burrow, &me.tunnel.host(), "{}").await;
    let id = me.wait_entries(1).await[0]["id"].as_u64().unwrap();

    let resp = client()
        .get(me.url("/api/entries"))
        .header("host", "evil.example:4040")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403, "a foreign Host is refused");
    let page = client().get(me.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");

    let url = me.url(&format!("/api/entries/{id}/replay"));
    let bare = client().post(&url).send().await.unwrap();
    assert_eq!(bare.status(), 403, "a POST without the page's header");
    let cross = client()
        .post(&url)
        .header("x-burrow-inspector", "1")
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403, "a POST from another origin");
    let clear = client().post(me.url("/api/clear")).send().await.unwrap();
    assert_eq!(clear.status(), 403);
    assert_eq!(origin.hits("/echo"), 1, "nothing was replayed");
    assert_eq!(me.entries().await.len(), 1, "nothing was cleared");
}

/// One connection's inspector never sees another connection's requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inspector_sees_only_its_own_connection() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-iso").await;
    let alice = connect(&burrow, &origin).await;
    let bob = connect(&burrow, &origin).await;
    assert_ne!(alice.tunnel.name, bob.tunnel.name);
    let _a = alice.open().await;
    let _b = bob.open().await;
    visit_echo(&burrow, &alice.tunnel.host(), r#"{"for":"alice"}"#).await;
    let id = alice.wait_entries(1).await[0]["id"].as_u64().unwrap();

    assert!(
        bob.entries().await.is_empty(),
        "bob sees nothing of alice's"
    );
    let resp = client()
        .get(bob.url(&format!("/api/entries/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = bob.replay(id, json!({})).await;
    assert_eq!(resp.status(), 404);
    assert_eq!(origin.hits("/echo"), 1);
    let tunnels = bob.get("/api/entries").await["tunnels"].clone();
    assert_eq!(tunnels, json!([bob.tunnel.name]));
}

/// What burrow answers itself (here the tunnel's Basic auth) is an entry
/// too, marked as burrow's, with the visitor's request as it arrived and
/// burrow's page as the response; the app never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burrows_own_answers_are_captured_and_marked() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-own").await;
    let me = connect_with(&burrow, &origin, &["auth=ann:s3cr3t"]).await;
    let _open = me.open().await;
    let url = burrow.https_url(&me.tunnel.host(), "/hello");
    let resp = burrow.https_client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = burrow
        .https_client()
        .get(&url)
        .basic_auth("ann", Some("s3cr3t"));
    assert_eq!(resp.send().await.unwrap().status(), 200);

    let entries = me.wait_entries(2).await;
    let own = entries
        .iter()
        .find(|e| e["status"] == 401)
        .expect("the 401");
    let app = entries
        .iter()
        .find(|e| e["status"] == 200)
        .expect("the 200");
    assert_eq!(own["by_burrow"], true, "{own}");
    assert_eq!(app["by_burrow"], false, "{app}");
    assert_eq!(
        (&own["method"], &own["path"]),
        (&json!("GET"), &json!("/hello"))
    );
    assert_eq!(
        origin.hits("/hello"),
        1,
        "only the authorised request reached the app"
    );

    let detail = me.get(&format!("/api/entries/{}", own["id"])).await;
    assert!(
        header(&detail["request"], "x-forwarded-for").is_none()
            && header(&detail["request"], "accept").is_some(),
        "the request as the visitor sent it: {detail}"
    );
    assert!(
        header(&detail["response"], "www-authenticate").is_some(),
        "burrow's answer: {detail}"
    );
    let page = detail["response"]["body"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(!page.is_empty(), "burrow's page is kept: {detail}");
}

/// Every other `direct-tcpip` is still refused: other ports, other hosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_direct_tcpip_is_refused() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-refuse").await;
    for target in [
        "localhost:22".to_string(),
        format!("127.0.0.1:{}", origin.port),
        format!("localhost:{}", burrow.ssh_port()),
        "localhost:4041".to_string(),
        "example.com:4040".to_string(),
        "10.0.0.1:4040".to_string(),
    ] {
        let mut ssh = SshSpec {
            port: burrow.ssh_port(),
            args: &["-W", &target],
            stdin: SshStdin::Null,
            ..SshSpec::default()
        }
        .spawn();
        let status = ssh.wait_exit(WAIT).await.expect("ssh -W exits");
        assert!(!status.success(), "-W {target}: {}", ssh.all_output());
        let stderr = ssh.stderr.text();
        assert!(
            stderr.contains("administratively prohibited"),
            "-W {target}: {stderr}"
        );
    }
    assert_eq!(origin.hits("/"), 0);

    // And through -L: the connection is closed without an answer.
    let port = dead_port();
    let ssh = Ssh::spawn(
        &burrow,
        &[
            "-N",
            "-L",
            &format!("127.0.0.1:{port}:127.0.0.1:{}", origin.port),
        ],
    );
    wait_listening(port, &ssh).await;
    let resp = client()
        .get(format!("http://127.0.0.1:{port}/hello"))
        .send()
        .await;
    assert!(
        resp.is_err(),
        "the forward to the origin was refused: {resp:?}"
    );
    assert_eq!(origin.hits("/hello"), 0);
}

/// With small caps, the oldest entries go first: by count, then by bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_entries_are_dropped_at_the_caps() {
    let burrow = burrow(&[
        "--inspect-requests-per-tunnel",
        "3",
        "--inspect-bytes-per-tunnel",
        "20KiB",
    ])
    .await;
    let origin = Origin::start("inspect-caps").await;
    let me = connect(&burrow, &origin).await;
    let _open = me.open().await;
    let host = me.tunnel.host();
    for n in 1..=5 {
        let resp = burrow.get(&host, &format!("/hello?n={n}")).await;
        assert_eq!(resp.status(), 200);
        me.wait_entries(n.min(3)).await;
    }
    let paths = |entries: &[Value]| -> Vec<String> {
        entries
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_string())
            .collect()
    };
    let entries = poll(WAIT, "the three newest", || async {
        let entries = me.entries().await;
        (entries.last().map(|e| e["path"].clone()) == Some(json!("/hello?n=5"))).then_some(entries)
    })
    .await;
    assert_eq!(paths(&entries), ["/hello?n=3", "/hello?n=4", "/hello?n=5"]);

    // Three responses of 8000 bytes: two fit in 20 KiB, not three. An
    // entry is kept when its response has ended, which can be just after
    // the client has read the last byte: each one is waited for before the
    // next request, so that "oldest" is the order they were sent in.
    let mut entries = Vec::new();
    for n in 1..=3 {
        let path = format!("/bytes?n=8000&i={n}");
        let resp = burrow.get(&host, &path).await;
        assert_eq!(resp.bytes().await.unwrap().len(), 8000);
        entries = poll(WAIT, &format!("the entry of {path}"), || async {
            let entries = me.entries().await;
            (entries.last().map(|e| e["path"].clone()) == Some(json!(path))).then_some(entries)
        })
        .await;
    }
    assert_eq!(paths(&entries), ["/bytes?n=8000&i=2", "/bytes?n=8000&i=3"]);
    let detail = me.get(&format!("/api/entries/{}", entries[1]["id"])).await;
    assert_eq!(detail["response"]["body"]["kind"], "binary");
    assert_eq!(detail["response"]["body"]["captured"], 8000);
}

/// Nothing is captured while no inspector is open: a request before it
/// opens is not in the list, one after is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_captured_while_no_inspector_is_open() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-off").await;
    let me = connect(&burrow, &origin).await;
    let host = me.tunnel.host();
    // wait_listening's probe connections closed again: nobody watches.
    burrow.wait_stat("inspector_connections", 0, WAIT).await;
    assert_eq!(burrow.get(&host, "/hello?before").await.status(), 200);
    let _open = me.open().await;
    assert_eq!(burrow.get(&host, "/hello?after").await.status(), 200);
    let entries = me.wait_entries(1).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["path"], "/hello?after");
}

/// With `inspect=on`, requests are kept even before an inspector opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_on_keeps_requests_before_the_inspector_opens() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-optin").await;
    let port = dead_port();
    let ssh = Ssh::spawn_cmd(
        &burrow,
        &[
            "-R",
            &format!("80:127.0.0.1:{}", origin.port),
            "-L",
            &format!("127.0.0.1:{port}:localhost:4040"),
        ],
        &["--", "inspect=on"],
    );
    let tunnel = ssh.url().await;
    ssh.stdout
        .wait_contains("requests kept for the inspector", WAIT)
        .await
        .unwrap_or_else(|seen| panic!("the option is not in the banner: {seen}"));
    burrow.wait_stat("inspector_connections", 0, WAIT).await;
    assert_eq!(
        burrow.get(&tunnel.host(), "/hello?early").await.status(),
        200
    );
    wait_listening(port, &ssh).await;
    let me = Inspected {
        _ssh: ssh,
        tunnel,
        port,
    };
    let entries = me.wait_entries(1).await;
    assert_eq!(entries[0]["path"], "/hello?early", "{entries:?}");
}

/// The banner names the flag, and so does the `output=json` tunnel event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_banner_names_the_inspector() {
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-banner").await;
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &forward]);
    ssh.url().await;
    ssh.stdout
        .wait_contains("-L 4040:localhost:4040", WAIT)
        .await
        .unwrap_or_else(|seen| panic!("no inspector hint in the banner: {seen}"));
    let json = Ssh::spawn_cmd(&burrow, &["-R", &forward], &["--", "output=json"]);
    let event = json
        .stdout
        .wait_for(WAIT, |text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                .find(|e| e["event"] == "tunnel")
        })
        .await
        .unwrap_or_else(|seen| panic!("no tunnel event: {seen}"));
    assert_eq!(event["inspector"], "http://localhost:4040", "{event}");
}

/// What the page shows, read from the DOM.
const READ_PAGE: &str = r##"
const text = (id) => document.getElementById(id).textContent;
const rows = Array.from(document.querySelectorAll('#entries tbody tr'));
return {
  live: text('live'),
  rows: rows.map((tr) => ({
    id: Number(tr.dataset.id),
    method: tr.querySelector('.method').textContent,
    path: tr.querySelector('.path').textContent,
    status: tr.querySelector('.status').textContent,
  })),
  detailShown: !document.getElementById('detail').hidden,
  title: text('detail-title'),
  reqHeaders: text('req-headers'),
  reqBody: text('req-body'),
  respBody: text('resp-body'),
  images: document.querySelectorAll('img').length,
  scripts: document.querySelectorAll('script').length,
  injected: document.querySelectorAll('#entries b, #detail b, #detail img, #entries img').length,
  xss: window.__xss === undefined ? null : String(window.__xss),
};
"##;

/// Polls the page until `ready` holds for what it shows.
async fn wait_page(c: &fantoccini::Client, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = browser::step("read the page", c.execute(READ_PAGE, vec![])).await;
        if ready(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &fantoccini::Client, selector: &str) {
    let script = "const el = document.querySelector(arguments[0]); if (!el) return false; el.click(); return true;";
    let clicked = browser::step("click", c.execute(script, vec![json!(selector)])).await;
    assert_eq!(clicked, json!(true), "nothing to click at {selector}");
}

fn row_with<'a>(seen: &'a Value, path: &str) -> Option<&'a Value> {
    seen["rows"]
        .as_array()?
        .iter()
        .find(|r| r["path"].as_str().is_some_and(|p| p.starts_with(path)))
}

/// The page in Chromium through the `-L` forward: a visitor's request
/// appears live, its details show headers (the credentials masked) and
/// body, Replay reaches the app again and adds an entry, and markup a
/// visitor sent in the path, a header and the body stays text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_requests_live_and_replays() {
    let Some(bins) = browser::browser_or_skip("chromium_shows_requests_live_and_replays") else {
        return;
    };
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-browser").await;
    let me = connect(&burrow, &origin).await;
    let browser = browser::Browser::start(&bins).await;
    let c = browser.client().clone();
    let page = format!("http://localhost:{}/", me.port);
    browser::step("open the inspector", c.goto(&page)).await;
    wait_page(&c, "live", |v| v["live"] == "live").await;

    // Live: no reload.
    let body = r#"{"hello":"inspector"}"#;
    visit_echo(&burrow, &me.tunnel.host(), body).await;
    let seen = wait_page(&c, "the request", |v| row_with(v, "/echo").is_some()).await;
    let row = row_with(&seen, "/echo").unwrap();
    assert_eq!(
        (row["method"].as_str(), row["status"].as_str()),
        (Some("POST"), Some("200"))
    );
    let id = row["id"].as_u64().unwrap();

    click(&c, &format!("#entries tbody tr[data-id='{id}']")).await;
    let seen = wait_page(&c, "the details", |v| {
        v["detailShown"] == true
            && v["reqBody"]
                .as_str()
                .is_some_and(|b| b.contains("\"hello\": \"inspector\""))
    })
    .await;
    let headers = seen["reqHeaders"].as_str().unwrap();
    assert!(
        headers.contains("authorization") && headers.contains(MASK),
        "{headers}"
    );
    assert!(
        !headers.contains("s3cret"),
        "masked until clicked: {headers}"
    );
    assert!(
        seen["respBody"].as_str().unwrap().contains("\"inspector\""),
        "{seen}"
    );
    click(&c, "#req-headers button.secret").await;
    wait_page(&c, "the secret revealed", |v| {
        v["reqHeaders"]
            .as_str()
            .is_some_and(|h| h.contains("Bearer s3cret-token"))
    })
    .await;

    // Replay.
    click(&c, "#replay").await;
    poll(WAIT, "the replay at the origin", || async {
        (origin.hits("/echo") == 2).then_some(())
    })
    .await;
    wait_page(&c, "the replay's entry", |v| {
        v["rows"].as_array().is_some_and(|rows| {
            rows.iter()
                .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/echo")))
                .count()
                == 2
        }) && v["detailShown"] == true
            && v["title"] == "POST /echo"
    })
    .await;

    // Filters: by path, by status.
    let set_filter = "document.getElementById(arguments[0]).value = arguments[1]; \
        document.getElementById(arguments[0]).dispatchEvent(new Event(arguments[2])); return true;";
    assert_eq!(
        burrow.get(&me.tunnel.host(), "/missing").await.status(),
        404
    );
    wait_page(&c, "the 404", |v| row_with(v, "/missing").is_some()).await;
    let args = |id: &str, value: &str, event: &str| vec![json!(id), json!(value), json!(event)];
    browser::step(
        "filter by status",
        c.execute(set_filter, args("filter-status", "4", "change")),
    )
    .await;
    let seen = wait_page(&c, "only the 404", |v| {
        v["rows"].as_array().is_some_and(|r| r.len() == 1)
    })
    .await;
    assert!(row_with(&seen, "/missing").is_some(), "{seen}");
    browser::step(
        "clear the status filter",
        c.execute(set_filter, args("filter-status", "", "change")),
    )
    .await;
    browser::step(
        "filter by path",
        c.execute(set_filter, args("filter-path", "/echo", "input")),
    )
    .await;
    let seen = wait_page(&c, "only /echo", |v| {
        v["rows"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert!(row_with(&seen, "/missing").is_none(), "{seen}");
    browser::step(
        "clear the path filter",
        c.execute(set_filter, args("filter-path", "", "input")),
    )
    .await;

    // Markup from a visitor stays text.
    let evil_body = r#"<img src=x onerror="window.__xss=1;alert(1)"><b>bold</b>"#;
    let resp = burrow
        .https_client()
        .post(burrow.https_url(&me.tunnel.host(), "/<script>alert(1)</script>"))
        .header("x-evil", "<script>window.__xss=2</script>")
        .body(evil_body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let encoded = "/%3Cscript%3Ealert(1)%3C/script%3E";
    let seen = wait_page(&c, "the markup request", |v| row_with(v, encoded).is_some()).await;
    let id = row_with(&seen, encoded).unwrap()["id"].as_u64().unwrap();
    click(&c, &format!("#entries tbody tr[data-id='{id}']")).await;
    let seen = wait_page(&c, "the markup details", |v| {
        v["reqBody"].as_str().is_some_and(|b| b.contains(evil_body))
    })
    .await;
    assert!(
        seen["reqHeaders"]
            .as_str()
            .unwrap()
            .contains("<script>window.__xss=2</script>"),
        "{seen}"
    );
    assert_eq!(seen["title"], format!("POST {encoded}"));
    assert_eq!(seen["images"], 0, "no element from the body: {seen}");
    assert_eq!(seen["injected"], 0, "{seen}");
    assert_eq!(seen["scripts"], 1, "only the page's own script: {seen}");
    assert_eq!(seen["xss"], Value::Null, "no visitor script ran");
    assert!(c.get_alert_text().await.is_err(), "no alert is open");

    let png = browser::step("screenshot", c.screenshot()).await;
    let path = browser::screenshot_path("inspector.png");
    std::fs::create_dir_all(path.parent().unwrap()).expect("create screenshot dir");
    std::fs::write(&path, &png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
    browser::check_screenshot(&png);
    browser.close().await;
}

/// The inspector's channel is read through a spool like every channel: a
/// client that pipelines requests into it and never reads the answers
/// fills burrow's buffers, not russh's queue, so the tunnels of the same
/// SSH connection keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_inspector_client_does_not_stall_its_tunnels() {
    use tokio::io::AsyncWriteExt;
    let burrow = burrow(&[]).await;
    let origin = Origin::start("inspect-stall").await;
    let inspected = connect(&burrow, &origin).await;
    let mut stalled = TcpStream::connect(("127.0.0.1", inspected.port))
        .await
        .expect("connect -L");
    // 8 MiB of pipelined requests, each answered by the whole page; the
    // answers are never read, so the inspector soon cannot write them and
    // stops reading what the client keeps sending.
    let requests = "GET / HTTP/1.1\r\nHost: localhost:4040\r\n\r\n".repeat(200_000);
    let writer = tokio::spawn(async move {
        let _ = stalled.write_all(requests.as_bytes()).await;
        stalled // held open, unread, until the test ends
    });
    // Let the flood reach burrow: the page's answers pile up unread.
    let flooded = Instant::now() + Duration::from_secs(3);
    while !writer.is_finished() && Instant::now() < flooded {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..3 {
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            visit_echo(&burrow, &inspected.tunnel.host(), &format!("{{\"n\":{i}}}")),
        )
        .await;
        assert!(
            answered.is_ok(),
            "request {i} through the tunnel stalled behind the unread inspector"
        );
    }
    drop(writer);
}
