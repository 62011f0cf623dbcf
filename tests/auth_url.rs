//! `--auth-url`, end to end: the real binary and stock OpenSSH against a
//! small authorisation service the test runs (hyper on loopback), which
//! records what burrow asked and answers as each test says — allow with
//! grants, deny with a message, a 5xx, an answer too slow, no service at
//! all — and how often it was asked (answers are cached per key).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The refusal line when the service cannot be asked.
const UNAVAILABLE: &str = "the server's authorisation service is unavailable";

/// What the session banner says once a tunnel is up.
const LIVE: &str = "Your tunnel is live";

/// Waits (bounded) until `ssh`'s banner shows the tunnel `name`.
async fn live_as(ssh: &Ssh, burrow: &Burrow, name: &str) {
    let url = burrow.https_url(&format!("{name}.localhost"), "");
    let url = url.as_str();
    ssh.stdout
        .wait_contains(url, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("no tunnel {url}: {e}: {}", ssh.all_output()));
}

/// How the test service answers one request.
struct Reply {
    status: u16,
    body: String,
    /// Waits this long first (a slow service).
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

type Decide = dyn Fn(&Value) -> Reply + Send + Sync;

/// The operator's authorisation service, as the test plays it.
struct AuthService {
    addr: SocketAddr,
    /// Every request body, in order.
    asked: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthService {
    async fn start(decide: impl Fn(&Value) -> Reply + Send + Sync + 'static) -> AuthService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let decide: Arc<Decide> = Arc::new(decide);
        let log = Arc::clone(&asked);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (decide, log) = (Arc::clone(&decide), Arc::clone(&log));
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (decide, log) = (Arc::clone(&decide), Arc::clone(&log));
                        async move { Ok::<_, hyper::Error>(answer(req, &*decide, &log).await) }
                    });
                    let io = TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
        AuthService { addr, asked, task }
    }

    fn url(&self) -> String {
        format!("http://{}/ssh-login", self.addr)
    }

    /// The requests so far.
    fn asked(&self) -> Vec<Value> {
        self.asked.lock().unwrap().clone()
    }

    /// How many requests were about `user`.
    fn asked_about(&self, user: &str) -> usize {
        self.asked().iter().filter(|a| a["user"] == user).count()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    decide: &Decide,
    log: &Mutex<Vec<Value>>,
) -> Response<Full<Bytes>> {
    let ok = req.method() == hyper::Method::POST
        && req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/json");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    log.lock().unwrap().push(asked.clone());
    let reply = match ok {
        true => decide(&asked),
        false => Reply::json(400, json!({"error": "not a JSON POST"})),
    };
    tokio::time::sleep(reply.delay).await;
    Response::builder()
        .status(reply.status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap()
}

/// A stock `ssh` login as `user` with `key`, asking for `-R forward`.
fn login(burrow: &Burrow, user: &str, key: &SshKeyPair, forward: &str) -> Ssh {
    let args = ["-R", forward];
    SshSpec {
        port: burrow.ssh_port(),
        args: &args,
        user,
        ..SshSpec::default()
    }
    .spawn_with_key(key)
}

/// Waits (bounded) for `ssh` to end; its exit status and everything it
/// printed.
async fn ended(ssh: &mut Ssh) -> String {
    let status = ssh.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some(), "ssh did not end: {}", ssh.all_output());
    assert!(!status.unwrap().success(), "{}", ssh.all_output());
    ssh.all_output()
}

fn forward_to(origin: &Origin, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{name}:80:127.0.0.1:{}", origin.port),
        None => format!("80:127.0.0.1:{}", origin.port),
    }
}

/// The service allows alice with the name `team-app`, allows bob with
/// nothing of his own, and refuses mallory with a message: alice gets her
/// name, bob is refused it (it belongs to another key), mallory's terminal
/// shows the message and no tunnel. burrow told the service who logs in,
/// with which key, from where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_answer_grants_names_or_refuses_with_its_message() {
    let service = AuthService::start(|asked| match asked["user"].as_str() {
        Some("alice") => Reply::json(200, json!({"allow": true, "names": ["team-app"]})),
        Some("bob") => Reply::json(200, json!({"allow": true})),
        _ => Reply::json(
            403,
            json!({"allow": false, "message": "mallory is suspended until Monday"}),
        ),
    })
    .await;
    let burrow = Burrow::start(&["--auth-url", &service.url()]).await;
    let origin = Origin::start("auth-url-alice").await;
    let (alice_key, bob_key, mallory_key) = (
        SshKeyPair::generate(),
        SshKeyPair::generate(),
        SshKeyPair::generate(),
    );

    let alice = login(
        &burrow,
        "alice",
        &alice_key,
        &forward_to(&origin, Some("team-app")),
    );
    live_as(&alice, &burrow, "team-app").await;
    let page = burrow
        .https_client()
        .get(burrow.https_url("team-app.localhost", "/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.text().await.unwrap(), "auth-url-alice");
    let asked = service.asked();
    let about_alice = asked.iter().find(|a| a["user"] == "alice").unwrap();
    assert_eq!(about_alice["key_type"], "ssh-ed25519");
    assert_eq!(about_alice["fingerprint"], alice_key.fingerprint.as_str());
    let sent_key: Vec<&str> = about_alice["public_key"]
        .as_str()
        .unwrap()
        .split(' ')
        .collect();
    let own_key: Vec<&str> = alice_key.public.split(' ').collect();
    assert_eq!(sent_key[..2], own_key[..2]);
    assert!(about_alice["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(about_alice.get("password").is_none());

    let bob = login(
        &burrow,
        "bob",
        &bob_key,
        &forward_to(&origin, Some("team-app")),
    );
    bob.stdout
        .wait_contains(
            "ERROR: the name \"team-app\" belongs to another key",
            Duration::from_secs(15),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", bob.all_output()));

    let mut mallory = login(&burrow, "mallory", &mallory_key, &forward_to(&origin, None));
    let output = ended(&mut mallory).await;
    assert!(
        output.contains("burrow: mallory is suspended until Monday"),
        "{output}"
    );
    assert!(!output.contains(LIVE), "{output}");
    drop(alice);
}

/// A 5xx, an answer slower than `--auth-url-timeout`, an answer that is
/// not the JSON verdict, a grant that is not valid and no service at all
/// each refuse the login with the same clear line — never an open door —
/// quickly, and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_service_refuses_with_a_clear_line() {
    let service = AuthService::start(|asked| match asked["user"].as_str() {
        Some("five") => Reply::json(503, json!({"allow": true})),
        Some("slow") => Reply {
            delay: Duration::from_secs(30),
            ..Reply::json(200, json!({"allow": true}))
        },
        Some("html") => Reply {
            status: 200,
            body: "<html>welcome</html>".into(),
            delay: Duration::ZERO,
        },
        _ => Reply::json(200, json!({"allow": true, "names": ["Not_A_Name"]})),
    })
    .await;
    let burrow = Burrow::start(&["--auth-url", &service.url(), "--auth-url-timeout", "1s"]).await;
    let origin = Origin::start("auth-url-down").await;
    for user in ["five", "slow", "html", "invalid"] {
        let started = Instant::now();
        let key = SshKeyPair::generate();
        let mut ssh = login(&burrow, user, &key, &forward_to(&origin, None));
        let output = ended(&mut ssh).await;
        assert!(
            output.contains(&format!("burrow: {UNAVAILABLE}")),
            "{user}: {output}"
        );
        assert!(!output.contains(LIVE), "{user}: {output}");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{user}: refused only after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(burrow.refusals("auth-url").await, 4);

    // Nothing listens at the URL.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", gone.local_addr().unwrap());
    drop(gone);
    let burrow = Burrow::start(&["--auth-url", &url]).await;
    let key = SshKeyPair::generate();
    let mut ssh = login(&burrow, "anyone", &key, &forward_to(&origin, None));
    let output = ended(&mut ssh).await;
    assert!(
        output.contains(&format!("burrow: {UNAVAILABLE}")),
        "{output}"
    );
    assert_eq!(burrow.refusals("auth-url").await, 1);
}

/// An answer is reused for the same key within `--auth-url-ttl`: a second
/// login with the key does not ask again, another key does; with a TTL of
/// zero every login asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_cached_per_key_for_the_ttl() {
    let service = AuthService::start(|_| Reply::json(200, json!({"allow": true}))).await;
    let origin = Origin::start("auth-url-cache").await;
    let key = SshKeyPair::generate();
    let other = SshKeyPair::generate();
    for (ttl, user, expected) in [("60s", "cached", 1), ("0s", "uncached", 2)] {
        let burrow = Burrow::start(&["--auth-url", &service.url(), "--auth-url-ttl", ttl]).await;
        for _ in 0..2 {
            let ssh = login(&burrow, user, &key, &forward_to(&origin, None));
            ssh.url().await;
        }
        assert_eq!(service.asked_about(user), expected, "--auth-url-ttl {ttl}");
        let ssh = login(&burrow, user, &other, &forward_to(&origin, None));
        ssh.url().await;
        assert_eq!(
            service.asked_about(user),
            expected + 1,
            "another key is asked about"
        );
    }
}

/// With a keys file the file answers first: its keys get in without the
/// service being asked; keys it does not list are asked about — also under
/// `--auth-mode keys`, where keyless logins stay refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_file_answers_first_and_auth_mode_keys_asks_for_the_rest() {
    let service = AuthService::start(|asked| match asked["user"].as_str() {
        Some("guest") => Reply::json(200, json!({"allow": true, "names": ["guest-app"]})),
        _ => Reply::json(403, json!({"allow": false, "message": "not one of ours"})),
    })
    .await;
    let dir = TempDir::new("burrow-auth-url-keys");
    let listed = SshKeyPair::generate();
    let keys_file = dir.path().join("keys");
    std::fs::write(&keys_file, format!("names=listed-app {}\n", listed.public)).unwrap();
    let burrow = Burrow::start(&[
        "--auth-url",
        &service.url(),
        "--keys-file",
        path(&keys_file),
        "--auth-mode",
        "keys",
    ])
    .await;
    let origin = Origin::start("auth-url-keys").await;

    let member = login(
        &burrow,
        "member",
        &listed,
        &forward_to(&origin, Some("listed-app")),
    );
    live_as(&member, &burrow, "listed-app").await;
    assert_eq!(service.asked_about("member"), 0, "the keys file answered");

    let guest_key = SshKeyPair::generate();
    let guest = login(
        &burrow,
        "guest",
        &guest_key,
        &forward_to(&origin, Some("guest-app")),
    );
    live_as(&guest, &burrow, "guest-app").await;
    assert_eq!(service.asked_about("guest"), 1);

    let stranger_key = SshKeyPair::generate();
    let mut stranger = login(
        &burrow,
        "stranger",
        &stranger_key,
        &forward_to(&origin, None),
    );
    let output = ended(&mut stranger).await;
    assert!(output.contains("burrow: not one of ours"), "{output}");

    let forward = forward_to(&origin, None);
    let mut keyless = Ssh::spawn_keyless(
        &burrow,
        &["-o", "NumberOfPasswordPrompts=0", "-R", &forward],
    );
    let status = keyless.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "{}",
        keyless.all_output()
    );
    assert!(
        keyless.all_output().contains("Permission denied"),
        "{}",
        keyless.all_output()
    );
}

/// With `--auth-url`, a password login is offered and the service judges
/// the password (stock ssh, the password given through `SSH_ASKPASS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_logins_are_judged_by_the_service() {
    let service = AuthService::start(|asked| match asked["password"].as_str() {
        Some("correct horse") => Reply::json(200, json!({"allow": true})),
        _ => Reply::json(403, json!({"allow": false, "message": "wrong password"})),
    })
    .await;
    let burrow = Burrow::start(&["--auth-url", &service.url()]).await;
    let origin = Origin::start("auth-url-password").await;
    let dir = TempDir::new("burrow-auth-url-password");

    let good = password_login(&burrow, dir.path(), "carol", "correct horse", &origin);
    good.url().await;
    let about = service.asked();
    let carol = about.iter().find(|a| a["user"] == "carol").unwrap();
    assert_eq!(carol["password"], "correct horse");
    assert!(carol.get("fingerprint").is_none());

    let mut bad = password_login(&burrow, dir.path(), "carol", "guess", &origin);
    let output = ended(&mut bad).await;
    assert!(output.contains("burrow: wrong password"), "{output}");
}

/// Stock ssh logging in with a password, which an `SSH_ASKPASS` script
/// types.
fn password_login(burrow: &Burrow, dir: &Path, user: &str, password: &str, origin: &Origin) -> Ssh {
    let askpass = dir.join(format!("askpass-{}", password.len()));
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
    let mut mode = std::fs::metadata(&askpass).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut mode, 0o700);
    std::fs::set_permissions(&askpass, mode).unwrap();
    let child = Command::new("ssh")
        .args(["-F", "/dev/null"])
        .args(["-o", "PubkeyAuthentication=no", "-o", "IdentityAgent=none"])
        .args(["-o", "KbdInteractiveAuthentication=no"])
        .args(["-o", "PreferredAuthentications=password"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "ConnectTimeout=10"])
        .args(["-p", &burrow.ssh_port().to_string()])
        .args(["-R", &forward_to(origin, None)])
        .arg(format!("{user}@127.0.0.1"))
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", ":0")
        .env_remove("SSH_AUTH_SOCK")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssh");
    Ssh::adopt(
        child,
        "ssh-password",
        Arc::new(TempDir::new("burrow-askpass-keep")),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
