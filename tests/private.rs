//! End-to-end tests of private aliases: a device keeps
//! `ssh -N -R NAME:PORT:localhost:PORT HOST` open, and an administrator
//! reaches it through burrow with stock OpenSSH — `ssh -J` to the device's
//! own sshd (a real `sshd` on loopback, its host key checked end to end),
//! `ssh -L` to a private service — while nothing is published and every
//! other `direct-tcpip` is refused with a reason the client prints.

mod common;

use std::net::TcpStream as StdTcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long a tunnel or a refusal may take to show.
const SOON: Duration = Duration::from_secs(15);

/// A real OpenSSH server on loopback, playing the device's sshd.
struct Sshd {
    child: Child,
    port: u16,
    /// `ssh-ed25519 AAAA…`: its host key, for the admin's known_hosts.
    host_key: String,
    _dir: TempDir,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user the test runs as: the one the device's sshd lets in.
fn local_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

impl Sshd {
    /// Starts `sshd -D` on a free loopback port, letting `admin` log in.
    fn start(admin: &SshKeyPair) -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is not installed: apt-get install -y openssh-server (or run .ci/run)");
        // sshd insists on its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = TempDir::new("burrow-test-sshd");
        let host_key = dir.path().join("host_key");
        let st = Command::new("ssh-keygen")
            .args(["-t", "ed25519", "-N", "", "-q", "-f"])
            .arg(&host_key)
            .status()
            .unwrap();
        assert!(st.success());
        let host_pub = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let host_key_line = host_pub
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, format!("{}\n", admin.public)).unwrap();
        let port = dead_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\nLogLevel VERBOSE\n",
                host_key.display(),
                authorized.display(),
                dir.path().join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + SOON;
        while StdTcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd {
            child,
            port,
            host_key: host_key_line,
            _dir: dir,
        }
    }
}

/// A device: `ssh -N -R FORWARD` with `key`, as autossh runs it.
fn device(burrow: &Burrow, key: &SshKeyPair, forward: &str) -> Ssh {
    SshSpec {
        port: burrow.ssh_port(),
        args: &["-N", "-R", forward],
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

/// Waits until `n` private aliases are served.
async fn wait_private(burrow: &Burrow, n: u64) {
    burrow.wait_stat("private_tunnels", n, SOON).await;
}

/// The options every `ssh` to burrow gets.
fn burrow_opts(burrow: &Burrow, key: &Path) -> Vec<String> {
    keyed_ssh_opts(burrow.ssh_port(), key)
}

/// `ssh -W TARGET burrow` with `key` and empty stdin: what ProxyJump runs.
/// Returns its output once it exits.
async fn stdio_forward(burrow: &Burrow, key: &Path, target: &str) -> Output {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.args(burrow_opts(burrow, key))
        .args(["-W", target, "admin@127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(SOON, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ssh -W {target} hung"))
        .expect("run ssh -W")
}

/// Asserts `ssh -W target` fails, printing `reason`.
async fn refused(burrow: &Burrow, key: &Path, target: &str, reason: &str) {
    let out = stdio_forward(burrow, key, target).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "-W {target} went through: {stderr}");
    assert!(
        stderr.contains(reason),
        "-W {target}: expected {reason:?} in stderr: {stderr}"
    );
}

/// An ssh_config for the admin: `burrow` is the jump host, `device` the
/// device behind it (`HostName` the alias), checked against `known_hosts`.
fn admin_config(dir: &Path, burrow: &Burrow, key: &Path, alias: &str, known: &str) -> PathBuf {
    let known_hosts = dir.join("known_hosts");
    std::fs::write(&known_hosts, format!("{alias} {known}\n")).unwrap();
    let config = dir.join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host burrow\n  HostName 127.0.0.1\n  Port {}\n  User admin\n  IdentityFile {key}\n  \
             IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking no\n  \
             UserKnownHostsFile /dev/null\n  ConnectTimeout 10\n\
             Host device\n  HostName {alias}\n  User {}\n  ProxyJump burrow\n  IdentityFile {key}\n  \
             IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {}\n  GlobalKnownHostsFile /dev/null\n  ConnectTimeout 10\n",
            burrow.ssh_port(),
            local_user(),
            known_hosts.display(),
            key = key.display(),
        ),
    )
    .unwrap();
    config
}

/// `ssh -F CONFIG device echo …`: a command on the device through the jump.
async fn run_on_device(config: &Path) -> Output {
    let mut cmd = tokio::process::Command::new("ssh");
    cmd.arg("-F")
        .arg(config)
        .args(["device", "echo", "private-hello-from-device"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("ssh -J hung")
        .expect("run ssh -J")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_jump_reaches_the_devices_own_sshd_with_its_host_key_checked() {
    let burrow = Burrow::start(&[]).await;
    let key = SshKeyPair::generate();
    let sshd = Sshd::start(&key);
    let forward = format!("pi-7:22:127.0.0.1:{}", sshd.port);
    let _device = device(&burrow, &key, &forward);
    wait_private(&burrow, 1).await;

    let dir = TempDir::new("burrow-test-admin");
    let config = admin_config(dir.path(), &burrow, &key.path, "pi-7", &sshd.host_key);
    let out = run_on_device(&config).await;
    assert!(
        out.status.success(),
        "ssh -J failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "private-hello-from-device"
    );
    let stats = burrow.stats().await;
    assert_eq!(stats["private_connections"], 1, "{stats}");

    // The admin's ssh checks the device's own host key: a known_hosts with
    // another key refuses, so burrow cannot stand in for the device.
    let other = SshKeyPair::generate();
    let wrong = other
        .public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let config = admin_config(dir.path(), &burrow, &key.path, "pi-7", &wrong);
    let out = run_on_device(&config).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("HOST IDENTIFICATION HAS CHANGED")
            || stderr.contains("Host key verification failed"),
        "{stderr}"
    );

    // Nothing is published: the name is no HTTPS tunnel.
    let page = burrow.get("pi-7.localhost", "/").await;
    assert_eq!(page.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_local_forward_reaches_a_private_service_and_the_admin_api_sees_it() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("db").await;
    let key = SshKeyPair::generate();
    let mut device = device(&burrow, &key, &format!("db:5432:127.0.0.1:{}", origin.port));
    wait_private(&burrow, 1).await;

    let local = dead_port();
    let admin = SshSpec {
        port: burrow.ssh_port(),
        args: &["-N", "-L", &format!("{local}:db:5432")],
        ..SshSpec::default()
    }
    .spawn_with_key(&key);
    let url = format!("http://127.0.0.1:{local}/hello");
    let deadline = Instant::now() + SOON;
    let body = loop {
        if let Ok(resp) = reqwest::get(&url).await {
            break resp.text().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "-L never answered: {}",
            admin.all_output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains(HELLO), "{body}");
    assert_eq!(origin.hits("/hello"), 1);

    // The admin API lists it as `private` and can kick it.
    let list: serde_json::Value = burrow
        .admin(reqwest::Method::GET, "/tunnels")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "private")
        .unwrap_or_else(|| panic!("no private tunnel listed: {list}"))
        .clone();
    assert_eq!(entry["name"], "private:db:5432");
    assert_eq!(entry["port"], 5432);
    assert_eq!(entry["fingerprint"], key.fingerprint.as_str());
    let metrics = reqwest::get(format!("http://{}/metrics", burrow.addrs.stats))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kind=\"private\""), "{metrics}");
    assert!(
        metrics.contains("private_connections_total{result=\"relayed\"}"),
        "{metrics}"
    );
    let kicked = reqwest::Client::new()
        .delete(format!(
            "http://{}/tunnels/private%3Adb%3A5432",
            burrow.addrs.stats
        ))
        .bearer_auth(burrow.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(kicked.status(), 200);
    wait_private(&burrow, 0).await;
    // The device's only tunnel is gone, so its connection ends (autossh
    // would reconnect).
    assert!(
        device.wait_exit(SOON).await.is_some(),
        "the kicked device stays connected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tcpip_is_refused_unless_it_is_an_allowed_private_alias() {
    // A dozen connections in a few seconds: the per-IP SSH limits off.
    let burrow = Burrow::start(&SSH_LIMITS_OFF).await;
    let origin = Origin::start("dev").await;
    let owner = SshKeyPair::generate();
    let stranger = SshKeyPair::generate();
    let _device = device(
        &burrow,
        &owner,
        &format!("pi-7:22:127.0.0.1:{}", origin.port),
    );
    wait_private(&burrow, 1).await;

    // No generic outbound forwarding: loopback, burrow's own ports, other
    // hosts.
    let not_private = "burrow forwards only to private aliases";
    let own_ssh = format!("127.0.0.1:{}", burrow.ssh_port());
    let own_stats = burrow.addrs.stats.to_string();
    let targets = [
        "localhost:22",
        "127.0.0.1:22",
        &own_ssh,
        &own_stats,
        "[::1]:22",
        "example.org:80",
        "10.0.0.1:22",
    ];
    for target in targets {
        refused(&burrow, &owner.path, target, not_private).await;
    }
    // An alias nobody holds, and another key's alias.
    refused(
        &burrow,
        &owner.path,
        "pi-8:22",
        "no device holds the private alias pi-8:22",
    )
    .await;
    refused(
        &burrow,
        &stranger.path,
        "pi-7:22",
        "may not connect to pi-7:22",
    )
    .await;
    refused(
        &burrow,
        &stranger.path,
        "pi-7.localhost:22",
        "may not connect to pi-7:22",
    )
    .await;

    // The owner gets through (the origin answers HTTP over the stream).
    let out = stdio_forward_http(&burrow, &owner.path, "pi-7:22").await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(HELLO),
        "{out:?}"
    );

    let stats = burrow.stats().await;
    assert_eq!(
        stats["private_refused"],
        targets.len() as u64 + 3,
        "{stats}"
    );
    assert!(burrow.stderr.text().contains("direct-tcpip refused"));
}

/// A device whose own service is down: the admin's ssh prints why as the
/// open failure (burrow reaches the device before it accepts the channel),
/// instead of a channel that opens and closes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_service_is_down_is_an_open_failure() {
    let burrow = Burrow::start(&[]).await;
    let owner = SshKeyPair::generate();
    let _device = device(
        &burrow,
        &owner,
        &format!("pi-9:22:127.0.0.1:{}", dead_port()),
    );
    wait_private(&burrow, 1).await;
    let out = stdio_forward(&burrow, &owner.path, "pi-9:22").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "-W went through: {stderr}");
    assert!(
        stderr.contains(
            "open failed: connect failed: pi-9:22 did not take the connection: \
             the client could not open it: Connect failed"
        ),
        "{stderr}"
    );
    let stats = burrow.stats().await;
    assert_eq!(
        (&stats["private_refused"], &stats["private_connections"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{stats}"
    );
}

/// An alias another key's connection holds is refused to a second key,
/// in the session, with what to do; the holder keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_held_by_another_key_is_refused_with_why() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("dev").await;
    let forward = format!("pi-5:22:127.0.0.1:{}", origin.port);
    let (owner, other) = (SshKeyPair::generate(), SshKeyPair::generate());
    let _device = device(&burrow, &owner, &forward);
    wait_private(&burrow, 1).await;
    let second = SshSpec {
        port: burrow.ssh_port(),
        args: &["-R", &forward],
        ..SshSpec::default()
    }
    .spawn_with_key(&other);
    second
        .stdout
        .wait_contains(
            "ERROR: the private alias pi-5:22 is held by another connection; pick another name, \
             or connect with the key that holds it",
            SOON,
        )
        .await
        .unwrap_or_else(|e| panic!("second key not refused: {e} {}", second.all_output()));
    assert_eq!(burrow.stats().await["private_tunnels"], 1);
    let out = stdio_forward_http(&burrow, &owner.path, "pi-5:22").await;
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(HELLO),
        "the holder still serves it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_clients_can_neither_bind_nor_connect() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("dev").await;
    let keyless = Ssh::spawn_keyless(
        &burrow,
        &["-R", &format!("pi-7:22:127.0.0.1:{}", origin.port)],
    );
    keyless
        .stdout
        .wait_contains("private aliases are for SSH keys", SOON)
        .await
        .unwrap_or_else(|e| panic!("keyless bind not refused: {e} {}", keyless.all_output()));

    let owner = SshKeyPair::generate();
    let _device = device(
        &burrow,
        &owner,
        &format!("pi-7:22:127.0.0.1:{}", origin.port),
    );
    wait_private(&burrow, 1).await;
    let out = tokio::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "IdentityAgent=none",
        ])
        .args([
            "-o",
            "KbdInteractiveAuthentication=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args([
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-p",
            &burrow.ssh_port().to_string(),
        ])
        .args(["-W", "pi-7:22", "admin@127.0.0.1"])
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(SOON, out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pi-7:22 is private: connect with an SSH key"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_keys_and_keys_file_connect_grants_let_other_keys_in() {
    let owner = SshKeyPair::generate();
    let friend = SshKeyPair::generate();
    let fleet_admin = SshKeyPair::generate();
    let keys = TempDir::new("burrow-test-keys");
    let keys_file = keys.path().join("keys");
    std::fs::write(
        &keys_file,
        format!(
            "names=fleet-1,pi-7 {}\nconnect=fleet-* {}\n{}\n",
            owner.public, fleet_admin.public, friend.public
        ),
    )
    .unwrap();
    let keys_arg = keys_file.display().to_string();
    let mut args = SSH_LIMITS_OFF.to_vec();
    args.extend(["--keys-file", &keys_arg]);
    let burrow = Burrow::start(&args).await;
    let origin = Origin::start("dev").await;

    // The keys file grants fleet-admin every fleet-* alias.
    let _fleet = device(
        &burrow,
        &owner,
        &format!("fleet-1:22:127.0.0.1:{}", origin.port),
    );
    // The owner of pi-7 lets friend in with allow-keys= (a session command).
    let with_options = SshSpec {
        port: burrow.ssh_port(),
        args: &["-R", &format!("pi-7:22:127.0.0.1:{}", origin.port)],
        remote_cmd: &["--", &format!("allow-keys={}", friend.fingerprint)],
        ..SshSpec::default()
    }
    .spawn_with_key(&owner);
    wait_private(&burrow, 2).await;
    with_options
        .stdout
        .wait_contains("ssh -J", SOON)
        .await
        .unwrap_or_else(|e| panic!("the banner names the jump: {e}"));

    let through = |out: Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    through(stdio_forward_http(&burrow, &fleet_admin.path, "fleet-1:22").await);
    through(stdio_forward_http(&burrow, &friend.path, "pi-7:22").await);
    refused(&burrow, &fleet_admin.path, "pi-7:22", "may not connect").await;
    refused(&burrow, &friend.path, "fleet-1:22", "may not connect").await;

    // A name the keys file grants to another key cannot be bound.
    let forward = format!("fleet-1:2222:127.0.0.1:{}", origin.port);
    let mut squatter = SshSpec {
        port: burrow.ssh_port(),
        args: &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &forward],
        ..SshSpec::default()
    }
    .spawn_with_key(&friend);
    assert!(
        squatter.wait_exit(SOON).await.is_some(),
        "a refused -N forward ends the client"
    );
    assert!(
        squatter
            .all_output()
            .contains("remote port forwarding failed"),
        "{}",
        squatter.all_output()
    );
}

/// `ssh -W target` sending one HTTP request (the origin plays the device's
/// service); the output once it exits.
async fn stdio_forward_http(burrow: &Burrow, key: &Path, target: &str) -> Output {
    let args = burrow_opts(burrow, key);
    let out = ssh_w_get_hello(&args, target, "admin@127.0.0.1", SOON).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains(HELLO) || !out.status.success());
    out
}
