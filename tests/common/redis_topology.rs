//! Redis set-ups of a test's own, on 127.0.0.1 with free ports, for the
//! cluster harness ([`Backend`]): one server with TLS (a CA and a server
//! certificate made for the test) and/or ACL users ([`Server`]), or a
//! primary, a replica and three sentinels ([`Topology`]). The binaries are
//! Redis's (`redis-server`, `redis-sentinel`) or Valkey's
//! (`valkey-server`, `valkey-sentinel`), see [`Flavor`]; every wait is a
//! bounded poll of what the servers say about themselves.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster_harness::{port_free_on, Backend};
use crate::common::TempDir;

/// The name the sentinels monitor the primary under.
pub const MASTER: &str = "mymaster";
/// The data nodes' user for burrow: the commands burrow's store sends
/// (src/store/*.rs, Lua scripts included) on its own keys and channel,
/// nothing else. README "Run several nodes" quotes this line. `+select`
/// only matters with a database other than 0, `+role` only behind
/// Sentinel (redis-rs checks that the node it is sent to is the primary).
pub const BURROW_ACL: &str = "resetkeys ~{burrow}:* resetchannels &{burrow}:events -@all +ping +role +select +get +set +setnx +setex +psetex +mget +del +exists +incrby +expire +pexpire +hget +hset +hdel +hgetall +hmget +hexists +hincrby +sadd +srem +smembers +publish +subscribe +evalsha +script|load +multi +exec";
/// burrow's user on the sentinels: asking for the primary, following
/// `+switch-master`. README quotes this line too.
pub const BURROW_SENTINEL_ACL: &str =
    "resetchannels &+switch-master -@all +sentinel|masters +role +subscribe";
/// The passwords of burrow's users (data nodes, sentinels).
pub const BURROW_PASSWORD: &str = "burrow-test-pw";
pub const SENTINEL_PASSWORD: &str = "burrow-sentinel-test-pw";
/// How long a server or the whole topology gets to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Sentinel: a primary silent this long is down (then a failover starts).
pub const DOWN_AFTER_MS: u64 = 1000;

/// Which server software.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Redis,
    Valkey,
}

/// The binaries of a flavor, found.
#[derive(Clone, Debug)]
pub struct Bins {
    pub flavor: Flavor,
    pub server: PathBuf,
    pub sentinel: PathBuf,
}

/// A flavor's binaries and what to say when they are missing.
struct Lookup {
    server: &'static str,
    sentinel: &'static str,
    /// Where to look instead of PATH (e.g. an unpacked .deb).
    dir_env: &'static str,
    /// Set to `1` to skip the flavor's tests when its binaries are missing.
    skip_env: &'static str,
    /// What to install.
    packages: &'static str,
}

impl Flavor {
    fn lookup(self) -> Lookup {
        match self {
            Flavor::Redis => Lookup {
                server: "redis-server",
                sentinel: "redis-sentinel",
                dir_env: "BURROW_REDIS_BIN_DIR",
                skip_env: "BURROW_SKIP_SENTINEL_TESTS",
                packages: "redis-server redis-sentinel",
            },
            Flavor::Valkey => Lookup {
                server: "valkey-server",
                sentinel: "valkey-sentinel",
                dir_env: "BURROW_VALKEY_BIN_DIR",
                skip_env: "BURROW_SKIP_VALKEY_TESTS",
                packages: "valkey-server valkey-sentinel (bookworm-backports)",
            },
        }
    }

    /// The binaries, or `None` (after saying so) when they are missing and
    /// the flavor's skip variable is `1`; a panic otherwise, because a
    /// failover test that silently passes without servers proves nothing.
    pub fn bins_or_skip(self, test: &str) -> Option<Bins> {
        let Lookup {
            server,
            sentinel,
            dir_env,
            skip_env,
            packages,
        } = self.lookup();
        let dir = std::env::var_os(dir_env).map(PathBuf::from);
        let found = (find(dir.as_deref(), server), find(dir.as_deref(), sentinel));
        let why = match found {
            (Some(server), Some(sentinel)) => {
                return Some(Bins {
                    flavor: self,
                    server,
                    sentinel,
                })
            }
            (None, _) => format!("{server} not found"),
            (_, None) => format!("{sentinel} not found"),
        };
        if std::env::var(skip_env).as_deref() == Ok("1") {
            eprintln!("SKIPPED {test}: {why} ({skip_env}=1)");
            return None;
        }
        panic!(
            "{test} needs {packages}: {why} (on PATH, or in {dir_env}).\n\
             Install them (.ci/run does), or set {skip_env}=1 to skip these tests."
        );
    }
}

/// `name` in `dir` if given, else on PATH.
fn find(dir: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(dir) = dir {
        return Some(dir.join(name)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

impl Bins {
    /// `redis-server --version`'s `v=…`, for the test's report.
    pub fn version(&self) -> String {
        let out = Command::new(&self.server).arg("--version").output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let version = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or("?");
        format!("{:?} {version}", self.flavor)
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, as files.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Made with rcgen into `dir`.
    pub fn generate(dir: &Path) -> TlsFiles {
        let (ca_cert, ca_key) = test_ca("burrow test Redis CA");
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let mut params = rcgen::CertificateParams::new(names).expect("server names");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = params
            .signed_by(&key, &ca_cert, &ca_key)
            .expect("sign the server certificate");
        let files = TlsFiles {
            ca: dir.join("redis-ca.pem"),
            cert: dir.join("redis-server.pem"),
            key: dir.join("redis-server.key"),
        };
        std::fs::write(&files.ca, ca_cert.pem()).expect("write the CA");
        std::fs::write(&files.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write the key");
        files
    }

    /// Another CA (that signed nothing here), written to `path`.
    pub fn unrelated_ca(path: &Path) {
        let (cert, _) = test_ca("some other CA");
        std::fs::write(path, cert.pem()).expect("write the other CA");
    }

    /// The server's TLS lines of a config file (port 0: TLS only).
    fn conf(&self, port: u16) -> String {
        format!(
            "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-auth-clients no\ntls-replication yes\n",
            self.cert.display(),
            self.key.display(),
            self.ca.display()
        )
    }
}

fn test_ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

/// How a server or topology is set up.
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    /// TLS only (`port 0`, `tls-port`), with a CA made for the test.
    pub tls: bool,
    /// burrow's users ([`BURROW_ACL`], [`BURROW_SENTINEL_ACL`]) exist and
    /// the URL uses them (the `default` user stays, for the test itself).
    pub acl: bool,
    /// The database burrow uses (not 0: redis-rs sends SELECT).
    pub db: u8,
}

/// One `redis-server` (or `valkey-server`, or a sentinel) process.
struct Process {
    port: u16,
    conf: PathBuf,
    sentinel: bool,
    child: Option<Child>,
}

impl Process {
    fn spawn(&mut self, bins: &Bins) {
        let bin = match self.sentinel {
            true => &bins.sentinel,
            false => &bins.server,
        };
        let child = Command::new(bin)
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL (no shutdown, nothing flushed).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What every config file starts with.
fn common_conf(dir: &Path, port: u16, tls: Option<&TlsFiles>, name: &str) -> String {
    let listen = match tls {
        Some(tls) => tls.conf(port),
        None => format!("port {port}\n"),
    };
    format!(
        "bind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {dir}\nlogfile {dir}/{name}-{port}.log\n{listen}",
        dir = dir.display()
    )
}

/// A data node's config: no persistence, burrow's user if `acl`.
fn data_conf(dir: &Path, port: u16, setup: Setup, tls: Option<&TlsFiles>) -> String {
    let mut conf = common_conf(dir, port, tls, "redis");
    conf += &format!("save \"\"\nappendonly no\ndbfilename dump-{port}.rdb\n");
    if setup.acl {
        conf += &format!("user burrow on >{BURROW_PASSWORD} {BURROW_ACL}\n");
    }
    conf
}

/// redis-cli against 127.0.0.1:`port` as the `default` user (TLS with
/// the test's CA when `tls`); its output (`--raw`), `None` if it failed.
pub async fn cli(port: u16, tls: Option<&TlsFiles>, args: &[&str]) -> Option<String> {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "--raw"]);
    if let Some(tls) = tls {
        cmd.arg("--tls").arg("--cacert").arg(&tls.ca);
    }
    let out = cmd.args(args).output().await.ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 50 ms until it gives `Some`, at most `limit`.
pub async fn poll<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One Redis (TLS, ACL users, as [`Setup`] says).
pub struct Server {
    pub bins: Bins,
    pub setup: Setup,
    pub tls: Option<TlsFiles>,
    pub dir: TempDir,
    process: Process,
}

impl Server {
    pub async fn start(bins: Bins, setup: Setup) -> Server {
        let dir = TempDir::new("burrow-redis-server");
        let tls = setup.tls.then(|| TlsFiles::generate(dir.path()));
        let port = port_free_on(&[crate::cluster_harness::node_ip(1)]);
        let conf = dir.path().join(format!("redis-{port}.conf"));
        std::fs::write(&conf, data_conf(dir.path(), port, setup, tls.as_ref())).unwrap();
        let mut process = Process {
            port,
            conf,
            sentinel: false,
            child: None,
        };
        process.spawn(&bins);
        let server = Server {
            bins,
            setup,
            tls,
            dir,
            process,
        };
        let what = format!(
            "{} on port {port} answers PING",
            server.bins.server.display()
        );
        poll(&what, START_TIMEOUT, || async {
            server.cli(&["PING"]).await.filter(|r| r.contains("PONG"))
        })
        .await;
        server
    }

    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// redis-cli as `default`.
    pub async fn cli(&self, args: &[&str]) -> Option<String> {
        cli(self.port(), self.tls.as_ref(), args).await
    }

    /// What redis-cli prints (stdout, then stderr) for a command run as
    /// burrow's user, errors included (it exits 0 on a server error).
    pub async fn as_burrow_raw(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port().to_string()]);
        cmd.args([
            "--user",
            "burrow",
            "--pass",
            BURROW_PASSWORD,
            "--no-auth-warning",
        ]);
        let out = cmd.args(args).output().await.expect("run redis-cli");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Backend for Server {
    fn url(&self) -> String {
        let scheme = if self.setup.tls { "rediss" } else { "redis" };
        let user = match self.setup.acl {
            true => format!("burrow:{BURROW_PASSWORD}@"),
            false => String::new(),
        };
        format!(
            "{scheme}://{user}127.0.0.1:{}/{}",
            self.port(),
            self.setup.db
        )
    }
}

/// A primary, its replica and three sentinels (quorum 2).
pub struct Topology {
    pub bins: Bins,
    pub setup: Setup,
    pub tls: Option<TlsFiles>,
    pub dir: TempDir,
    /// `[0]` starts as the primary, `[1]` as its replica.
    data: Vec<Process>,
    sentinels: Vec<Process>,
}

impl Topology {
    /// Starts everything and waits until a failover could happen: the
    /// replica in sync, every sentinel knowing it and the two others.
    pub async fn start(bins: Bins, setup: Setup) -> Topology {
        let dir = TempDir::new("burrow-redis-topology");
        let tls = setup.tls.then(|| TlsFiles::generate(dir.path()));
        let mut topology = Topology {
            bins,
            setup,
            tls,
            dir,
            data: Vec::new(),
            sentinels: Vec::new(),
        };
        let started = Instant::now();
        topology.start_data().await;
        topology.start_sentinels().await;
        eprintln!(
            "topology ({}) up in {:?}: primary {}, replica {}, sentinels {:?}",
            topology.bins.version(),
            started.elapsed(),
            topology.data[0].port,
            topology.data[1].port,
            topology.sentinel_ports()
        );
        topology
    }

    async fn start_data(&mut self) {
        let ip = crate::cluster_harness::node_ip(1);
        let ports = [port_free_on(&[ip]), port_free_on(&[ip])];
        for (i, port) in ports.into_iter().enumerate() {
            let mut conf = data_conf(self.dir.path(), port, self.setup, self.tls.as_ref());
            if i == 1 {
                conf += &format!("replicaof 127.0.0.1 {}\n", ports[0]);
            }
            let path = self.dir.path().join(format!("redis-{port}.conf"));
            std::fs::write(&path, conf).unwrap();
            let mut process = Process {
                port,
                conf: path,
                sentinel: false,
                child: None,
            };
            process.spawn(&self.bins);
            self.data.push(process);
        }
        let (this, replica) = (&*self, ports[1]);
        poll("the replica is in sync", START_TIMEOUT, || async move {
            let info = this.cli(replica, &["INFO", "replication"]).await?;
            info.contains("master_link_status:up").then_some(())
        })
        .await;
    }

    async fn start_sentinels(&mut self) {
        let ip = crate::cluster_harness::node_ip(1);
        let primary = self.data[0].port;
        for _ in 0..3 {
            let port = port_free_on(&[ip]);
            let path = self.dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(&path, self.sentinel_conf(port, primary)).unwrap();
            let mut process = Process {
                port,
                conf: path,
                sentinel: true,
                child: None,
            };
            process.spawn(&self.bins);
            self.sentinels.push(process);
        }
        // A failover needs each sentinel to know the replica and its two
        // peers (they find each other through hello messages, every 2 s).
        let this = &*self;
        for port in this.sentinel_ports() {
            poll(
                "every sentinel sees the replica and its peers",
                START_TIMEOUT,
                || async move {
                    let master = this.cli(port, &["SENTINEL", "MASTER", MASTER]).await?;
                    let fields: Vec<&str> = master.lines().collect();
                    let field = |name: &str| {
                        let at = fields.iter().position(|f| *f == name)?;
                        fields.get(at + 1).copied()
                    };
                    (field("num-slaves") == Some("1") && field("num-other-sentinels") == Some("2"))
                        .then_some(())
                },
            )
            .await;
        }
    }

    fn sentinel_conf(&self, port: u16, primary: u16) -> String {
        let mut conf = common_conf(self.dir.path(), port, self.tls.as_ref(), "sentinel");
        conf += &format!(
            "sentinel resolve-hostnames no\n\
             sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {MASTER} 4000\n\
             sentinel parallel-syncs {MASTER} 1\n"
        );
        if self.setup.acl {
            conf += &format!("user burrow on >{SENTINEL_PASSWORD} {BURROW_SENTINEL_ACL}\n");
        }
        conf
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The data nodes' ports (`[0]` was the first primary).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(|d| d.port).collect()
    }

    /// redis-cli to any of the topology's servers.
    pub async fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        cli(port, self.tls.as_ref(), args).await
    }

    /// Waits until every sentinel names `port` the primary and it says so.
    pub async fn wait_primary(&self, port: u16, limit: Duration) {
        let what = format!("every sentinel names {port} the primary");
        poll(&what, limit, || async {
            for sentinel in self.sentinel_ports() {
                let args = ["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER];
                let out = self.cli(sentinel, &args).await?;
                if out.lines().nth(1)?.trim() != port.to_string() {
                    return None;
                }
            }
            let role = self.cli(port, &["ROLE"]).await?;
            (role.lines().next()? == "master").then_some(())
        })
        .await;
    }

    /// SIGKILLs data node `i` (`0`: the first primary).
    pub fn kill_data(&mut self, i: usize) {
        self.data[i].kill();
    }

    /// Asks a sentinel for a planned failover (`SENTINEL FAILOVER`).
    pub async fn planned_failover(&self) {
        let port = self.sentinel_ports()[0];
        let out = self.cli(port, &["SENTINEL", "FAILOVER", MASTER]).await;
        assert_eq!(
            out.as_deref().map(str::trim),
            Some("OK"),
            "SENTINEL FAILOVER"
        );
    }

    /// The data nodes' redis-cli arguments for burrow's database.
    pub fn db_args(&self) -> Vec<String> {
        vec!["-n".into(), self.setup.db.to_string()]
    }
}

impl Backend for Topology {
    fn url(&self) -> String {
        let scheme = if self.setup.tls { "rediss" } else { "redis" };
        let hosts: Vec<String> = self
            .sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let (user, query) = match self.setup.acl {
            true => (
                format!("burrow:{BURROW_PASSWORD}@"),
                format!("?sentinel_user=burrow&sentinel_password={SENTINEL_PASSWORD}"),
            ),
            false => (String::new(), String::new()),
        };
        format!(
            "{scheme}+sentinel://{user}{}/{MASTER}/{}{query}",
            hosts.join(","),
            self.setup.db
        )
    }
}
