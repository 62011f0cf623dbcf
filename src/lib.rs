//! burrow: a single-binary SSH tunnel server.
//!
//! `ssh -R 80:localhost:3000 DOMAIN` registers a tunnel in the shared
//! [`registry`]; visitors of `https://NAME.DOMAIN` reach the [`http::proxy`],
//! which opens a `forwarded-tcpip` channel through that tunnel's SSH handle
//! and speaks HTTP/1.1 to the user's local app over it.
//!
//! [`run`] binds every listener first (so a bad flag fails before anything
//! starts), then serves until the shutdown signal resolves.

pub mod acme;
pub mod admin;
pub mod channel;
pub mod config;
pub mod custom;
pub mod dashboard;
pub mod forwarded;
pub mod http;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod request_log;
pub mod shutdown;
pub mod spool;
pub mod ssh;
pub mod state;
pub mod stats;
pub mod subdomain;
pub mod systemd;
pub mod tcp;
pub mod tls;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::forwarded::TrustedProxies;
use crate::limits::ssh::{Block, IpGuard};
use crate::limits::LogOnce;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::stats::Stats;

/// After the grace period, how long closing connections get to say goodbye
/// (SSH disconnects) before the process exits anyway.
const CLOSE_TIME: Duration = Duration::from_secs(2);

/// State shared by every listener and connection.
pub struct App {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub stats: Stats,
    pub ssh_config: Arc<russh::server::Config>,
    pub public: PublicPorts,
    pub ip_guard: Arc<IpGuard>,
    pub refusal_log: LogOnce,
    pub trusted: TrustedProxies,
    pub state: state::State,
    pub keys: keys::Keys,
    /// Memory and disk held for slow readers, shared by every channel.
    pub spool: Arc<spool::Budget>,
    /// Public ports of raw TCP tunnels.
    pub tcp: tcp::TcpPorts,
    /// Where each listener is bound.
    pub addrs: BoundAddrs,
    /// For listeners and relays started after `run` (TCP tunnel ports).
    pub shutdown: Shutdown,
    /// The HTTPS certificate (reloadable).
    pub certs: Arc<tls::Certs>,
    /// The last hour of traffic, for the dashboard.
    pub history: dashboard::History,
    /// Pending ACME HTTP-01 challenges, answered on :80 (empty without ACME).
    pub challenges: Arc<acme::http01::Challenges>,
    /// ACME certificates (`--acme-email`); `None` when off or static
    /// certificates are given.
    pub acme: Option<Arc<acme::Acme>>,
    /// Verification and certificates of custom domains.
    pub custom: custom::CustomDomains,
}

/// The addresses the listeners are bound to (ports may be 0 in the flags).
pub struct BoundAddrs {
    pub ssh: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub stats: SocketAddr,
}

/// Every tunnel holds one SSH socket and every visitor one more: the usual
/// soft limit of 1024 open files would cap burrow at a few hundred users.
/// Raise it to the hard limit (systemd's default hard limit is 512Ki).
fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 8192 => {
            tracing::warn!(
                limit,
                "the open-files limit is low: raise LimitNOFILE / ulimit -n"
            )
        }
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(err) => tracing::warn!(error = %err, "could not raise the open-files limit"),
    }
}

/// The ports users are told about (URLs, connect commands).
pub struct PublicPorts {
    pub https_port: u16,
    pub ssh_port: u16,
}

impl App {
    /// `:PORT` when the public HTTPS port is not 443, else empty.
    pub fn port_suffix(&self) -> String {
        match self.public.https_port {
            443 => String::new(),
            port => format!(":{port}"),
        }
    }

    /// The public URL of tunnel `name` (a label under the domain, or a
    /// custom domain: the only names with a dot).
    pub fn url(&self, name: &str) -> String {
        if custom::is_registry_custom(name) {
            return format!("https://{name}{}", self.port_suffix());
        }
        format!(
            "https://{name}.{}{}",
            self.config.domain,
            self.port_suffix()
        )
    }

    /// The public address of `tunnel`: its HTTPS URL, or `tcp://DOMAIN:PORT`.
    pub fn tunnel_url(&self, tunnel: &registry::Tunnel) -> String {
        match tunnel.kind {
            registry::Kind::Tcp(port) => self.tcp_url(port),
            registry::Kind::Name => self.url(&tunnel.subdomain),
        }
    }

    /// Where a Host or SNI value points: [`subdomain::route`], except that a
    /// custom domain bound right now is a tunnel too.
    pub fn route(&self, host: &str) -> subdomain::Route {
        match subdomain::route(host, &self.config.domain) {
            subdomain::Route::Foreign => custom::bound_name(self, host)
                .map(subdomain::Route::Tunnel)
                .unwrap_or(subdomain::Route::Foreign),
            route => route,
        }
    }

    /// The public address of TCP port `port`.
    pub fn tcp_url(&self, port: u16) -> String {
        format!("tcp://{}:{port}", self.config.domain)
    }

    /// Applies a fresh block: every SSH connection and tunnel of the IP is
    /// closed, with a line saying until when. Returns how many connections
    /// were closed.
    pub fn block_ip(&self, ip: std::net::IpAddr, block: &Block) -> usize {
        self.stats
            .total_blocked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%ip, until = %block.until_utc(), reason = %block.reason, "ip blocked");
        let text = ssh::banner::blocked(&block.until_utc(), &block.reason);
        let conns = self.registry.conns_of_ip(ip);
        for conn in &conns {
            for (_, removed) in self.registry.remove_conn(conn.id) {
                self.clients_left(&removed.remaining);
            }
            conn.close(
                text.clone(),
                format!("blocked until {}: {}", block.until_utc(), block.reason),
            );
        }
        conns.len()
    }

    /// Tells the clients still serving `key` how many they are now.
    pub fn clients_left(&self, remaining: &[Arc<registry::Tunnel>]) {
        let Some(first) = remaining.first() else {
            return;
        };
        let text = ssh::banner::clients_now(
            &self.tunnel_url(first),
            remaining.len(),
            self.registry.balance(),
        );
        for tunnel in remaining {
            tunnel.client.notify(text.clone());
        }
    }

    /// Closes `tunnel` on the server's initiative: the user is told why and
    /// how to reconnect, and a connection left without tunnels is ended so
    /// the client exits (and supervisors such as autossh reconnect).
    pub fn close_tunnel(&self, tunnel: &registry::Tunnel, reason: &str) {
        let Some(removed) = self.registry.remove(&tunnel.subdomain, tunnel.conn) else {
            return;
        };
        self.clients_left(&removed.remaining);
        tracing::info!(conn = tunnel.conn, ip = %tunnel.client_ip, subdomain = %tunnel.subdomain, reason, "tunnel closed");
        let Some(conn) = self.registry.conn(tunnel.conn) else {
            return;
        };
        let text =
            ssh::banner::tunnel_expired(&self.tunnel_url(tunnel), reason, &self.connect_command());
        if self.registry.conn_has_tunnels(tunnel.conn) {
            conn.notify(text);
        } else {
            conn.close(text, format!("tunnel closed: {reason}"));
        }
    }

    /// A newer connection of the same key took `old`'s name: tell the old
    /// connection, and close it if that was its last tunnel.
    pub fn take_over(&self, old: &registry::Tunnel) {
        tracing::info!(conn = old.conn, subdomain = %old.subdomain, "tunnel taken over by a newer connection of the same key");
        let Some(conn) = self.registry.conn(old.conn) else {
            return;
        };
        let text = ssh::banner::taken_over(&self.tunnel_url(old));
        if self.registry.conn_has_tunnels(old.conn) {
            conn.notify(text);
        } else {
            conn.close(
                text,
                "tunnel taken over by a newer connection with the same key".into(),
            );
        }
    }

    /// The command a user runs to open a tunnel to their port 3000.
    pub fn connect_command(&self) -> String {
        self.connect_command_as(None)
    }

    /// [`App::connect_command`] logging in as `user`.
    pub fn connect_command_as(&self, user: Option<&str>) -> String {
        let port = match self.public.ssh_port {
            22 => String::new(),
            port => format!("-p {port} "),
        };
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        format!(
            "ssh {port}-R 80:localhost:3000 {user}{}",
            self.config.domain
        )
    }
}

/// Every listener, bound before anything is served.
struct Listeners {
    ssh: TcpListener,
    http: TcpListener,
    https: TcpListener,
    stats: TcpListener,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Listeners> {
        Ok(Listeners {
            ssh: bind("--ssh-addr", config.ssh_addr).await?,
            http: bind("--http-addr", config.http_addr).await?,
            https: bind("--https-addr", config.https_addr).await?,
            stats: bind("--stats-addr", config.stats_addr).await?,
        })
    }
}

async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot listen"))
}

/// Runs the server until `signal` resolves, then shuts down gracefully.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<()> {
    // Everything that only reads comes first, then the listeners, and only
    // then what writes files: a bad flag never leaves a key or secret behind.
    let certs = tls::Certs::load(&config)?;
    let tls = tls::server_config(Arc::clone(&certs));
    let keys = keys::Keys::load(config.keys_file.as_deref())?;
    let shutdown = Shutdown::new();
    let challenges = Arc::new(acme::http01::Challenges::default());
    // Reads the TSIG key file, so it belongs with the other reads.
    let acme = acme::Acme::new(
        &config,
        Arc::clone(&certs),
        Arc::clone(&challenges),
        shutdown.clone(),
    )?;
    let hangup = reload::hangup_signal()?;
    let listeners = Listeners::bind(&config).await?;
    raise_open_files_limit();
    let host_key = ssh::load_or_create_host_key(&config.host_key)?;
    let state = state::State::open(&config.state_dir)?;
    let local = |l: &TcpListener| l.local_addr().expect("bound socket has an address");
    let (ssh_addr, http_addr, https_addr, stats_addr) = (
        local(&listeners.ssh),
        local(&listeners.http),
        local(&listeners.https),
        local(&listeners.stats),
    );

    let addrs = BoundAddrs {
        ssh: ssh_addr,
        http: http_addr,
        https: https_addr,
        stats: stats_addr,
    };
    let custom = custom::CustomDomains::new(&config, Arc::clone(&certs));
    if let Some(acme) = &acme {
        // Custom domains get their certificates from the same CA.
        custom
            .certs
            .set_issuer(Arc::new(acme::OnDemandIssuer(Arc::clone(acme))));
    }
    let app = Arc::new(App {
        custom,
        shutdown: shutdown.clone(),
        certs,
        history: dashboard::History::start_now(),
        challenges,
        acme: acme.clone(),
        tcp: tcp::TcpPorts::new(config.tcp_ports.clone(), config.tcp_bind),
        addrs,
        registry: Arc::new(Registry::new(config.balance)),
        ip_guard: Arc::new(IpGuard::new(&config.limits)),
        refusal_log: LogOnce::default(),
        trusted: TrustedProxies::new(&config.limits.trusted_proxies),
        spool: spool::Budget::new(config.limits.spool()),
        state,
        keys,
        public: PublicPorts {
            https_port: config.public_https_port.unwrap_or(https_addr.port()),
            ssh_port: ssh_addr.port(),
        },
        config,
        stats: Stats::default(),
        ssh_config: ssh::russh_config(host_key),
    });

    if let Some(acme) = &acme {
        // Before the ready line, so a stored certificate is served from the
        // first handshake on. HTTP-01 works already: :80 is bound (and its
        // accept loop starts right below, before any order gets that far).
        acme.start();
    }
    // One machine-readable line for scripts and tests (ports may be 0 in
    // the flags), then the command a user would type.
    println!(
        "burrow ready: ssh={ssh_addr} http={http_addr} https={https_addr} stats={stats_addr} domain={}",
        app.config.domain
    );
    println!("connect with: {}", app.connect_command());
    let _ = std::io::stdout().flush();

    shutdown.spawn(ssh::serve(
        listeners.ssh,
        Arc::clone(&app),
        shutdown.clone(),
    ));
    shutdown.spawn(http::redirect::serve(
        listeners.http,
        Arc::clone(&app),
        shutdown.clone(),
    ));
    let proxy_app = Arc::clone(&app);
    shutdown.spawn(http::serve_tls(
        listeners.https,
        tls,
        Arc::clone(&app),
        shutdown.clone(),
        move |req, peer| {
            http::proxy::handle(Arc::clone(&proxy_app), req, peer, http::Scheme::Https)
        },
    ));
    shutdown.spawn(stats::serve(
        listeners.stats,
        Arc::clone(&app),
        shutdown.clone(),
    ));
    shutdown.spawn(dashboard::history::sample(
        Arc::clone(&app),
        shutdown.clone(),
    ));
    shutdown.spawn(limits::lifetime::run(Arc::clone(&app), shutdown.clone()));
    shutdown.spawn(custom::recheck(Arc::clone(&app), shutdown.clone()));
    shutdown.spawn(reload::watch(Arc::clone(&app), hangup, shutdown.clone()));

    systemd::ready();

    signal.await;
    // Installed now so it only sees signals sent from here on.
    let second = shutdown::signal().context("cannot install signal handlers")?;
    tokio::select! {
        _ = drain(&app, &shutdown) => Ok(()),
        _ = second => {
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
    }
}

/// The graceful shutdown: stop accepting, tell the SSH users, let in-flight
/// HTTP requests finish (at most `--shutdown-grace`), then close everything.
async fn drain(app: &App, shutdown: &Shutdown) {
    let grace = app.config.shutdown_grace;
    tracing::info!(grace = %limits::human(grace), "shutdown requested: no new connections, finishing in-flight requests");
    systemd::stopping();
    shutdown.trigger();
    let deadline = tokio::time::Instant::now() + grace;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        let in_flight = app
            .stats
            .active_requests
            .load(std::sync::atomic::Ordering::Relaxed);
        if in_flight == 0 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                in_flight,
                "grace period over: cutting the requests still in flight"
            );
            break;
        }
        poll.tick().await;
    }
    shutdown.finish();
    if !shutdown.drain(CLOSE_TIME).await {
        tracing::warn!("some connections did not close in time");
    }
}

/// Writes a secret file atomically with mode 0600: a temporary file next to
/// it, flushed to disk, then renamed over the target.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // A name of its own, so two writers never rename each other's file away.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
