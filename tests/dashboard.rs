//! The live dashboard on the stats listener: the page in headless Chromium
//! with real traffic (a tunnel through the real `ssh`, a real origin that is
//! then stopped so requests fail with 502, a ban through the admin API), the
//! `/history` JSON it draws its charts from, and its refusals (foreign Host
//! names, methods other than GET).
//!
//! The browser test needs `chromium` and `chromedriver` like
//! tests/browser.rs (see tests/common/browser.rs), and writes its
//! screenshots to `target/screenshots/dashboard.png` and
//! `dashboard-narrow.png` for people to look at.

#[path = "common/browser.rs"]
mod browser;
#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;

use std::time::{Duration, Instant};

use browser::*;
use common::*;
use serde_json::{json, Value};

/// How long the page may take to show what the test did (it polls every
/// 3 s).
const PAGE_WAIT: Duration = Duration::from_secs(30);
/// A narrow phone screen.
const NARROW: (u32, u32) = (390, 844);
/// The IP the test bans, and a reason with markup that must show as text.
const BANNED_IP: &str = "203.0.113.77";
const SVG_NS: &str = "http://www.w3.org/2000/svg";
const BAN_REASON: &str = "dashboard test <b id=\"injected\">bold</b>";

fn stats_url(burrow: &Burrow, path: &str) -> String {
    format!("http://{}{path}", burrow.addrs.stats)
}

async fn get_json(burrow: &Burrow, path: &str) -> Value {
    let url = stats_url(burrow, path);
    let resp = burrow
        .http_client()
        .get(&url)
        .bearer_auth(burrow.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: JSON {text:?}: {e}"))
}

/// Requests and errors in the window `/history` returns (every completed
/// bucket plus the one in progress).
fn history_sums(history: &Value) -> (u64, u64) {
    let samples = history["samples"].as_array().expect("samples array");
    let all = samples.iter().chain(std::iter::once(&history["current"]));
    all.fold((0, 0), |(r, e), s| {
        (
            r + s["requests"].as_u64().expect("requests"),
            e + s["errors"].as_u64().expect("errors"),
        )
    })
}

/// `n` requests for `/hello` through the tunnel, each answered `want`.
async fn visit(burrow: &Burrow, host: &str, n: usize, want: u16) {
    for i in 0..n {
        let resp = burrow.get(host, "/hello").await;
        assert_eq!(resp.status().as_u16(), want, "request {i} to {host}");
    }
}

/// burrow, an origin and `ssh -R 80:127.0.0.1:ORIGIN`.
async fn tunnel_setup(burrow: &Burrow) -> (Origin, Ssh, TunnelUrl) {
    let origin = Origin::start("dashboard").await;
    let ssh = Ssh::spawn(burrow, &["-R", &format!("80:127.0.0.1:{}", origin.port)]);
    let tunnel = ssh.url().await;
    (origin, ssh, tunnel)
}

/// `/history` moves with the traffic: successes count as requests, 502s
/// (the origin stopped) as requests and errors, in the window and in the
/// totals; the buckets are bounded and well-formed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_counts_requests_and_errors() {
    let burrow = Burrow::start(&[]).await;
    let (origin, _ssh, tunnel) = tunnel_setup(&burrow).await;
    let before = get_json(&burrow, "/history").await;
    assert_eq!(before["interval_secs"], 10, "{before}");
    assert_eq!(before["capacity"], 360, "{before}");

    visit(&burrow, &tunnel.host(), 4, 200).await;
    drop(origin);
    visit(&burrow, &tunnel.host(), 2, 502).await;

    let after = get_json(&burrow, "/history").await;
    let (r0, e0) = history_sums(&before);
    let (r1, e1) = history_sums(&after);
    assert_eq!(
        (r1 - r0, e1 - e0),
        (6, 2),
        "requests and errors in the window: {after}"
    );
    let total = |h: &Value, k: &str| h[k].as_u64().expect(k);
    assert_eq!(
        total(&after, "total_requests") - total(&before, "total_requests"),
        6
    );
    assert_eq!(
        total(&after, "total_errors") - total(&before, "total_errors"),
        2
    );

    let samples = after["samples"].as_array().unwrap();
    assert!(samples.len() <= 360, "the ring is bounded");
    let mut end = 0;
    for s in samples.iter().chain(std::iter::once(&after["current"])) {
        let (start, stop) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
        assert!(start >= end && stop >= start, "buckets in order: {after}");
        end = stop;
    }
    assert_eq!(
        after["current"]["end"], after["now"],
        "the bucket in progress ends now"
    );

    let tunnels = get_json(&burrow, "/tunnels").await;
    assert_eq!(tunnels[0]["requests"], 6, "{tunnels}");
    assert_eq!(tunnels[0]["errors"], 2, "per-tunnel errors: {tunnels}");
}

/// The dashboard, its assets and `/history` answer loopback Host names
/// only (DNS rebinding), GET only, with a strict Content-Security-Policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_refuses_foreign_hosts_and_sets_security_headers() {
    let burrow = Burrow::start(&[]).await;
    let port = burrow.addrs.stats.port();
    let client = burrow.http_client();
    for path in ["/dashboard", "/dashboard/app.js", "/history"] {
        for (host, want) in [
            ("evil.example".to_string(), 421),
            (format!("rebind.example:{port}"), 421),
            (format!("localhost:{port}"), 200),
            (format!("127.0.0.1:{port}"), 200),
        ] {
            let resp = client
                .get(stats_url(&burrow, path))
                .bearer_auth(burrow.admin_token())
                .header("host", &host)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), want, "GET {path} with Host {host}");
            if want == 421 {
                let body = resp.text().await.unwrap();
                assert!(!body.contains("<html"), "no page for {host}: {body}");
            }
        }
    }

    for (path, content_type) in [
        ("/dashboard", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let resp = client
            .get(stats_url(&burrow, path))
            .bearer_auth(burrow.admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(content_type), "{path}");
        let csp = header("content-security-policy");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(
                csp.contains(directive),
                "{path}: CSP {csp:?} lacks {directive}"
            );
        }
        assert!(!csp.contains("unsafe"), "{path}: CSP {csp:?}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        // The SVG namespace is a name, not something loaded.
        let body = resp.text().await.unwrap().replace(SVG_NS, "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} loads nothing from elsewhere"
        );
    }

    let resp = client
        .post(stats_url(&burrow, "/dashboard"))
        .bearer_auth(burrow.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405, "POST /dashboard");
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
}

/// What the page shows, read in the browser.
const READ_PAGE: &str = r#"
    const row = document.querySelector(`#tunnels tr[data-name="${arguments[0]}"]`);
    const ban = document.querySelector(`#bans tr[data-ip="${arguments[1]}"]`);
    const chart = (id) => {
        const box = document.getElementById(id);
        const line = box.querySelector("path.line");
        const r = box.getBoundingClientRect();
        return { total: Number(box.dataset.total || 0), max: Number(box.dataset.max || 0),
                 line: line ? line.getAttribute("d").length : 0,
                 drawnWidth: Number(box.dataset.width || 0),
                 rect: [r.left, r.top, r.width, r.height] };
    };
    return {
        refreshes: Number(document.body.dataset.refreshes || 0),
        requests: row ? Number(row.querySelector("td.requests").textContent.replace(/,/g, "")) : 0,
        errors: row ? Number(row.querySelector("td.errors").textContent.replace(/,/g, "")) : 0,
        banned: ban ? ban.textContent : null,
        injected: document.getElementById("injected") !== null,
        status: document.getElementById("status-text").textContent,
        requestsChart: chart("chart-requests"),
        errorsChart: chart("chart-errors"),
        overflow: document.documentElement.scrollWidth - window.innerWidth,
    };
"#;

/// Real traffic, then the dashboard in Chromium: the tunnel's row with its
/// requests and errors, both charts with data, the banned IP with its reason
/// shown as text; screenshots at laptop and phone widths that are not blank
/// and show the charts' lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_dashboard_shows_live_data() {
    let Some(bins) = browser_or_skip("chromium_dashboard_shows_live_data") else {
        return;
    };
    let burrow = Burrow::start(&[]).await;
    let (origin, _ssh, tunnel) = tunnel_setup(&burrow).await;
    visit(&burrow, &tunnel.host(), 12, 200).await;
    drop(origin);
    visit(&burrow, &tunnel.host(), 4, 502).await;
    let resp = burrow
        .http_client()
        .post(stats_url(&burrow, "/bans"))
        .bearer_auth(burrow.admin_token())
        .header("content-type", "application/json")
        .body(json!({ "ip": BANNED_IP, "duration_secs": 3600, "reason": BAN_REASON }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "POST /bans");

    let browser = Browser::start(&bins).await;
    let c = browser.client().clone();
    // Chromium here resolves only localhost names (see tests/common/browser.rs).
    let page = format!("http://localhost:{}/dashboard", burrow.addrs.stats.port());
    step("open the dashboard", c.goto(&page)).await;
    sign_in(&c, &burrow.admin_token()).await;
    let seen = wait_for_page(&c, &tunnel.name, |v| {
        v["requests"].as_u64() >= Some(16)
            && v["errors"].as_u64() >= Some(4)
            && v["errorsChart"]["total"].as_u64() >= Some(4)
            && v["errorsChart"]["line"].as_u64() > Some(0)
            && v["banned"].is_string()
    })
    .await;
    let banned = seen["banned"].as_str().unwrap();
    assert!(
        banned.contains(BAN_REASON),
        "the reason shows as text: {banned:?}"
    );
    assert_eq!(
        seen["injected"], false,
        "markup in a reason must not become elements"
    );
    assert!(
        seen["status"].as_str().unwrap().starts_with("Live"),
        "{seen}"
    );
    assert!(
        seen["overflow"].as_i64() <= Some(0),
        "no sideways scrolling: {seen}"
    );

    let png = step("screenshot", c.screenshot()).await;
    save_screenshot("dashboard.png", &png);
    check_screenshot(&png);
    let image = Image::decode(&png);
    assert_chart_drawn(&image, &seen["requestsChart"], is_blue, "request rate");
    assert_chart_drawn(&image, &seen["errorsChart"], is_red, "error rate");

    // A phone: one column, nothing wider than the screen.
    step("narrow window", c.set_window_size(NARROW.0, NARROW.1)).await;
    let seen = wait_for_page(&c, &tunnel.name, |v| {
        let chart = &v["requestsChart"];
        let width = chart["rect"][2].as_f64().unwrap_or(0.0);
        // Redrawn for the new width (not a scaled-down wide chart).
        width < f64::from(NARROW.0)
            && chart["drawnWidth"].as_f64() == Some(width.round())
            && v["overflow"].as_i64() <= Some(0)
    })
    .await;
    let png = step("narrow screenshot", c.screenshot()).await;
    save_screenshot("dashboard-narrow.png", &png);
    let image = Image::decode(&png);
    assert_chart_drawn(
        &image,
        &seen["requestsChart"],
        is_blue,
        "request rate (narrow)",
    );
    browser.close().await;
}

/// What the node table and the tunnels' node column show.
const READ_NODES: &str = r##"
const rows = Array.from(document.querySelectorAll("#nodes tbody tr"));
const tunnels = Array.from(document.querySelectorAll("#tunnels tbody tr"));
return {
  hidden: document.getElementById("nodes-panel").hidden,
  redis: document.getElementById("nodes-redis").textContent,
  nodes: rows.map((tr) => Array.from(tr.cells).map((td) => td.textContent)),
  tunnels: tunnels.map((tr) => tr.cells[tr.cells.length - 1].textContent),
};
"##;

/// In a cluster the dashboard shows the nodes (alive, tunnels, heartbeat,
/// Redis) and which node serves each tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_dashboard_shows_the_cluster_nodes() {
    let Some(bins) = browser_or_skip("chromium_dashboard_shows_the_cluster_nodes") else {
        return;
    };
    let cluster = cluster_harness::Cluster::start(2, &[]).await;
    let origin = Origin::start("on-node-2").await;
    let host = cluster_harness::node_ip(2).to_string();
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let args = ["-tt", "-R", forward.as_str()];
    let ssh = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &args,
        host: &host,
        ..SshSpec::default()
    }
    .spawn();
    ssh.url().await;
    let browser = Browser::start(&bins).await;
    let c = browser.client().clone();
    // Node 1 listens on 127.0.0.1, which Chromium reaches as localhost.
    let page = format!("http://localhost:{}/dashboard", cluster.shared.ports.stats);
    step("open the dashboard", c.goto(&page)).await;
    sign_in(&c, &cluster.node(1).admin_token()).await;
    let deadline = Instant::now() + PAGE_WAIT;
    let seen = loop {
        let seen = step("read the nodes", c.execute(READ_NODES, vec![])).await;
        let nodes = seen["nodes"].as_array().cloned().unwrap_or_default();
        let alive = |id: &str| {
            nodes
                .iter()
                .any(|row| row[0].as_str().is_some_and(|n| n.starts_with(id)) && row[2] == "alive")
        };
        let tunnel_on_two = seen["tunnels"]
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n == "node-2"));
        if seen["hidden"] == false && alive("node-1") && alive("node-2") && tunnel_on_two {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed both nodes: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(seen["redis"], "· Redis up", "{seen}");
    let this = seen["nodes"][0][0].as_str().unwrap();
    assert!(this.contains("(this node)"), "{seen}");
    let png = step("screenshot", c.screenshot()).await;
    save_screenshot("dashboard-cluster.png", &png);
    browser.close().await;
}

/// What the sign-in form shows.
const READ_SIGN_IN: &str = r#"
    const form = document.getElementById("sign-in");
    const error = document.getElementById("sign-in-error");
    return { form: form !== null, error: error ? error.textContent : "",
             dashboard: document.getElementById("tunnels") !== null };
"#;

/// Waits (bounded) until the page shows what `ready` wants.
async fn wait_for(c: &fantoccini::Client, script: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let seen = step("read the page", c.execute(script, vec![])).await;
        if ready(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed what was expected: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Types `token` into the dashboard's sign-in form and submits it.
async fn type_token(c: &fantoccini::Client, token: &str) {
    let input = step(
        "find the token field",
        c.find(fantoccini::Locator::Id("token")),
    )
    .await;
    step("clear the token field", input.clear()).await;
    step("type the token", input.send_keys(token)).await;
    let button = step(
        "find the button",
        c.find(fantoccini::Locator::Id("sign-in-button")),
    )
    .await;
    step("submit the token", button.click()).await;
}

/// The dashboard asks for the admin token (a form, not the data): a wrong
/// one is refused on the form, the right one opens the dashboard.
async fn sign_in(c: &fantoccini::Client, token: &str) {
    wait_for(c, READ_SIGN_IN, |v| {
        v["form"] == true && v["dashboard"] == false
    })
    .await;
    type_token(c, "not-the-admin-token").await;
    let seen = wait_for(c, READ_SIGN_IN, |v| {
        v["error"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert!(
        seen["error"]
            .as_str()
            .unwrap()
            .contains("the token is wrong"),
        "{seen}"
    );
    assert_eq!(seen["dashboard"], false, "{seen}");
    type_token(c, token).await;
    wait_for(c, READ_SIGN_IN, |v| v["dashboard"] == true).await;
}

/// Polls the page (bounded) until `ready` holds for what it shows.
async fn wait_for_page(
    c: &fantoccini::Client,
    name: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let seen = step(
            "read the dashboard",
            c.execute(READ_PAGE, vec![json!(name), json!(BANNED_IP)]),
        )
        .await;
        if ready(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not show the traffic within {PAGE_WAIT:?}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn save_screenshot(name: &str, png: &[u8]) {
    let path = screenshot_path(name);
    std::fs::create_dir_all(path.parent().unwrap()).expect("create screenshot dir");
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// A decoded RGB(A) screenshot.
struct Image {
    width: u32,
    height: u32,
    channels: usize,
    data: Vec<u8>,
}

impl Image {
    fn decode(png_bytes: &[u8]) -> Image {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut reader = decoder.read_info().expect("screenshot is not a PNG");
        let mut data = vec![0; reader.output_buffer_size().expect("PNG buffer size")];
        let info = reader.next_frame(&mut data).expect("decode screenshot PNG");
        data.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            channels: info.color_type.samples(),
            data,
        }
    }

    fn rgb(&self, x: u32, y: u32) -> (u8, u8, u8) {
        let i = (y as usize * self.width as usize + x as usize) * self.channels;
        (self.data[i], self.data[i + 1], self.data[i + 2])
    }
}

/// The chart line's hues (`--accent` and `--error` in style.css), loose
/// enough for anti-aliased edges; the pale area fills do not count.
fn is_blue((r, g, b): (u8, u8, u8)) -> bool {
    i32::from(b) - i32::from(r.max(g)) > 50
}

fn is_red((r, g, b): (u8, u8, u8)) -> bool {
    i32::from(r) - i32::from(g.max(b)) > 50
}

/// The chart's box in the screenshot has enough pixels of its line colour.
fn assert_chart_drawn(image: &Image, rect: &Value, colour: fn((u8, u8, u8)) -> bool, what: &str) {
    let n = |i: usize| rect["rect"][i].as_f64().unwrap_or(0.0).max(0.0) as u32;
    let (left, top) = (n(0), n(1));
    let right = (left + n(2)).min(image.width);
    let bottom = (top + n(3)).min(image.height);
    assert!(
        right > left && bottom > top,
        "{what} chart is on screen: {rect}"
    );
    let count = (top..bottom)
        .flat_map(|y| (left..right).map(move |x| (x, y)))
        .filter(|&(x, y)| colour(image.rgb(x, y)))
        .count();
    assert!(
        count >= 20,
        "{what} chart: only {count} pixels of its line colour in {rect}"
    );
}
