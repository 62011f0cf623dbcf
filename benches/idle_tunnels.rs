//! Load generator: are idle tunnels cheap?
//!
//! Starts the release `burrow` binary on loopback (every port 0, the real
//! ones read from its `burrow ready:` line), then opens `TUNNELS` SSH
//! connections from this one process with the russh client, each logging in
//! as `random` (accepted at `none`) and asking for `tcpip_forward
//! localhost:80`, and leaves them idle. It checks the stats endpoint counts
//! them all, lets memory settle, and compares burrow's VmRSS before and
//! after: the target is at most 100 KiB per idle tunnel.
//!
//! ```sh
//! cargo build --release
//! ulimit -n 65536    # or as high as the hard limit allows
//! cargo bench --bench idle_tunnels
//! ```
//!
//! Environment:
//! - `BURROW_BIN` — the binary (default `target/release/burrow`)
//! - `TUNNELS` — how many tunnels (default 2000)
//! - `CONCURRENCY` — connections being set up at once (default 50)
//! - `SETTLE_SECS` — wait before the second RSS reading (default 5)
//! - `HOLD_SECS` — then keep them open this long, checking none drop
//!   (default 0; over 90 s covers burrow's keepalive and silence timeouts)
//! - `ROUNDS` — open and close all of them this many times (default 1);
//!   VmRSS after each round tells a leak from memory the allocator keeps
//! - `MAX_KIB_PER_TUNNEL` — the pass/fail threshold (default 100)
//!
//! Exits 0 on pass, 1 on any failure, with a line saying which step failed.
//! Not run by `cargo test`: without cargo bench's `--bench` argument it only
//! prints how to run it.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use russh::client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Budget for one tunnel: TCP connect, key exchange, auth and the forward.
const PER_TUNNEL_TIMEOUT: Duration = Duration::from_secs(30);
/// Budget for burrow to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Budget for the stats endpoint to show every tunnel once all are set up.
const COUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many setup failures are printed (the rest are only counted).
const SHOWN_ERRORS: usize = 5;

type Fail = String;

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "idle_tunnels: a load benchmark, not a test; run it with \
             `cargo bench --bench idle_tunnels` (after `cargo build --release`)"
        );
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("idle_tunnels: FAILED: {message}");
            ExitCode::FAILURE
        }
    }
}

struct Settings {
    bin: PathBuf,
    tunnels: usize,
    concurrency: usize,
    settle: Duration,
    hold: Duration,
    rounds: u32,
    max_kib_per_tunnel: f64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, Fail> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid number")),
        Err(_) => Ok(default),
    }
}

fn settings() -> Result<Settings, Fail> {
    let bin = match std::env::var_os("BURROW_BIN") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/burrow"),
    };
    if !bin.is_file() {
        return Err(format!(
            "no burrow binary at {}: build it first with `cargo build --release` \
             (or point BURROW_BIN at one)",
            bin.display()
        ));
    }
    let tunnels: usize = env_or("TUNNELS", 2000)?;
    let concurrency: usize = env_or("CONCURRENCY", 50)?;
    if tunnels == 0 || concurrency == 0 {
        return Err("TUNNELS and CONCURRENCY must be at least 1".into());
    }
    Ok(Settings {
        bin,
        tunnels,
        concurrency,
        settle: Duration::from_secs(env_or("SETTLE_SECS", 5)?),
        hold: Duration::from_secs(env_or("HOLD_SECS", 0)?),
        rounds: env_or("ROUNDS", 1)?,
        max_kib_per_tunnel: env_or("MAX_KIB_PER_TUNNEL", 100.0)?,
    })
}

fn run() -> Result<bool, Fail> {
    let settings = settings()?;
    let nofile = raise_nofile_limit()?;
    // Each tunnel is one socket here; leave room for the runtime and stats.
    if (nofile as usize) < settings.tunnels + 64 {
        return Err(format!(
            "RLIMIT_NOFILE is {nofile}, too low for {} tunnels: raise the hard limit \
             (ulimit -Hn) or lower TUNNELS",
            settings.tunnels
        ));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?;
    let mut burrow = Burrow::start(&settings)?;
    let result = runtime.block_on(measure(&settings, &burrow));
    if result.is_err() {
        if let Err(gone) = burrow.check_alive() {
            eprintln!("idle_tunnels: {gone}");
        }
        burrow.print_log_tail();
    }
    // Kill burrow before the clients go, so that 2,000 disconnects are not
    // part of anyone's measurement (the guard would do it anyway).
    drop(burrow);
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns it.
fn raise_nofile_limit() -> Result<u64, Fail> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(format!(
                "getrlimit(NOFILE): {}",
                std::io::Error::last_os_error()
            ));
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(format!(
                    "setrlimit(NOFILE, {}): {}",
                    limit.rlim_max,
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The burrow process under test, killed (and its directory removed) when
/// dropped, including on panic.
struct Burrow {
    child: Child,
    dir: PathBuf,
    ssh: SocketAddr,
    stats: SocketAddr,
}

impl Burrow {
    fn start(settings: &Settings) -> Result<Burrow, Fail> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!("burrow-idle-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("burrow.log"))
            .map_err(|e| format!("cannot create the log file: {e}"))?;
        let allowance = (settings.tunnels + 10).to_string();
        let child = Command::new(&settings.bin)
            .current_dir(&dir)
            .args(["--ssh-addr", "127.0.0.1:0"])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--https-addr", "127.0.0.1:0"])
            .args(["--stats-addr", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--host-key")
            .arg(dir.join("host_key"))
            .args(["--max-tunnels-per-ip", &allowance])
            .args(["--max-tunnels", &allowance])
            .args(["--max-conns-per-minute", "100000"])
            .args(["--max-handshakes-per-ip", "10000"])
            .args(["--max-handshakes", "10000"])
            .args(["--violations-before-block", "1000000"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("cannot start {}: {e}", settings.bin.display()));
            }
        };
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut burrow = Burrow {
            child,
            dir,
            ssh: SocketAddr::from(([127, 0, 0, 1], 0)),
            stats: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        // A thread reads stdout for the whole run, so burrow never blocks
        // on a full pipe; the first `burrow ready:` line comes back here.
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready_tx = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("burrow ready:") {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let line = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                burrow.print_log_tail();
                let status = match burrow.child.try_wait() {
                    Ok(Some(status)) => format!("it exited with {status}"),
                    _ => format!("nothing within {READY_TIMEOUT:?}"),
                };
                return Err(format!("burrow did not print `burrow ready:` ({status})"));
            }
        };
        burrow.ssh = ready_addr(&line, "ssh")?;
        burrow.stats = ready_addr(&line, "stats")?;
        println!("{line}");
        Ok(burrow)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn print_log_tail(&self) {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.dir.join("burrow.log")) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(20);
        if lines.is_empty() {
            return;
        }
        eprintln!("--- last lines of burrow's log ---");
        for line in lines.iter().skip(skip) {
            eprintln!("{line}");
        }
        eprintln!("---");
    }

    /// Fails if burrow is no longer running.
    fn check_alive(&mut self) -> Result<(), Fail> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("burrow exited during the run ({status})")),
            Err(e) => Err(format!("cannot check on burrow: {e}")),
        }
    }
}

impl Drop for Burrow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `ssh=127.0.0.1:40123` out of the ready line.
fn ready_addr(line: &str, key: &str) -> Result<SocketAddr, Fail> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| format!("no {key}= address in the ready line {line:?}"))
}

/// Memory figures of a process, in KiB, from /proc/PID/status.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

fn memory(pid: u32) -> Result<Memory, Fail> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Ok(Memory {
        rss: field("VmRSS:").ok_or_else(|| format!("no VmRSS in {path}"))?,
        anon: field("RssAnon:").unwrap_or_default(),
        file: field("RssFile:").unwrap_or_default(),
        threads: field("Threads:").unwrap_or_default(),
    })
}

/// `active_tunnels` from burrow's stats endpoint (`GET /`).
async fn active_tunnels(stats: SocketAddr) -> Result<u64, Fail> {
    let fetch = async {
        let mut socket = tokio::net::TcpStream::connect(stats).await?;
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        socket.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| "the stats endpoint did not answer within 5 s".to_string())?
        .map_err(|e| format!("stats endpoint {stats}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("stats: malformed response {text:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("stats: {}", head.lines().next().unwrap_or(head)));
    }
    let json: serde_json::Value =
        serde_json::from_str(body.trim()).map_err(|e| format!("stats: {e} in {body:?}"))?;
    json["active_tunnels"]
        .as_u64()
        .ok_or_else(|| format!("stats: no integer active_tunnels in {body}"))
}

/// The client side of one idle tunnel: trusts any host key (burrow's is
/// generated for the run) and never expects channels.
struct Idle;

impl client::Handler for Idle {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Opens one tunnel: connect, `none` auth as `random`, `tcpip-forward`.
async fn open_tunnel(
    config: Arc<client::Config>,
    addr: SocketAddr,
) -> Result<client::Handle<Idle>, Fail> {
    let setup = async {
        let mut handle = client::connect(config, addr, Idle)
            .await
            .map_err(|e| format!("connect/key exchange: {e}"))?;
        match handle.authenticate_none("random").await {
            Ok(client::AuthResult::Success) => {}
            Ok(client::AuthResult::Failure { .. }) => {
                return Err("`none` authentication as `random` was refused".to_string())
            }
            Err(e) => return Err(format!("authentication: {e}")),
        }
        handle
            .tcpip_forward("localhost", 80)
            .await
            .map_err(|e| format!("tcpip-forward refused: {e}"))?;
        Ok(handle)
    };
    tokio::time::timeout(PER_TUNNEL_TIMEOUT, setup)
        .await
        .unwrap_or_else(|_| Err(format!("no tunnel within {PER_TUNNEL_TIMEOUT:?}")))
}

/// Opens `count` tunnels, `concurrency` at a time, into `into`.
async fn open_tunnels(
    count: usize,
    concurrency: usize,
    addr: SocketAddr,
    into: &mut Vec<client::Handle<Idle>>,
) -> Result<(), Fail> {
    let config = Arc::new(client::Config {
        // Idle means idle: no client keepalives, only burrow's own.
        keepalive_interval: None,
        inactivity_timeout: None,
        nodelay: true,
        ..client::Config::default()
    });
    let mut results = stream::iter(0..count)
        .map(|_| open_tunnel(Arc::clone(&config), addr))
        .buffer_unordered(concurrency);
    let mut errors = Vec::new();
    let mut failed = 0usize;
    let mut opened = 0usize;
    // The whole batch is bounded too, not only each tunnel.
    let budget = Duration::from_secs(120) + Duration::from_millis(50) * count as u32;
    let deadline = tokio::time::Instant::now() + budget;
    loop {
        let next = tokio::time::timeout_at(deadline, results.next()).await;
        match next {
            Err(_) => {
                return Err(format!(
                    "only {opened} of {count} tunnels opened within {budget:?}"
                ))
            }
            Ok(None) => break,
            Ok(Some(Ok(handle))) => {
                opened += 1;
                into.push(handle);
            }
            Ok(Some(Err(e))) => {
                failed += 1;
                if errors.len() < SHOWN_ERRORS {
                    errors.push(e);
                }
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {count} tunnels could not be opened; first errors: {}",
            errors.join("; ")
        ));
    }
    Ok(())
}

/// Polls the stats endpoint until it reports `want` tunnels.
async fn wait_for_count(stats: SocketAddr, want: usize) -> Result<(), Fail> {
    let deadline = Instant::now() + COUNT_TIMEOUT;
    loop {
        let seen = active_tunnels(stats).await?;
        if seen == want as u64 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "stats report {seen} active tunnels, expected {want} (waited {COUNT_TIMEOUT:?})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn kib(value: f64) -> String {
    if value.abs() >= 10240.0 {
        format!("{:.1} MiB", value / 1024.0)
    } else {
        format!("{value:.0} KiB")
    }
}

async fn measure(settings: &Settings, burrow: &Burrow) -> Result<bool, Fail> {
    let n = settings.tunnels;
    let pid = burrow.pid();
    // Let start-up allocations finish before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = memory(pid)?;
    println!(
        "burrow pid {pid}: VmRSS {} before any tunnel ({} threads)",
        kib(before.rss as f64),
        before.threads
    );

    // A first tenth, measured on its own: what the remaining nine tenths add
    // is the marginal cost per tunnel, free of one-time start-up costs
    // (allocator arenas, lazily initialised tables).
    let first = (n / 10).max(1).min(n);
    let mut handles = Vec::with_capacity(n);
    let started = Instant::now();
    open_tunnels(first, settings.concurrency, burrow.ssh, &mut handles).await?;
    wait_for_count(burrow.stats, first).await?;
    let at_first = memory(pid)?;
    open_tunnels(n - first, settings.concurrency, burrow.ssh, &mut handles).await?;
    let establish = started.elapsed();
    wait_for_count(burrow.stats, n).await?;
    println!(
        "{n} tunnels up in {:.2} s ({:.0} tunnels/s, {} at a time); stats agree",
        establish.as_secs_f64(),
        n as f64 / establish.as_secs_f64(),
        settings.concurrency
    );

    tokio::time::sleep(settings.settle).await;
    let after = memory(pid)?;
    if active_tunnels(burrow.stats).await? != n as u64 {
        return Err("tunnels dropped while memory settled".into());
    }

    let delta = after.rss as f64 - before.rss as f64;
    let per_tunnel = delta / n as f64;
    println!();
    println!("tunnels            {n}");
    println!(
        "VmRSS before       {} (anon {}, file {})",
        kib(before.rss as f64),
        kib(before.anon as f64),
        kib(before.file as f64)
    );
    println!(
        "VmRSS after        {} (anon {}, file {}; {} threads)",
        kib(after.rss as f64),
        kib(after.anon as f64),
        kib(after.file as f64),
        after.threads
    );
    println!("delta              {}", kib(delta));
    println!("delta / tunnel     {per_tunnel:.1} KiB");
    if n > first {
        let marginal = (after.rss as f64 - at_first.rss as f64) / (n - first) as f64;
        println!(
            "marginal / tunnel  {marginal:.1} KiB (VmRSS {} at {first} tunnels)",
            kib(at_first.rss as f64)
        );
    }
    println!("time to establish  {:.2} s", establish.as_secs_f64());
    let mut pass = per_tunnel <= settings.max_kib_per_tunnel;
    println!(
        "result             {} ({per_tunnel:.1} KiB per tunnel, limit {} KiB)",
        if pass { "PASS" } else { "FAIL" },
        settings.max_kib_per_tunnel
    );

    if !settings.hold.is_zero() {
        pass &= hold(settings, burrow, &handles).await?;
    }

    // Closing the connections must remove every tunnel at once.
    let closing = Instant::now();
    drop(handles);
    wait_for_count(burrow.stats, 0)
        .await
        .map_err(|e| format!("after closing every connection: {e}"))?;
    let gone = closing.elapsed();
    tokio::time::sleep(settings.settle).await;
    let closed = memory(pid)?;
    println!();
    println!(
        "closed             all {n} gone from stats {:.2} s after the clients closed",
        gone.as_secs_f64()
    );
    println!(
        "VmRSS when closed  {} (memory the allocator kept; see ROUNDS to tell it from a leak)",
        kib(closed.rss as f64)
    );

    // Further rounds reopen and close the same number: a leak grows VmRSS
    // every round, memory merely kept by the allocator gets reused.
    for round in 2..=settings.rounds {
        let mut handles = Vec::with_capacity(n);
        open_tunnels(n, settings.concurrency, burrow.ssh, &mut handles).await?;
        wait_for_count(burrow.stats, n).await?;
        tokio::time::sleep(settings.settle).await;
        let open = memory(pid)?;
        drop(handles);
        wait_for_count(burrow.stats, 0)
            .await
            .map_err(|e| format!("round {round}, after closing: {e}"))?;
        tokio::time::sleep(settings.settle).await;
        let closed = memory(pid)?;
        println!(
            "round {round:<3}          VmRSS {} with {n} open, {} after closing",
            kib(open.rss as f64),
            kib(closed.rss as f64)
        );
    }
    Ok(pass)
}

/// Keeps every tunnel open and silent for `HOLD_SECS`, checking that
/// burrow's keepalives keep them all (none closed on our side, all counted
/// on burrow's).
async fn hold(
    settings: &Settings,
    burrow: &Burrow,
    handles: &[client::Handle<Idle>],
) -> Result<bool, Fail> {
    let n = settings.tunnels;
    println!();
    println!(
        "holding {n} idle tunnels for {} s (burrow sends keepalives after 15 s of silence)",
        settings.hold.as_secs()
    );
    let start = Instant::now();
    let end = start + settings.hold;
    let mut ok = true;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(Duration::from_secs(15))).await;
        let closed = handles.iter().filter(|h| h.is_closed()).count();
        let seen = active_tunnels(burrow.stats).await?;
        let rss = memory(burrow.pid())?.rss;
        println!(
            "  t+{:>4} s: {seen} tunnels on burrow, {closed} closed here, VmRSS {}",
            start.elapsed().as_secs(),
            kib(rss as f64)
        );
        if closed > 0 || seen != n as u64 {
            ok = false;
        }
    }
    println!(
        "hold               {}",
        if ok {
            "PASS (no tunnel dropped)"
        } else {
            "FAIL (tunnels dropped)"
        }
    );
    Ok(ok)
}
