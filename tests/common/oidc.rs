//! A real OpenID Provider for the sign-in tests: the certified `oidc-provider`
//! package from npm, run by Debian's `nodejs` with the script in
//! `tests/oidc/provider.mjs` (which documents the login form, the test users
//! and the control API in full).
//!
//! * [`node_or_skip`] finds `node` and `npm`, like `browser_or_skip` does for
//!   the browser: a test fails when they are missing, unless
//!   `BURROW_SKIP_OIDC_TESTS=1`.
//! * [`OidcProvider::start`] runs one provider on a free loopback port and
//!   waits for its `oidc ready: ISSUER` line; [`OidcProvider::start_tls`]
//!   serves it over https with a given certificate. Dropping it kills the
//!   process; the process also exits by itself when this test process dies
//!   (it watches the pipe on its stdin).
//! * The packages are installed once per lockfile: `npm ci` into
//!   `$TMPDIR/burrow-oidc-npm-HASH/` (HASH from `tests/oidc/package.json` and
//!   `package-lock.json`), guarded by a file lock so concurrent test binaries
//!   install it once, and reused by every provider of every later run. Each
//!   provider runs in its own temporary directory holding a copy of the
//!   script and a symlink to that `node_modules`. Nothing is installed into
//!   the repository.
//! * [`OidcProvider::set_fault`], [`OidcProvider::rotate_keys`] and
//!   [`OidcProvider::log`] drive the control API (`/__control/...`).
//!
//! Included by path (`#[path = "common/oidc.rs"] mod oidc;`) by the tests
//! that need a provider, so the other test binaries do not compile it.
//!
//! ```ignore
//! let Some(node) = node_or_skip("sign_in_as_alice") else { return };
//! let op = OidcProvider::start(&node, &[]).await;
//! // burrow --oidc-issuer op.issuer() --oidc-client-id burrow ..., then with
//! // its HTTPS port known (redirect URIs must match exactly, port included):
//! op.set_clients(&[OidcClient::for_burrow("burrow", https_port)]).await;
//! op.set_fault(Fault::Expired, Times::Next(1)).await;
//! assert!(op.events("token").await[0]["code_verifier"] == true);
//! ```
//!
//! A test that sends Chromium to the provider needs the issuer on
//! `localhost` ([`OidcConfig::host`]): the test browser resolves
//! `localhost` names only.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{spawn_reader, OutputBuf, TempDir};

/// Set to `1` to skip the tests that need an OpenID Provider when Node.js
/// or npm is missing.
pub const SKIP_ENV: &str = "BURROW_SKIP_OIDC_TESTS";
/// Longest wait for `npm ci` (a cold npm cache downloads about 100 small
/// packages).
pub const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait for the provider's ready line.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one control API request.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

const APT_LINE: &str = "apt-get install -y nodejs npm";

// ---------------------------------------------------------------------------
// Finding Node.js
// ---------------------------------------------------------------------------

/// The `node` and `npm` programs.
#[derive(Clone, Debug)]
pub struct NodeBins {
    pub node: PathBuf,
    pub npm: PathBuf,
}

/// `$env` if set, else the first of `names` on PATH.
fn find_program(env: &str, names: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{env}={} is not a file", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("none of {names:?} found on PATH (or set {env} to its path)"))
}

/// Node.js and npm, or `None` (after saying so) when one is missing and
/// `BURROW_SKIP_OIDC_TESTS=1`. Panics when one is missing otherwise: a
/// sign-in test that passes without an identity provider proves nothing.
pub fn node_or_skip(test: &str) -> Option<NodeBins> {
    let node = find_program("BURROW_NODE", &["node", "nodejs"]);
    let npm = find_program("BURROW_NPM", &["npm"]);
    match (node, npm) {
        (Ok(node), Ok(npm)) => Some(NodeBins { node, npm }),
        (node, npm) => {
            let why = [node.err(), npm.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
                eprintln!("SKIPPED OIDC test {test}: {why} ({SKIP_ENV}=1)");
                None
            } else {
                panic!(
                    "OIDC test {test} needs Node.js and npm to run its OpenID Provider: {why}.\n\
                     Install them (Debian: `{APT_LINE}`, as .ci/run does), or set \
                     {SKIP_ENV}=1 to skip the sign-in tests."
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Installing the packages (once per lockfile)
// ---------------------------------------------------------------------------

/// `tests/oidc` in the source tree.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("oidc")
}

/// Runs `cmd` with its output in `log`, for at most `limit`; `Err` with the
/// tail of the log when it fails or takes too long.
fn run_bounded(mut cmd: Command, log: &Path, limit: Duration) -> Result<(), String> {
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("dup log: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
            break st;
        }
        if Instant::now() >= deadline {
            // npm runs children of its own: end the whole group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{cmd:?} did not finish within {limit:?}; output:\n{}",
                log_tail(log)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({status}); output:\n{}",
            log_tail(log)
        ))
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let start = text.len().saturating_sub(4000);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// The `node_modules` directory installed from the committed lockfile,
/// shared by every provider (see the module docs). Panics, with npm's
/// output, when the install fails.
pub fn installed_modules(bins: &NodeBins) -> PathBuf {
    static MODULES: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    MODULES
        .get_or_init(|| install_modules(bins))
        .clone()
        .unwrap_or_else(|e| panic!("installing the OpenID Provider's npm packages: {e}"))
}

fn install_modules(bins: &NodeBins) -> Result<PathBuf, String> {
    let src = fixture_dir();
    let read = |name: &str| {
        std::fs::read(src.join(name)).map_err(|e| format!("read tests/oidc/{name}: {e}"))
    };
    let (package, lock) = (read("package.json")?, read("package-lock.json")?);
    let mut hash = Sha256::new();
    hash.update(&package);
    hash.update([0]);
    hash.update(&lock);
    let key: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tmp = std::env::temp_dir();
    let base = tmp.join(format!("burrow-oidc-npm-{key}"));
    let complete = base.join(".complete");
    if complete.is_file() {
        return Ok(base.join("node_modules"));
    }

    // Another test binary (or another `cargo test`) may be installing the
    // same lockfile right now: take the lock, bounded.
    let lock_path = tmp.join(format!("burrow-oidc-npm-{key}.lock"));
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("open {}: {e}", lock_path.display()))?;
    let deadline = Instant::now() + INSTALL_TIMEOUT + Duration::from_secs(30);
    loop {
        match lock_file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(format!("lock {}: {e}", lock_path.display())),
        }
    }
    if complete.is_file() {
        return Ok(base.join("node_modules"));
    }

    let started = Instant::now();
    let staging = tmp.join(format!("burrow-oidc-npm-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| format!("create {}: {e}", staging.display()))?;
    std::fs::write(staging.join("package.json"), &package).map_err(|e| e.to_string())?;
    std::fs::write(staging.join("package-lock.json"), &lock).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&bins.npm);
    cmd.args([
        "ci",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--prefer-offline",
        "--loglevel=warn",
    ])
    .current_dir(&staging);
    let result = run_bounded(cmd, &staging.join("npm-ci.log"), INSTALL_TIMEOUT);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    std::fs::write(staging.join(".complete"), &key).map_err(|e| e.to_string())?;
    // A directory left by an install that died half-way is not complete.
    let _ = std::fs::remove_dir_all(&base);
    std::fs::rename(&staging, &base).map_err(|e| format!("rename to {}: {e}", base.display()))?;
    eprintln!(
        "oidc: npm ci into {} took {:.1?}",
        base.display(),
        started.elapsed()
    );
    Ok(base.join("node_modules"))
}

// ---------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------

/// A client registered at the provider (a relying party such as burrow).
#[derive(Clone, Debug)]
pub struct OidcClient {
    pub id: String,
    pub secret: String,
    pub redirect_uris: Vec<String>,
}

impl OidcClient {
    pub fn new(id: &str, secret: &str, redirect_uris: &[&str]) -> OidcClient {
        OidcClient {
            id: id.to_string(),
            secret: secret.to_string(),
            redirect_uris: redirect_uris.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Client `id` with a random secret and burrow's one redirect URI for a
    /// server whose HTTPS port is `https_port`:
    /// `https://login.localhost:PORT/callback`.
    pub fn for_burrow(id: &str, https_port: u16) -> OidcClient {
        OidcClient {
            id: id.to_string(),
            secret: random_token(18),
            redirect_uris: vec![format!("https://login.localhost:{https_port}/callback")],
        }
    }

    fn metadata(&self) -> Value {
        json!({
            "client_id": self.id,
            "client_secret": self.secret,
            "redirect_uris": self.redirect_uris,
        })
    }
}

/// Serve the provider over https.
#[derive(Clone, Debug)]
pub struct OidcTls {
    /// The certificate chain (PEM) it serves, leaf first.
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything a provider can be started with.
#[derive(Clone, Debug, Default)]
pub struct OidcConfig {
    pub clients: Vec<OidcClient>,
    /// Extra test users (or replacements for alice, bob, carol, dave):
    /// objects with `username` and any of `password`, `email`,
    /// `email_verified`, `name`, `groups`.
    pub users: Vec<Value>,
    /// Serve https with this certificate (valid for `host`).
    pub tls: Option<OidcTls>,
    /// The host name in the issuer URL (`SCHEME://HOST:PORT`): `127.0.0.1`
    /// unless set (`localhost` with [`OidcProvider::start_tls`]). The
    /// server listens on 127.0.0.1 whatever the name. Tests that send the
    /// browser to the provider need `localhost`: the test Chromium resolves
    /// `localhost` and `*.localhost` only, and its resolver rules catch IP
    /// literals too.
    pub host: Option<String>,
}

/// One fault of the control API (`POST /__control/mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The ID token's `aud` is another client's.
    WrongAud,
    /// The ID token's `iss` is not the issuer.
    WrongIss,
    /// The ID token's `nonce` is not the one asked for.
    WrongNonce,
    /// The ID token expired an hour ago.
    Expired,
    /// The ID token's `iat` is an hour ahead.
    FutureIat,
    /// The ID token is unsigned (`alg: none`).
    AlgNone,
    /// The ID token's signature is by a key not in the JWKS (under the kid
    /// of the real signing key).
    BadSignature,
    /// The ID token is signed by a new key that the JWKS lists from this
    /// response on: valid, for a relying party that fetches the JWKS again.
    UnknownKid,
    /// Discovery, JWKS and token responses are delayed by this long.
    Slow(Duration),
    /// Discovery, JWKS and token requests get a 503.
    Down,
}

impl Fault {
    pub fn name(&self) -> &'static str {
        match self {
            Fault::WrongAud => "wrong-aud",
            Fault::WrongIss => "wrong-iss",
            Fault::WrongNonce => "wrong-nonce",
            Fault::Expired => "expired",
            Fault::FutureIat => "future-iat",
            Fault::AlgNone => "alg-none",
            Fault::BadSignature => "bad-signature",
            Fault::UnknownKid => "unknown-kid",
            Fault::Slow(_) => "slow",
            Fault::Down => "down",
        }
    }

    /// The faults that rewrite the ID token of a token response.
    pub const ID_TOKEN: [Fault; 8] = [
        Fault::WrongAud,
        Fault::WrongIss,
        Fault::WrongNonce,
        Fault::Expired,
        Fault::FutureIat,
        Fault::AlgNone,
        Fault::BadSignature,
        Fault::UnknownKid,
    ];
}

/// How many responses a fault affects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// The next N affected responses, then back to normal.
    Next(u32),
    /// Every one until [`OidcProvider::reset`].
    UntilReset,
}

/// A running provider (see the module docs). Killed on drop.
pub struct OidcProvider {
    child: Child,
    /// Held open: the provider exits when it closes.
    stdin: Option<ChildStdin>,
    issuer: String,
    port: u16,
    /// Its stdout and stderr (echoed to the test's output as `[oidc ...]`).
    pub stdout: OutputBuf,
    pub stderr: OutputBuf,
    control: reqwest::Client,
    control_base: String,
    _dir: TempDir,
}

impl OidcProvider {
    /// A provider over http on `127.0.0.1:PORT` with these clients.
    pub async fn start(bins: &NodeBins, clients: &[OidcClient]) -> OidcProvider {
        OidcProvider::start_with(
            bins,
            OidcConfig {
                clients: clients.to_vec(),
                ..Default::default()
            },
        )
        .await
    }

    /// A provider over https (issuer `https://localhost:PORT`) with these
    /// clients, serving `tls`'s certificate (which must be valid for
    /// `localhost`).
    pub async fn start_tls(bins: &NodeBins, clients: &[OidcClient], tls: OidcTls) -> OidcProvider {
        OidcProvider::start_with(
            bins,
            OidcConfig {
                clients: clients.to_vec(),
                tls: Some(tls),
                host: Some("localhost".into()),
                ..Default::default()
            },
        )
        .await
    }

    pub async fn start_with(bins: &NodeBins, config: OidcConfig) -> OidcProvider {
        let modules = installed_modules(bins);
        let dir = TempDir::new("burrow-oidc");
        let script = dir.path().join("provider.mjs");
        std::fs::copy(fixture_dir().join("provider.mjs"), &script)
            .expect("copy tests/oidc/provider.mjs");
        std::os::unix::fs::symlink(&modules, dir.path().join("node_modules"))
            .expect("symlink node_modules");
        let clients: Vec<Value> = config.clients.iter().map(OidcClient::metadata).collect();
        let clients_file = dir.path().join("clients.json");
        std::fs::write(&clients_file, Value::Array(clients).to_string()).unwrap();
        let users_file = dir.path().join("users.json");
        std::fs::write(&users_file, Value::Array(config.users.clone()).to_string()).unwrap();

        let mut cmd = Command::new(&bins.node);
        cmd.arg(&script)
            .args(["--port", "0"])
            .arg(format!("--clients=@{}", clients_file.display()))
            .arg(format!("--users=@{}", users_file.display()))
            .current_dir(dir.path())
            .env_remove("NODE_OPTIONS")
            .env_remove("OIDC_IGNORE_STDIN")
            .env("NODE_ENV", "test");
        if let Some(tls) = &config.tls {
            let (cert, key) = (
                dir.path().join("tls-cert.pem"),
                dir.path().join("tls-key.pem"),
            );
            std::fs::write(&cert, &tls.cert_pem).unwrap();
            std::fs::write(&key, &tls.key_pem).unwrap();
            cmd.arg(format!("--tls-cert={}", cert.display()))
                .arg(format!("--tls-key={}", key.display()));
        }
        if let Some(host) = &config.host {
            cmd.args(["--host", host]);
        }
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bins.node.display()));
        let (stdout, stderr) = (OutputBuf::default(), OutputBuf::default());
        spawn_reader(
            child.stdout.take().unwrap(),
            stdout.clone(),
            Some("[oidc stdout] ".into()),
        );
        spawn_reader(
            child.stderr.take().unwrap(),
            stderr.clone(),
            Some("[oidc stderr] ".into()),
        );
        let stdin = child.stdin.take();
        let ready = stdout
            .wait_for(START_TIMEOUT, |text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oidc ready: "))
                    .map(|s| s.trim().to_string())
            })
            .await;
        let issuer = match ready {
            Ok(issuer) => issuer,
            Err(seen) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the OpenID Provider did not start: {seen}\nstderr:\n{}",
                    stderr.text()
                );
            }
        };
        eprintln!("oidc: {issuer} ready in {:.1?}", started.elapsed());
        let port: u16 = issuer
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in issuer {issuer}"));
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let control = reqwest::Client::builder()
            .no_proxy()
            // The control channel is the fixture's own; the certificate is
            // checked by the tests that are about it.
            .danger_accept_invalid_certs(true)
            .timeout(CONTROL_TIMEOUT)
            .build()
            .expect("build control client");
        OidcProvider {
            child,
            stdin,
            issuer,
            port,
            stdout,
            stderr,
            control,
            control_base: format!("{scheme}://127.0.0.1:{port}/__control"),
            _dir: dir,
        }
    }

    /// The issuer URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ISSUER/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.control_base);
        let mut req = self.control.request(method.clone(), &url);
        if let Some(body) = &body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("oidc control {method} {url}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "oidc control {method} {url} {body:?}: {status}: {text}"
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("oidc control {method} {url}: not JSON ({e}): {text}"))
    }

    /// Sets the fault mode (replacing the one before) for `times`
    /// responses; answers the provider's state.
    pub async fn set_fault(&self, fault: Fault, times: Times) -> Value {
        let mut body = json!({ "mode": fault.name() });
        if let Times::Next(n) = times {
            body["count"] = json!(n);
        }
        if let Fault::Slow(d) = fault {
            body["delay_ms"] = json!(d.as_millis() as u64);
        }
        self.set_mode_json(body).await
    }

    /// `POST /__control/mode` with any body (e.g. a `slow` mode on other
    /// `endpoints`).
    pub async fn set_mode_json(&self, body: Value) -> Value {
        self.control(reqwest::Method::POST, "/mode", Some(body))
            .await
    }

    /// Back to no fault.
    pub async fn reset(&self) -> Value {
        self.control(reqwest::Method::POST, "/reset", None).await
    }

    /// Rotates the signing key for real: a new key signs from now on, the
    /// old one stays in the JWKS. Returns the new kid.
    pub async fn rotate_keys(&self) -> String {
        let v = self
            .control(
                reqwest::Method::POST,
                "/rotate",
                Some(json!({ "keep_old": true })),
            )
            .await;
        v["kid"].as_str().expect("rotate: kid").to_string()
    }

    /// [`OidcProvider::rotate_keys`], removing every old key from the JWKS.
    pub async fn rotate_keys_dropping_old(&self) -> String {
        let v = self
            .control(
                reqwest::Method::POST,
                "/rotate",
                Some(json!({ "keep_old": false })),
            )
            .await;
        v["kid"].as_str().expect("rotate: kid").to_string()
    }

    /// Replaces the registered clients (sessions and keys stay): for a
    /// redirect URI known only once burrow is up, since the issuer must be
    /// known before burrow starts. Returns the registered client ids.
    pub async fn set_clients(&self, clients: &[OidcClient]) -> Vec<String> {
        let metadata: Vec<Value> = clients.iter().map(OidcClient::metadata).collect();
        let v = self
            .control(
                reqwest::Method::POST,
                "/clients",
                Some(json!({ "clients": metadata })),
            )
            .await;
        v["clients"]
            .as_array()
            .expect("clients")
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect()
    }

    /// Mode, signing kid, published kids.
    pub async fn state(&self) -> Value {
        self.control(reqwest::Method::GET, "/state", None).await
    }

    /// Every event so far, oldest first (see provider.mjs for the fields).
    pub async fn log(&self) -> Vec<Value> {
        let v = self.control(reqwest::Method::GET, "/log", None).await;
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// The events of one `kind` (`token`, `jwks`, `discovery`,
    /// `authorization`, `login`, `userinfo`, `end_session`).
    pub async fn events(&self, kind: &str) -> Vec<Value> {
        self.log()
            .await
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    pub async fn clear_log(&self) {
        self.control(reqwest::Method::DELETE, "/log", None).await;
    }

    /// Stops the provider the way a crashed test run would: closes its
    /// stdin. Returns whether it exited within `timeout`.
    pub async fn close_stdin_and_wait(&mut self, timeout: Duration) -> bool {
        self.stdin.take();
        crate::common::wait_child(&mut self.child, timeout)
            .await
            .is_some()
    }

    /// Sends SIGTERM and waits for the exit status, for at most `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        crate::common::send_signal(self.child.id(), "TERM");
        crate::common::wait_child(&mut self.child, timeout).await
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Helpers for relying-party tests
// ---------------------------------------------------------------------------

/// `n` random bytes from the kernel, base64url (no padding).
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// A PKCE `(code_verifier, code_challenge)` pair, method S256.
pub fn pkce_pair() -> (String, String) {
    let verifier = random_token(32);
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The header and payload of a compact JWT, decoded without any check (a
/// test looking at what the provider sent), and whether it has a signature.
pub fn decode_jwt(token: &str) -> (Value, Value, bool) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let part = |s: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .unwrap_or_else(|e| panic!("JWT part {s}: {e}"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT part {s}: {e}"))
    };
    (part(parts[0]), part(parts[1]), !parts[2].is_empty())
}

/// Seconds since the epoch, as in JWT `iat`/`exp`.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
