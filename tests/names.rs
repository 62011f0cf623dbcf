//! End-to-end tests for names, SSH keys and per-tunnel options, through the
//! real `burrow` binary and the stock OpenSSH client (and autossh):
//!
//! * stable names derived from the client's key (same key → same URL, also
//!   across restarts with the same `--state-dir`), random names for keyless
//!   clients, throwaway names for `random@`;
//! * requested names (`-R api:80:…`), grants in the keys file, reserved
//!   names, names in use, reconnect takeover (also of a half-dead client and
//!   through autossh);
//! * the keys file format, its reload (on change and on SIGHUP) and
//!   `--auth-mode keys`;
//! * per-tunnel options given as the SSH command: `host=`, `auth=`, `allow=`,
//!   `cors=`, `output=json`, `help` and invalid options.
//!
//! The shared harness (`tests/common`) starts burrow and the origin; the ssh
//! clients here are spawned by this file because these tests need control
//! over the key, the user name and the authentication options.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long to wait for text from ssh (URLs, errors, notices).
const TEXT_WAIT: Duration = Duration::from_secs(15);
/// How long to wait for a client to exit once it should.
const EXIT_WAIT: Duration = Duration::from_secs(10);
/// How long a change of the keys file may take to apply (polled every 1 s).
const RELOAD_WAIT: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------
// Output capture
// ---------------------------------------------------------------------------

/// Text a child process wrote on one stream: the harness's buffer, filled
/// by its reader thread.
type Buf = OutputBuf;

// ---------------------------------------------------------------------------
// Keys and ssh clients
// ---------------------------------------------------------------------------

/// A throwaway ed25519 key pair (`Key::with_comment`).
type Key = SshKeyPair;

/// How the client authenticates.
#[derive(Clone, Copy)]
enum Ident<'a> {
    /// `-i KEY -o IdentitiesOnly=yes`.
    Key(&'a Key),
    /// No identity at all: `-o IdentitiesOnly=yes -o IdentityFile=/dev/null`.
    NoIdentity,
    /// `-o PubkeyAuthentication=no`.
    NoPubkey,
}

/// The options every client here uses (like the harness's): no config, no
/// known hosts, the burrow's SSH port, plus the identity options. The agent
/// is removed from the environment so no stray key can be offered.
fn client_args(cmd: &mut Command, ssh_port: u16, ident: Ident<'_>, batch: bool) {
    cmd.args(["-F", "/dev/null"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "GlobalKnownHostsFile=/dev/null"])
        .args(["-o", "ConnectTimeout=10"])
        .arg("-p")
        .arg(ssh_port.to_string())
        .env_remove("SSH_AUTH_SOCK");
    match ident {
        Ident::Key(key) => {
            cmd.arg("-i")
                .arg(&key.path)
                .args(["-o", "IdentitiesOnly=yes"]);
        }
        Ident::NoIdentity => {
            cmd.args(["-o", "IdentitiesOnly=yes", "-o", "IdentityFile=/dev/null"]);
        }
        Ident::NoPubkey => {
            cmd.args(["-o", "PubkeyAuthentication=no"]);
        }
    }
    if batch {
        cmd.args(["-o", "BatchMode=yes"]);
    }
}

/// A running client process (ssh or autossh), killed on drop.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Buf,
    err: Buf,
    exit: Option<ExitStatus>,
}

impl Client {
    fn spawn(mut cmd: Command, tag: &str) -> Client {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        let (out, err) = capture_output(&mut child, Some(tag));
        let stdin = child.stdin.take();
        Client {
            child,
            stdin,
            out,
            err,
            exit: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.out.text(),
            self.err.text()
        )
    }

    async fn wait_text(&self, stderr: bool, needle: &str, timeout: Duration) {
        let buf = if stderr { &self.err } else { &self.out };
        if let Err(seen) = buf
            .wait_for(timeout, |t| t.contains(needle).then_some(()))
            .await
        {
            panic!(
                "expected {needle:?} on ssh {}; got {seen:?}\n{}",
                if stderr { "stderr" } else { "stdout" },
                self.output()
            );
        }
    }

    /// Waits for `needle` on stdout.
    async fn wait_out(&self, needle: &str) {
        self.wait_text(false, needle, TEXT_WAIT).await
    }

    /// Waits for `needle` on stderr.
    async fn wait_err(&self, needle: &str) {
        self.wait_text(true, needle, TEXT_WAIT).await
    }

    /// The first tunnel URL on stdout (the session banner).
    async fn url(&self) -> TUrl {
        self.url_on(false).await
    }

    /// The first tunnel URL on stderr (the authentication banner).
    async fn url_from_stderr(&self) -> TUrl {
        self.url_on(true).await
    }

    async fn url_on(&self, stderr: bool) -> TUrl {
        let buf = if stderr { &self.err } else { &self.out };
        match buf
            .wait_for(TEXT_WAIT, |t| urls_in(t).into_iter().next())
            .await
        {
            Ok(u) => u,
            Err(seen) => panic!(
                "no tunnel URL on ssh {}: {seen:?}\n{}",
                if stderr { "stderr" } else { "stdout" },
                self.output()
            ),
        }
    }

    fn write_stdin(&mut self, data: &[u8]) {
        let s = self.stdin.as_mut().expect("stdin pipe");
        s.write_all(data).expect("write to ssh stdin");
        s.flush().expect("flush ssh stdin");
    }

    /// Waits (bounded) for the process to exit.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let deadline = Instant::now() + timeout;
            loop {
                if let Ok(Some(st)) = self.child.try_wait() {
                    self.exit = Some(st);
                    break;
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.exit
    }

    /// Waits for the process to exit; panics with its output otherwise.
    async fn expect_exit(&mut self, what: &str) -> ExitStatus {
        match self.wait_exit(EXIT_WAIT).await {
            Some(st) => st,
            None => panic!("{what}: the client did not exit\n{}", self.output()),
        }
    }

    /// Asserts the process is still running.
    fn assert_running(&mut self, what: &str) {
        if let Ok(Some(st)) = self.child.try_wait() {
            self.exit = Some(st);
            panic!("{what}: the client exited ({st})\n{}", self.output());
        }
    }

    fn kill(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            self.exit = self.child.wait().ok();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

/// `ssh <identity options> [BatchMode] ARGS USER@127.0.0.1 REMOTE...`
fn ssh_as(
    burrow: &Burrow,
    ident: Ident<'_>,
    batch: bool,
    user: &str,
    args: &[&str],
    remote: &[&str],
) -> Client {
    let mut cmd = Command::new("ssh");
    client_args(&mut cmd, burrow.ssh_port(), ident, batch);
    cmd.args(args).arg(format!("{user}@127.0.0.1")).args(remote);
    Client::spawn(cmd, "ssh")
}

/// `ssh` as user `test`; BatchMode for keyed clients only, because
/// OpenSSH's BatchMode disables the keyboard-interactive step that keyless
/// clients get in with.
fn ssh(burrow: &Burrow, ident: Ident<'_>, args: &[&str], remote: &[&str]) -> Client {
    let batch = matches!(ident, Ident::Key(_));
    ssh_as(burrow, ident, batch, "test", args, remote)
}

/// Like [`send_signal`], ignoring failures (for clean-up in `Drop`).
fn try_signal(pid: u32, sig: &str) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -{sig} {pid} 2>/dev/null")])
        .status();
}

// ---------------------------------------------------------------------------
// URLs, burrow, HTTP
// ---------------------------------------------------------------------------

/// A tunnel URL `https://NAME.localhost:PORT` as printed by burrow (any
/// name: generated ones and requested ones like `api`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct TUrl {
    name: String,
    port: u16,
    url: String,
}

/// Every `https://LABEL.localhost:PORT` in `text`, de-duplicated, in order.
fn urls_in(text: &str) -> Vec<TUrl> {
    let mut out: Vec<TUrl> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("https://") {
        rest = &rest[i + "https://".len()..];
        let name_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            .count();
        let name = &rest[..name_len];
        let Some(tail) = rest[name_len..].strip_prefix(&format!(".{DOMAIN}:")) else {
            continue;
        };
        let digits: String = tail
            .bytes()
            .take_while(u8::is_ascii_digit)
            .map(char::from)
            .collect();
        let (Ok(port), false) = (digits.parse::<u16>(), name.is_empty()) else {
            continue;
        };
        let u = TUrl {
            name: name.to_string(),
            port,
            url: format!("https://{name}.{DOMAIN}:{port}"),
        };
        if !out.contains(&u) {
            out.push(u);
        }
    }
    out
}

/// `adjective-noun-0123abcd`
fn is_generated_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 3
        && parts[..2]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[2].len() == 8
        && parts[2]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Starts burrow with `--state-dir STATE` (explicitly: burrow's default is
/// `state` in its working directory, which the harness does not set) and
/// without the per-IP connection, handshake and tunnel caps, which every
/// client here would share (127.0.0.1) and which tests/limits.rs covers.
async fn start(state: &Path, extra: &[&str]) -> Burrow {
    let mut args = vec!["--state-dir", path_str(state)];
    args.extend_from_slice(&SSH_LIMITS_OFF);
    args.extend_from_slice(extra);
    Burrow::start(&args).await
}

/// `-R 80:127.0.0.1:PORT` for `origin`, optionally with a bind address.
fn fwd(bind: Option<&str>, origin: &Origin) -> String {
    match bind {
        Some(b) => format!("{b}:80:127.0.0.1:{}", origin.port),
        None => format!("80:127.0.0.1:{}", origin.port),
    }
}

async fn get(
    client: &reqwest::Client,
    burrow: &Burrow,
    name: &str,
    path: &str,
) -> reqwest::Response {
    let url = burrow.https_url(&format!("{name}.{DOMAIN}"), path);
    client
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// `GET /whoami` on tunnel `name`: the status and the body.
async fn whoami(client: &reqwest::Client, burrow: &Burrow, name: &str) -> (u16, String) {
    let resp = get(client, burrow, name, "/whoami").await;
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Asserts tunnel `name` is served by the origin labelled `label`.
async fn assert_serves(client: &reqwest::Client, burrow: &Burrow, name: &str, label: &str) {
    let (status, body) = whoami(client, burrow, name).await;
    assert_eq!(
        (status, body.as_str()),
        (200, label),
        "{name}.{DOMAIN} should be served by origin {label:?}"
    );
}

/// Polls until tunnel `name` is served by origin `label` (bounded).
async fn wait_serves(
    client: &reqwest::Client,
    burrow: &Burrow,
    name: &str,
    label: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(3), whoami(client, burrow, name));
        let last = match attempt.await {
            Ok((200, body)) if body == label => return start.elapsed(),
            Ok(other) => format!("{other:?}"),
            Err(_) => "no answer within 3 s".to_string(),
        };
        if Instant::now() >= deadline {
            panic!("{name}.{DOMAIN} not served by {label:?} within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client with `key` forwarding to `origin`, with the per-tunnel
/// `options` as its command, and its URL.
async fn with_options(
    burrow: &Burrow,
    key: &Key,
    origin: &Origin,
    options: &[&str],
) -> (Client, TUrl) {
    let command: Vec<&str> = std::iter::once("--")
        .chain(options.iter().copied())
        .collect();
    let client = ssh(
        burrow,
        Ident::Key(key),
        &["-R", &fwd(None, origin)],
        &command,
    );
    let url = client.url().await;
    (client, url)
}

/// Asserts tunnel `name` does not exist (404).
async fn assert_no_tunnel(client: &reqwest::Client, burrow: &Burrow, name: &str) {
    let (status, body) = whoami(client, burrow, name).await;
    assert_eq!(status, 404, "{name}.{DOMAIN} should not exist: {body}");
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Replaces `path` atomically (temporary file + rename), so burrow's 1 s
/// poll never sees a half-written file. With `mtime`, the new file gets
/// that modification time before it appears.
fn write_atomic(path: &Path, text: &str, mtime: Option<std::time::SystemTime>) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write keys file");
    if let Some(t) = mtime {
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(t))
            .expect("set mtime");
    }
    std::fs::rename(&tmp, path).expect("rename keys file");
}

fn mtime(path: &Path) -> std::time::SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

// ---------------------------------------------------------------------------
// Stable, random and throwaway names
// ---------------------------------------------------------------------------

/// Same key → same URL on every connection and across a restart with the
/// same state dir; different key → different URL; the secret lives in the
/// state dir (0600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stable_name_from_key_survives_reconnect_and_restart() {
    let dir = TempDir::new("burrow-names-stable");
    let state = dir.path().join("state");
    let origin = Origin::start("names-stable").await;
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");

    let burrow = start(&state, &[]).await;
    let client = burrow.https_client();

    let mut first = ssh(&burrow, Ident::Key(&k1), &["-R", &fwd(None, &origin)], &[]);
    let u1 = first.url().await;
    assert!(is_generated_name(&u1.name), "stable name format: {u1:?}");
    assert_eq!(u1.port, burrow.https_port());
    first
        .wait_out(&format!("Stable URL from your SSH key {}", k1.fingerprint))
        .await;
    assert_serves(&client, &burrow, &u1.name, "names-stable").await;
    first.kill();

    // Reconnect with the same key: same URL.
    let second = ssh(&burrow, Ident::Key(&k1), &["-R", &fwd(None, &origin)], &[]);
    assert_eq!(second.url().await, u1, "same key, same URL");
    assert_serves(&client, &burrow, &u1.name, "names-stable").await;
    drop(second);

    // Another key: another stable URL.
    let other = ssh(&burrow, Ident::Key(&k2), &["-R", &fwd(None, &origin)], &[]);
    let u2 = other.url().await;
    assert!(is_generated_name(&u2.name), "{u2:?}");
    assert_ne!(u2.name, u1.name, "different keys must get different names");
    other
        .wait_out(&format!("Stable URL from your SSH key {}", k2.fingerprint))
        .await;
    drop(other);

    // -N: no URL is printed for keyed clients (documented), but the tunnel
    // lives at the same stable name.
    let quiet = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-N", "-R", &fwd(None, &origin)],
        &[],
    );
    wait_serves(&client, &burrow, &u1.name, "names-stable", TEXT_WAIT).await;
    drop(quiet);

    // The secret: 32 hex bytes, mode 0600, in the given state dir.
    let secret_path = state.join("name_secret");
    let secret = std::fs::read_to_string(&secret_path).expect("state/name_secret exists");
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    assert!(secret.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "name_secret mode {mode:o}");
    }
    drop(client);
    drop(burrow);

    // Restart on the same state dir: the same key gets the same name. (The
    // harness gives each instance a fresh host key; clients here do not
    // check host keys, and names depend only on the state dir's secret.)
    let burrow = start(&state, &[]).await;
    let client = burrow.https_client();
    let again = ssh(&burrow, Ident::Key(&k1), &["-R", &fwd(None, &origin)], &[]);
    let u3 = again.url().await;
    assert_eq!(u3.name, u1.name, "stable name must survive a restart");
    assert_eq!(u3.port, burrow.https_port());
    assert_serves(&client, &burrow, &u3.name, "names-stable").await;
    assert_eq!(
        std::fs::read_to_string(&secret_path).unwrap(),
        secret,
        "the secret must be reused, not regenerated"
    );
    drop(again);
    drop(burrow);

    // A different state dir (another secret) gives the same key another name.
    let dir2 = TempDir::new("burrow-names-stable2");
    let burrow = start(&dir2.path().join("state"), &[]).await;
    let elsewhere = ssh(&burrow, Ident::Key(&k1), &["-R", &fwd(None, &origin)], &[]);
    let u4 = elsewhere.url().await;
    assert_ne!(
        u4.name, u1.name,
        "names are keyed by the state dir's secret"
    );
}

/// Keyless clients get in through keyboard-interactive with no prompt and
/// get a random name, shown on stderr during authentication (also with
/// -N); "none" alone is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_clients_get_random_names() {
    let dir = TempDir::new("burrow-names-keyless");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-keyless").await;
    let client = burrow.https_client();

    // No identities at all, -N: the URL comes on stderr during auth.
    let a = ssh(
        &burrow,
        Ident::NoIdentity,
        &["-N", "-R", &fwd(None, &origin)],
        &[],
    );
    let ua = a.url_from_stderr().await;
    assert!(is_generated_name(&ua.name), "{ua:?}");
    // The authentication banner names it (once), saying it is random.
    let login_line = format!("burrow: your URL is {} (random)", ua.url);
    let stderr = a.err.text();
    assert!(
        stderr.lines().any(|l| l.starts_with(&login_line)),
        "no {login_line:?} line on stderr: {stderr:?}"
    );
    wait_serves(&client, &burrow, &ua.name, "names-keyless", TEXT_WAIT).await;

    // Another keyless connection: another random name.
    let b = ssh(
        &burrow,
        Ident::NoIdentity,
        &["-N", "-R", &fwd(None, &origin)],
        &[],
    );
    let ub = b.url_from_stderr().await;
    assert_ne!(ub.name, ua.name, "random names differ per connection");
    wait_serves(&client, &burrow, &ub.name, "names-keyless", TEXT_WAIT).await;

    // PubkeyAuthentication=no with a session: banner on stdout says it is
    // random, and it is the URL announced on stderr.
    let c = ssh(&burrow, Ident::NoPubkey, &["-R", &fwd(None, &origin)], &[]);
    let uc = c.url().await;
    c.wait_out("Random URL: ").await;
    assert_eq!(c.url_from_stderr().await, uc, "stderr and banner agree");
    assert!(![&ua.name, &ub.name].contains(&&uc.name));
    assert_serves(&client, &burrow, &uc.name, "names-keyless").await;

    // A key cannot take an anonymous client's random name.
    let k = Key::with_comment("k");
    let thief = ssh(
        &burrow,
        Ident::Key(&k),
        &["-R", &fwd(Some(&ua.name), &origin)],
        &[],
    );
    thief
        .wait_out(&format!("ERROR: the name \"{}\" is in use", ua.name))
        .await;
    assert_serves(&client, &burrow, &ua.name, "names-keyless").await;

    // "none" is refused: a keyless client in BatchMode (which disables
    // keyboard-interactive) has nothing else to try.
    let mut none = ssh_as(
        &burrow,
        Ident::NoPubkey,
        true,
        "test",
        &["-N", "-R", &fwd(None, &origin)],
        &[],
    );
    let st = none.expect_exit("none-only client").await;
    assert!(!st.success(), "{}", none.output());
    none.wait_err("Permission denied").await;
}

/// `random@` gets a throwaway random name at once, whatever the key, even
/// in BatchMode and without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_user_gets_throwaway_name() {
    let dir = TempDir::new("burrow-names-random");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-random").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");

    let stable = ssh(&burrow, Ident::Key(&k), &["-R", &fwd(None, &origin)], &[]);
    let us = stable.url().await;

    let t1 = ssh_as(
        &burrow,
        Ident::Key(&k),
        true,
        "random",
        &["-R", &fwd(None, &origin)],
        &[],
    );
    let u1 = t1.url().await;
    t1.wait_out("Throwaway URL").await;
    assert!(is_generated_name(&u1.name), "{u1:?}");
    assert_ne!(u1.name, us.name, "random@ ignores the key");
    assert_serves(&client, &burrow, &u1.name, "names-random").await;
    // The stable tunnel of the same key is untouched.
    assert_serves(&client, &burrow, &us.name, "names-random").await;

    // Keyless and BatchMode: accepted too.
    let t3 = ssh_as(
        &burrow,
        Ident::NoPubkey,
        true,
        "random",
        &["-R", &fwd(None, &origin)],
        &[],
    );
    let u3 = t3.url().await;
    t3.wait_out("Throwaway URL").await;
    assert!(![&us.name, &u1.name].contains(&&u3.name));
    assert_serves(&client, &burrow, &u3.name, "names-random").await;
}

/// `ssh -N -R 80:… random@HOST` gets a throwaway random name, and with -N
/// there is no session banner to show it: the URL is printed on stderr
/// before login completes (as the README promises for `-N`), keyed or
/// not, so the tunnel is never live under a name nobody can learn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_user_with_dash_n_is_shown_its_url() {
    let dir = TempDir::new("burrow-names-random-n");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-random-n").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");
    for (what, ident) in [("keyed", Ident::Key(&k)), ("keyless", Ident::NoPubkey)] {
        let c = ssh_as(
            &burrow,
            ident,
            true,
            "random",
            &["-N", "-R", &fwd(None, &origin)],
            &[],
        );
        let Ok(u) = c
            .err
            .wait_for(TEXT_WAIT, |t| urls_in(t).into_iter().next())
            .await
        else {
            panic!(
                "{what} random@ with -N: no URL on stderr (stats: {}), the throwaway tunnel is unusable\n{}",
                burrow.stats_with_subdomains().await,
                c.output()
            );
        };
        assert!(is_generated_name(&u.name), "{u:?}");
        wait_serves(&client, &burrow, &u.name, "names-random-n", TEXT_WAIT).await;
    }
}

// ---------------------------------------------------------------------------
// Requested names, grants, reserved names
// ---------------------------------------------------------------------------

/// `-R NAME:80:…` asks for a name: granted, free, reserved, another key's,
/// in use; anonymous clients get a note; generic bind addresses ask for
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_names_grants_and_refusals() {
    let dir = TempDir::new("burrow-names-requested");
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");
    let k3 = Key::with_comment("k3");
    let keys_file = dir.path().join("keys");
    write_atomic(&keys_file, &format!("names=api,www {}\n", k1.public), None);
    let burrow = start(
        &dir.path().join("state"),
        &["--keys-file", path_str(&keys_file)],
    )
    .await;
    let a = Origin::start("names-req-a").await;
    let b = Origin::start("names-req-b").await;
    let client = burrow.https_client();
    let port = burrow.https_port();

    // Granted name.
    let api = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("api"), &a)],
        &[],
    );
    let u = api.url().await;
    assert_eq!(u.url, format!("https://api.{DOMAIN}:{port}"));
    assert_serves(&client, &burrow, "api", "names-req-a").await;

    // Another key asks for it: refused, with the reason in the session.
    let other = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-R", &fwd(Some("api"), &b)],
        &[],
    );
    other
        .wait_out("ERROR: the name \"api\" belongs to another key")
        .await;
    assert!(urls_in(&other.out.text()).is_empty(), "{}", other.output());
    drop(other);
    // ... and with ExitOnForwardFailure=yes ssh exits non-zero.
    let mut strict = ssh(
        &burrow,
        Ident::Key(&k2),
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-N",
            "-R",
            &fwd(Some("api"), &b),
        ],
        &[],
    );
    let st = strict
        .expect_exit("ExitOnForwardFailure, name of another key")
        .await;
    assert!(!st.success(), "{}", strict.output());
    strict.wait_err("remote port forwarding failed").await;
    assert_serves(&client, &burrow, "api", "names-req-a").await;

    // Reserved (default list) and granted to nobody.
    for name in ["mail", "admin", "status", "root", "ssh"] {
        let r = ssh(&burrow, Ident::Key(&k2), &["-R", &fwd(Some(name), &b)], &[]);
        r.wait_out(&format!("ERROR: the name \"{name}\" is reserved"))
            .await;
        assert!(urls_in(&r.out.text()).is_empty(), "{}", r.output());
    }
    // A reserved name the keys file grants to another key.
    let r = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-R", &fwd(Some("www"), &b)],
        &[],
    );
    r.wait_out("ERROR: the name \"www\" belongs to another key")
        .await;
    drop(r);
    // A reserved name the keys file grants to this key: allowed, asked as
    // NAME.DOMAIN.
    let www = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("www.localhost"), &a)],
        &[],
    );
    assert_eq!(www.url().await.name, "www");
    assert_serves(&client, &burrow, "www", "names-req-a").await;

    // A free name: anyone with a key may have it ...
    let free = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-R", &fwd(Some("free-name"), &b)],
        &[],
    );
    assert_eq!(free.url().await.name, "free-name");
    assert_serves(&client, &burrow, "free-name", "names-req-b").await;
    // ... but not while another key holds it.
    let busy = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("free-name"), &a)],
        &[],
    );
    busy.wait_out("ERROR: the name \"free-name\" is in use")
        .await;
    assert_serves(&client, &burrow, "free-name", "names-req-b").await;

    // What is no name at all: refused, with what a name may be. Among
    // them, what a browser would read as an IPv4 address or not at all.
    for bad in ["my_app", "app.0x7f", "app.example.1", "xn--zz.example.org"] {
        let r = ssh(&burrow, Ident::Key(&k2), &["-R", &fwd(Some(bad), &b)], &[]);
        r.wait_out(&format!(
            "ERROR: \"{bad}\" is not a name this server can give: use a DNS label"
        ))
        .await;
        assert!(urls_in(&r.out.text()).is_empty(), "{}", r.output());
    }

    // Anonymous clients asking for a name get a random one and a note.
    let anon = ssh(
        &burrow,
        Ident::NoPubkey,
        &["-R", &fwd(Some("wanted"), &b)],
        &[],
    );
    let ua = anon.url().await;
    assert!(is_generated_name(&ua.name), "{ua:?}");
    anon.wait_out(
        "NOTE: you asked for the name \"wanted\", but names are for SSH keys: you got a random name",
    )
    .await;
    assert_serves(&client, &burrow, &ua.name, "names-req-b").await;
    assert_no_tunnel(&client, &burrow, "wanted").await;

    // Generic bind addresses ask for no name: the key's stable name.
    let plain = ssh(&burrow, Ident::Key(&k3), &["-R", &fwd(None, &a)], &[]);
    let stable = plain.url().await;
    drop(plain);
    for bind in ["localhost", "0.0.0.0", "127.0.0.1", "", "*"] {
        let c = ssh(&burrow, Ident::Key(&k3), &["-R", &fwd(Some(bind), &a)], &[]);
        let u = c.url().await;
        assert_eq!(u, stable, "bind address {bind:?} must mean no name");
        let out = c.out.text();
        assert!(
            !out.contains("ERROR") && !out.contains("NOTE"),
            "bind address {bind:?}: {out}"
        );
        assert_serves(&client, &burrow, &stable.name, "names-req-a").await;
    }
}

/// `--reserved-names` replaces the default list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_names_flag_replaces_the_default_list() {
    let dir = TempDir::new("burrow-names-reserved");
    let burrow = start(
        &dir.path().join("state"),
        &["--reserved-names", "blocked,Shop"],
    )
    .await;
    let origin = Origin::start("names-reserved").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");

    for name in ["blocked", "shop"] {
        let r = ssh(
            &burrow,
            Ident::Key(&k),
            &["-R", &fwd(Some(name), &origin)],
            &[],
        );
        r.wait_out(&format!("ERROR: the name \"{name}\" is reserved"))
            .await;
    }
    // `www` is no longer reserved with this list.
    let www = ssh(
        &burrow,
        Ident::Key(&k),
        &["-R", &fwd(Some("www"), &origin)],
        &[],
    );
    assert_eq!(www.url().await.name, "www");
    assert_serves(&client, &burrow, "www", "names-reserved").await;
}

// ---------------------------------------------------------------------------
// Takeover
// ---------------------------------------------------------------------------

/// A half-dead client (SIGSTOPped: it cannot answer) is replaced at once by
/// a new connection with the same key; after SIGCONT the old one is told
/// and closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_replaces_half_dead_connection_of_same_key() {
    let dir = TempDir::new("burrow-names-takeover");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let a = Origin::start("names-half-dead-a").await;
    let b = Origin::start("names-half-dead-b").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");

    let mut old = ssh(&burrow, Ident::Key(&k), &["-R", &fwd(None, &a)], &[]);
    let u = old.url().await;
    assert_serves(&client, &burrow, &u.name, "names-half-dead-a").await;

    send_signal(old.pid(), "STOP");
    let new = ssh(&burrow, Ident::Key(&k), &["-R", &fwd(None, &b)], &[]);
    assert_eq!(new.url().await, u, "same key, same URL");
    // The new connection serves from the first request on (a request
    // routed to the stopped client would hang for 10 s, then 504).
    let first = tokio::time::timeout(Duration::from_secs(5), whoami(&client, &burrow, &u.name))
        .await
        .expect("first request after the takeover did not answer within 5 s");
    assert_eq!(first, (200, "names-half-dead-b".to_string()));
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));

    // Resumed, the old client learns what happened and is closed (it has no
    // tunnel left).
    send_signal(old.pid(), "CONT");
    old.wait_out(&format!(
        "NOTICE: {} was taken over by a newer connection with the same SSH key",
        u.url
    ))
    .await;
    old.expect_exit("old connection after takeover").await;
    assert_serves(&client, &burrow, &u.name, "names-half-dead-b").await;
}

/// Takeover of requested names: a connection that keeps other tunnels gets
/// a notice and stays; one left without tunnels is closed (with or without
/// a session); another key can never take the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_of_requested_name_and_other_keys_never() {
    let dir = TempDir::new("burrow-names-takeover2");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let a = Origin::start("names-take-a").await;
    let b = Origin::start("names-take-b").await;
    let client = burrow.https_client();
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");

    // conn1: `myapp` and a second (stable) tunnel.
    let mut conn1 = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("myapp"), &a), "-R", &fwd(None, &a)],
        &[],
    );
    let urls = conn1
        .out
        .wait_for(TEXT_WAIT, |t| {
            let u = urls_in(t);
            (u.len() >= 2).then_some(u)
        })
        .await
        .unwrap_or_else(|seen| panic!("two URLs expected: {seen}"));
    let myapp = urls
        .iter()
        .find(|u| u.name == "myapp")
        .expect("myapp URL")
        .clone();
    let other = urls.iter().find(|u| u.name != "myapp").unwrap().clone();
    assert_serves(&client, &burrow, "myapp", "names-take-a").await;

    // Another key: never, not even the key's stable name.
    for name in ["myapp", other.name.as_str()] {
        let thief = ssh(&burrow, Ident::Key(&k2), &["-R", &fwd(Some(name), &b)], &[]);
        thief
            .wait_out(&format!("ERROR: the name \"{name}\" is in use"))
            .await;
    }
    assert_serves(&client, &burrow, "myapp", "names-take-a").await;
    assert_serves(&client, &burrow, &other.name, "names-take-a").await;

    // conn2 (same key) takes `myapp`; conn1 keeps its other tunnel.
    let mut conn2 = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("myapp"), &b)],
        &[],
    );
    assert_eq!(conn2.url().await, myapp);
    assert_serves(&client, &burrow, "myapp", "names-take-b").await;
    conn1
        .wait_out(&format!(
            "NOTICE: {} was taken over by a newer connection with the same SSH key",
            myapp.url
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn1.assert_running("a connection that still has a tunnel");
    assert_serves(&client, &burrow, &other.name, "names-take-a").await;

    // conn3 (-N, same key) takes it from conn2, which has nothing left.
    let mut conn3 = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-N", "-R", &fwd(Some("myapp"), &a)],
        &[],
    );
    conn2
        .wait_out(&format!("NOTICE: {} was taken over", myapp.url))
        .await;
    conn2
        .expect_exit("session connection left without tunnels")
        .await;
    wait_serves(&client, &burrow, "myapp", "names-take-a", TEXT_WAIT).await;
    conn3.assert_running("the new -N connection");

    // conn4 takes it from the -N conn3, which is closed too.
    let conn4 = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("myapp"), &b)],
        &[],
    );
    assert_eq!(conn4.url().await, myapp);
    conn3
        .expect_exit("-N connection left without tunnels")
        .await;
    assert_serves(&client, &burrow, "myapp", "names-take-b").await;
}

// ---------------------------------------------------------------------------
// autossh
// ---------------------------------------------------------------------------

/// Children of `pid`, from /proc (no procps needed).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// autossh and its ssh child: SIGTERM to autossh (it then ends its child)
/// on drop, SIGKILL to both if that does not work. autossh must not outlive
/// the test: with AUTOSSH_GATETIME=0 it would retry forever.
struct AutoSsh {
    client: Client,
}

impl AutoSsh {
    fn ssh_children(&self) -> Vec<u32> {
        children_of(self.client.pid())
    }

    /// Waits (bounded) for autossh to have exactly one ssh child other than
    /// `not`.
    async fn wait_child(&self, not: Option<u32>) -> u32 {
        let deadline = Instant::now() + TEXT_WAIT;
        loop {
            let kids = self.ssh_children();
            if kids.len() == 1 && Some(kids[0]) != not {
                return kids[0];
            }
            if Instant::now() >= deadline {
                panic!(
                    "autossh has children {kids:?} (waiting for one other than {not:?})\n{}",
                    self.client.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for AutoSsh {
    fn drop(&mut self) {
        let pid = self.client.pid();
        let mut kids = self.ssh_children();
        if self.client.child.try_wait().ok().flatten().is_none() {
            try_signal(pid, "TERM");
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(st)) = self.client.child.try_wait() {
                    self.client.exit = Some(st);
                    break;
                }
                kids.extend(self.ssh_children());
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kids.extend(self.ssh_children());
        self.client.kill();
        // An ssh child that outlived autossh: SIGKILL it, by pid, after
        // checking it still is an ssh process.
        kids.sort_unstable();
        kids.dedup();
        for kid in kids {
            let comm = std::fs::read_to_string(format!("/proc/{kid}/comm")).unwrap_or_default();
            if comm.trim() == "ssh" {
                try_signal(kid, "KILL");
            }
        }
    }
}

/// A TCP relay on 127.0.0.1:0 in front of burrow's SSH port. Normally it
/// passes the close of a client on to burrow; with `hold` set it keeps
/// burrow's side open instead (and keeps reading from it), so to burrow the
/// client looks alive but never answers: a half-dead connection, as after a
/// laptop sleeps or a NAT forgets the flow.
struct Relay {
    port: u16,
    hold: Arc<std::sync::atomic::AtomicBool>,
    /// Connections whose client vanished while burrow's side was held open.
    held: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let port = listener.local_addr().unwrap().port();
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (hold2, held2, tasks2) = (hold.clone(), held.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (hold, held) = (hold2.clone(), held2.clone());
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                    if hold.load(Ordering::SeqCst) {
                        held.fetch_add(1, Ordering::SeqCst);
                        // Keep burrow's side open, silently.
                        std::future::pending::<()>().await;
                    }
                    let _ = sw.shutdown().await;
                });
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut client_gone = false;
                    while let Ok(n) = sr.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if !client_gone && cw.write_all(&buf[..n]).await.is_err() {
                            client_gone = true;
                        }
                    }
                    let _ = cw.shutdown().await;
                });
                tasks2.lock().unwrap().extend([up, down]);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay {
            port,
            hold,
            held,
            tasks,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

/// autossh (`-M 0`, ServerAliveInterval=15, AUTOSSH_GATETIME=0) restarts
/// ssh when it dies, and the new connection gets the same stable URL: once
/// after a clean death (burrow sees the TCP close), once when burrow's side
/// of the old connection stays open (half-dead: the new connection must
/// take the name over from it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autossh_restart_keeps_the_same_url() {
    use std::sync::atomic::Ordering;
    if Command::new("autossh")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        // Never skipped silently: CI installs autossh; elsewhere, skipping
        // takes an explicit opt-out.
        if std::env::var_os("BURROW_SKIP_AUTOSSH_TESTS").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED autossh_restart_keeps_the_same_url: BURROW_SKIP_AUTOSSH_TESTS=1");
            return;
        }
        panic!(
            "autossh is not installed (apt-get install autossh; .ci/run does this), \
             or set BURROW_SKIP_AUTOSSH_TESTS=1 to skip this test"
        );
    }
    let dir = TempDir::new("burrow-names-autossh");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let relay = Relay::start(burrow.addrs.ssh).await;
    let origin = Origin::start("names-autossh").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");
    let log_path = dir.path().join("autossh.log");

    let mut cmd = Command::new("autossh");
    cmd.args(["-M", "0"]);
    client_args(&mut cmd, relay.port, Ident::Key(&k), true);
    cmd.args(["-o", "ServerAliveInterval=15"])
        .args(["-o", "ExitOnForwardFailure=yes"])
        .args(["-R", &fwd(None, &origin)])
        .arg("test@127.0.0.1")
        .env("AUTOSSH_GATETIME", "0")
        .env("AUTOSSH_POLL", "10")
        .env("AUTOSSH_LOGFILE", &log_path);
    let auto = AutoSsh {
        client: Client::spawn(cmd, "autossh"),
    };

    let u = auto.client.url().await;
    assert_serves(&client, &burrow, &u.name, "names-autossh").await;
    let mut ssh_pid = auto.wait_child(None).await;

    for (round, half_dead) in [(1usize, false), (2, true)] {
        relay.hold.store(half_dead, Ordering::SeqCst);
        let killed_at = Instant::now();
        send_signal(ssh_pid, "KILL");
        let next = auto.wait_child(Some(ssh_pid)).await;
        let banners = auto
            .client
            .out
            .wait_for(Duration::from_secs(20), |t| {
                // The banner's URL line comes a little after its heading:
                // wait for this round's banner to carry a URL.
                let banner = t.split("Your tunnel is live").nth(round + 1)?;
                (!urls_in(banner).is_empty()).then(|| t.to_string())
            })
            .await
            .unwrap_or_else(|seen| {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("round {round}: autossh did not reconnect: {seen}\nautossh log:\n{log}")
            });
        let banner = banners
            .split("Your tunnel is live")
            .nth(round + 1)
            .unwrap_or_default();
        assert_eq!(
            urls_in(banner).first(),
            Some(&u),
            "round {round}: the restarted ssh must get the same URL"
        );
        if half_dead {
            assert_eq!(
                relay.held.load(Ordering::SeqCst),
                1,
                "burrow's side of the killed connection must still be open"
            );
        }
        // The killed ssh is gone for good: whatever answers now comes
        // through the new connection.
        let took = wait_serves(
            &client,
            &burrow,
            &u.name,
            "names-autossh",
            Duration::from_secs(10),
        )
        .await;
        eprintln!(
            "autossh round {round} (half-dead: {half_dead}): ssh {ssh_pid} killed, {next} serving after {:?} (+{took:?})",
            killed_at.elapsed()
        );
        ssh_pid = next;
    }
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(1));
    drop(auto);
}

// ---------------------------------------------------------------------------
// Keys file
// ---------------------------------------------------------------------------

/// Runs burrow with `args` expecting it to exit by itself (the harness's
/// runner: bounded wait, its own working directory); status and output.
async fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let run = run_burrow_expect_exit(args).await;
    (run.status, run.stderr + &run.stdout)
}

/// The format: comments, blank lines, quoted values, bare items continuing
/// a list, `ports=`; a malformed file stops burrow at start-up naming the
/// line; `--auth-mode keys` needs a keys file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_file_format_and_startup_errors() {
    let dir = TempDir::new("burrow-names-keysfmt");
    let k1 = Key::with_comment("alice@laptop");
    let k2 = Key::with_comment("bob");
    let k3 = Key::with_comment("carol");
    let keys_file = dir.path().join("keys");
    let good = format!(
        "# team keys\n\n   # indented comment\nnames=alpha,beta,ports=5432 {}\n\
         names=\"gamma,delta\" {}\n{}\n",
        k1.public, k2.public, k3.public
    );
    write_atomic(&keys_file, &good, None);
    let burrow = start(
        &dir.path().join("state"),
        &["--keys-file", path_str(&keys_file)],
    )
    .await;
    let origin = Origin::start("names-keysfmt").await;
    let client = burrow.https_client();

    for (key, name) in [
        (&k1, "alpha"),
        (&k1, "beta"),
        (&k2, "gamma"),
        (&k2, "delta"),
    ] {
        let c = ssh(
            &burrow,
            Ident::Key(key),
            &["-R", &fwd(Some(name), &origin)],
            &[],
        );
        assert_eq!(c.url().await.name, name);
        assert_serves(&client, &burrow, name, "names-keysfmt").await;
    }
    for (key, name) in [(&k1, "gamma"), (&k2, "beta"), (&k3, "alpha")] {
        let c = ssh(
            &burrow,
            Ident::Key(key),
            &["-R", &fwd(Some(name), &origin)],
            &[],
        );
        c.wait_out(&format!(
            "ERROR: the name \"{name}\" belongs to another key"
        ))
        .await;
    }
    drop(burrow);

    // Malformed files: burrow refuses to start and names the line.
    let base = |keys: &Path, state: &Path| -> Vec<String> {
        let mut args = cli_base_args(dir.path());
        args.extend(
            [
                "--state-dir",
                path_str(state),
                "--keys-file",
                path_str(keys),
            ]
            .map(str::to_string),
        );
        args
    };
    let state = dir.path().join("state2");
    for (i, (text, line)) in [
        (
            format!("# ok\n{}\ncolour=red {}\n", k1.public, k2.public),
            "line 3",
        ),
        (
            format!("\nnames=api ssh-ed25519 notbase64 x\n{}\n", k1.public),
            "line 2",
        ),
        (format!("names=Bad_Name {}\n", k1.public), "line 1"),
        ("names=api\n".to_string(), "line 1"),
        (
            format!("{}\n{}\nnames=\"api {}\n", k1.public, k2.public, k3.public),
            "line 3",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let bad = dir.path().join(format!("bad{i}"));
        std::fs::write(&bad, &text).unwrap();
        let args = base(&bad, &state);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (st, out) = run_to_exit(&args).await;
        assert!(!st.success(), "bad keys file {text:?} accepted: {out}");
        assert!(
            out.contains(line) && out.contains("--keys-file"),
            "error for {text:?} should name {line} and --keys-file: {out}"
        );
        assert!(!out.contains("burrow ready"), "{out}");
    }

    // --auth-mode keys without --keys-file.
    let mut args = base(&keys_file, &state);
    args.truncate(args.len() - 2);
    args.extend(["--auth-mode".to_string(), "keys".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, out) = run_to_exit(&args).await;
    assert!(!st.success(), "{out}");
    assert!(out.contains("--keys-file"), "{out}");

    // A keys file that does not exist.
    let missing = dir.path().join("missing");
    let args = base(&missing, &state);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (st, out) = run_to_exit(&args).await;
    assert!(!st.success(), "{out}");
    assert!(out.contains("--keys-file"), "{out}");
}

/// Reload when the file changes and on SIGHUP: tunnels the new file no
/// longer allows are closed with a reason, the others stay; a malformed
/// file is rejected and the previous one stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_file_reload_on_change_and_sighup() {
    let dir = TempDir::new("burrow-names-reload");
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");
    let keys_file = dir.path().join("keys");
    write_atomic(&keys_file, &format!("names=api {}\n", k1.public), None);
    let mut burrow = start(
        &dir.path().join("state"),
        &["--keys-file", path_str(&keys_file)],
    )
    .await;
    let a = Origin::start("names-reload-a").await;
    let b = Origin::start("names-reload-b").await;
    let client = burrow.https_client();
    let port = burrow.https_port();
    let reconnect = format!(
        "Reconnect with: ssh -p {} -R 80:localhost:3000 {DOMAIN}",
        burrow.ssh_port()
    );

    let mut api = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("api"), &a)],
        &[],
    );
    assert_eq!(api.url().await.name, "api");
    let mut shared = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-R", &fwd(Some("shared"), &b)],
        &[],
    );
    assert_eq!(shared.url().await.name, "shared");
    assert_serves(&client, &burrow, "shared", "names-reload-b").await;

    // 1. The file changes: `shared` is now k1's. k2's tunnel is closed (and
    //    its connection, which has no other); k1's `api` is untouched.
    write_atomic(
        &keys_file,
        &format!("# v2\nnames=api,shared {}\n", k1.public),
        None,
    );
    shared
        .wait_text(
            false,
            &format!(
                "Tunnel https://shared.{DOMAIN}:{port} closed: the keys file now grants this name to another key. {reconnect}"
            ),
            RELOAD_WAIT,
        )
        .await;
    shared
        .expect_exit("connection whose only tunnel was closed")
        .await;
    assert_no_tunnel(&client, &burrow, "shared").await;
    api.assert_running("k1's connection");
    assert_serves(&client, &burrow, "api", "names-reload-a").await;
    assert!(!api.out.text().contains("closed:"), "{}", api.output());
    let mut k1_shared = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("shared"), &a)],
        &[],
    );
    assert_eq!(k1_shared.url().await.name, "shared");
    assert_serves(&client, &burrow, "shared", "names-reload-a").await;

    // 2. A malformed file is rejected (logged, naming the line); the
    //    previous one stays in force and nothing is closed.
    let bad = format!(
        "names=api {}\nthis line has no key\n# padding padding padding padding padding padding\n",
        k2.public
    );
    write_atomic(&keys_file, &bad, None);
    let bad_mtime = mtime(&keys_file);
    if let Err(seen) = burrow
        .stderr
        .wait_for(RELOAD_WAIT, |t| {
            t.lines()
                .any(|l| l.contains("rejected") && l.contains("line 2"))
                .then_some(())
        })
        .await
    {
        panic!("no log line rejecting the malformed keys file: {seen}");
    }
    let refused = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-R", &fwd(Some("api"), &b)],
        &[],
    );
    refused
        .wait_out("ERROR: the name \"api\" belongs to another key")
        .await;
    api.assert_running("k1's api connection after a rejected file");
    k1_shared.assert_running("k1's shared connection after a rejected file");
    assert_serves(&client, &burrow, "api", "names-reload-a").await;
    assert_serves(&client, &burrow, "shared", "names-reload-a").await;

    // 3. SIGHUP reloads. The new file has the rejected file's size and
    //    modification time, so only the signal can make burrow read it.
    let mut good = format!("names=api,shared {}\n", k2.public);
    assert!(good.len() < bad.len());
    good.push('#');
    while good.len() < bad.len() - 1 {
        good.push('x');
    }
    good.push('\n');
    assert_eq!(good.len(), bad.len());
    write_atomic(&keys_file, &good, Some(bad_mtime));
    send_signal(burrow.pid(), "HUP");
    for (conn, what) in [(&mut api, "api"), (&mut k1_shared, "shared")] {
        conn.wait_text(
            false,
            &format!(
                "Tunnel https://{what}.{DOMAIN}:{port} closed: the keys file now grants this name to another key. {reconnect}"
            ),
            RELOAD_WAIT,
        )
        .await;
        conn.expect_exit("connection whose tunnel the reload closed")
            .await;
    }
    assert!(
        burrow.wait_exit(Duration::ZERO).await.is_none(),
        "SIGHUP must not stop burrow"
    );
    let now_k2 = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-R", &fwd(Some("api"), &b)],
        &[],
    );
    assert_eq!(now_k2.url().await.name, "api");
    assert_serves(&client, &burrow, "api", "names-reload-b").await;
}

/// `--auth-mode keys`: only listed keys get in; others are told why; a key
/// removed from the file loses its tunnels, the others keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_mode_keys_only_listed_keys() {
    let dir = TempDir::new("burrow-names-keysmode");
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");
    let k3 = Key::with_comment("k3");
    let keys_file = dir.path().join("keys");
    write_atomic(
        &keys_file,
        &format!("names=api {}\n{}\n", k1.public, k2.public),
        None,
    );
    let burrow = start(
        &dir.path().join("state"),
        &["--keys-file", path_str(&keys_file), "--auth-mode", "keys"],
    )
    .await;
    let origin = Origin::start("names-keysmode").await;
    let client = burrow.https_client();
    let port = burrow.https_port();
    const ONLY_KEYS: &str = "burrow: this server only accepts SSH keys registered by its operator.";

    // Unlisted key, keyless client, random@: all refused, all told why.
    let refusals: [(&str, Ident<'_>, bool, &str); 4] = [
        ("unlisted key", Ident::Key(&k3), true, "test"),
        ("keyless", Ident::NoPubkey, false, "test"),
        ("no identity", Ident::NoIdentity, false, "test"),
        ("random@", Ident::Key(&k3), true, "random"),
    ];
    for (what, ident, batch, user) in refusals {
        let mut c = ssh_as(
            &burrow,
            ident,
            batch,
            user,
            &["-N", "-R", &fwd(None, &origin)],
            &[],
        );
        let st = c.expect_exit(what).await;
        assert!(!st.success(), "{what}: {}", c.output());
        c.wait_err("Permission denied").await;
        c.wait_err(ONLY_KEYS).await;
        assert!(urls_in(&c.err.text()).is_empty(), "{what}: {}", c.output());
    }
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(0));

    // Listed keys: granted names and stable names.
    let c1 = ssh(
        &burrow,
        Ident::Key(&k1),
        &["-R", &fwd(Some("api"), &origin)],
        &[],
    );
    assert_eq!(c1.url().await.name, "api");
    assert_serves(&client, &burrow, "api", "names-keysmode").await;
    let mut c2 = ssh(&burrow, Ident::Key(&k2), &["-R", &fwd(None, &origin)], &[]);
    let u2 = c2.url().await;
    assert!(is_generated_name(&u2.name), "{u2:?}");
    c2.wait_out(&format!("Stable URL from your SSH key {}", k2.fingerprint))
        .await;
    assert_serves(&client, &burrow, &u2.name, "names-keysmode").await;

    // k2 removed from the file: its tunnel closes, k1's stays.
    write_atomic(&keys_file, &format!("names=api {}\n", k1.public), None);
    c2.wait_text(
        false,
        &format!(
            "Tunnel https://{}.{DOMAIN}:{port} closed: your key was removed from the keys file. Reconnect with:",
            u2.name
        ),
        RELOAD_WAIT,
    )
    .await;
    c2.expect_exit("removed key's connection").await;
    assert_no_tunnel(&client, &burrow, &u2.name).await;
    assert_serves(&client, &burrow, "api", "names-keysmode").await;

    // And k2 can no longer connect.
    let mut again = ssh(
        &burrow,
        Ident::Key(&k2),
        &["-N", "-R", &fwd(None, &origin)],
        &[],
    );
    let st = again.expect_exit("removed key").await;
    assert!(!st.success(), "{}", again.output());
    again.wait_err("Permission denied").await;
    drop(c1);
}

// ---------------------------------------------------------------------------
// Per-tunnel options
// ---------------------------------------------------------------------------

/// `host=` rewrites the Host header the app sees; X-Forwarded-Host keeps
/// the public one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_host_header() {
    let dir = TempDir::new("burrow-names-host");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-host").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");
    let (c, u) = with_options(&burrow, &k, &origin, &["host=localhost:5173"]).await;
    c.wait_out("Options: Host header localhost:5173").await;
    let resp = expect_status(
        get(&client, &burrow, &u.name, "/headers").await,
        200,
        "host=",
    )
    .await;
    let h: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(h["host"], "localhost:5173", "{h}");
    assert_eq!(
        h["x-forwarded-host"],
        format!("{}.{DOMAIN}:{}", u.name, burrow.https_port()),
        "{h}"
    );
}

/// `auth=user:pass`: 401 with a realm, 200 with the right credentials (the
/// app never sees them), 429 after 10 wrong attempts; CORS preflights are
/// answered before auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_basic_auth() {
    let dir = TempDir::new("burrow-names-auth");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-auth").await;
    let client = burrow.https_client_h1();
    let k = Key::with_comment("k");
    let (_c, u) = with_options(
        &burrow,
        &k,
        &origin,
        &["auth=ann:s3cr3t", "cors=https://app.example"],
    )
    .await;
    let url = |path: &str| burrow.https_url(&format!("{}.{DOMAIN}", u.name), path);

    // No credentials.
    let resp = client.get(url("/headers")).send().await.unwrap();
    let resp = expect_status(resp, 401, "no credentials").await;
    let challenge = header(&resp, "www-authenticate")
        .unwrap_or_default()
        .to_string();
    assert!(
        challenge.starts_with(&format!("Basic realm=\"burrow tunnel {}\"", u.name)),
        "WWW-Authenticate: {challenge:?}"
    );
    assert_eq!(origin.hits("/headers"), 0, "the app must not be reached");

    // Right credentials: through, without the Authorization header.
    let resp = client
        .get(url("/headers"))
        .basic_auth("ann", Some("s3cr3t"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "right credentials").await;
    let h: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert!(h.get("authorization").is_none(), "app saw credentials: {h}");
    assert_eq!(origin.hits("/headers"), 1);

    // A CORS preflight (never carries credentials) is answered before auth.
    let resp = client
        .request(reqwest::Method::OPTIONS, url("/headers"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 204, "preflight on an auth= tunnel").await;
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        Some("https://app.example")
    );

    // Wrong credentials: 401 ten times, then 429 with Retry-After.
    for i in 1..=10 {
        let resp = client
            .get(url("/hello"))
            .basic_auth("ann", Some(format!("wrong{i}")))
            .send()
            .await
            .unwrap();
        expect_status(resp, 401, &format!("wrong attempt {i}")).await;
    }
    let resp = client
        .get(url("/hello"))
        .basic_auth("ann", Some("wrong11"))
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 429, "11th wrong attempt").await;
    let retry: u64 = header(&resp, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {:?}", resp.headers()));
    assert!(retry >= 1, "Retry-After {retry}");
    let page = resp.text().await.unwrap();
    assert!(
        page.contains("auth-attempts-rate") && page.contains("10 in a row, then 6/m"),
        "the page names the limit and its rule: {page}"
    );
    // Locked out, the right password is refused too: a guesser cannot
    // tell a hit from a miss faster than the limit.
    let resp = client
        .get(url("/hello"))
        .basic_auth("ann", Some("s3cr3t"))
        .send()
        .await
        .unwrap();
    expect_status(resp, 429, "the right password while locked out").await;
    assert_eq!(origin.hits("/hello"), 0, "no wrong attempt reached the app");
    assert_eq!(
        origin.hits("/headers"),
        1,
        "preflight must not reach the app"
    );
}

/// `--auth-attempts-burst` and `--auth-attempts-rate` are the operator's:
/// the lock-out ends when the next attempt is due (then the right password
/// gets through), each refusal is counted, and a rate of 0 turns it off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_attempt_limits_are_configurable() {
    let dir = TempDir::new("burrow-names-auth-limits");
    let burrow = start(
        &dir.path().join("state"),
        &["--auth-attempts-burst", "2", "--auth-attempts-rate", "1/s"],
    )
    .await;
    let origin = Origin::start("names-auth-limits").await;
    let client = burrow.https_client_h1();
    let k = Key::with_comment("k");
    let (c, u) = with_options(&burrow, &k, &origin, &["auth=ann:s3cr3t"]).await;
    let url = burrow.https_url(&format!("{}.{DOMAIN}", u.name), "/hello");
    let attempt = |password: &'static str| {
        client
            .get(url.clone())
            .basic_auth("ann", Some(password))
            .send()
    };
    for i in 1..=2 {
        expect_status(attempt("wrong").await.unwrap(), 401, &format!("wrong {i}")).await;
    }
    let resp = expect_status(attempt("wrong").await.unwrap(), 429, "third wrong").await;
    let page = resp.text().await.unwrap();
    assert!(page.contains("2 in a row, then 1/s"), "{page}");
    let locked = Instant::now();
    expect_status(attempt("s3cr3t").await.unwrap(), 429, "right, locked out").await;
    // The next attempt is due a second after the lock-out began.
    loop {
        let status = attempt("s3cr3t").await.unwrap().status().as_u16();
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(
            locked.elapsed() < Duration::from_secs(5),
            "still locked out after {:?}",
            locked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        origin.hits("/hello"),
        1,
        "only the right password got through"
    );
    let refused = burrow.refusals("auth-attempts-rate").await;
    assert!(
        refused >= 2,
        "{refused} auth-attempts-rate refusals counted"
    );
    drop(c);

    // A rate of 0: no limit, every wrong password is a 401.
    let burrow = start(&dir.path().join("state0"), &["--auth-attempts-rate", "0"]).await;
    let client = burrow.https_client_h1();
    let (_c, u) = with_options(&burrow, &k, &origin, &["auth=ann:s3cr3t"]).await;
    let url = burrow.https_url(&format!("{}.{DOMAIN}", u.name), "/hello");
    for i in 1..=15 {
        let resp = client
            .get(url.clone())
            .basic_auth("ann", Some("wrong"))
            .send()
            .await
            .unwrap();
        expect_status(resp, 401, &format!("unlimited, wrong {i}")).await;
    }
}

/// `allow=`: visitors outside get 403, before any rate limit; listed ones
/// pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_allow_list() {
    let dir = TempDir::new("burrow-names-allow");
    // A visitor bucket of 1 request: if rate limits came first, the second
    // request from outside the list would get 429 instead of 403.
    let burrow = start(
        &dir.path().join("state"),
        &["--visitor-rate", "1/h", "--visitor-burst", "1"],
    )
    .await;
    let origin = Origin::start("names-allow").await;
    let client = burrow.https_client();
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");

    let (_outside, u1) = with_options(&burrow, &k1, &origin, &["allow=10.0.0.0/8"]).await;
    for i in 0..5 {
        let resp = get(&client, &burrow, &u1.name, "/hello").await;
        expect_status(resp, 403, &format!("visitor outside allow= (#{i})")).await;
    }
    assert_eq!(origin.hits("/hello"), 0);

    let (_inside, u2) = with_options(&burrow, &k2, &origin, &["allow=10.0.0.0/8,127.0.0.1"]).await;
    let resp = get(&client, &burrow, &u2.name, "/hello").await;
    let resp = expect_status(resp, 200, "127.0.0.1 is listed").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
    assert_eq!(origin.hits("/hello"), 1);
}

/// `cors=`: preflights answered by burrow for listed origins (403 for
/// others), ACAO on proxied responses; `cors=*` never allows credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_cors() {
    let dir = TempDir::new("burrow-names-cors");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-cors").await;
    let client = burrow.https_client();
    let k1 = Key::with_comment("k1");
    let k2 = Key::with_comment("k2");

    let (_listed, u) = with_options(&burrow, &k1, &origin, &["cors=https://app.example"]).await;
    let url = |name: &str, path: &str| burrow.https_url(&format!("{name}.{DOMAIN}"), path);
    let preflight = |name: &str, from: &str| {
        client
            .request(reqwest::Method::OPTIONS, url(name, "/api/items"))
            .header("origin", from)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "x-custom, content-type")
            .send()
    };

    let resp = preflight(&u.name, "https://app.example").await.unwrap();
    let resp = expect_status(resp, 204, "preflight from a listed origin").await;
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(header(&resp, "vary"), Some("Origin"));
    let methods = header(&resp, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("PUT"), "allowed methods {methods:?}");
    assert_eq!(
        header(&resp, "access-control-allow-headers"),
        Some("x-custom, content-type")
    );

    let resp = preflight(&u.name, "https://evil.example").await.unwrap();
    expect_status(resp, 403, "preflight from another origin").await;
    assert_eq!(
        origin.hits("/api/items"),
        0,
        "burrow answers preflights itself"
    );

    // A normal request with an allowed Origin: ACAO on the app's response.
    let resp = client
        .get(url(&u.name, "/hello"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "GET with an allowed Origin").await;
    assert_eq!(
        header(&resp, "access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        header(&resp, "access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(resp.text().await.unwrap(), HELLO);

    // cors=*: any origin, never with credentials.
    let (_star, us) = with_options(&burrow, &k2, &origin, &["cors=*"]).await;
    let resp = preflight(&us.name, "https://anything.example")
        .await
        .unwrap();
    let resp = expect_status(resp, 204, "preflight with cors=*").await;
    assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    let resp = client
        .get(url(&us.name, "/hello"))
        .header("origin", "https://anything.example")
        .send()
        .await
        .unwrap();
    let resp = expect_status(resp, 200, "GET with cors=*").await;
    assert_eq!(header(&resp, "access-control-allow-origin"), Some("*"));
    assert_eq!(header(&resp, "access-control-allow-credentials"), None);
    assert_eq!(origin.hits("/api/items"), 0);
}

/// JSON objects on stdout, one per line.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l:?}: {e}")))
        .collect()
}

/// `output=json`: the tunnel event first, then e.g. errors; Ctrl+C gives a
/// `stopped` event and ssh exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_output_json() {
    let dir = TempDir::new("burrow-names-json");
    let burrow = start(
        &dir.path().join("state"),
        &[
            "--tunnel-idle-timeout",
            "90s",
            "--tunnel-max-lifetime",
            "1h",
        ],
    )
    .await;
    let origin = Origin::start("names-json").await;
    let client = burrow.https_client();
    let k = Key::with_comment("k");

    // -R 8080 is refused: an error event after the tunnel event.
    let mut c = ssh(
        &burrow,
        Ident::Key(&k),
        &[
            "-tt",
            "-R",
            &fwd(None, &origin),
            "-R",
            &format!("8080:127.0.0.1:{}", origin.port),
        ],
        &["--", "output=json"],
    );
    let events = c
        .out
        .wait_for(TEXT_WAIT, |t| {
            let complete: String = t
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .collect();
            let ev = json_lines(&complete);
            ev.iter().any(|e| e["event"] == "error").then_some(ev)
        })
        .await
        .unwrap_or_else(|seen| panic!("JSON events expected: {seen}\n{}", c.output()));
    let tunnel = &events[0];
    assert_eq!(tunnel["event"], "tunnel", "{events:?}");
    let name = tunnel["subdomain"].as_str().expect("subdomain").to_string();
    assert!(is_generated_name(&name), "{tunnel}");
    assert_eq!(
        tunnel["url"],
        format!("https://{name}.{DOMAIN}:{}", burrow.https_port())
    );
    assert_eq!(tunnel["stable"], true, "{tunnel}");
    assert_eq!(tunnel["idle_timeout_secs"], 90, "{tunnel}");
    assert_eq!(tunnel["lifetime_secs"], 3600, "{tunnel}");
    let error = events.iter().find(|e| e["event"] == "error").unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("8080"),
        "{error}"
    );
    assert_serves(&client, &burrow, &name, "names-json").await;

    // Ctrl+C.
    c.write_stdin(b"\x03");
    let st = c.expect_exit("Ctrl+C with output=json").await;
    assert_eq!(st.code(), Some(0), "{}", c.output());
    let events = json_lines(&c.out.text());
    assert!(
        events.iter().any(|e| e["event"] == "stopped"),
        "no stopped event: {events:?}"
    );
    assert_no_tunnel(&client, &burrow, &name).await;

    // Keyless: stable is false; a requested name gives a note event.
    let anon = ssh(
        &burrow,
        Ident::NoPubkey,
        &["-R", &fwd(Some("wanted"), &origin)],
        &["--", "output=json"],
    );
    let events = anon
        .out
        .wait_for(TEXT_WAIT, |t| {
            let complete: String = t
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .collect();
            let ev = json_lines(&complete);
            ev.iter().any(|e| e["event"] == "note").then_some(ev)
        })
        .await
        .unwrap_or_else(|seen| panic!("JSON events expected: {seen}\n{}", anon.output()));
    assert_eq!(events[0]["event"], "tunnel", "{events:?}");
    assert_eq!(events[0]["stable"], false, "{events:?}");
    let note = events.iter().find(|e| e["event"] == "note").unwrap();
    assert!(
        note["message"]
            .as_str()
            .unwrap_or_default()
            .contains("wanted"),
        "{note}"
    );
}

/// `help` prints the usage and exits 0; invalid options print `ERROR:` and
/// the usage on stderr and exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn option_help_and_invalid_options() {
    let dir = TempDir::new("burrow-names-help");
    let burrow = start(&dir.path().join("state"), &[]).await;
    let origin = Origin::start("names-help").await;
    let k = Key::with_comment("k");

    let mut help = ssh(
        &burrow,
        Ident::Key(&k),
        &["-R", &fwd(None, &origin)],
        &["help"],
    );
    let st = help.expect_exit("help").await;
    assert_eq!(st.code(), Some(0), "{}", help.output());
    help.wait_out("Usage: ssh -R 80:localhost:3000 HOST").await;
    for opt in ["host=", "auth=", "allow=", "cors=", "output="] {
        assert!(
            help.out.text().contains(opt),
            "usage lacks {opt}: {}",
            help.output()
        );
    }

    for bad in ["bogus=1", "auth=nopass", "allow=10.0.0.0/33"] {
        let mut c = ssh(
            &burrow,
            Ident::Key(&k),
            &["-R", &fwd(None, &origin)],
            &["--", bad],
        );
        let st = c.expect_exit(bad).await;
        assert_eq!(st.code(), Some(2), "{bad}: {}", c.output());
        c.wait_err("ERROR: ").await;
        c.wait_err("Usage: ssh -R 80:localhost:3000 HOST").await;
        assert!(
            !c.out.text().contains("ERROR"),
            "{bad}: error belongs on stderr"
        );
    }
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(0));
}
