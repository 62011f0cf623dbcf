//! Harness for cluster tests: a throwaway `redis-server` on a random
//! loopback port (or any other [`Backend`]: TLS, ACL users, Sentinel, see
//! redis_topology.rs), N burrow nodes each on its own loopback address
//! (127.0.0.1, 127.0.0.2, …) with the same ports (as in production, where
//! every node has the same ports), sharing a cluster secret, a host key,
//! a certificate and a keys file; and HAProxy in front of them.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    burrow_bin, free_port_range, tls_config_pinned, Alpn, Burrow, Origin, Ssh, SshKeyPair, SshSpec,
    TempDir, TestCert,
};

/// How long Redis and HAProxy get to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The loopback address of node `i` (1-based).
pub fn node_ip(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, i as u8])
}

/// A free port on every one of `ips` (bound and released at once). It is
/// taken below the kernel's ephemeral ports (from
/// [`free_port_range`], never handed out twice in one test process), so an
/// outgoing connection cannot take it before the node binds it.
pub fn port_free_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..200 {
        let port = *free_port_range(1).ports().start();
        let free = ips
            .iter()
            .all(|ip| StdTcpListener::bind((*ip, port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// A `redis-server` of the test's own, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    /// Starts redis-server on a random port of 127.0.0.1, without
    /// persistence, and waits until it answers.
    pub async fn start() -> Redis {
        let port = port_free_on(&[node_ip(1)]);
        let mut redis = Redis {
            port,
            child: None,
            dir: TempDir::new("burrow-redis"),
        };
        redis.spawn().await;
        redis
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: apt-get install -y redis-server (or run .ci/run)",
            );
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    /// Whether Redis answers PING.
    pub async fn ping(&self) -> bool {
        self.command(&["PING"])
            .await
            .is_some_and(|r| r.contains("PONG"))
    }

    /// Runs one command with redis-cli; its output.
    pub async fn command(&self, args: &[&str]) -> Option<String> {
        let out = tokio::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILLs redis-server (its data is gone: nothing was persisted).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts redis-server again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the nodes of a [`Cluster`] keep their shared state in.
pub trait Backend {
    /// The `--cluster-redis` URL every node gets.
    fn url(&self) -> String;
}

impl Backend for Redis {
    fn url(&self) -> String {
        Redis::url(self)
    }
}

/// The ports every node uses, each node on its own address.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub ssh: u16,
    pub http: u16,
    pub https: u16,
    pub stats: u16,
    pub link: u16,
    pub health: u16,
}

impl Ports {
    pub fn free(nodes: usize) -> Ports {
        let ips: Vec<IpAddr> = (1..=nodes).map(node_ip).collect();
        Ports {
            ssh: port_free_on(&ips),
            http: port_free_on(&ips),
            https: port_free_on(&ips),
            stats: port_free_on(&ips),
            link: port_free_on(&ips),
            health: port_free_on(&ips),
        }
    }
}

/// Where the nodes' certificate comes from.
#[derive(Clone, Debug)]
pub enum NodeCerts {
    /// The shared test certificate for `localhost` (`--tls-cert`).
    Test,
    /// Their own for `domain`: ACME (its flags among the extra ones), or
    /// self-signed.
    Own { domain: String },
}

/// What every node shares.
pub struct Shared {
    pub dir: TempDir,
    pub secret: PathBuf,
    pub host_key: PathBuf,
    pub cert: TestCert,
    pub ports: Ports,
}

/// A cluster of burrow nodes on one Redis (or another [`Backend`]).
pub struct Cluster<B = Redis> {
    pub redis: B,
    pub shared: Arc<Shared>,
    /// Node `i` (1-based) at index `i - 1`; `None` once stopped.
    pub nodes: Vec<Option<Burrow>>,
    /// Flags every node gets (besides the cluster's own).
    pub extra: Vec<String>,
    /// Where the nodes' certificate comes from (a node started later or
    /// again gets it the same way).
    pub certs: NodeCerts,
}

impl Cluster<Redis> {
    /// Redis and `n` nodes with `extra` flags each.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, extra, Ports::free(n.max(3)), NodeCerts::Test).await
    }

    /// [`Cluster::start`] on `ports` (chosen beforehand, e.g. for a CA
    /// that must know the HTTP port), the nodes getting `certs`.
    pub async fn start_with(n: usize, extra: &[&str], ports: Ports, certs: NodeCerts) -> Cluster {
        let redis = Redis::start().await;
        Cluster::assemble(redis, n, extra, ports, certs).await
    }
}

impl<B: Backend> Cluster<B> {
    /// `ssh -R 80:…` (pty, so the banner and the request log show) to
    /// node `i`, with `key` or a fresh throwaway one.
    pub fn tunnel_to(&self, i: usize, origin: &Origin, key: Option<&SshKeyPair>) -> Ssh {
        let forward = format!("80:127.0.0.1:{}", origin.port);
        let host = node_ip(i).to_string();
        let args = ["-tt", "-R", forward.as_str()];
        let spec = SshSpec {
            port: self.shared.ports.ssh,
            args: &args,
            host: &host,
            ..SshSpec::default()
        };
        match key {
            Some(key) => spec.spawn_with_key(key),
            None => spec.spawn(),
        }
    }

    /// `n` nodes with `extra` flags each, on `redis`.
    pub async fn start_on(redis: B, n: usize, extra: &[&str]) -> Cluster<B> {
        Cluster::assemble(redis, n, extra, Ports::free(n.max(3)), NodeCerts::Test).await
    }

    async fn assemble(
        redis: B,
        n: usize,
        extra: &[&str],
        ports: Ports,
        certs: NodeCerts,
    ) -> Cluster<B> {
        let dir = TempDir::new("burrow-cluster");
        let secret = dir.path().join("cluster.secret");
        let status = Command::new(burrow_bin())
            .args(["cluster", "init"])
            .arg(&secret)
            .stdout(Stdio::null())
            .status()
            .expect("run burrow cluster init");
        assert!(status.success(), "burrow cluster init failed");
        let shared = Arc::new(Shared {
            host_key: dir.path().join("host_key"),
            secret,
            cert: TestCert::generate(),
            ports,
            dir,
        });
        let mut cluster = Cluster {
            redis,
            shared,
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            certs,
        };
        for i in 1..=n {
            let node = cluster.launch(i, &[]).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    /// The arguments of node `i`.
    pub fn args(&self, i: usize, more: &[&str]) -> Vec<String> {
        self.args_with(i, &self.redis.url(), more)
    }

    /// The arguments of node `i`, reaching Redis at `redis_url`.
    pub fn args_with(&self, i: usize, redis_url: &str, more: &[&str]) -> Vec<String> {
        let ip = node_ip(i);
        let p = self.shared.ports;
        let addr = |port: u16| SocketAddr::new(ip, port).to_string();
        let mut args: Vec<String> = vec![
            "--ssh-addr".into(),
            addr(p.ssh),
            "--http-addr".into(),
            addr(p.http),
            "--https-addr".into(),
            addr(p.https),
            "--stats-addr".into(),
            addr(p.stats),
            "--host-key".into(),
            self.shared.host_key.display().to_string(),
            "--cluster-redis".into(),
            redis_url.to_string(),
            "--cluster-listen".into(),
            addr(p.link),
            "--cluster-secret".into(),
            self.shared.secret.display().to_string(),
            "--node-id".into(),
            format!("node-{i}"),
            "--health-addr".into(),
            addr(p.health),
        ];
        // A short TTL unless the test chose one.
        let mut given = self
            .extra
            .iter()
            .map(String::as_str)
            .chain(more.iter().copied());
        if !given.any(|a| a == "--cluster-node-ttl") {
            args.extend(["--cluster-node-ttl".into(), "3s".into()]);
        }
        args.extend(self.extra.iter().cloned());
        args.extend(more.iter().map(|s| s.to_string()));
        args
    }

    /// Starts node `i` (its own working directory, the shared files).
    pub async fn launch(&self, i: usize, more: &[&str]) -> Burrow {
        // The host key is made by the first node; the others must not race
        // to write it.
        if i > 1 {
            wait_for_file(&self.shared.host_key).await;
        }
        let dir = TempDir::new(&format!("burrow-node-{i}"));
        let cert = self.shared.cert.clone();
        match &self.certs {
            NodeCerts::Test => Burrow::launch(dir, cert, &self.args(i, more), &[]).await,
            NodeCerts::Own { domain } => {
                let mut args = vec!["--domain".to_string(), domain.clone()];
                args.extend(self.args(i, more));
                Burrow::launch_as(dir, cert, domain, &args, &[]).await
            }
        }
    }

    /// Starts node `i` with its own Redis URL and flags (e.g. through a
    /// [`Relay`] that can be cut).
    pub async fn launch_with(&self, i: usize, redis_url: &str, more: &[&str]) -> Burrow {
        if i > 1 {
            wait_for_file(&self.shared.host_key).await;
        }
        let dir = TempDir::new(&format!("burrow-node-{i}"));
        let args = self.args_with(i, redis_url, more);
        Burrow::launch(dir, self.shared.cert.clone(), &args, &[]).await
    }

    /// Node `i`, running.
    pub fn node(&self, i: usize) -> &Burrow {
        self.nodes[i - 1].as_ref().expect("node is running")
    }

    /// Stops node `i` (dropping it kills the process).
    pub fn stop(&mut self, i: usize) -> Option<Burrow> {
        self.nodes[i - 1].take()
    }

    /// Starts node `i` (once more, or for the first time) and adds it.
    pub async fn add(&mut self, i: usize) {
        let node = self.launch(i, &[]).await;
        if self.nodes.len() < i {
            self.nodes.resize_with(i, || None);
        }
        self.nodes[i - 1] = Some(node);
    }

    /// The HTTPS address of node `i`.
    pub fn https_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(node_ip(i), self.shared.ports.https)
    }

    /// Starts node `i` again.
    pub async fn restart(&mut self, i: usize) {
        self.add(i).await;
    }

    /// An HTTPS client that reaches every name on node `i`.
    pub fn client_via(&self, i: usize) -> reqwest::Client {
        self.client_via_from(i, None)
    }

    /// [`Cluster::client_via`] from a given local address (the visitor's).
    pub fn client_via_from(&self, i: usize, local: Option<IpAddr>) -> reqwest::Client {
        let tls = tls_config_pinned(&self.shared.cert.cert_der, Alpn::Any);
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(Resolver(node_ip(i))))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        if let Some(local) = local {
            builder = builder.local_address(local);
        }
        builder.build().expect("build reqwest client")
    }

    /// `https://HOST:PORT/PATH` (every node has the same HTTPS port).
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.shared.ports.https)
    }

    /// The stats of node `i`.
    pub async fn stats(&self, i: usize) -> serde_json::Value {
        let url = format!("http://{}:{}/", node_ip(i), self.shared.ports.stats);
        let body = reqwest::get(url)
            .await
            .expect("stats")
            .bytes()
            .await
            .expect("stats body");
        serde_json::from_slice(&body).expect("stats JSON")
    }

    /// Waits (bounded) until `check` holds for node `i`'s stats.
    pub async fn wait_stats(
        &self,
        i: usize,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats(i).await;
            if check(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "node {i}'s stats never matched: {stats}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Resolves every name to one address (a node's).
struct Resolver(IpAddr);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let addr = SocketAddr::new(self.0, 0);
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(addr));
            Ok(addrs)
        })
    }
}

async fn wait_for_file(path: &std::path::Path) {
    let deadline = Instant::now() + START_TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// HAProxy in TCP mode in front of the nodes' SSH and HTTPS ports (the
/// HTTPS frontend sends a PROXY header), checking each node's health.
pub struct Haproxy {
    pub ssh: u16,
    pub https: u16,
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy for `nodes` nodes of `shared`.
    pub async fn start(shared: &Shared, nodes: usize) -> Haproxy {
        let dir = TempDir::new("burrow-haproxy");
        let (ssh, https) = (port_free_on(&[node_ip(1)]), port_free_on(&[node_ip(1)]));
        let p = shared.ports;
        let servers = |port: u16, proxy: &str| {
            (1..=nodes)
                .map(|i| {
                    format!(
                        "    server node-{i} {}:{port} check port {} inter 300ms fall 2 rise 1{proxy}\n",
                        node_ip(i),
                        p.health
                    )
                })
                .collect::<String>()
        };
        let config = format!(
            "global\n    maxconn 1000\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n    retries 3\n    option redispatch\n\
             frontend ssh\n    bind 127.0.0.1:{ssh}\n    default_backend ssh\n\
             backend ssh\n    balance roundrobin\n    option httpchk GET /health\n{}\
             frontend https\n    bind 127.0.0.1:{https}\n    default_backend https\n\
             backend https\n    balance roundrobin\n    option httpchk GET /health\n{}",
            servers(p.ssh, ""),
            servers(p.https, " send-proxy-v2"),
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is not installed: apt-get install -y haproxy (or run .ci/run)");
        let deadline = Instant::now() + START_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", ssh))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "haproxy did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Haproxy {
            ssh,
            https,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP relay on 127.0.0.1 to `target` that can be cut (every
/// connection closed, new ones refused) and restored on the same port: a
/// network partition between two parts of the test.
pub struct Relay {
    pub port: u16,
    target: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let port = port_free_on(&[node_ip(1)]);
        let mut relay = Relay {
            port,
            target,
            task: None,
        };
        relay.restore().await;
        relay
    }

    /// Closes every relayed connection and refuses new ones.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Accepts and relays again.
    pub async fn restore(&mut self) {
        self.cut();
        let listener = tokio::net::TcpListener::bind((node_ip(1), self.port))
            .await
            .expect("relay port");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                pipes.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// autossh (`-M 0`) keeping `ssh -tt -R FORWARD` up through `port`.
pub struct AutoSsh {
    child: std::process::Child,
    stdout: crate::common::OutputBuf,
    _stderr: crate::common::OutputBuf,
}

impl AutoSsh {
    pub fn start(port: u16, key: &crate::common::SshKeyPair, forward: &str) -> AutoSsh {
        let found = std::process::Command::new("autossh")
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "autossh is not installed: apt-get install -y autossh (or run .ci/run)"
        );
        let mut child = std::process::Command::new("autossh")
            .args(["-M", "0", "-F", "/dev/null", "-tt"])
            .arg("-i")
            .arg(&key.path)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=2"])
            .args(["-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=5"])
            .args(["-p", &port.to_string(), "-R", forward, "test@127.0.0.1"])
            .env("AUTOSSH_GATETIME", "0")
            .env("AUTOSSH_POLL", "5")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn autossh");
        let (stdout, stderr) = crate::common::capture_output(&mut child, Some("autossh"));
        AutoSsh {
            child,
            stdout,
            _stderr: stderr,
        }
    }

    /// The URL of the `n`-th session banner (1: the first connection).
    pub async fn url(&self, n: usize) -> crate::common::TunnelUrl {
        self.stdout
            .wait_for(Duration::from_secs(25), |text| {
                let banner = text.split("Your tunnel is live").nth(n)?;
                crate::common::find_tunnel_urls(banner).into_iter().next()
            })
            .await
            .unwrap_or_else(|seen| panic!("no banner #{n} from autossh: {seen}"))
    }
}

impl Drop for AutoSsh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
