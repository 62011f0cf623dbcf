//! End-to-end tests: the SSH clients other than OpenSSH that people tunnel
//! with — PuTTY's `plink`, Dropbear's `dbclient`, and scripts built on
//! paramiko or asyncssh — against the real burrow binary, each keyless and
//! with a key (in the client's own key format). For every one: the URL is
//! printed in the session banner, a request through it is served by a real
//! local origin, and disconnecting the client removes the tunnel.
//!
//! The Python clients run `tests/scripts/*_tunnel.py`. asyncssh is not
//! packaged by Debian: it is installed from the package index into a
//! throwaway virtualenv, and its tests are skipped (saying so) only when the
//! index cannot be reached; any other failed install fails them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Weak};
use std::time::Duration;

use common::*;

/// How long a disconnected client's tunnel may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(10);

/// Debian's interpreter: `python3-paramiko` and `python3-venv` are
/// installed for it, whereas a `python3` earlier on PATH (pyenv's, say) may
/// have neither.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// How long creating the asyncssh virtualenv (venv plus `pip install`) may
/// take before the test gives up on it.
const VENV_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------
// What every client must do
// ---------------------------------------------------------------------------

/// How a client logs in, and the banner line that proves burrow saw it so.
enum Login<'a> {
    /// No key: keyboard-interactive without prompts (or an empty password,
    /// which asyncssh answers that step with).
    Keyless,
    /// `random@`: accepted at `none`, a throwaway name.
    Random,
    /// A key, converted to the client's own format where it has one.
    Key(&'a SshKeyPair),
}

impl Login<'_> {
    fn user(&self) -> &'static str {
        match self {
            Login::Random => "random",
            Login::Keyless | Login::Key(_) => "test",
        }
    }

    /// The session banner's line saying which kind of name the URL is.
    fn banner_line(&self) -> String {
        match self {
            Login::Keyless => "Random URL: it changes on every connection.".to_string(),
            Login::Random => "Throwaway URL, as asked (random@).".to_string(),
            Login::Key(key) => format!("Stable URL from your SSH key {}", key.fingerprint),
        }
    }
}

/// One burrow and the local app the client's forward points at.
struct Setup {
    /// A burrow of the test's own, so its `active_tunnels` counts only
    /// this client's tunnel.
    burrow: Burrow,
    /// The app behind the forward: proves a request went all the way.
    origin: Origin,
}

impl Setup {
    /// `label` names the origin (unique per test: hits are counted by it).
    async fn start(label: &str) -> Setup {
        Setup {
            burrow: Burrow::start(&[]).await,
            origin: Origin::start(label).await,
        }
    }

    /// The `-R` argument every client gets: public port 80 to the origin.
    fn forward(&self) -> String {
        format!("80:127.0.0.1:{}", self.origin.port)
    }

    /// The client printed its URL and the banner line of its login, the
    /// tunnel is live, and a request through the URL reaches the origin.
    async fn assert_serves(&self, client: &Ssh, login: &Login<'_>) -> TunnelUrl {
        let url = client.url().await;
        if let Err(seen) = client
            .stdout
            .wait_contains(&login.banner_line(), URL_TIMEOUT)
            .await
        {
            panic!(
                "no {:?} in the session output: {seen}\n{}",
                login.banner_line(),
                client.all_output()
            );
        }
        assert_eq!(self.burrow.stats().await["active_tunnels"], 1, "tunnels");
        let resp = self.burrow.get(&url.host(), "/hello").await;
        let resp = expect_status(resp, 200, "GET /hello through the client's tunnel").await;
        assert_eq!(resp.text().await.expect("body"), HELLO);
        assert_eq!(self.origin.hits("/hello"), 1, "requests the origin got");
        url
    }

    /// After the client went away: no tunnel left, and its URL is gone.
    async fn assert_removed(&self, url: &TunnelUrl) {
        self.burrow
            .wait_stat("active_tunnels", 0, GONE_TIMEOUT)
            .await;
        let resp = self.burrow.get(&url.host(), "/hello").await;
        expect_status(resp, 404, "the URL of a disconnected client").await;
        assert_eq!(self.origin.hits("/hello"), 1, "requests the origin got");
    }
}

/// A native client's whole life: connect, serve, get killed (as when its
/// terminal is closed: stdin's end does not end plink or dbclient, the
/// session stays up as with `ssh`), tunnel gone.
async fn check_native(setup: &Setup, mut client: Ssh, login: &Login<'_>) {
    let url = setup.assert_serves(&client, login).await;
    client.kill();
    setup.assert_removed(&url).await;
}

/// A script client's whole life: connect, serve, disconnect when its stdin
/// closes (and exit 0: no step failed), tunnel gone.
async fn check_script(setup: &Setup, mut client: Ssh, login: &Login<'_>) {
    let url = setup.assert_serves(&client, login).await;
    client.close_stdin();
    let status = client.wait_exit(GONE_TIMEOUT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the script should disconnect and exit 0 when its stdin closes, got {status:?}\n{}",
        client.all_output()
    );
    setup.assert_removed(&url).await;
}

// ---------------------------------------------------------------------------
// Starting the clients
// ---------------------------------------------------------------------------

/// burrow's host key, in the forms the clients check it by.
struct HostKey {
    /// `SHA256:…`, for plink's `-hostkey`.
    fingerprint: String,
    /// `ssh-ed25519 AAAA…`, for the scripts' known-hosts checks.
    public: String,
}

impl HostKey {
    /// Read from the host key file burrow generated in its directory.
    fn of(burrow: &Burrow) -> HostKey {
        let path = burrow.dir.path().join("host_key");
        let listing = output(Command::new("ssh-keygen").arg("-lf").arg(&path));
        let fingerprint = listing
            .split_whitespace()
            .nth(1)
            .filter(|f| f.starts_with("SHA256:"))
            .unwrap_or_else(|| panic!("ssh-keygen -lf printed {listing:?}"))
            .to_string();
        let public = output(Command::new("ssh-keygen").arg("-y").arg("-f").arg(&path))
            .trim()
            .to_string();
        HostKey {
            fingerprint,
            public,
        }
    }
}

/// Runs `cmd` to completion (stdin null), returning its stdout; panics
/// with its stderr if it fails.
fn output(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics with the install line when `program` is not on PATH.
fn require(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()));
    assert!(
        found,
        "{program} is not installed: apt-get install -y {package} (or run .ci/run)"
    );
}

/// A client process with PATH and a HOME of its own, so that no
/// `~/.ssh`, `~/.putty`, agent or known-hosts file of the machine's user is
/// read or written; stdin is a pipe (the clients stay up while it is open).
fn client_command(program: impl AsRef<std::ffi::OsStr>, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// `user@127.0.0.1`
fn destination(login: &Login<'_>) -> String {
    format!("{}@127.0.0.1", login.user())
}

/// `plink -batch -hostkey SHA256:… -P PORT [-i KEY.ppk] -R 80:… USER@127.0.0.1`
/// (no `-N`: the session is where the banner and its URL are printed).
fn plink(setup: &Setup, login: &Login<'_>) -> Ssh {
    require("plink", "putty-tools");
    let home = Arc::new(TempDir::new("burrow-test-plink"));
    let mut cmd = client_command("plink", home.path());
    cmd.args(["-batch", "-noagent"])
        .args(["-hostkey", &HostKey::of(&setup.burrow).fingerprint])
        .args(["-P", &setup.burrow.ssh_port().to_string()])
        .args(["-R", &setup.forward()]);
    if let Login::Key(key) = login {
        require("puttygen", "putty-tools");
        let ppk = home.path().join("key.ppk");
        output(
            client_command("puttygen", home.path())
                .arg(&key.path)
                .args(["-O", "private", "-o"])
                .arg(&ppk),
        );
        cmd.arg("-i").arg(ppk);
    }
    cmd.arg(destination(login));
    Ssh::adopt(cmd.spawn().expect("spawn plink"), "plink", home)
}

/// `dbclient -T -y -p PORT [-i KEY.dropbear] -R 80:… USER@127.0.0.1`: `-y`
/// accepts the unknown host key (and records it in the HOME of its own);
/// `-T` because stdin is not a terminal (dbclient asks for a pty otherwise
/// and quits when it cannot set one up).
fn dbclient(setup: &Setup, login: &Login<'_>) -> Ssh {
    require("dbclient", "dropbear-bin");
    let home = Arc::new(TempDir::new("burrow-test-dbclient"));
    let mut cmd = client_command("dbclient", home.path());
    cmd.args(["-T", "-y"])
        .args(["-p", &setup.burrow.ssh_port().to_string()])
        .args(["-R", &setup.forward()]);
    if let Login::Key(key) = login {
        require("dropbearconvert", "dropbear-bin");
        let converted = home.path().join("key.dropbear");
        output(
            client_command("dropbearconvert", home.path())
                .args(["openssh", "dropbear"])
                .arg(&key.path)
                .arg(&converted),
        );
        cmd.arg("-i").arg(converted);
    }
    cmd.arg(destination(login));
    Ssh::adopt(cmd.spawn().expect("spawn dbclient"), "dbclient", home)
}

/// `PYTHON tests/scripts/SCRIPT --port … --host-key … --origin-port …
/// --user USER [--key KEY]`: the script logs in as `login` says.
fn script(python: &Path, name: &str, setup: &Setup, login: &Login<'_>) -> Ssh {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name);
    let home = Arc::new(TempDir::new("burrow-test-script"));
    let mut cmd = client_command(python, home.path());
    cmd.arg(&path)
        .args(["--port", &setup.burrow.ssh_port().to_string()])
        .args(["--host-key", &HostKey::of(&setup.burrow).public])
        .args(["--origin-port", &setup.origin.port.to_string()])
        .args(["--user", login.user()]);
    if let Login::Key(key) = login {
        cmd.arg("--key").arg(&key.path);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {} {}: {e}", python.display(), path.display()));
    Ssh::adopt(child, name.trim_end_matches("_tunnel.py"), home)
}

/// The paramiko script, on Debian's python with `python3-paramiko`.
fn paramiko(setup: &Setup, login: &Login<'_>) -> Ssh {
    let python = Path::new(DEBIAN_PYTHON);
    let probe = Command::new(python)
        .args(["-c", "import paramiko"])
        .stdin(Stdio::null())
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{DEBIAN_PYTHON} cannot import paramiko ({probe:?}): \
         apt-get install -y python3-paramiko (or run .ci/run)"
    );
    script(python, "paramiko_tunnel.py", setup, login)
}

// ---------------------------------------------------------------------------
// The asyncssh virtualenv
// ---------------------------------------------------------------------------

/// A virtualenv with asyncssh installed, removed when the last test using it
/// drops it.
struct Venv {
    /// The virtualenv itself (removed with it, so nothing is left behind).
    dir: TempDir,
}

impl Venv {
    fn python(&self) -> PathBuf {
        self.dir.path().join("bin/python")
    }
}

/// What the asyncssh tests of this process know about their virtualenv.
struct VenvState {
    /// The one the tests running right now share (asyncssh is installed
    /// once for all of them); a test that starts later makes a new one.
    shared: Weak<Venv>,
    /// Why asyncssh could not be installed, once pip found the package index
    /// unreachable: the other tests skip without trying again.
    unreachable: Option<String>,
}

static VENV: tokio::sync::Mutex<VenvState> = tokio::sync::Mutex::const_new(VenvState {
    shared: Weak::new(),
    unreachable: None,
});

/// What pip prints when it could not reach the package index at all
/// (urllib3's connection errors, as pip reports them before retrying).
const INDEX_UNREACHABLE: [&str; 6] = [
    "connection broken by",
    "Failed to establish a new connection",
    "ConnectTimeoutError",
    "ProxyError",
    "Read timed out",
    "Temporary failure in name resolution",
];

/// The shared virtualenv, created now if no running test holds one; `Err`
/// with pip's output only when the package index is unreachable.
async fn asyncssh_venv() -> Result<Arc<Venv>, String> {
    let mut state = VENV.lock().await;
    if let Some(unreachable) = &state.unreachable {
        return Err(unreachable.clone());
    }
    if let Some(venv) = state.shared.upgrade() {
        return Ok(venv);
    }
    match create_venv().await {
        Ok(venv) => {
            let venv = Arc::new(venv);
            state.shared = Arc::downgrade(&venv);
            Ok(venv)
        }
        Err(unreachable) => {
            state.unreachable = Some(unreachable.clone());
            Err(unreachable)
        }
    }
}

/// `python3 -m venv DIR`, then `pip install asyncssh` into it; `Err` with
/// pip's output when pip could not reach the package index, a panic when
/// anything else went wrong.
async fn create_venv() -> Result<Venv, String> {
    let venv = Venv {
        dir: TempDir::new("burrow-test-asyncssh-venv"),
    };
    let made = bounded(
        tokio::process::Command::new(DEBIAN_PYTHON)
            .args(["-m", "venv"])
            .arg(venv.dir.path()),
    )
    .await;
    assert!(
        made.status.success(),
        "{DEBIAN_PYTHON} -m venv failed: {}\napt-get install -y python3-venv (or run .ci/run)",
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = bounded(
        tokio::process::Command::new(venv.python())
            .args(["-m", "pip", "install", "--no-input"])
            .args([
                "--disable-pip-version-check",
                "--timeout",
                "15",
                "--retries",
                "1",
            ])
            .arg("asyncssh"),
    )
    .await;
    if pip.status.success() {
        return Ok(venv);
    }
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&pip.stdout),
        String::from_utf8_lossy(&pip.stderr)
    );
    if INDEX_UNREACHABLE.iter().any(|m| said.contains(m)) {
        return Err(said.trim().to_string());
    }
    panic!("pip install asyncssh failed ({}): {said}", pip.status);
}

/// Runs `cmd` (stdin null, output captured) for at most [`VENV_TIMEOUT`],
/// killing it after that.
async fn bounded(cmd: &mut tokio::process::Command) -> std::process::Output {
    let shown = format!("{cmd:?}");
    let run = cmd.stdin(Stdio::null()).kill_on_drop(true).output();
    match tokio::time::timeout(VENV_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{shown}: {e}"),
        Err(_) => panic!("{shown} did not finish within {VENV_TIMEOUT:?}"),
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plink_keyless_gets_a_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("plink-keyless").await;
    let login = Login::Keyless;
    check_native(&setup, plink(&setup, &login), &login).await;
}

#[tokio::test]
async fn plink_with_a_ppk_key_gets_its_stable_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("plink-keyed").await;
    let key = SshKeyPair::generate();
    let login = Login::Key(&key);
    check_native(&setup, plink(&setup, &login), &login).await;
}

/// PuTTY asks `winadj@putty.projects.tartarus.org` with every window
/// adjustment it sends (to time the round trip); russh refuses it, as it
/// should, but logged each at WARN: one log line per ~1 MiB a visitor
/// uploads. burrow's default log filter keeps russh's session loop to
/// errors, so a large upload through plink leaves nothing in the log.
#[tokio::test]
async fn plink_uploads_leave_no_log_line_per_window_adjustment() {
    let setup = Setup::start("plink-upload").await;
    let login = Login::Keyless;
    let mut client = plink(&setup, &login);
    let url = setup.assert_serves(&client, &login).await;
    let body = vec![b'u'; 16 << 20];
    let resp = setup
        .burrow
        .https_client_no_timeout()
        .post(setup.burrow.https_url(&url.host(), "/echo"))
        .body(body.clone())
        .send();
    let resp = tokio::time::timeout(Duration::from_secs(60), resp)
        .await
        .expect("a 16 MiB upload within 60 s")
        .expect("POST /echo through plink's tunnel");
    let resp = expect_status(resp, 200, "POST /echo").await;
    let echoed = resp.bytes().await.expect("the echoed body");
    assert!(echoed.len() == body.len(), "echoed {} bytes", echoed.len());
    let log = setup.burrow.stderr.text();
    assert!(
        !log.contains("unknown channel request"),
        "plink's winadj requests reached the log:\n{log}"
    );
    client.kill();
    setup.assert_removed(&url).await;
}

#[tokio::test]
async fn dbclient_keyless_gets_a_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("dbclient-keyless").await;
    let login = Login::Keyless;
    check_native(&setup, dbclient(&setup, &login), &login).await;
}

#[tokio::test]
async fn dbclient_with_a_dropbear_key_gets_its_stable_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("dbclient-keyed").await;
    let key = SshKeyPair::generate();
    let login = Login::Key(&key);
    check_native(&setup, dbclient(&setup, &login), &login).await;
}

#[tokio::test]
async fn paramiko_keyboard_interactive_gets_a_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("paramiko-keyless").await;
    let login = Login::Keyless;
    check_script(&setup, paramiko(&setup, &login), &login).await;
}

#[tokio::test]
async fn paramiko_as_random_gets_a_throwaway_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("paramiko-random").await;
    let login = Login::Random;
    check_script(&setup, paramiko(&setup, &login), &login).await;
}

#[tokio::test]
async fn paramiko_with_a_key_gets_its_stable_url_that_serves_and_goes_on_disconnect() {
    let setup = Setup::start("paramiko-keyed").await;
    let key = SshKeyPair::generate();
    let login = Login::Key(&key);
    check_script(&setup, paramiko(&setup, &login), &login).await;
}

/// Runs the asyncssh script for `login` (skipped, saying so, when asyncssh
/// cannot be installed because the package index is unreachable).
async fn check_asyncssh(label: &str, login: &Login<'_>) {
    let venv = match asyncssh_venv().await {
        Ok(venv) => venv,
        Err(pip_said) => {
            eprintln!(
                "SKIPPED {label}: the Python package index is unreachable, so asyncssh \
                 cannot be installed (pip said: {pip_said})"
            );
            return;
        }
    };
    let setup = Setup::start(label).await;
    let client = script(&venv.python(), "asyncssh_tunnel.py", &setup, login);
    check_script(&setup, client, login).await;
}

#[tokio::test]
async fn asyncssh_with_an_empty_password_gets_a_url_that_serves_and_goes_on_disconnect() {
    check_asyncssh("asyncssh-keyless", &Login::Keyless).await;
}

#[tokio::test]
async fn asyncssh_as_random_gets_a_throwaway_url_that_serves_and_goes_on_disconnect() {
    check_asyncssh("asyncssh-random", &Login::Random).await;
}

#[tokio::test]
async fn asyncssh_with_a_key_gets_its_stable_url_that_serves_and_goes_on_disconnect() {
    let key = SshKeyPair::generate();
    check_asyncssh("asyncssh-keyed", &Login::Key(&key)).await;
}
