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
//! # a cluster: three nodes on one redis-server, 10,000 tunnels spread over them
//! NODES=3 TUNNELS=10000 cargo bench --bench idle_tunnels
//! ```
//!
//! With `NODES` > 1 it starts a `redis-server` of its own and the nodes on
//! 127.0.0.1, 127.0.0.2, … (one cluster, one shared host key and secret),
//! opens the tunnels round-robin over them, and also measures Redis: its
//! memory per tunnel (`used_memory`) and the commands per second it
//! serves at rest (`total_commands_processed` over `REST_SECS`, and the
//! top commands from `INFO commandstats`), before any tunnel and with all
//! of them open (independent of the count is the target).
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
//! - `NODES` — burrow nodes (default 1: no cluster, no Redis)
//! - `REST_SECS` — how long Redis's commands are counted at rest (default 60)
//! - `REDIS_BIN` — the redis-server binary (default `redis-server`;
//!   valkey-server works too)
//! - `KEYED` — 1: every connection logs in with a freshly generated ed25519
//!   key of its own (user `bench`) instead of keyless as `random`, so every
//!   tunnel is its own account, and asks for a name of its own (`t1`, `t2`,
//!   …; keyless clients cannot choose names) (default 0)
//! - `BURROW_ARGS` — extra flags for every node, split on whitespace and
//!   appended last, e.g. a default plan so that usage is counted per key:
//!   `--default-plan-transfer 1TiB/month --default-plan-requests 100000000/month`
//! - `LOAD_SECS` — with `KEYED=1`: after the measurements at rest, send
//!   HTTP requests through every tunnel for this long and count Redis's
//!   commands per second under load (default 0: no load). The nodes then
//!   also get `--http-mode proxy`, `--no-browser-warning` and visitor limits
//!   out of the way; the requests go to their plain HTTP ports, round-robin
//!   over the tunnels (`Host: NAME.DOMAIN`) and over the nodes (with N
//!   nodes, N−1 in N go through another node's cluster link to the node
//!   that holds the tunnel), each on a connection of its own
//!   (`Connection: close`); this process answers every forwarded channel
//!   with a fixed `200 ok`. Prints the requests per second achieved, the
//!   tunnels (keys) that served at least one request, Redis's commands per
//!   second over the window and the top commands by calls (`INFO
//!   commandstats`)
//! - `LOAD_RPS` — requests per second to aim at, in all (default 2000)
//! - `LOAD_INFLIGHT` — requests in flight at most (default 64)
//!
//! Issue 28's figure, Redis commands per second at rest and under load with
//! 1,000 active keys (one tunnel each, a per-key plan so usage is counted):
//!
//! ```sh
//! cargo build --profile fastrel
//! NODES=2 TUNNELS=1000 KEYED=1 LOAD_SECS=30 REST_SECS=30 \
//!   BURROW_BIN=target/fastrel/burrow \
//!   BURROW_ARGS="--default-plan-transfer 1TiB/month --default-plan-requests 100000000/month" \
//!   cargo bench --profile fastrel --bench idle_tunnels
//! ```
//!
//! Exits 0 on pass, 1 on any failure, with a line saying which step failed.
//! Not run by `cargo test`: without cargo bench's `--bench` argument it only
//! prints how to run it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    nodes: usize,
    rest: Duration,
    /// `KEYED=1`: a fresh key (and a name of its own) per connection.
    keyed: bool,
    /// `BURROW_ARGS`, split on whitespace.
    burrow_args: Vec<String>,
    /// `LOAD_SECS`: zero for no load.
    load: Duration,
    load_rps: u64,
    load_inflight: usize,
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
    let keyed = env_or("KEYED", 0u8)? != 0;
    let load = Duration::from_secs(env_or("LOAD_SECS", 0)?);
    let load_rps: u64 = env_or("LOAD_RPS", 2000)?;
    let load_inflight: usize = env_or("LOAD_INFLIGHT", 64)?;
    if !load.is_zero() && !keyed {
        return Err(
            "LOAD_SECS needs KEYED=1: keyless tunnels get random names this \
             benchmark cannot address"
                .into(),
        );
    }
    if !load.is_zero() && (load_rps == 0 || load_inflight == 0) {
        return Err("LOAD_RPS and LOAD_INFLIGHT must be at least 1".into());
    }
    Ok(Settings {
        bin,
        tunnels,
        concurrency,
        settle: Duration::from_secs(env_or("SETTLE_SECS", 5)?),
        hold: Duration::from_secs(env_or("HOLD_SECS", 0)?),
        rounds: env_or("ROUNDS", 1)?,
        max_kib_per_tunnel: env_or("MAX_KIB_PER_TUNNEL", 100.0)?,
        nodes: env_or("NODES", 1usize)?.max(1),
        rest: Duration::from_secs(env_or("REST_SECS", 60)?),
        keyed,
        burrow_args: std::env::var("BURROW_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect(),
        load,
        load_rps,
        load_inflight,
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
    let fleet = Fleet::start(&settings)?;
    let result = runtime.block_on(measure(&settings, &fleet));
    if result.is_err() {
        for burrow in &fleet.nodes {
            if let Err(gone) = burrow.check_alive() {
                eprintln!("idle_tunnels: {gone}");
            }
            burrow.print_log_tail();
        }
    }
    // Kill burrow before the clients go, so that 2,000 disconnects are not
    // part of anyone's measurement (the guard would do it anyway).
    drop(fleet);
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
    child: std::sync::Mutex<Child>,
    dir: PathBuf,
    ssh: SocketAddr,
    stats: SocketAddr,
    /// The plain HTTP port (served with `--http-mode proxy`, under load).
    http: SocketAddr,
    /// `domain=` of the ready line: tunnels are `NAME.DOMAIN`.
    domain: String,
}

impl Burrow {
    /// Starts burrow with every listener on `ip` (port 0), its host key at
    /// `host_key`, plus `extra` flags.
    fn start(
        settings: &Settings,
        ip: &str,
        host_key: &Path,
        extra: &[String],
    ) -> Result<Burrow, Fail> {
        let dir = scratch_dir("idle")?;
        let log = std::fs::File::create(dir.join("burrow.log"))
            .map_err(|e| format!("cannot create the log file: {e}"))?;
        let allowance = (settings.tunnels + 10).to_string();
        let any_port = format!("{ip}:0");
        let child = Command::new(&settings.bin)
            .current_dir(&dir)
            .args(["--ssh-addr", &any_port])
            .args(["--http-addr", &any_port])
            .args(["--https-addr", &any_port])
            .args(["--stats-addr", &any_port])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--host-key")
            .arg(host_key)
            .args(extra)
            .args(["--max-tunnels-per-ip", &allowance])
            .args(["--max-tunnels", &allowance])
            .args(["--max-conns-per-minute", "100000"])
            .args(["--max-handshakes-per-ip", "10000"])
            .args(["--max-handshakes", "10000"])
            .args(["--violations-before-block", "1000000"])
            .args(load_flags(settings))
            .args(&settings.burrow_args)
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
            child: std::sync::Mutex::new(child),
            dir,
            ssh: SocketAddr::from(([127, 0, 0, 1], 0)),
            stats: SocketAddr::from(([127, 0, 0, 1], 0)),
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            domain: String::new(),
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
                let status = match burrow.child.lock().expect("child lock").try_wait() {
                    Ok(Some(status)) => format!("it exited with {status}"),
                    _ => format!("nothing within {READY_TIMEOUT:?}"),
                };
                return Err(format!("burrow did not print `burrow ready:` ({status})"));
            }
        };
        burrow.ssh = ready_addr(&line, "ssh")?;
        burrow.stats = ready_addr(&line, "stats")?;
        burrow.http = ready_addr(&line, "http")?;
        burrow.domain = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("domain="))
            .unwrap_or("localhost")
            .to_string();
        println!("{line}");
        Ok(burrow)
    }

    fn pid(&self) -> u32 {
        self.child.lock().expect("child lock").id()
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
    fn check_alive(&self) -> Result<(), Fail> {
        match self.child.lock().expect("child lock").try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("burrow exited during the run ({status})")),
            Err(e) => Err(format!("cannot check on burrow: {e}")),
        }
    }
}

impl Drop for Burrow {
    fn drop(&mut self) {
        let child = self.child.get_mut().expect("child lock");
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The flags a load run adds: tunnels served on plain HTTP, and no browser
/// interstitial or per-visitor limit in the way (every request comes from
/// 127.0.0.1), as benches/compare.sh runs its cluster targets.
fn load_flags(settings: &Settings) -> Vec<&'static str> {
    if settings.load.is_zero() {
        return Vec::new();
    }
    vec![
        "--http-mode",
        "proxy",
        "--no-browser-warning",
        "--visitor-rate",
        "1000000/s",
        "--visitor-burst",
        "1000000",
        "--tunnel-rate",
        "1000000/s",
        "--tunnel-burst",
        "1000000",
        "--max-inflight-per-visitor",
        "100000",
        "--max-inflight-per-tunnel",
        "100000",
    ]
}

/// A fresh scratch directory under the system's temp dir.
fn scratch_dir(what: &str) -> Result<PathBuf, Fail> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("burrow-{what}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// What runs under test: one burrow, or `NODES` cluster nodes on a Redis
/// of their own. Dropped nodes first, then Redis.
struct Fleet {
    nodes: Vec<Burrow>,
    redis: Option<Redis>,
    /// The host key and cluster secret every node shares.
    shared: PathBuf,
}

impl Fleet {
    fn start(settings: &Settings) -> Result<Fleet, Fail> {
        let shared = scratch_dir("idle-shared")?;
        let host_key = shared.join("host_key");
        if settings.nodes == 1 {
            let node = Burrow::start(settings, "127.0.0.1", &host_key, &[])?;
            return Ok(Fleet {
                nodes: vec![node],
                redis: None,
                shared,
            });
        }
        let redis = Redis::start()?;
        let secret = shared.join("cluster.secret");
        let made = Command::new(&settings.bin)
            .args(["cluster", "init"])
            .arg(&secret)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("burrow cluster init: {e}"))?;
        if !made.success() {
            return Err("burrow cluster init failed".into());
        }
        let mut nodes = Vec::new();
        for i in 1..=settings.nodes {
            let ip = format!("127.0.0.{i}");
            let extra = [
                "--cluster-redis".to_string(),
                redis.url(),
                "--node-id".into(),
                format!("node-{i}"),
                "--cluster-listen".into(),
                format!("{ip}:{}", free_port(&ip)?),
                "--cluster-secret".into(),
                secret.display().to_string(),
            ];
            nodes.push(Burrow::start(settings, &ip, &host_key, &extra)?);
        }
        Ok(Fleet {
            nodes,
            redis: Some(redis),
            shared,
        })
    }

    fn ssh_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.ssh).collect()
    }

    /// Tunnels every node counts as its own, summed.
    async fn active_tunnels(&self) -> Result<u64, Fail> {
        let mut sum = 0;
        for node in &self.nodes {
            sum += active_tunnels(node.stats).await?;
        }
        Ok(sum)
    }

    /// Every node's memory, summed.
    fn memory(&self) -> Result<Memory, Fail> {
        let mut sum = Memory::default();
        for node in &self.nodes {
            let m = memory(node.pid())?;
            sum.rss += m.rss;
            sum.anon += m.anon;
            sum.file += m.file;
            sum.threads += m.threads;
        }
        Ok(sum)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.nodes.clear();
        self.redis = None;
        let _ = std::fs::remove_dir_all(&self.shared);
    }
}

/// A port free on `ip` right now.
fn free_port(ip: &str) -> Result<u16, Fail> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on {ip}: {e}"))
}

/// A `redis-server` of the run's own (no persistence), killed on drop.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Result<Redis, Fail> {
        let bin = std::env::var("REDIS_BIN").unwrap_or_else(|_| "redis-server".into());
        let port = free_port("127.0.0.1")?;
        let dir = scratch_dir("idle-redis")?;
        let child = Command::new(&bin)
            .current_dir(&dir)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {bin} (apt-get install redis-server): {e}"))?;
        let redis = Redis { child, port, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        while redis.info().is_err() {
            if Instant::now() >= deadline {
                return Err(format!("redis-server did not answer on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `INFO` through redis-cli (redis-tools, installed with the server).
    fn info(&self) -> Result<String, Fail> {
        self.info_section(None)
    }

    /// `INFO [SECTION]` through redis-cli.
    fn info_section(&self, section: Option<&str>) -> Result<String, Fail> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO"])
            .args(section)
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // A section alone has no `redis_version`, only its `# Name` heading.
        let expected = if section.is_some() {
            "# "
        } else {
            "redis_version"
        };
        match out.status.success() && text.contains(expected) {
            true => Ok(text),
            false => Err(format!("redis-cli INFO: {text}")),
        }
    }

    /// One numeric field of `INFO`.
    fn field(&self, name: &str) -> Result<u64, Fail> {
        let info = self.info()?;
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in Redis INFO"))
    }

    /// Calls per command so far (`INFO commandstats`), by name.
    fn command_calls(&self) -> Result<HashMap<String, u64>, Fail> {
        let info = self.info_section(Some("commandstats"))?;
        Ok(info
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
                Some((name.to_string(), calls.trim().parse().ok()?))
            })
            .collect())
    }

    /// Commands per second Redis serves over `secs` (our own INFO calls
    /// taken out).
    async fn commands_per_sec(&self, secs: Duration) -> Result<f64, Fail> {
        let before = self.field("total_commands_processed")?;
        tokio::time::sleep(secs).await;
        let after = self.field("total_commands_processed")?;
        Ok(after.saturating_sub(before + 1) as f64 / secs.as_secs_f64().max(1.0))
    }
}

impl Drop for Redis {
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
    // Generous: closing 10,000 connections at once keeps a loaded 2-core
    // machine busy for a while, and this is a reading, not a latency test.
    let response = tokio::time::timeout(Duration::from_secs(30), fetch)
        .await
        .map_err(|_| "the stats endpoint did not answer within 30 s".to_string())?
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
/// generated for the run). Idle tunnels see no channels; under load
/// (`LOAD_SECS`) it answers every forwarded one with a fixed `200 ok`.
struct Idle {
    /// Requests this tunnel answered.
    served: Arc<AtomicU64>,
}

/// What this process answers every request with.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
/// Budget for one forwarded channel (request head in, response out, close)
/// and for one request of the load, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

impl client::Handler for Idle {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        let served = Arc::clone(&self.served);
        // Its own task: the handler must return at once, and the channel is
        // read to its end (an unread channel stalls the whole connection);
        // dropping the stream closes it.
        tokio::spawn(async move {
            let mut stream = channel.into_stream();
            let answer = async {
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 || head.len() > 64 * 1024 {
                        return Ok(false);
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                stream.write_all(RESPONSE).await?;
                stream.shutdown().await?;
                // Whatever else comes (burrow's EOF and close), unread.
                while stream.read(&mut buf).await? > 0 {}
                Ok::<_, std::io::Error>(true)
            };
            if let Ok(Ok(true)) = tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
                served.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(())
    }
}

/// One open tunnel: its connection, the name it asked for (`KEYED`), the
/// requests it answered.
struct Tunnel {
    handle: client::Handle<Idle>,
    name: Option<String>,
    served: Arc<AtomicU64>,
}

/// Names for keyed tunnels, unique over the run (a closed tunnel's name
/// is not asked for again in a later round).
static NEXT_NAME: AtomicUsize = AtomicUsize::new(1);

/// Opens one tunnel: connect, then `none` auth as `random` and
/// `tcpip-forward localhost:80`, or (`keyed`) a fresh ed25519 key and
/// `tcpip-forward tN:80`, a name of its own.
async fn open_tunnel(
    config: Arc<client::Config>,
    addr: SocketAddr,
    keyed: bool,
) -> Result<Tunnel, Fail> {
    let served = Arc::new(AtomicU64::new(0));
    let idle = Idle {
        served: Arc::clone(&served),
    };
    let setup = async {
        let mut handle = client::connect(config, addr, idle)
            .await
            .map_err(|e| format!("connect/key exchange: {e}"))?;
        if !keyed {
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
            return Ok((handle, None));
        }
        let key =
            russh::keys::PrivateKey::random(&mut rand::rng(), russh::keys::Algorithm::Ed25519)
                .map_err(|e| format!("cannot generate an ed25519 key: {e}"))?;
        let key = russh::keys::PrivateKeyWithHashAlg::new(Arc::new(key), None);
        match handle.authenticate_publickey("bench", key).await {
            Ok(auth) if auth.success() => {}
            Ok(_) => return Err("public key authentication was refused".to_string()),
            Err(e) => return Err(format!("authentication: {e}")),
        }
        let name = format!("t{}", NEXT_NAME.fetch_add(1, Ordering::Relaxed));
        handle
            .tcpip_forward(name.as_str(), 80)
            .await
            .map_err(|e| format!("tcpip-forward {name}:80 refused: {e}"))?;
        Ok((handle, Some(name)))
    };
    let (handle, name) = tokio::time::timeout(PER_TUNNEL_TIMEOUT, setup)
        .await
        .unwrap_or_else(|_| Err(format!("no tunnel within {PER_TUNNEL_TIMEOUT:?}")))?;
    Ok(Tunnel {
        handle,
        name,
        served,
    })
}

/// Opens `count` tunnels, `concurrency` at a time, into `into`, taking
/// `addrs` (the nodes) in turn.
async fn open_tunnels(
    count: usize,
    concurrency: usize,
    addrs: &[SocketAddr],
    keyed: bool,
    into: &mut Vec<Tunnel>,
) -> Result<(), Fail> {
    let config = Arc::new(client::Config {
        // Idle means idle: no client keepalives, only burrow's own.
        keepalive_interval: None,
        inactivity_timeout: None,
        nodelay: true,
        ..client::Config::default()
    });
    let mut results = stream::iter(0..count)
        .map(|i| open_tunnel(Arc::clone(&config), addrs[i % addrs.len()], keyed))
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

/// Polls the stats endpoints until they report `want` tunnels in all.
async fn wait_for_count(fleet: &Fleet, want: usize) -> Result<(), Fail> {
    let deadline = Instant::now() + COUNT_TIMEOUT;
    loop {
        let seen = fleet.active_tunnels().await?;
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

async fn measure(settings: &Settings, fleet: &Fleet) -> Result<bool, Fail> {
    let n = settings.tunnels;
    let addrs = fleet.ssh_addrs();
    // Let start-up allocations finish before the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = fleet.memory()?;
    println!(
        "burrow ({} node(s)): VmRSS {} before any tunnel ({} threads)",
        fleet.nodes.len(),
        kib(before.rss as f64),
        before.threads
    );
    let redis_before = match &fleet.redis {
        Some(redis) => Some(redis_at_rest(redis, settings.rest, "no tunnel").await?),
        None => None,
    };

    // A first tenth, measured on its own: what the remaining nine tenths add
    // is the marginal cost per tunnel, free of one-time start-up costs
    // (allocator arenas, lazily initialised tables).
    let first = (n / 10).max(1).min(n);
    let mut handles = Vec::with_capacity(n);
    let started = Instant::now();
    open_tunnels(
        first,
        settings.concurrency,
        &addrs,
        settings.keyed,
        &mut handles,
    )
    .await?;
    wait_for_count(fleet, first).await?;
    let at_first = fleet.memory()?;
    open_tunnels(
        n - first,
        settings.concurrency,
        &addrs,
        settings.keyed,
        &mut handles,
    )
    .await?;
    let establish = started.elapsed();
    wait_for_count(fleet, n).await?;
    println!(
        "{n} tunnels up in {:.2} s ({:.0} tunnels/s, {} at a time); stats agree",
        establish.as_secs_f64(),
        n as f64 / establish.as_secs_f64(),
        settings.concurrency
    );

    tokio::time::sleep(settings.settle).await;
    let after = fleet.memory()?;
    if fleet.active_tunnels().await? != n as u64 {
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

    if let (Some(redis), Some(idle)) = (&fleet.redis, redis_before) {
        pass &= redis_per_tunnel(redis, settings, idle).await?;
    }
    if !settings.load.is_zero() {
        pass &= load(settings, fleet, &handles).await?;
    }
    if !settings.hold.is_zero() {
        pass &= hold(settings, fleet, &handles).await?;
    }

    // Closing the connections must remove every tunnel at once.
    let closing = Instant::now();
    drop(handles);
    wait_for_count(fleet, 0)
        .await
        .map_err(|e| format!("after closing every connection: {e}"))?;
    let gone = closing.elapsed();
    tokio::time::sleep(settings.settle).await;
    let closed = fleet.memory()?;
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
        open_tunnels(
            n,
            settings.concurrency,
            &addrs,
            settings.keyed,
            &mut handles,
        )
        .await?;
        wait_for_count(fleet, n).await?;
        tokio::time::sleep(settings.settle).await;
        let open = fleet.memory()?;
        drop(handles);
        wait_for_count(fleet, 0)
            .await
            .map_err(|e| format!("round {round}, after closing: {e}"))?;
        tokio::time::sleep(settings.settle).await;
        let closed = fleet.memory()?;
        println!(
            "round {round:<3}          VmRSS {} with {n} open, {} after closing",
            kib(open.rss as f64),
            kib(closed.rss as f64)
        );
    }
    Ok(pass)
}

/// Redis at rest: `used_memory` and commands per second over `rest`.
#[derive(Clone, Copy)]
struct RedisRest {
    memory: u64,
    per_sec: f64,
}

async fn redis_at_rest(redis: &Redis, rest: Duration, label: &str) -> Result<RedisRest, Fail> {
    let calls_before = redis.command_calls()?;
    let per_sec = redis.commands_per_sec(rest).await?;
    let calls_after = redis.command_calls()?;
    let memory = redis.field("used_memory")?;
    println!(
        "Redis at rest, {label}: {per_sec:.2} commands/s over {} s, used_memory {}",
        rest.as_secs(),
        kib(memory as f64 / 1024.0)
    );
    println!(
        "  top commands: {}",
        top_commands(&calls_before, calls_after, rest.as_secs_f64().max(1.0))
    );
    Ok(RedisRest { memory, per_sec })
}

/// The ten commands Redis served most between two `INFO commandstats`
/// readings, with calls per second over `secs`: `NAME CALLS (N/s), …`.
/// Three `INFO` calls of this benchmark's own fall between such readings
/// (the first of them, and the two `total_commands_processed` readings);
/// they are taken out.
fn top_commands(before: &HashMap<String, u64>, after: HashMap<String, u64>, secs: f64) -> String {
    let mut top: Vec<(String, u64)> = after
        .into_iter()
        .map(|(name, calls)| {
            let ours = if name == "info" { 3 } else { 0 };
            let delta = calls.saturating_sub(before.get(&name).copied().unwrap_or(0) + ours);
            (name, delta)
        })
        .filter(|(_, delta)| *delta > 0)
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if top.is_empty() {
        return "(none)".into();
    }
    top.iter()
        .take(10)
        .map(|(name, calls)| format!("{name} {calls} ({:.2}/s)", *calls as f64 / secs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Redis with every tunnel open, against `idle` (before any): memory per
/// tunnel (target ≤ 300 bytes) and commands per second at rest (target
/// ≤ 10/s, independent of the tunnel count).
async fn redis_per_tunnel(
    redis: &Redis,
    settings: &Settings,
    idle: RedisRest,
) -> Result<bool, Fail> {
    let n = settings.tunnels;
    let busy = redis_at_rest(redis, settings.rest, &format!("{n} tunnels")).await?;
    let per_tunnel = busy.memory.saturating_sub(idle.memory) as f64 / n as f64;
    let pass_memory = per_tunnel <= 300.0;
    let pass_rate = busy.per_sec <= 10.0;
    println!(
        "Redis / tunnel     {per_tunnel:.0} bytes ({}; target ≤ 300)",
        if pass_memory { "PASS" } else { "FAIL" }
    );
    println!(
        "Redis at rest      {:.2} commands/s with {n} tunnels, {:.2} with none ({}; target ≤ 10/s, independent of the count)",
        busy.per_sec,
        idle.per_sec,
        if pass_rate { "PASS" } else { "FAIL" }
    );
    Ok(pass_memory && pass_rate)
}

/// Keeps every tunnel open and silent for `HOLD_SECS`, checking that
/// burrow's keepalives keep them all (none closed on our side, all counted
/// on burrow's).
async fn hold(settings: &Settings, fleet: &Fleet, handles: &[Tunnel]) -> Result<bool, Fail> {
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
        let closed = handles.iter().filter(|t| t.handle.is_closed()).count();
        let seen = fleet.active_tunnels().await?;
        let rss = fleet.memory()?.rss;
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

/// One request of the load: `GET /` for `host` on `http`, on a connection of
/// its own; `Ok` on a `200` with the body `ok`.
async fn one_request(http: SocketAddr, host: &str) -> Result<(), Fail> {
    let exchange = async {
        let mut socket = tokio::net::TcpStream::connect(http).await?;
        socket.set_nodelay(true)?;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        socket.write_all(request.as_bytes()).await?;
        let mut response = Vec::with_capacity(512);
        socket.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{host} via {http}: no answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("{host} via {http}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    if text.starts_with("HTTP/1.1 200") && text.ends_with("\r\n\r\nok") {
        return Ok(());
    }
    let status = text.lines().next().unwrap_or("(empty response)");
    Err(format!("{host} via {http}: {status}"))
}

/// `LOAD_SECS` of HTTP requests through every tunnel, round-robin over the
/// tunnels and the nodes (a tunnel's requests go to every node in turn),
/// `LOAD_RPS` in all with at most `LOAD_INFLIGHT` in flight. Prints the
/// requests per second achieved, the tunnels that served at least one
/// (its key's usage counted) and Redis's commands per second over the
/// window, with the top commands. Fails when more than 1% of the requests
/// failed.
async fn load(settings: &Settings, fleet: &Fleet, tunnels: &[Tunnel]) -> Result<bool, Fail> {
    let domain = &fleet.nodes[0].domain;
    let hosts: Vec<String> = tunnels
        .iter()
        .filter_map(|t| t.name.as_ref())
        .map(|name| format!("{name}.{domain}"))
        .collect();
    if hosts.len() != tunnels.len() || hosts.is_empty() {
        return Err("load: every tunnel needs a name of its own (KEYED=1)".into());
    }
    let targets: Vec<SocketAddr> = fleet.nodes.iter().map(|n| n.http).collect();
    // One request first, so that a misconfiguration fails with its answer.
    one_request(targets[0], &hosts[0])
        .await
        .map_err(|e| format!("load: the first request failed: {e}"))?;
    let hosts = Arc::new(hosts);
    let targets = Arc::new(targets);
    let n = hosts.len();
    println!();
    println!(
        "load: {} requests/s aimed at ({} in flight at most) through {n} tunnels on {} node(s) for {} s",
        settings.load_rps,
        settings.load_inflight,
        targets.len(),
        settings.load.as_secs()
    );
    let served_before: Vec<u64> = tunnels
        .iter()
        .map(|t| t.served.load(Ordering::Relaxed))
        .collect();
    let redis_before = match &fleet.redis {
        Some(redis) => Some((
            redis.command_calls()?,
            redis.field("total_commands_processed")?,
        )),
        None => None,
    };

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let inflight = Arc::new(tokio::sync::Semaphore::new(settings.load_inflight));
    let start = tokio::time::Instant::now();
    let end = start + settings.load;
    let mut issued = 0u64;
    'window: loop {
        let now = tokio::time::Instant::now();
        if now >= end {
            break;
        }
        let due = ((now - start).as_secs_f64() * settings.load_rps as f64) as u64;
        while issued < due {
            let permit = tokio::select! {
                permit = Arc::clone(&inflight).acquire_owned() => permit.expect("never closed"),
                _ = tokio::time::sleep_until(end) => break 'window,
            };
            let k = issued as usize;
            let host_index = k % n;
            let http = targets[(k / n + k) % targets.len()];
            let hosts = Arc::clone(&hosts);
            let (ok, failed, first_errors) = (
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&first_errors),
            );
            tokio::spawn(async move {
                match one_request(http, &hosts[host_index]).await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut errors = first_errors.lock().expect("errors lock");
                        if errors.len() < SHOWN_ERRORS {
                            errors.push(e);
                        }
                    }
                }
                drop(permit);
            });
            issued += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let window = start.elapsed();
    let answered_in_window = ok.load(Ordering::Relaxed);
    let redis_after = match &fleet.redis {
        Some(redis) => Some((
            redis.field("total_commands_processed")?,
            redis.command_calls()?,
        )),
        None => None,
    };
    // Let the requests in flight finish (each is bounded by its timeout).
    let _all = tokio::time::timeout(
        REQUEST_TIMEOUT + Duration::from_secs(1),
        inflight.acquire_many(settings.load_inflight as u32),
    )
    .await;
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let active = tunnels
        .iter()
        .zip(&served_before)
        .filter(|(t, before)| t.served.load(Ordering::Relaxed) > **before)
        .count();
    let secs = window.as_secs_f64();
    let rps = answered_in_window as f64 / secs;
    println!(
        "requests           {issued} sent, {ok} answered 200, {failed} failed; {rps:.0} requests/s answered over {secs:.1} s"
    );
    println!(
        "active keys        {active} of {n} tunnels (each its own key) served at least one request"
    );
    let mut pass = ok > 0 && failed * 100 <= issued;
    for e in first_errors.lock().expect("errors lock").iter() {
        println!("  failed: {e}");
    }
    if let (Some((calls_before, total_before)), Some((total_after, calls_after))) =
        (redis_before, redis_after)
    {
        // The INFO reading `total_before` counts in the delta; the three
        // INFO calls between the two commandstats readings count in theirs.
        let commands = total_after.saturating_sub(total_before + 1);
        let per_sec = commands as f64 / secs;
        println!(
            "Redis under load   {per_sec:.2} commands/s over {secs:.1} s ({commands} commands) at {rps:.0} requests/s, {active} active keys, {} node(s)",
            targets.len()
        );
        println!(
            "Redis top commands {}",
            top_commands(&calls_before, calls_after, secs)
        );
    } else {
        println!("Redis under load   (no Redis: NODES=1)");
    }
    pass &= fleet.active_tunnels().await? == n as u64;
    println!(
        "load result        {}",
        if pass {
            "PASS (≤ 1% of requests failed, every tunnel still up)"
        } else {
            "FAIL (over 1% of requests failed, none answered, or tunnels dropped)"
        }
    );
    Ok(pass)
}
