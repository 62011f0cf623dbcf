//! Headless Chromium end-to-end test of the browser warning page
//! (anti-phishing interstitial): the real `burrow` binary, the real OpenSSH
//! client, a real local origin app and a real browser.
//!
//! The browser is Debian's `chromium`, driven over WebDriver by
//! `chromedriver` (crate `fantoccini`). chromedriver's performance log (the
//! Chrome DevTools network events) shows the status codes and headers the
//! browser actually received, which WebDriver alone does not expose.
//!
//! Needs `chromium` and `chromedriver` on PATH (`apt-get install chromium
//! chromium-driver`, as `.ci/run` does), or their paths in `BURROW_CHROMIUM`
//! and `BURROW_CHROMEDRIVER`. Without them the test fails with a message
//! saying so, unless `BURROW_SKIP_BROWSER_TESTS=1` is set, which skips it.
//!
//! The screenshot of the warning page is written to
//! `target/screenshots/interstitial.png` for people to look at.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use browser::*;
use bytes::Bytes;
use common::*;
use fantoccini::Locator;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Text the origin app puts in its pages, so the test can tell them apart
/// from anything burrow serves.
const APP_MARKER: &str = "burrow-browser-test origin app";
/// A path with a query string that has encoded characters (`%20`, `%26`,
/// `%3D`, `%2F`) and an empty value, to check it survives the round trip
/// through the warning page's form untouched.
const APP_PATH: &str = "/app/page?greeting=hello%20world&n=42&sym=%26%3D%2F&empty=";

// ---------------------------------------------------------------------------
// The origin app
// ---------------------------------------------------------------------------

/// One request as the origin app saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path_and_query: String,
    cookie: Option<String>,
}

/// A local HTTP/1.1 app: `GET /app/...` answers an HTML page carrying
/// [`APP_MARKER`] and the path and query it was asked for; everything else
/// is a 404. Records every request. Stopped on drop.
struct AppOrigin {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl AppOrigin {
    async fn start() -> AppOrigin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        let port = listener.local_addr().unwrap().port();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(app_handle(req, &seen)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        AppOrigin { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The requests for `/app/...` pages so far.
    fn app_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path_and_query.starts_with("/app/"))
            .collect()
    }
}

impl Drop for AppOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn app_handle(req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let n = {
        let mut seen = seen.lock().unwrap();
        seen.push(Seen {
            method: req.method().to_string(),
            path_and_query: path_and_query.clone(),
            cookie: req
                .headers()
                .get(hyper::header::COOKIE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        });
        seen.len()
    };
    if !(req.method() == hyper::Method::GET && req.uri().path().starts_with("/app/")) {
        return Response::builder()
            .status(404)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"origin: no such route")))
            .unwrap();
    }
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Origin app</title></head><body>\
         <h1 id=\"app-marker\">{APP_MARKER}</h1>\
         <p>You asked for <code id=\"path\">{}</code>.</p>\
         <p>Request number <span id=\"count\">{n}</span>.</p>\
         </body></html>",
        html_escape(&path_and_query)
    );
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(html)))
        .unwrap()
}

// ---------------------------------------------------------------------------
// Helpers over the network log
// ---------------------------------------------------------------------------

/// The response headers the browser received for `request_id` (raw, with
/// `Set-Cookie`), from `Network.responseReceivedExtraInfo`, lower-cased
/// names; the status code too.
fn raw_responses(events: &[NetEvent], request_id: &str) -> Vec<(u64, Vec<(String, String)>)> {
    events
        .iter()
        .filter(|e| e.method == "Network.responseReceivedExtraInfo")
        .filter(|e| e.params["requestId"].as_str() == Some(request_id))
        .map(|e| {
            let status = e.params["statusCode"].as_u64().unwrap_or(0);
            let headers = e.params["headers"]
                .as_object()
                .map(|h| {
                    h.iter()
                        .flat_map(|(k, v)| {
                            // Repeated headers arrive joined with '\n'.
                            let k = k.to_ascii_lowercase();
                            v.as_str()
                                .unwrap_or("")
                                .split('\n')
                                .map(move |v| (k.clone(), v.to_string()))
                                .collect::<Vec<_>>()
                        })
                        .collect()
                })
                .unwrap_or_default();
            (status, headers)
        })
        .collect()
}

/// How many `method` events (e.g. `Network.responseReceivedExtraInfo`) were
/// seen for `request_id` (a redirect keeps the request id).
fn count_for(events: &[NetEvent], method: &str, request_id: &str) -> usize {
    events
        .iter()
        .filter(|e| e.method == method && e.params["requestId"].as_str() == Some(request_id))
        .count()
}

/// The request ids of `requestWillBeSent` events for `method url`, in order
/// (one id per redirect chain).
fn request_ids(events: &[NetEvent], method: &str, url: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for e in requests_for(events, |m, u| m == method && u == url) {
        let id = e.params["requestId"].as_str().unwrap_or("").to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// Whether the request (chain) `id` has `n` raw request and response
/// records (`...ExtraInfo`): one each per hop.
fn complete(events: &[NetEvent], id: &str, n: usize) -> bool {
    count_for(events, "Network.requestWillBeSentExtraInfo", id) >= n
        && count_for(events, "Network.responseReceivedExtraInfo", id) >= n
}

/// `Network.requestWillBeSent` events for URLs satisfying `pred`.
fn requests_for<'a>(
    events: &'a [NetEvent],
    pred: impl Fn(&str, &str) -> bool + 'a,
) -> impl Iterator<Item = &'a NetEvent> + 'a {
    events.iter().filter(move |e| {
        e.method == "Network.requestWillBeSent"
            && pred(
                e.params["request"]["method"].as_str().unwrap_or(""),
                e.params["request"]["url"].as_str().unwrap_or(""),
            )
    })
}

/// The cookie names the browser attached to `request_id`'s requests.
fn cookies_sent(events: &[NetEvent], request_id: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.method == "Network.requestWillBeSentExtraInfo")
        .filter(|e| e.params["requestId"].as_str() == Some(request_id))
        .flat_map(|e| {
            e.params["associatedCookies"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["blockedReasons"].as_array().is_none_or(|r| r.is_empty()))
        .filter_map(|c| c["cookie"]["name"].as_str().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// burrow, the origin app and `ssh -R 80:127.0.0.1:ORIGIN`.
async fn tunnel_setup() -> (Burrow, AppOrigin, Ssh, TunnelUrl) {
    let burrow = Burrow::start(&[]).await;
    let origin = AppOrigin::start().await;
    let fwd = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn(&burrow, &["-R", &fwd]);
    let tunnel = ssh.url().await;
    (burrow, origin, ssh, tunnel)
}

/// First navigation → warning page; Continue → the app at the original path
/// and query, with the `burrow_warned_NAME` cookie set; reload → straight to
/// the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_warning_page_continue_and_reload() {
    let Some(bins) = browser_or_skip("chromium_warning_page_continue_and_reload") else {
        return;
    };

    let (burrow, origin, _ssh, tunnel) = tunnel_setup().await;
    let name = tunnel.name.clone();
    let host = tunnel.host();
    let app_url = burrow.https_url(&host, APP_PATH);
    let warned_cookie = format!("burrow_warned_{name}");

    let mut browser = Browser::start(&bins).await;
    let c = browser.client().clone();

    // ---- (1) First navigation: burrow's warning page, not the app. ----
    step("open the tunnel URL", c.goto(&app_url)).await;
    let button = step(
        "find the Continue button on the warning page",
        c.wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css("button#continue")),
    )
    .await;
    let url_now = step("current URL", c.current_url()).await;
    assert_eq!(
        url_now.as_str(),
        app_url,
        "the warning page must be shown at the URL the visitor opened"
    );
    let body_text = step("page text", async {
        c.find(Locator::Css("body")).await?.text().await
    })
    .await;
    assert!(
        !body_text.contains(APP_MARKER),
        "the app's page was shown before the warning: {body_text:?}"
    );
    assert!(
        body_text.contains(&name),
        "the warning page must name the tunnel {name}: {body_text:?}"
    );
    let flat = body_text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in [
        "Do not enter passwords, payment details",
        "unless you know and trust the person who sent you this link",
    ] {
        assert!(
            flat.contains(needle),
            "warning page lacks {needle:?}: {flat:?}"
        );
    }
    let title = step("title", c.title()).await;
    assert!(title.contains(&host), "title {title:?} should name {host}");
    assert_eq!(
        step("button text", button.text()).await,
        format!("Continue to {name}")
    );
    assert!(step("button displayed", button.is_displayed()).await);
    assert!(step("button enabled", button.is_enabled()).await);
    let (bx, by, bw, bh) = step("button position", button.rectangle()).await;
    let viewport = step(
        "viewport size",
        c.execute("return [window.innerWidth, window.innerHeight];", vec![]),
    )
    .await;
    let (vw, vh) = (
        viewport[0].as_f64().unwrap_or(0.0),
        viewport[1].as_f64().unwrap_or(0.0),
    );
    assert!(
        bw > 0.0 && bh > 0.0 && bx >= 0.0 && by >= 0.0 && bx + bw <= vw && by + bh <= vh,
        "the Continue button should be visible without scrolling in a {vw}x{vh} viewport, \
         it is at x={bx} y={by} w={bw} h={bh}"
    );
    let form = step(
        "the button's form",
        button.find(Locator::XPath("./ancestor::form")),
    )
    .await;
    let method = step("form method", form.prop("method")).await;
    assert_eq!(method.as_deref(), Some("post"), "Continue form method");
    let action = step("form action", form.prop("action")).await;
    assert_eq!(
        action.as_deref(),
        Some(burrow.https_url(&host, "/__burrow/continue").as_str()),
        "Continue form target"
    );
    assert!(
        origin.app_requests().is_empty(),
        "the origin must not see the request while the warning is shown: {:?}",
        origin.seen()
    );
    let cookies = step("cookies", c.get_all_cookies()).await;
    assert!(
        !cookies.iter().any(|k| k.name() == warned_cookie),
        "{warned_cookie} set before Continue: {cookies:?}"
    );

    // (4) Screenshot of the warning page, for the test and for people.
    let png_bytes = step("screenshot", c.screenshot()).await;
    let shot = screenshot_path("interstitial.png");
    std::fs::create_dir_all(shot.parent().unwrap()).expect("create screenshots dir");
    std::fs::write(&shot, &png_bytes).expect("write screenshot");
    eprintln!("warning page screenshot: {}", shot.display());
    check_screenshot(&png_bytes);

    browser
        .collect_until("first GET with its response", |ev| {
            request_ids(ev, "GET", &app_url)
                .first()
                .is_some_and(|id| complete(ev, id, 1))
        })
        .await;
    let first_id = request_ids(&browser.events, "GET", &app_url).remove(0);
    let first_resp = raw_responses(&browser.events, &first_id);
    assert_eq!(first_resp[0].0, 200, "status of the warning page");

    // ---- (2) Continue: back to the same path and query, now the app. ----
    step("click Continue", button.click()).await;
    let marker = step(
        "wait for the app's page after Continue",
        c.wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css("#app-marker")),
    )
    .await;
    assert_eq!(step("marker text", marker.text()).await, APP_MARKER);
    let url_now = step("current URL", c.current_url()).await;
    assert_eq!(
        url_now.as_str(),
        app_url,
        "Continue must lead back to the original path and query on the same host"
    );
    let shown_path = step("path shown by the app", async {
        c.find(Locator::Css("#path")).await?.text().await
    })
    .await;
    assert_eq!(shown_path, APP_PATH, "path and query the app received");
    let app_seen = origin.app_requests();
    assert_eq!(
        app_seen.len(),
        1,
        "the origin should have had exactly one page request: {app_seen:?}"
    );
    assert_eq!(app_seen[0].method, "GET", "{app_seen:?}");
    assert_eq!(app_seen[0].path_and_query, APP_PATH);
    assert!(
        !app_seen[0]
            .cookie
            .as_deref()
            .unwrap_or("")
            .contains("burrow_"),
        "burrow's own cookies must not reach the app: {:?}",
        app_seen[0].cookie
    );

    // The cookie, as the browser stored it.
    let cookies = step("cookies", c.get_all_cookies()).await;
    let warned = cookies
        .iter()
        .find(|k| k.name() == warned_cookie)
        .unwrap_or_else(|| panic!("no {warned_cookie} cookie after Continue: {cookies:?}"));
    assert_eq!(warned.value(), "1", "{warned:?}");
    assert_eq!(warned.http_only(), Some(true), "HttpOnly: {warned:?}");
    assert_eq!(warned.secure(), Some(true), "Secure: {warned:?}");
    assert_eq!(
        warned.same_site().map(|s| s.to_string()).as_deref(),
        Some("Lax"),
        "SameSite: {warned:?}"
    );
    assert_eq!(warned.path(), Some("/"), "Path: {warned:?}");
    assert_eq!(
        warned.domain().map(|d| d.trim_start_matches('.')),
        Some(host.as_str()),
        "the cookie belongs to this tunnel's host: {warned:?}"
    );
    // HttpOnly: invisible to the page's scripts.
    let js_cookies = step(
        "document.cookie",
        c.execute("return document.cookie;", vec![]),
    )
    .await;
    assert!(
        !js_cookies.as_str().unwrap_or("").contains("burrow_"),
        "burrow's cookies must be HttpOnly, page scripts see {js_cookies}"
    );

    // What went over the wire: POST /__burrow/continue → 303 → GET APP_PATH.
    let continue_url = burrow.https_url(&host, "/__burrow/continue");
    browser
        .collect_until("POST /__burrow/continue and its redirect", |ev| {
            request_ids(ev, "POST", &continue_url)
                .first()
                .is_some_and(|id| complete(ev, id, 2))
        })
        .await;
    let post_id = request_ids(&browser.events, "POST", &continue_url).remove(0);
    let redirected = requests_for(&browser.events, |m, u| m == "GET" && u == app_url)
        .find(|e| e.params["requestId"].as_str() == Some(post_id.as_str()))
        .unwrap_or_else(|| {
            panic!(
                "the Continue POST was not redirected to GET {app_url}:\n{}",
                summarize(&browser.events)
            )
        });
    assert_eq!(
        redirected.params["redirectResponse"]["status"].as_u64(),
        Some(303),
        "Continue must answer 303 See Other: {}",
        redirected.params["redirectResponse"]
    );
    let responses = raw_responses(&browser.events, &post_id);
    let (status, headers) = responses
        .iter()
        .find(|(s, _)| *s == 303)
        .unwrap_or_else(|| panic!("no raw headers for the 303: {responses:?}"));
    assert_eq!(*status, 303);
    let location: Vec<&str> = headers
        .iter()
        .filter(|(k, _)| k == "location")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(location, [APP_PATH], "Location of the 303");
    let set_cookie = headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .find(|v| v.starts_with(&format!("{warned_cookie}=")))
        .unwrap_or_else(|| panic!("the 303 does not set {warned_cookie}: {headers:?}"));
    let attrs: Vec<String> = set_cookie
        .split(';')
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(
        attrs[0],
        format!("{}=1", warned_cookie.to_ascii_lowercase())
    );
    for want in ["httponly", "secure", "samesite=lax"] {
        assert!(
            attrs.iter().any(|a| a == want),
            "Set-Cookie {set_cookie:?} lacks {want}"
        );
    }
    assert!(
        cookies_sent(&browser.events, &post_id).contains(&warned_cookie),
        "the redirected GET must carry {warned_cookie}:\n{}",
        summarize(&browser.events)
    );

    // ---- (3) Reload: straight to the app, no warning. ----
    step("reload", c.refresh()).await;
    let count = step(
        "wait for the reloaded app page",
        c.wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css("#count")),
    )
    .await;
    let count: usize = step("request counter", count.text())
        .await
        .parse()
        .expect("request counter");
    let app_seen = origin.app_requests();
    assert_eq!(
        app_seen.len(),
        2,
        "the reload must reach the app (not a cached copy, not the warning): {app_seen:?}"
    );
    assert_eq!(app_seen[1].method, "GET");
    assert_eq!(app_seen[1].path_and_query, APP_PATH);
    assert!(count >= 2, "the page shown is not the reloaded one");
    assert!(
        step(
            "look for a Continue button",
            c.find_all(Locator::Css("#continue"))
        )
        .await
        .is_empty(),
        "the warning page came back after reload"
    );
    assert_eq!(step("current URL", c.current_url()).await.as_str(), app_url);
    let reload_ids = |ev: &[NetEvent]| -> Vec<String> {
        request_ids(ev, "GET", &app_url)
            .into_iter()
            .filter(|id| *id != first_id && *id != post_id)
            .collect()
    };
    browser
        .collect_until("reload request with its response", |ev| {
            reload_ids(ev).first().is_some_and(|id| complete(ev, id, 1))
        })
        .await;
    let reload_id = reload_ids(&browser.events).remove(0);
    let reload_id = reload_id.as_str();
    assert!(
        cookies_sent(&browser.events, reload_id).contains(&warned_cookie),
        "the reload must carry {warned_cookie}"
    );
    let (status, _) = raw_responses(&browser.events, reload_id)
        .into_iter()
        .next()
        .expect("a response to the reload");
    assert_eq!(status, 200, "reload status");

    // Another page of the same tunnel: no warning either (the cookie is for
    // the whole host, Path=/).
    let other = burrow.https_url(&host, "/app/other");
    step("open another page", c.goto(&other)).await;
    step(
        "wait for the other app page",
        c.wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css("#app-marker")),
    )
    .await;

    eprintln!("network log:\n{}", summarize(&browser.events));
    browser.close().await;
}

/// The case the page exists for: the visitor follows a link from another
/// site (chat, mail). The first request is cross-site; Continue must still
/// work (its anti-forgery cookie is SameSite=Strict, set by that cross-site
/// navigation's response).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_warning_page_after_link_from_another_site() {
    let Some(bins) = browser_or_skip("chromium_warning_page_after_link_from_another_site") else {
        return;
    };
    let (burrow, origin, _ssh, tunnel) = tunnel_setup().await;
    let host = tunnel.host();
    let app_url = burrow.https_url(&host, APP_PATH);

    let mut browser = Browser::start(&bins).await;
    let c = browser.client().clone();
    // A page of another site (an opaque data: origin) linking to the tunnel,
    // with a #fragment: browsers never send it, yet Continue must keep it.
    let linked_url = format!("{app_url}#section-2");
    let href = linked_url
        .replace('%', "%25")
        .replace('&', "%26")
        .replace('#', "%23");
    let elsewhere = format!("data:text/html,<a id=link href=\"{href}\">a link</a>");
    step("open a page elsewhere", c.goto(&elsewhere)).await;
    let link = step("find the link", c.find(Locator::Css("#link"))).await;
    step("follow the link", link.click()).await;
    let button = step(
        "find the Continue button on the warning page",
        c.wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css("button#continue")),
    )
    .await;
    assert_eq!(
        step("current URL", c.current_url()).await.as_str(),
        linked_url
    );
    assert!(
        origin.app_requests().is_empty(),
        "the origin must not see the request while the warning is shown: {:?}",
        origin.seen()
    );
    browser
        .collect_until("GET of the tunnel URL with its response", |ev| {
            request_ids(ev, "GET", &app_url)
                .first()
                .is_some_and(|id| complete(ev, id, 1))
        })
        .await;
    let first = request_ids(&browser.events, "GET", &app_url).remove(0);
    let fetch_site: Vec<String> = browser
        .events
        .iter()
        .filter(|e| e.method == "Network.requestWillBeSentExtraInfo")
        .filter(|e| e.params["requestId"].as_str() == Some(first.as_str()))
        .filter_map(|e| {
            e.params["headers"]
                .as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("sec-fetch-site"))
                .and_then(|(_, v)| v.as_str().map(str::to_string))
        })
        .collect();
    assert_eq!(
        fetch_site,
        ["cross-site"],
        "the link should be a cross-site navigation"
    );

    step("click Continue", button.click()).await;
    step(
        "wait for the app's page after Continue",
        c.wait()
            .at_most(STEP_TIMEOUT)
            .for_element(Locator::Css("#app-marker")),
    )
    .await;
    assert_eq!(
        step("current URL after Continue", c.current_url())
            .await
            .as_str(),
        linked_url,
        "Continue must land on the linked URL, fragment included"
    );
    let app_seen = origin.app_requests();
    assert_eq!(app_seen.len(), 1, "{app_seen:?}");
    assert_eq!(app_seen[0].path_and_query, APP_PATH);
    browser.close().await;
}
