//! An authenticated SSH client that misbehaves on purpose (issue 30): each
//! test logs in with a valid login and does one thing stock clients never
//! do, and checks three things against the real binary:
//!
//! (a) the answer names the limit: an `ERROR:` line, the open-failure
//!     text, a 503 page, or the disconnect message (or, where the client
//!     cannot be told, burrow's log and `burrow_refusals_total`);
//! (b) burrow's memory (VmRSS), task count (`burrow_tokio_alive_tasks`)
//!     and open files (`/proc/PID/fd`) stay bounded: measured before the
//!     attack and after it, with a margin given at each assertion;
//! (c) a well-behaved tunnel of another user (stock OpenSSH `ssh -R`)
//!     keeps serving HTTPS requests throughout, and its p99 stays within
//!     2x its quiet p99.
//!
//! How (c) is measured: before the attack, 300 requests (2 at a time) to
//! the well-behaved tunnel give its quiet p99; during the attack the same
//! loop runs until the attack is over. An attack that one connection gets
//! through in a fraction of a second is repeated, reconnecting, for at
//! least [`ATTACK`] (as an attacker would: the connection rate and the
//! violations then block its IP), so that at least 200 requests are
//! measured under it. Every request must succeed, no gap between two
//! answers may exceed 1 s, and the loaded p99 must be within 2x the quiet
//! one, plus 25 ms for a busy 2-core CI machine — the slack `tests/flow.rs`
//! uses for the same comparison; a stalled tunnel costs seconds, not
//! milliseconds. When it is not, the quiet p99 is taken once more after
//! the attack and the busier of the two quiet values is the baseline: on
//! a shared machine the background load drifts within seconds, and a
//! cost of the attack shows only while it runs. The tests run one at a
//! time (a lock), so no test's attack is another's noise.
//!
//! The hostile client connects from 127.0.0.3, the well-behaved one from
//! 127.0.0.2 and visitors from 127.0.0.1, so the per-IP limits stay on at
//! their defaults and a block of the attacker touches nobody else.
//!
//! Who sends what:
//! - `tests/common/russh_client.rs`, russh's client in process, for all it
//!   can be made to send: floods of `tcpip-forward` and
//!   `cancel-tcpip-forward`, of session and `direct-tcpip` opens (the
//!   open-failure texts through `Handler::channel_open_failure`), session
//!   requests with absurd sizes, data after EOF, a rekey flood
//!   (`rekey_soon`), a client that stops reading its socket, and
//!   `forwarded-tcpip` opens confirmed late or never;
//! - `tests/scripts/paramiko_hostile.py` (Debian's python3-paramiko,
//!   messages built by hand and sent with `Transport._send_message`) for
//!   what russh's client cannot send (ARCHITECTURE.md, "Per SSH
//!   connection", says why for each): the window adjust that overflows,
//!   data over the packet size, data after close, one forwarded channel
//!   never read while the others are, and a key exchange started and
//!   never finished.

mod common;
#[path = "common/russh_client.rs"]
mod russh_client;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use russh_client::{OnForward, RusshClient};

/// Every test alone: the p99 comparison must see only its own attack.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Requests for the quiet p99.
const QUIET_REQUESTS: usize = 300;
/// Requests in flight at once to the well-behaved tunnel.
const CONCURRENCY: usize = 2;
/// The slack over 2x the quiet p99 (see the file's doc).
const SLACK: Duration = Duration::from_millis(25);
/// The longest wait between two answers of the well-behaved tunnel.
const MAX_GAP: Duration = Duration::from_secs(1);
/// How long an attack's answer may take.
const WAIT: Duration = Duration::from_secs(30);
/// The shortest attack the well-behaved tunnel is measured under.
const ATTACK: Duration = Duration::from_secs(2);
/// Where the attacker connects from.
const HOSTILE_FROM: &str = "127.0.0.3";
/// Where the well-behaved client connects from.
const GOOD_FROM: &str = "127.0.0.2";

/// The visitor rate limits are off (every request of the load comes from
/// 127.0.0.1, and those limits are tests/limits.rs's business); every
/// other limit is at its default unless a test says otherwise.
fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--visitor-rate", "0", "--tunnel-rate", "0"];
    all.extend_from_slice(extra);
    all
}

fn hostile_ip() -> std::net::IpAddr {
    HOSTILE_FROM.parse().unwrap()
}

// ---------------------------------------------------------------------------
// The rig: burrow, a well-behaved tunnel, its quiet p99, usage before
// ---------------------------------------------------------------------------

/// What burrow holds: resident memory, tasks, open files.
#[derive(Clone, Copy, Debug)]
struct Usage {
    rss: u64,
    tasks: u64,
    fds: usize,
}

async fn usage(burrow: &Burrow) -> Usage {
    let metrics = burrow.metrics().await;
    let tasks = metrics
        .lines()
        .find_map(|l| l.strip_prefix("burrow_tokio_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .expect("burrow_tokio_alive_tasks in /metrics");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", burrow.pid()))
        .expect("/proc/PID/fd")
        .count();
    Usage {
        rss: burrow.rss_bytes().expect("VmRSS"),
        tasks,
        fds,
    }
}

struct Rig {
    burrow: Burrow,
    origin: Origin,
    /// The well-behaved client: its tunnel lives as long as it does.
    _good: Ssh,
    good_url: String,
    client: reqwest::Client,
    quiet_p99: Duration,
    before: Usage,
    _alone: tokio::sync::MutexGuard<'static, ()>,
}

impl Rig {
    /// burrow with `extra` flags, a well-behaved tunnel, its quiet p99 and
    /// burrow's usage before any attack.
    async fn start(label: &str, extra: &[&str]) -> Rig {
        let alone = ONE_AT_A_TIME.lock().await;
        let burrow = Burrow::start(&flags(extra)).await;
        let origin = Origin::start(label).await;
        let forward = format!("80:127.0.0.1:{}", origin.port);
        let good = Ssh::spawn(&burrow, &["-b", GOOD_FROM, "-R", &forward]);
        let host = good.url().await.host();
        let client = burrow.https_client_h1();
        let good_url = burrow.https_url(&host, "/hello");
        // Warm up: connections, the pool, the allocator.
        Load::start(&client, &good_url, Some(50)).finish().await;
        let quiet = Load::start(&client, &good_url, Some(QUIET_REQUESTS))
            .finish()
            .await;
        let quiet_p99 = p99(&quiet);
        let before = usage(&burrow).await;
        eprintln!("{label}: quiet p99 {quiet_p99:?}, usage before {before:?}");
        Rig {
            burrow,
            origin,
            _good: good,
            good_url,
            client,
            quiet_p99,
            before,
            _alone: alone,
        }
    }

    fn ssh_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.burrow.ssh_port()))
    }

    /// The well-behaved tunnel under load until [`Load::finish`].
    fn load(&self) -> Load {
        Load::start(&self.client, &self.good_url, None)
    }

    /// (c): the well-behaved tunnel served every request throughout, no
    /// answer came more than [`MAX_GAP`] after the previous one, and its
    /// p99 stayed within 2x the quiet one (plus [`SLACK`]).
    async fn check_served(&self, load: Load, what: &str) {
        let times = load.finish().await;
        let loaded = p99(&times);
        eprintln!(
            "{what}: {} requests during the attack, p99 {loaded:?} (quiet {:?})",
            times.len(),
            self.quiet_p99
        );
        assert!(
            times.len() >= 200,
            "{what}: only {} requests measured",
            times.len()
        );
        let within = |quiet: Duration| loaded <= quiet * 2 + SLACK;
        if within(self.quiet_p99) {
            return;
        }
        // The machine may be busier now than when the quiet p99 was taken
        // (CI shares it): the quiet p99 again, now the attack is over; the
        // attack's cost is what the busier of the two does not explain.
        let again = Load::start(&self.client, &self.good_url, Some(QUIET_REQUESTS))
            .finish()
            .await;
        let quiet = p99(&again).max(self.quiet_p99);
        eprintln!("{what}: quiet p99 after the attack {:?}", p99(&again));
        assert!(
            within(quiet),
            "{what}: p99 {loaded:?} under the attack vs {quiet:?} quiet (before: {:?})",
            self.quiet_p99
        );
    }

    /// (b): once the hostile connection is gone, burrow's tasks and open
    /// files are back to what they were (within `spare`: the well-behaved
    /// tunnel's pooled channels, a housekeeping tick), and its memory grew
    /// by at most `rss_margin`.
    async fn check_released(&self, spare: Usage, rss_margin: u64, what: &str) -> Usage {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = usage(&self.burrow).await;
            let tasks_back = now.tasks <= self.before.tasks + spare.tasks;
            let fds_back = now.fds <= self.before.fds + spare.fds;
            if tasks_back && fds_back {
                let grew = now.rss.saturating_sub(self.before.rss);
                eprintln!("{what}: usage after {now:?}, RSS grew {grew} bytes");
                assert!(
                    grew <= rss_margin,
                    "{what}: RSS grew {grew} bytes (margin {rss_margin})"
                );
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not released: before {:?}, now {now:?}",
                self.before
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A paramiko misbehaviour (see tests/scripts/paramiko_hostile.py),
    /// logged in as `random@`.
    fn paramiko(&self, mode: &str, count: usize) -> Ssh {
        paramiko(self.burrow.ssh_port(), (mode, count), self.origin.port)
    }

    /// The paramiko misbehaviour `mode`, run again and again (each run a
    /// new connection) until [`ATTACK`] has passed: every run's output.
    async fn paramiko_attack(&self, mode: &str, count: usize) -> Vec<String> {
        let started = Instant::now();
        let mut outputs = Vec::new();
        while outputs.is_empty() || started.elapsed() < ATTACK {
            outputs.push(finished(&self.paramiko(mode, count)).await);
        }
        outputs
    }

    /// A device holding the private alias `pi-7:22` whose local service
    /// takes connections and keeps them open, saying nothing; its key
    /// (whoever logs in with it may connect to the alias).
    async fn device(&self) -> Device {
        let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = sink.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = sink.accept().await {
                held.push(socket);
            }
        });
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .unwrap();
        let client = RusshClient::connect_with(self.ssh_addr(), port, key.clone()).await;
        client.forward("pi-7", 22).await.expect("the alias");
        Device {
            _client: client,
            key,
            _held: held,
        }
    }

    /// The in-process hostile client, from [`HOSTILE_FROM`].
    async fn russh(&self, on_forward: OnForward) -> Result<RusshClient, russh::Error> {
        RusshClient::misbehaving(self.ssh_addr(), hostile_ip(), self.origin.port, on_forward).await
    }

    /// The in-process hostile client, from [`HOSTILE_FROM`], logged in
    /// with `key`.
    async fn russh_as(&self, key: &russh::keys::PrivateKey) -> Result<RusshClient, russh::Error> {
        let (addr, target) = (self.ssh_addr(), self.origin.port);
        RusshClient::misbehaving_as(addr, hostile_ip(), target, OnForward::Relay, key.clone()).await
    }

    /// `attack` on a new in-process connection (logged in with `key` if
    /// given, else a random one), again and again until [`ATTACK`] has
    /// passed: the first connection's outcome. Once the attacker's IP is
    /// blocked the later ones are turned away at connect, which is all
    /// they then cost.
    async fn russh_attack<F, Fut, T>(&self, key: Option<&russh::keys::PrivateKey>, attack: F) -> T
    where
        F: Fn(RusshClient) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let started = Instant::now();
        let mut first = None;
        while first.is_none() || started.elapsed() < ATTACK {
            let client = match key {
                Some(key) => self.russh_as(key).await,
                None => self.russh(OnForward::Relay).await,
            };
            match client {
                Ok(client) => {
                    let outcome = attack(client).await;
                    first.get_or_insert(outcome);
                }
                Err(err) => {
                    assert!(first.is_some(), "the first connection was refused: {err}");
                    // Paced: a blocked IP's connects are refused at once.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        first.expect("one attack")
    }

    /// Waits until burrow logged a refusal by `limit` and counted it.
    async fn wait_refused(&self, limit: &str) {
        let needle = format!("limit=\"{limit}\"");
        let deadline = Instant::now() + WAIT;
        loop {
            let metrics = self.burrow.metrics().await;
            if metrics
                .lines()
                .any(|l| l.starts_with("burrow_refusals_total") && l.contains(&needle))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no refusal by {limit} counted: {}",
                self.burrow.stderr.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The spare tasks and files the well-behaved side may hold after an
/// attack: its pooled channels (each a pump task), a request in flight,
/// timers of a housekeeping tick.
const SPARE: Usage = Usage {
    rss: 0,
    tasks: 12,
    fds: 4,
};

/// A device behind a private alias, and its owner's key.
struct Device {
    _client: RusshClient,
    key: russh::keys::PrivateKey,
    /// Holds the device's local service's connections open.
    _held: tokio::task::JoinHandle<()>,
}

/// `[PYTHON] tests/scripts/paramiko_hostile.py --port … MODE --count N`,
/// from [`HOSTILE_FROM`], logged in as `random@`.
fn paramiko(port: u16, (mode, count): (&str, usize), origin_port: u16) -> Ssh {
    let python = "/usr/bin/python3";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/paramiko_hostile.py");
    let home = Arc::new(TempDir::new("burrow-hostile"));
    let child = Command::new(python)
        .arg(&script)
        .args(["--port", &port.to_string()])
        .args(["--count", &count.to_string()])
        .args(["--origin-port", &origin_port.to_string()])
        .args(["--source", HOSTILE_FROM])
        .arg(mode)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{python} {}: {e} (apt-get install python3-paramiko)",
                script.display()
            )
        });
    Ssh::adopt(child, &format!("paramiko {mode}"), home)
}

/// Waits for the paramiko client's `closed` line: its output.
async fn finished(client: &Ssh) -> String {
    client
        .stdout
        .wait_contains("\nclosed", Duration::from_secs(60))
        .await
        .unwrap_or_else(|seen| panic!("the hostile client did not finish: {seen}"));
    client.stdout.text()
}

/// The line of `output` that starts with `word`.
fn line_of<'a>(output: &'a str, word: &str) -> Option<&'a str> {
    output.lines().find(|l| l.starts_with(word))
}

/// The server's disconnect message, as paramiko printed it.
fn disconnect_of(output: &str) -> &str {
    line_of(output, "disconnected").unwrap_or_else(|| panic!("no disconnect message: {output}"))
}

// ---------------------------------------------------------------------------
// Load on the well-behaved tunnel
// ---------------------------------------------------------------------------

/// Requests to the well-behaved tunnel, [`CONCURRENCY`] at a time, until
/// `count` are done or [`Load::finish`].
struct Load {
    /// Set by [`Load::finish`] for an open-ended load.
    stop: Arc<AtomicBool>,
    /// A count was given: [`Load::finish`] waits for it.
    counted: bool,
    workers: Vec<tokio::task::JoinHandle<Vec<(Instant, Duration)>>>,
}

impl Load {
    fn start(client: &reqwest::Client, url: &str, count: Option<usize>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let left = Arc::new(std::sync::atomic::AtomicUsize::new(
            count.unwrap_or(usize::MAX),
        ));
        let workers = (0..CONCURRENCY)
            .map(|_| {
                let (client, url) = (client.clone(), url.to_string());
                let (stop, left) = (Arc::clone(&stop), Arc::clone(&left));
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    while !stop.load(Ordering::SeqCst)
                        && left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        let started = Instant::now();
                        let resp = client.get(&url).send().await.expect("well-behaved request");
                        assert_eq!(resp.status(), 200, "the well-behaved tunnel failed");
                        assert_eq!(resp.text().await.unwrap(), HELLO);
                        times.push((Instant::now(), started.elapsed()));
                    }
                    times
                })
            })
            .collect();
        Load {
            stop,
            counted: count.is_some(),
            workers,
        }
    }

    /// Stops the load (or waits for its count): the latencies, sorted;
    /// checks no gap between two answers was longer than [`MAX_GAP`].
    async fn finish(self) -> Vec<Duration> {
        self.stop.store(!self.counted, Ordering::SeqCst);
        let mut all = Vec::new();
        for worker in self.workers {
            all.extend(worker.await.expect("load worker"));
        }
        all.sort_by_key(|(at, _)| *at);
        for pair in all.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            assert!(
                gap <= MAX_GAP,
                "the well-behaved tunnel stalled for {gap:?}"
            );
        }
        let mut times: Vec<Duration> = all.into_iter().map(|(_, took)| took).collect();
        times.sort();
        times
    }
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99).div_ceil(100) - 1]
}

// ---------------------------------------------------------------------------
// Forwards
// ---------------------------------------------------------------------------

/// One connection's flood of `tcpip-forward` requests: names, raw TCP
/// ports and private aliases in turn, until the server ends it. Its
/// session output, how many were granted, and the disconnect message.
async fn forward_flood(client: &mut RusshClient) -> (String, usize, Option<String>) {
    client.open_session().await;
    client.exec("").await;
    let mut granted = 0;
    for i in 0..2000u32 {
        let asked = match i % 3 {
            0 => client.forward(&format!("flood-{i}"), 80).await,
            1 => client.forward("", 20000 + i).await,
            _ => client.forward(&format!("dev-{i}"), 22).await,
        };
        if client.handle().is_closed() {
            break;
        }
        granted += usize::from(asked.is_ok());
    }
    let reason = client.wait_closed(WAIT).await.expect("disconnected");
    (client.output(), granted, reason)
}

/// Thousands of `tcpip-forward` requests on one connection: past
/// `--max-forwards-per-connection` each is refused with an `ERROR:` line
/// naming the limit, and at `--max-violations-per-connection` the
/// connection is ended with both limits in the disconnect message. Each
/// such end is a violation of the IP: reconnecting to do it again gets the
/// IP blocked (`--violations-before-block`), and its connections refused
/// before the SSH version exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_forward_requests_are_cut_at_the_limit() {
    let rig = Rig::start("hostile-forwards", &[]).await;
    let load = rig.load();
    let mut first = rig.russh(OnForward::Relay).await.expect("log in");
    let (output, granted, reason) = forward_flood(&mut first).await;
    let reason = reason.expect("a disconnect message");
    assert!(
        reason.starts_with("max-violations-per-connection")
            && reason.contains("max-forwards-per-connection"),
        "{reason}"
    );
    assert!(granted <= 32, "{granted} forwards granted");
    assert!(
        output.contains(
            "ERROR: max-forwards-per-connection: this connection has made its 32 forward requests"
        ),
        "{output}"
    );
    // Again and again, as an attacker would, until the IP is blocked.
    let started = Instant::now();
    let mut turned_away = None;
    while started.elapsed() < ATTACK || turned_away.is_none() {
        assert!(started.elapsed() < WAIT, "never blocked");
        match rig.russh(OnForward::Relay).await {
            Ok(mut again) => drop(forward_flood(&mut again).await),
            Err(err) => turned_away = Some(err),
        }
    }
    rig.check_served(load, "forward flood").await;
    let blocks = rig.burrow.stats().await;
    assert_eq!(blocks["blocked_ips"], 1, "{blocks}");
    drop(first);
    rig.check_released(SPARE, 16 << 20, "forward flood").await;
}

/// As many `cancel-tcpip-forward` requests for forwards the connection
/// never held: each is refused and a strike; the connection is ended
/// naming the protocol rule it kept breaking.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancels_of_forwards_never_held_end_the_connection() {
    let rig = Rig::start("hostile-cancels", &[]).await;
    let load = rig.load();
    let started = Instant::now();
    let mut reasons = Vec::new();
    while reasons.is_empty() || started.elapsed() < ATTACK {
        let Ok(client) = rig.russh(OnForward::Relay).await else {
            // The IP is blocked by now: it only costs a refused connect.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        client.forward("held", 80).await.expect("one real forward");
        let mut answered = 0;
        for i in 0..2000u32 {
            let cancelled = client
                .handle()
                .cancel_tcpip_forward("never", 1000 + i)
                .await;
            if client.handle().is_closed() {
                break;
            }
            answered += usize::from(cancelled.is_err());
        }
        // The 20th strike's disconnect goes out through the session's
        // queue: a cancel or two already on their way may be answered.
        assert!(answered <= 23, "{answered} cancels answered");
        reasons.push(client.wait_closed(WAIT).await.expect("disconnected"));
    }
    rig.check_served(load, "cancel flood").await;
    let reason = reasons[0].clone().expect("a disconnect message");
    assert!(
        reason.starts_with("max-violations-per-connection: 20 requests")
            && reason.contains("protocol: cancel-tcpip-forward for never:"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "cancel flood").await;
}

// ---------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------

/// What one hostile connection got: the channels the server accepted,
/// its refusals' texts (`CODE TEXT`), and the disconnect message.
struct Outcome {
    accepted: Vec<String>,
    refused: Vec<String>,
    reason: Option<String>,
}

impl Outcome {
    /// Waits for the server to end `client`'s connection.
    async fn of(client: RusshClient, accepted: Vec<String>) -> Outcome {
        let reason = client.wait_closed(WAIT).await.expect("disconnected");
        Outcome {
            accepted,
            refused: client.open_failures(),
            reason,
        }
    }

    fn reason(&self) -> &str {
        self.reason.as_deref().expect("a disconnect message")
    }

    /// The refusals whose text contains `text`.
    fn refused_with(&self, text: &str) -> usize {
        self.refused.iter().filter(|r| r.contains(text)).count()
    }
}

/// Keeps a channel the server accepted open, reading it, so that its
/// queue never stalls the client's own session.
fn keep(mut channel: russh::Channel<russh::client::Msg>) {
    tokio::spawn(async move { while channel.wait().await.is_some() {} });
}

/// Session channels one after another, each kept open, until the server
/// ends the connection or `count` were asked for.
async fn session_flood(client: RusshClient, count: usize) -> Outcome {
    let mut accepted = Vec::new();
    for _ in 0..count {
        let opened = client.handle().channel_open_session().await;
        if client.handle().is_closed() {
            break;
        }
        if let Ok(channel) = opened {
            accepted.push("session".to_string());
            keep(channel);
        }
    }
    Outcome::of(client, accepted).await
}

/// `direct-tcpip` opens in turn to the inspector (each kept open), a
/// private alias nobody holds, and targets burrow never forwards to.
async fn direct_flood(client: RusshClient, count: usize) -> Outcome {
    let targets = [
        ("localhost", 4040),
        ("pi-7", 22),
        ("example.com", 80),
        ("10.0.0.1", 5432),
    ];
    let mut accepted = Vec::new();
    for i in 0..count {
        let (host, port) = targets[i % targets.len()];
        let from_port = 50000 + (i % 1000) as u32;
        let opened = client
            .handle()
            .channel_open_direct_tcpip(host, port, "127.0.0.1", from_port)
            .await;
        if client.handle().is_closed() {
            break;
        }
        if let Ok(channel) = opened {
            accepted.push(format!("{host}:{port}"));
            keep(channel);
        }
    }
    Outcome::of(client, accepted).await
}

/// On the session channel: a pty-req with a 60 kB terminal name and
/// 2^32-1 for every size, then `count` window-changes (2^32-1 again) and
/// envs of 30 kB values, none waiting for a reply, then an exec of 200 kB.
/// A round trip every 16 pairs keeps the client from encrypting all of
/// it (60 MB) ahead of the server: that would be this test process's own
/// CPU, on the cores the well-behaved tunnel's load is measured on.
async fn absurd_session_requests(mut client: RusshClient, count: usize) -> RusshClient {
    client.open_session().await;
    let session = client.session_channel();
    let huge = u32::MAX;
    let term = "x".repeat(60_000);
    let _ = session
        .request_pty(false, &term, huge, huge, huge, huge, &[])
        .await;
    for i in 0..count {
        if client.handle().is_closed() {
            break;
        }
        let _ = session.window_change(huge, huge, i as u32, huge).await;
        let value = "v".repeat(30_000);
        let _ = session.set_env(false, format!("BURROW_{i}"), value).await;
        if i % 16 == 15 && client.handle().send_ping().await.is_err() {
            break;
        }
    }
    let command = format!("auth=a:{}", "b".repeat(200_000));
    let _ = session.exec(true, command).await;
    client
}

/// Thousands of session channels: one is the session, the others are
/// refused; past `--max-channel-opens-per-minute` each refusal names the
/// limit (and when to try again), and the strikes end the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_session_channels_are_refused_by_rate() {
    let rig = Rig::start("hostile-sessions", &[]).await;
    let load = rig.load();
    let outcome = rig.russh_attack(None, |c| session_flood(c, 3000)).await;
    rig.check_served(load, "session flood").await;
    assert_eq!(outcome.accepted.len(), 1, "{:?}", outcome.accepted);
    let limited = outcome.refused_with(
        "max-channel-opens-per-minute: more than 300 channel opens per minute on this connection; try again in",
    );
    // The bucket (300, one of them the session), a few refilled while the
    // client opened them one by one, then 20 strikes.
    let answered = outcome.accepted.len() + outcome.refused.len();
    assert!(
        (320..=380).contains(&answered),
        "{answered} opens answered: {:?}",
        outcome.refused
    );
    // 20 strikes end the connection; an open already in flight when the
    // 20th was refused may be answered before the disconnect lands (seen
    // on a loaded machine), hence 21.
    assert!((19..=21).contains(&limited), "{:?}", outcome.refused);
    let reason = outcome.reason();
    assert!(
        reason.starts_with("max-violations-per-connection")
            && reason.contains("max-channel-opens-per-minute"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "session flood").await;
}

/// Thousands of `direct-tcpip` opens: the inspector (each kept open),
/// private aliases nobody holds and targets burrow never forwards to. The
/// refused ones say why; past `--max-direct-channels-per-connection`
/// inspector channels the open failure names the limit, and the strikes
/// end the connection, which gives back every channel's task and spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_direct_opens_are_capped() {
    let rig = Rig::start(
        "hostile-direct",
        &["--max-direct-channels-per-connection", "16"],
    )
    .await;
    let load = rig.load();
    let outcome = rig.russh_attack(None, |c| direct_flood(c, 3000)).await;
    rig.check_served(load, "direct-tcpip flood").await;
    assert_eq!(outcome.accepted.len(), 16, "{:?}", outcome.accepted);
    assert!(outcome.accepted.iter().all(|a| a == "localhost:4040"));
    for refusal in [
        "no device holds the private alias pi-7:22 now",
        "burrow forwards only to private aliases",
        "4 max-direct-channels-per-connection: this connection already has 16 -L/-J channels open",
    ] {
        assert!(
            outcome.refused_with(refusal) > 0,
            "{refusal}: {:?}",
            outcome.refused
        );
    }
    let reason = outcome.reason();
    assert!(
        reason.starts_with("max-violations-per-connection")
            && reason.contains("max-direct-channels-per-connection"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "direct-tcpip flood")
        .await;
}

/// pty-req, env and window-change with absurd sizes (a 60 kB terminal
/// name, 2^32-1 columns, 30 kB values), then an exec of 200 kB: the exec
/// is refused naming `--max-command-size`, one strike, the connection
/// stays; and the same by the thousand: past `--max-session-requests`
/// each is refused, and the strikes end the connection. (window-change
/// costs burrow nothing and is not counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_requests_with_absurd_sizes_are_refused() {
    let rig = Rig::start("hostile-requests", &[]).await;
    let load = rig.load();
    let client = rig.russh(OnForward::Relay).await.expect("log in");
    let client = absurd_session_requests(client, 8).await;
    let said = "ERROR: max-command-size: the command is 200.0 kB long; options fit in 4.1 kB";
    let output = client.wait_output(said, WAIT).await;
    assert!(output.is_ok(), "{output:?}");
    assert!(
        !client.handle().is_closed(),
        "{:?}",
        client.disconnect_reason()
    );
    drop(client);
    let outcome = rig
        .russh_attack(None, |c| async move {
            let c = absurd_session_requests(c, 2000).await;
            Outcome::of(c, Vec::new()).await
        })
        .await;
    rig.check_served(load, "session requests").await;
    let reason = outcome.reason();
    assert!(
        reason.starts_with("max-violations-per-connection")
            && reason.contains("max-session-requests"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "session requests")
        .await;
}

/// The options once, then `count` more execs and shells on the same
/// session channel, each one waiting for its reply.
async fn exec_flood(mut client: RusshClient, count: usize) -> Outcome {
    client.open_session().await;
    client.exec("qr=off").await;
    let session = client.session_channel();
    for i in 0..count {
        let sent = match i % 2 {
            0 => session.exec(true, "qr=off").await,
            _ => session.request_shell(true).await,
        };
        if sent.is_err() || client.handle().send_ping().await.is_err() {
            break;
        }
    }
    Outcome::of(client, Vec::new()).await
}

/// Thousands of execs and shells after the options: the options are the
/// connection's once (what visitors were admitted under cannot change
/// under them, and no banner is written per request), so each one is
/// refused and a strike, and the connection is ended naming the rule; its
/// tunnel kept the options it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn execs_after_the_options_are_refused() {
    let rig = Rig::start("hostile-execs", &[]).await;
    let load = rig.load();
    let outcome = rig.russh_attack(None, |c| exec_flood(c, 2000)).await;
    rig.check_served(load, "exec flood").await;
    let reason = outcome.reason();
    assert!(
        reason.starts_with("max-violations-per-connection: 20 requests")
            && reason.contains("protocol: the options (exec or shell) come once per connection"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "exec flood").await;
}

// ---------------------------------------------------------------------------
// The SSH protocol itself
// ---------------------------------------------------------------------------

/// A window adjust that takes the channel's window past 2^32-1 (RFC 4254
/// §5.2 forbids it; OpenSSH disconnects): the connection is ended at once,
/// naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_window_adjust_that_overflows_ends_the_connection() {
    let rig = Rig::start("hostile-window", &[]).await;
    let load = rig.load();
    let outputs = rig.paramiko_attack("window-overflow", 3).await;
    rig.check_served(load, "window overflow").await;
    let reason = disconnect_of(&outputs[0]);
    assert!(
        reason.contains("protocol: a window adjust that overflows the channel's window"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "window overflow").await;
}

/// A data packet twice the maximum packet size burrow gave for the
/// channel: the connection is ended at once, naming the sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_over_the_packet_size_ends_the_connection() {
    let rig = Rig::start("hostile-packet", &[]).await;
    let load = rig.load();
    let outputs = rig.paramiko_attack("oversized", 3).await;
    rig.check_served(load, "oversized packets").await;
    let reason = disconnect_of(&outputs[0]);
    assert!(
        reason.contains("protocol: a data packet of 65536 bytes; this server takes 32768 at most"),
        "{reason}"
    );
    rig.check_released(SPARE, 16 << 20, "oversized packets")
        .await;
}

/// A `direct-tcpip` channel to the private alias `pi-7:22`: some bytes,
/// EOF, then `count` packets of 16 KiB anyway, while the device's side
/// stays open. How many went out before the connection ended.
async fn alias_after_eof(client: &RusshClient, count: usize) -> usize {
    let channel = client
        .handle()
        .channel_open_direct_tcpip("pi-7", 22, "127.0.0.1", 50000)
        .await
        .expect("the alias");
    let (mut read, write) = channel.split();
    tokio::spawn(async move { while read.wait().await.is_some() {} });
    write
        .data_bytes(&b"hello device\n"[..])
        .await
        .expect("data");
    write.eof().await.expect("EOF");
    let mut sent = 0;
    for _ in 0..count {
        // A write waits for window, which a connection that has ended
        // never gives: the end stops it.
        tokio::select! {
            chunk = write.data_bytes(vec![b'z'; 16 << 10]) => match chunk {
                Ok(()) if !client.handle().is_closed() => sent += 1,
                _ => break,
            },
            () = ended(client) => break,
        }
    }
    sent
}

/// Once `client`'s connection has ended (within [`WAIT`]).
async fn ended(client: &RusshClient) {
    let _ = client.wait_closed(WAIT).await;
}

/// Data after EOF on a channel relayed to a private alias (whose device
/// keeps its side open, so the relay lives on half-closed) never reaches
/// the reader, so no spool holds it — before the fix it was spooled
/// behind the EOF, up to the spool's per-stream disk cap, for as long as
/// the relay lived. Data after close is dropped by russh before burrow
/// sees it; the connection carries on (a new inspector request is
/// answered). Strikes are off here, so the connections stay while that
/// is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_after_eof_or_close_goes_nowhere() {
    let rig = Rig::start("hostile-eof", &["--max-violations-per-connection", "0"]).await;
    let device = rig.device().await;
    let load = rig.load();
    let started = Instant::now();
    let patient = rig.russh_as(&device.key).await.expect("log in");
    assert_eq!(alias_after_eof(&patient, 200).await, 200);
    // One round trip: burrow's session has taken every packet before it,
    // and counted each one after the EOF as against the protocol.
    patient.handle().send_ping().await.expect("ping");
    let protocol = rig.burrow.refusals("protocol").await;
    assert!(protocol >= 200, "{protocol} packets after EOF counted");
    // And none of it is held, then or in the next half second (while the
    // relay's pump has them). The well-behaved load's own answers (about
    // 100 B each, a few in flight) may sit in the spool for a moment; one
    // 16 KiB chunk of the 3.3 MB would not fit under that.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(500) {
        let stats = rig.burrow.stats().await;
        let spooled = stats["spool_memory_bytes"].as_u64().unwrap()
            + stats["spool_disk_bytes"].as_u64().unwrap();
        assert!(
            spooled < 16 << 10,
            "3.3 MB sent after EOF were spooled ({spooled} B): {stats}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !patient.handle().is_closed(),
        "{:?}",
        patient.disconnect_reason()
    );
    drop(patient);
    let mut outputs = Vec::new();
    while outputs.is_empty() || started.elapsed() < ATTACK {
        outputs.push(finished(&rig.paramiko("after-close", 200)).await);
    }
    rig.check_served(load, "data after EOF or close").await;
    for output in &outputs {
        assert!(output.contains("inspector HTTP/1.1 200 OK"), "{output}");
        assert!(!output.contains("disconnected"), "{output}");
    }
    drop(device);
    rig.check_released(SPARE, 16 << 20, "data after EOF or close")
        .await;
}

/// The same data after EOF with the default strikes: the connection is
/// ended, naming the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_after_eof_is_a_strike() {
    let rig = Rig::start("hostile-eof-strikes", &[]).await;
    let device = rig.device().await;
    let load = rig.load();
    let key = device.key.clone();
    let (sent, reason) = rig
        .russh_attack(Some(&key), |c| async move {
            let sent = alias_after_eof(&c, 200).await;
            (sent, c.wait_closed(WAIT).await.expect("disconnected"))
        })
        .await;
    rig.check_served(load, "data after EOF, strikes").await;
    assert!(sent < 200, "all {sent} packets after EOF went out");
    let reason = reason.expect("a disconnect message");
    assert!(
        reason.starts_with("max-violations-per-connection")
            && reason.contains("protocol: data on a channel after its EOF"),
        "{reason}"
    );
    drop(device);
    rig.check_released(SPARE, 16 << 20, "data after EOF, strikes")
        .await;
}

// ---------------------------------------------------------------------------
// Clients that stop reading or answering
// ---------------------------------------------------------------------------

/// The host of the tunnel URL a paramiko client printed.
async fn paramiko_host(client: &Ssh) -> String {
    let url = client
        .stdout
        .wait_for(WAIT, |t| line_of(t, "url ").map(|l| l[4..].to_string()))
        .await
        .expect("a tunnel URL");
    client.stdout.wait_contains("\ndone", WAIT).await.unwrap();
    let authority = url.trim_start_matches("https://");
    authority.split(':').next().unwrap().to_string()
}

/// A forwarded channel the client never reads (it never adjusts the
/// window): the visitor's upload waits for window in that channel alone
/// — nothing of it piles up in burrow — and ends at
/// `--request-idle-timeout`, named on its 504 page; the same tunnel's
/// other channels serve on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_channel_never_read_stalls_only_itself() {
    let rig = Rig::start("hostile-unread", &["--request-idle-timeout", "3s"]).await;
    let client = rig.paramiko("never-read", 30);
    let host = paramiko_host(&client).await;
    let load = rig.load();
    let upload = {
        let client = rig.burrow.https_client_no_timeout();
        let url = rig.burrow.https_url(&host, "/slowsink?kbps=100000");
        tokio::spawn(async move { client.post(url).body(vec![7u8; 16 << 20]).send().await })
    };
    client
        .stdout
        .wait_contains("unread-channel", WAIT)
        .await
        .unwrap();
    // The same client's other channels are relayed while that one waits.
    for _ in 0..20 {
        let resp = rig.burrow.get(&host, "/hello").await;
        assert_eq!(resp.text().await.unwrap(), HELLO);
    }
    let stuck = usage(&rig.burrow).await;
    let answer = tokio::time::timeout(WAIT, upload)
        .await
        .expect("the upload ended")
        .unwrap();
    let page = answer.expect("an answer").text().await.unwrap();
    assert!(page.contains("request-idle-timeout"), "{page}");
    rig.check_served(load, "a channel never read").await;
    let grew = stuck.rss.saturating_sub(rig.before.rss);
    assert!(
        grew < 8 << 20,
        "RSS grew {grew} bytes while 16 MiB waited for a window of 2 MiB"
    );
    drop(client);
    rig.check_released(SPARE, 16 << 20, "a channel never read")
        .await;
}

/// A client that stops reading its socket but keeps the connection alive
/// (keepalives every 500 ms) while visitors keep requesting: opens towards
/// it pile up to `--max-pending-opens-per-connection` (beyond, visitors
/// get a 503 naming it at once), then it is asked for an answer and, not
/// giving one within `--client-answer-timeout`, disconnected and cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_is_cut() {
    let rig = Rig::start(
        "hostile-deaf",
        &[
            "--client-answer-timeout",
            "2s",
            "--max-pending-opens-per-connection",
            "16",
        ],
    )
    .await;
    let client = rig.russh(OnForward::Relay).await.expect("log in");
    client.forward("deaf", 80).await.expect("forward");
    let deaf = rig.burrow.https_url("deaf.localhost", "/hello");
    let resp = rig.client.get(&deaf).send().await.unwrap();
    assert_eq!(
        resp.text().await.unwrap(),
        HELLO,
        "served before it goes deaf"
    );
    let load = rig.load();
    client.stop_reading();
    let crowd = rig.burrow.https_client_h1();
    let visitors: Vec<_> = (0..64)
        .map(|_| {
            let (client, url) = (crowd.clone(), deaf.clone());
            tokio::spawn(async move {
                let resp = client.get(url).send().await.expect("an answer");
                (
                    resp.status().as_u16(),
                    resp.text().await.unwrap_or_default(),
                )
            })
        })
        .collect();
    // Alive to russh's keepalive: a packet every 500 ms.
    let mut piled = None;
    let started = Instant::now();
    while !visitors.iter().all(|v| v.is_finished()) && started.elapsed() < WAIT {
        let _ = client.handle().send_keepalive(false).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if piled.is_none() && started.elapsed() >= Duration::from_millis(1500) {
            piled = Some(usage(&rig.burrow).await);
        }
    }
    let piled = piled.expect("usage while the opens piled up");
    let mut limited = 0;
    for visitor in visitors {
        let (status, page) = visitor.await.unwrap();
        assert_ne!(status, 200, "{page}");
        limited += usize::from(status == 503 && page.contains("max-pending-opens-per-connection"));
    }
    // All but the 16 waiting and one sent over the channel left idle in
    // the pool by the request before.
    assert!(
        limited >= 64 - 16 - 1,
        "only {limited} visitors were told the limit"
    );
    rig.wait_refused("client-answer-timeout").await;
    rig.check_served(load, "a client that stops reading").await;
    // Each open waiting is one task (plus one question to the client);
    // each of the 64 visitors' connections is at most two (its TLS
    // connection, its request).
    assert!(
        piled.tasks <= rig.before.tasks + 16 + 1 + 2 * 64 + SPARE.tasks,
        "tasks while opens piled up: {piled:?} (before {:?})",
        rig.before
    );
    // The tunnel went with its connection.
    let gone = rig.client.get(&deaf).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    drop((client, crowd));
    rig.check_released(SPARE, 16 << 20, "a client that stops reading")
        .await;
}

/// A key exchange the client starts after logging in and never finishes,
/// sending IGNORE packets (allowed meanwhile) to look alive: russh's own
/// keepalive counts those as life, so a visitor's open waiting on it makes
/// burrow ask the client; no answer within `--client-answer-timeout`, and
/// the connection is cut (a stalled key exchange cannot carry a
/// disconnect message: burrow's log and metrics name the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_exchange_never_finished_is_cut() {
    let rig = Rig::start("hostile-kex", &["--client-answer-timeout", "2s"]).await;
    let client = rig.paramiko("stall-kex", 120);
    let host = paramiko_host(&client).await;
    let load = rig.load();
    let started = Instant::now();
    let visitor = rig.burrow.get(&host, "/hello").await;
    assert_ne!(visitor.status(), 200);
    rig.wait_refused("client-answer-timeout").await;
    finished(&client).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(12), "cut after {took:?}");
    rig.check_served(load, "a key exchange never finished")
        .await;
    let gone = rig.burrow.get(&host, "/hello").await;
    assert_eq!(gone.status(), 404);
    rig.check_released(SPARE, 16 << 20, "a key exchange never finished")
        .await;
}

/// A rekey flood: key exchanges back to back after login. russh answers
/// each (burrow cannot see them: no callback), so this checks the cost
/// stays the client's own connection's: bounded memory and tasks, the
/// other tunnel unaffected, and the flooder's own tunnel still serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rekey_flood_costs_only_its_connection() {
    let rig = Rig::start("hostile-rekey", &[]).await;
    let client = rig.russh(OnForward::Relay).await.expect("log in");
    client.forward("rekeying", 80).await.expect("forward");
    let load = rig.load();
    let started = Instant::now();
    let mut rekeys = 0;
    while rekeys < 2000 && started.elapsed() < ATTACK * 2 {
        client.handle().rekey_soon().await.expect("rekey");
        client.handle().send_ping().await.expect("ping");
        rekeys += 1;
    }
    eprintln!("{rekeys} key exchanges in {:?}", started.elapsed());
    let during = usage(&rig.burrow).await;
    let resp = rig.burrow.get("rekeying.localhost", "/hello").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
    rig.check_served(load, "rekey flood").await;
    assert!(rekeys >= 100, "only {rekeys} key exchanges");
    assert!(
        during.tasks <= rig.before.tasks + SPARE.tasks,
        "{during:?} vs {:?}",
        rig.before
    );
    drop(client);
    rig.check_released(SPARE, 16 << 20, "rekey flood").await;
}

/// `forwarded-tcpip` opens confirmed long after the visitor left (the
/// channel is closed at once, holding nothing), or never: those wait, one
/// task each, up to `--max-pending-opens-per-connection`, and visitors
/// beyond get a 503 naming it. A client that answers burrow's question
/// (it is alive, only its opens hang, as when its app's host is down)
/// keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn opens_confirmed_late_or_never_are_bounded() {
    let rig = Rig::start(
        "hostile-confirm",
        &[
            "--max-pending-opens-per-connection",
            "8",
            "--client-answer-timeout",
            "1s",
        ],
    )
    .await;
    let load = rig.load();
    let late = rig
        .russh(OnForward::ConfirmAfter(Duration::from_millis(1500)))
        .await
        .expect("log in");
    late.forward("late", 80).await.expect("forward");
    let left = rig
        .client
        .get(rig.burrow.https_url("late.localhost", "/hello"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(left.is_err(), "the visitor left before the confirmation");
    let never = rig.russh(OnForward::NeverConfirm).await.expect("log in");
    never.forward("never", 80).await.expect("forward");
    let url = rig.burrow.https_url("never.localhost", "/hello");
    // Visitors who wait 3 s: those whose opens wait time out; the others
    // are told the limit at once.
    let crowd = rig.burrow.https_client_h1();
    let visitors: Vec<_> = (0..40)
        .map(|_| {
            let (client, url) = (crowd.clone(), url.clone());
            tokio::spawn(async move {
                let resp = client
                    .get(url)
                    .timeout(Duration::from_secs(3))
                    .send()
                    .await
                    .ok()?;
                Some((
                    resp.status().as_u16(),
                    resp.text().await.unwrap_or_default(),
                ))
            })
        })
        .collect();
    let (mut limited, mut waited) = (0, 0);
    for visitor in visitors {
        match visitor.await.unwrap() {
            Some((503, page)) if page.contains("max-pending-opens-per-connection") => limited += 1,
            None => waited += 1,
            Some((status, page)) => panic!("{status}: {page}"),
        }
    }
    assert_eq!(
        (limited, waited),
        (40 - 8, 8),
        "visitors told the limit, visitors waiting"
    );
    // Past --client-answer-timeout twice over: asked, it answered.
    let waiting = usage(&rig.burrow).await;
    assert!(!never.handle().is_closed(), "a client that answers stays");
    assert!(!late.handle().is_closed(), "{:?}", late.disconnect_reason());
    rig.check_served(load, "opens confirmed late or never")
        .await;
    // Each open waiting is one task; each of the 40 visitors' connections
    // (idle in the client's pool now) one or two.
    assert!(
        waiting.tasks <= rig.before.tasks + 8 + 2 * 40 + SPARE.tasks,
        "tasks with 8 opens waiting: {waiting:?} (before {:?})",
        rig.before
    );
    drop((late, never, crowd));
    rig.check_released(SPARE, 16 << 20, "opens confirmed late or never")
        .await;
}

// ---------------------------------------------------------------------------
// What a stock client can run into
// ---------------------------------------------------------------------------

/// Stock OpenSSH `ssh`, as a user would meet these limits: more `-R`
/// forwards on one command line than `--max-forwards-per-connection`
/// (the ones past it are refused with an `ERROR:` line naming it, the
/// others serve), and a command longer than `--max-command-size` (refused
/// naming it, exit status 2, the connection not cut for a single strike).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_ssh_is_told_the_connection_limits() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let burrow = Burrow::start(&flags(&[
        "--max-forwards-per-connection",
        "4",
        "--max-tunnels-per-ip",
        "10",
    ]))
    .await;
    let origin = Origin::start("hostile-stock").await;
    let forwards: Vec<String> = (0..6)
        .map(|i| format!("stock-{i}:80:127.0.0.1:{}", origin.port))
        .collect();
    let mut args = Vec::new();
    for forward in &forwards {
        args.extend(["-R", forward.as_str()]);
    }
    let many = Ssh::spawn(&burrow, &args);
    // The 5th and 6th forwards are refused, each with its line.
    let refusal =
        "ERROR: max-forwards-per-connection: this connection has made its 4 forward requests (-R)";
    let output = many
        .stdout
        .wait_for(WAIT, |t| {
            (t.matches(refusal).count() >= 2).then(|| t.to_string())
        })
        .await
        .unwrap_or_else(|seen| panic!("no refusals naming the limit: {seen}"));
    for i in 0..4 {
        let host = format!("stock-{i}.localhost");
        assert!(output.contains(&format!("https://{host}:")), "{output}");
        let resp = burrow.get(&host, "/hello").await;
        assert_eq!(resp.text().await.unwrap(), HELLO, "{host}");
    }
    assert!(!output.contains("stock-4") && !output.contains("stock-5"));
    let output = many.stdout.text();
    assert_eq!(output.matches(refusal).count(), 2, "{output}");
    assert_eq!(burrow.stats().await["active_tunnels"].as_u64(), Some(4));

    let long = format!("auth=user:{}", "p".repeat(5000));
    let mut refused = Ssh::spawn_full(
        &burrow,
        &["-R", &format!("80:127.0.0.1:{}", origin.port)],
        &[&long],
        SshStdin::Null,
    );
    let status = refused.wait_exit(WAIT).await.expect("ssh exits");
    let said = refused.all_output();
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(
        said.contains("ERROR: max-command-size: the command is 5.0 kB long; options fit in 4.1 kB"),
        "{said}"
    );
    // The first client's refused forwards cost it nothing more: it serves.
    let resp = burrow.get("stock-0.localhost", "/hello").await;
    assert_eq!(resp.text().await.unwrap(), HELLO);
}
