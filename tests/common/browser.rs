//! Headless Chromium for the browser tests (tests/browser.rs,
//! tests/dashboard.rs): finds Debian's `chromium` and `chromedriver`, runs
//! them in their own process group (killed on drop), keeps the DevTools
//! network events, and checks screenshots.
//!
//! Included by path (`#[path = "common/browser.rs"] mod browser;`) by the
//! tests that drive a browser only, so the other test binaries do not
//! compile it.
#![allow(dead_code)]

use std::fmt::Debug;
use std::fs::File;
use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

use crate::common::{burrow_bin, TempDir};

/// Upper bound for any one browser step (a navigation, a click, a lookup).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long chromedriver may take to answer `/status` after it starts.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Set to `1` to skip browser tests when no browser is installed.
pub const SKIP_ENV: &str = "BURROW_SKIP_BROWSER_TESTS";
/// The window (and so the screenshot) size.
pub const WINDOW: (u32, u32) = (1280, 900);

// ---------------------------------------------------------------------------
// Finding the browser
// ---------------------------------------------------------------------------

pub struct BrowserBins {
    pub chromedriver: PathBuf,
    pub chromium: PathBuf,
}

/// `$env` if set, else the first of `names` found on PATH.
pub fn find_program(env: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{env}={} is not a file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "none of {names:?} found on PATH (or set {env} to its path)"
    ))
}

/// The browser binaries, or `None` (after saying so) when they are missing
/// and `BURROW_SKIP_BROWSER_TESTS=1`. Panics when they are missing otherwise:
/// a browser test that silently passes without a browser proves nothing.
pub fn browser_or_skip(test: &str) -> Option<BrowserBins> {
    let driver = find_program("BURROW_CHROMEDRIVER", &["chromedriver"]);
    let chromium = find_program(
        "BURROW_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome", "chrome"],
    );
    match (driver, chromium) {
        (Ok(chromedriver), Ok(chromium)) => Some(BrowserBins {
            chromedriver,
            chromium,
        }),
        (driver, chromium) => {
            let why: Vec<String> = [driver.err(), chromium.err()]
                .into_iter()
                .flatten()
                .collect();
            let why = why.join("; ");
            if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
                eprintln!("SKIPPED browser test {test}: {why} ({SKIP_ENV}=1)");
                None
            } else {
                panic!(
                    "browser test {test} needs Chromium and chromedriver: {why}.\n\
                     Install them (Debian: `apt-get install chromium chromium-driver`, \
                     as .ci/run does), or set {SKIP_ENV}=1 to skip browser tests."
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// chromedriver + Chromium
// ---------------------------------------------------------------------------

/// Runs one browser step with [`STEP_TIMEOUT`], panicking with `what` on an
/// error or a timeout.
pub async fn step<T, E: Debug>(what: &str, fut: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Err(_) => panic!("browser: {what}: timed out after {STEP_TIMEOUT:?}"),
        Ok(Err(e)) => panic!("browser: {what}: {e:?}"),
        Ok(Ok(v)) => v,
    }
}

/// chromedriver's non-standard "get log" command: returns (and clears) the
/// entries of one log type, here `performance` (DevTools events).
#[derive(Debug)]
pub struct GetLog(&'static str);

impl fantoccini::wd::WebDriverCompatibleCommand for GetLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

/// One DevTools event from the performance log.
#[derive(Clone, Debug)]
pub struct NetEvent {
    pub method: String,
    pub params: Value,
}

/// chromedriver (in its own process group, with Chromium under it) and a
/// WebDriver session. The whole group is SIGKILLed on drop, so no browser
/// outlives the test even when it panics.
pub struct Browser {
    pub client: Option<Client>,
    pub driver: Child,
    pub driver_log: PathBuf,
    /// Every network event seen so far (the log is drained as it is read).
    pub events: Vec<NetEvent>,
    _dir: TempDir,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

pub fn tail(path: &Path, max: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(max);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// Starts chromedriver on a free loopback port and waits until it answers.
/// Retries with another port if it exits at once (port taken meanwhile).
pub async fn start_driver(bin: &Path, log: &Path) -> (Child, u16) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("build reqwest client");
    for _attempt in 0..3 {
        let port = free_port();
        let out = File::create(log).expect("create chromedriver log");
        let err = out.try_clone().expect("dup chromedriver log");
        let mut child = Command::new(bin)
            .arg(format!("--port={port}"))
            .arg("--log-level=INFO")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Own process group: Drop kills chromedriver and every browser
            // process it started in one go.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let deadline = Instant::now() + DRIVER_START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "chromedriver exited at start-up ({status}); log:\n{}",
                    tail(log, 4000)
                );
                break;
            }
            let url = format!("http://127.0.0.1:{port}/status");
            if let Ok(resp) = http.get(&url).send().await {
                let text = resp.text().await.unwrap_or_default();
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    if v["value"]["ready"] == json!(true) {
                        return (child, port);
                    }
                }
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                panic!(
                    "chromedriver did not answer on port {port} within \
                     {DRIVER_START_TIMEOUT:?}; log:\n{}",
                    tail(log, 4000)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("chromedriver failed to start three times; see the log above");
}

/// SIGKILLs `child`'s process group (it was started as its leader) and
/// reaps `child`.
pub fn kill_group(child: &mut Child) {
    let pgid = child.id();
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Browser {
    pub async fn start(bins: &BrowserBins) -> Browser {
        let dir = TempDir::new("burrow-browser");
        let profile = dir.path().join("profile");
        std::fs::create_dir_all(&profile).expect("create profile dir");
        let driver_log = dir.path().join("chromedriver.log");
        let (mut driver, port) = start_driver(&bins.chromedriver, &driver_log).await;

        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--disable-domain-reliability".into(),
            "--disable-client-side-phishing-detection".into(),
            "--disable-breakpad".into(),
            "--metrics-recording-only".into(),
            "--password-store=basic".into(),
            "--mute-audio".into(),
            "--hide-scrollbars".into(),
            "--lang=en-US".into(),
            "--force-device-scale-factor=1".into(),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            // The test certificate is self-signed.
            "--ignore-certificate-errors".into(),
            // Never reach anything off this machine: tunnel names go to
            // loopback, every other name fails to resolve, no proxy.
            "--no-proxy-server".into(),
            "--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP localhost 127.0.0.1, \
             MAP * ~NOTFOUND"
                .into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "pageLoadStrategy": "normal",
            "timeouts": { "implicit": 0, "pageLoad": 20_000, "script": 10_000 },
            "goog:loggingPrefs": { "performance": "ALL" },
            "goog:chromeOptions": {
                "binary": bins.chromium.to_string_lossy(),
                "args": args,
                "perfLoggingPrefs": { "enableNetwork": true, "enablePage": false },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let mut builder =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let webdriver = format!("http://127.0.0.1:{port}");
        let client = match tokio::time::timeout(STEP_TIMEOUT, builder.connect(&webdriver)).await {
            Ok(Ok(c)) => c,
            other => {
                let why = match other {
                    Ok(Err(e)) => format!("{e}"),
                    _ => format!("timed out after {STEP_TIMEOUT:?}"),
                };
                let log = tail(&driver_log, 6000);
                kill_group(&mut driver);
                panic!("could not start Chromium through chromedriver: {why}\nchromedriver log:\n{log}");
            }
        };
        Browser {
            client: Some(client),
            driver,
            driver_log,
            events: Vec::new(),
            _dir: dir,
        }
    }

    pub fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    /// Reads the performance log (drained by chromedriver on every read)
    /// into `self.events`, keeping the network events.
    pub async fn collect_events(&mut self) {
        let raw = step(
            "read performance log",
            self.client().issue_cmd(GetLog("performance")),
        )
        .await;
        for entry in raw.as_array().into_iter().flatten() {
            let Some(message) = entry["message"].as_str() else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(message) else {
                continue;
            };
            let method = v["message"]["method"].as_str().unwrap_or("").to_string();
            if method.starts_with("Network.") {
                self.events.push(NetEvent {
                    method,
                    params: v["message"]["params"].clone(),
                });
            }
        }
    }

    /// Reads the performance log until `ready` holds for the events seen
    /// (DevTools reports some of them a little after the page is done), for
    /// at most 10 s.
    pub async fn collect_until(&mut self, what: &str, ready: impl Fn(&[NetEvent]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.collect_events().await;
            if ready(&self.events) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "network log: no {what} within 10 s; requests seen:\n{}",
                    summarize(&self.events)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends the session (Chromium exits) and stops chromedriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = tokio::time::timeout(STEP_TIMEOUT, client.close()).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- chromedriver log (tail) ---\n{}",
                tail(&self.driver_log, 6000)
            );
        }
        kill_group(&mut self.driver);
    }
}

// ---------------------------------------------------------------------------
// Screenshot checks
// ---------------------------------------------------------------------------

/// `target/screenshots/NAME`, next to the binary cargo built for the tests
/// (so it follows `CARGO_TARGET_DIR`).
pub fn screenshot_path(name: &str) -> PathBuf {
    let bin = Path::new(burrow_bin());
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots").join(name)
}

/// Decodes `png` and checks it is a real picture of a page: the window's
/// size, and many colours with no single one covering almost everything
/// (a blank or single-colour error page would fail).
pub fn check_screenshot(png_bytes: &[u8]) {
    assert!(
        png_bytes.len() > 10_000,
        "screenshot is only {} bytes",
        png_bytes.len()
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().expect("screenshot is not a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG buffer size")];
    let info = reader.next_frame(&mut buf).expect("decode screenshot PNG");
    let (w, h) = (info.width, info.height);
    assert!(
        w >= WINDOW.0 / 2 && h >= WINDOW.1 / 2,
        "screenshot is {w}x{h}, expected about {}x{}",
        WINDOW.0,
        WINDOW.1
    );
    let channels = info.color_type.samples();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "screenshot bit depth");
    let data = &buf[..info.buffer_size()];
    let mut counts: std::collections::HashMap<&[u8], u64> = Default::default();
    for px in data.chunks_exact(channels) {
        *counts.entry(&px[..channels.min(3)]).or_default() += 1;
    }
    let total = u64::from(w) * u64::from(h);
    let top = counts.values().copied().max().unwrap_or(0);
    assert!(
        counts.len() >= 32,
        "screenshot has only {} distinct colours: blank page?",
        counts.len()
    );
    assert!(
        top * 100 < total * 95,
        "one colour covers {top} of {total} pixels: blank page?"
    );
    eprintln!(
        "screenshot {w}x{h}, {} distinct colours, most common covers {:.1}%",
        counts.len(),
        top as f64 * 100.0 / total as f64
    );
}

pub fn summarize(events: &[NetEvent]) -> String {
    events
        .iter()
        .filter(|e| e.method == "Network.requestWillBeSent")
        .filter(|e| {
            e.params["request"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https:") || u.starts_with("http:"))
        })
        .map(|e| {
            let redirect = e.params["redirectResponse"]["status"]
                .as_u64()
                .map_or(String::new(), |s| format!(" (after a {s})"));
            format!(
                "  {} {}{redirect}\n",
                e.params["request"]["method"].as_str().unwrap_or("?"),
                e.params["request"]["url"].as_str().unwrap_or("?")
            )
        })
        .collect()
}
