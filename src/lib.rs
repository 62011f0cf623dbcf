//! burrow: a single-binary SSH tunnel server.
//!
//! `ssh -R 80:localhost:3000 DOMAIN` registers a tunnel in the shared
//! registry; visitors of `https://NAME.DOMAIN` reach the edge, which routes
//! them to the tunnel's proxy, which opens a `forwarded-tcpip` channel
//! through the tunnel's SSH connection and speaks HTTP/1.1 to the user's
//! local app over it.
//!
//! The modules, from the core up (see ARCHITECTURE.md):
//! - [`tunnel`]: the core — tunnels, the registry, names, lifecycle; it
//!   knows neither SSH nor HTTP;
//! - [`ssh`]: the SSH server, whose sessions are the tunnels' clients;
//! - [`edge`]: the visitor's side — TLS, SNI, routing, the :80 redirector;
//! - [`http`]: the reverse proxy and its pages;
//! - [`pipe`]: the bytes — channels, spools, relays, public TCP ports;
//! - [`ops`]: stats, metrics, the admin API and the dashboard;
//! - [`cluster`]: several nodes as one service (the directory on Redis,
//!   the link between nodes);
//! - leaves every layer uses: [`config`], [`counters`], [`limits`],
//!   [`listen`], [`shutdown`], [`request_log`], [`subdomain`], [`keys`],
//!   [`forwarded`], [`state`], [`tls`], [`systemd`]; and the certificate
//!   side: [`acme`], [`custom`], [`reload`].
//!
//! [`run`] binds every listener first (so a bad flag fails before anything
//! starts), then serves until the shutdown signal resolves.

pub mod acme;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod custom;
pub mod edge;
pub mod forwarded;
pub mod http;
pub mod inspect;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod ops;
pub mod pipe;
pub mod reload;
pub mod request_log;
pub mod shutdown;
pub mod ssh;
pub mod state;
pub mod store;
pub mod subdomain;
pub mod systemd;
pub mod tls;
pub mod trim;
pub mod tunnel;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{AuthMode, Config};
use crate::counters::COUNTERS;
use crate::listen::Listeners;
use crate::shutdown::Shutdown;

/// After the grace period, how long closing connections get to say goodbye
/// (SSH disconnects) before the process exits anyway.
const CLOSE_TIME: Duration = Duration::from_secs(2);

/// Runs the server until `signal` resolves, then shuts down gracefully.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<()> {
    // Everything that only reads comes first, then the listeners, and only
    // then what writes files: a bad flag never leaves a key or secret behind.
    let certs = tls::Certs::load(&config)?;
    let tls = tls::server_config(Arc::clone(&certs));
    let keys = Arc::new(keys::Keys::load(config.keys_file.as_deref())?);
    let shutdown = Shutdown::new();
    let challenges = Arc::new(acme::http01::Challenges::default());
    let refusals = Arc::new(limits::Refusals::default());
    // Reads the TSIG key file, so it belongs with the other reads.
    let acme = acme::Acme::new(
        &config,
        Arc::clone(&certs),
        Arc::clone(&challenges),
        (Arc::clone(&refusals), shutdown.clone()),
    )?;
    let hangup = reload::hangup_signal()?;
    let listeners = Listeners::bind(&config).await?;
    listen::raise_open_files_limit();
    let host_key = ssh::load_or_create_host_key(&config.host_key)?;
    let state = state::State::open(&config.state_dir)?;
    let addrs = listeners.addrs();

    // The shared parts, from the core up.
    let public = tunnel::public::Public {
        domain: config.domain.clone(),
        https_port: config.public_https_port.unwrap_or(addrs.https.port()),
        ssh_port: addrs.ssh.port(),
    };
    let registry = Arc::new(tunnel::Registry::new(config.balance, public));
    let ip_guard = Arc::new(limits::ssh::IpGuard::new(&config.limits));
    let trusted = forwarded::TrustedProxies::new(&config.limits.trusted_proxies);
    let spool = pipe::spool::Budget::new((&config.spool).into());
    let custom = Arc::new(custom::CustomDomains::new(
        &config,
        Arc::clone(&certs),
        Arc::clone(&registry),
    ));
    let relays = Arc::new(pipe::relay::Relays {
        registry: Arc::clone(&registry),
        ip_guard: Arc::clone(&ip_guard),
        refusals: Arc::clone(&refusals),
        idle: config.limits.tcp_idle_timeout,
    });
    let tcp = Arc::new(pipe::tcp::TcpPorts::new(
        config.tcp_ports.clone(),
        config.tcp_bind,
        Arc::clone(&relays),
        shutdown.clone(),
    ));
    let mut name_secret: Arc<[u8]> = Arc::from(state.name_secret.as_slice());
    let cluster = match config.cluster.enabled() {
        true => {
            let parts = cluster::Parts {
                registry: Arc::clone(&registry),
                ip_guard: Arc::clone(&ip_guard),
                spool: Arc::clone(&spool),
                keys: Arc::clone(&keys),
                tcp: Arc::clone(&tcp),
            };
            let cluster = cluster::Cluster::join(&config, parts).await?;
            // The same key gets the same stable name on every node.
            name_secret = Arc::from(cluster.shared_name_secret(&state.name_secret).await?);
            registry.set_directory(Arc::clone(&cluster) as Arc<dyn tunnel::directory::Directory>);
            Some(cluster)
        }
        false => None,
    };
    // Certificates: in a cluster every node serves the same ones, kept in
    // Redis. Custom domains get theirs from the CA when ACME is on.
    let shared_certs = cluster.as_ref().map(|cluster| cluster.certs());
    if let Some(shared) = &shared_certs {
        challenges.share(shared.clone());
        custom.certs.share(shared.clone());
        if let Some(acme) = &acme {
            acme.share(shared.clone());
        }
    }
    if let Some(acme) = &acme {
        // Custom domains' certificates are renewed while a tunnel binds
        // the name, not for ever.
        let custom = Arc::clone(&custom);
        acme.renew_only_while(Arc::new(move |name| {
            let custom = Arc::clone(&custom);
            Box::pin(async move { custom.wants_certificate(&name).await })
        }));
    }
    let issuer: Option<Arc<dyn custom::issuer::Issuer>> = match (&acme, shared_certs) {
        (Some(acme), _) => Some(Arc::new(acme::OnDemandIssuer(Arc::clone(acme)))),
        (None, Some(shared)) => Some(Arc::new(custom::issuer::SharedSelfSigned::new(shared))),
        (None, None) => None,
    };
    if let Some(issuer) = issuer {
        custom.certs.set_issuer(issuer);
    }
    let pools = http::pool::Pools {
        max_idle: config.pool.channel_pool_size,
        idle_timeout: config.pool.channel_pool_idle,
    };
    let inspector = Arc::new(inspect::Inspector::new(
        &config.inspect,
        Arc::clone(&registry),
        pools,
    ));
    let server = Arc::new(ssh::Server {
        registry: Arc::clone(&registry),
        limits: config.limits.clone(),
        request_log: config.request_log.clone(),
        auth_mode: config.auth_mode,
        reserved_names: config.reserved_names.clone(),
        keys: Arc::clone(&keys),
        tcp,
        relays: Arc::clone(&relays),
        custom: Arc::clone(&custom),
        ip_guard: Arc::clone(&ip_guard),
        refusals: Arc::clone(&refusals),
        trusted: trusted.clone(),
        name_secret,
        russh: ssh::russh_config(host_key),
        spool: Arc::clone(&spool),
        inspect: Arc::clone(&inspector),
        shutdown: shutdown.clone(),
    });
    // SSH clients on the HTTPS port go to the SSH server.
    let (ssh_handoff, ssh_handoffs) = match config.ssh_on_https {
        config::Switch::On => {
            let (give, take) = listen::handoff();
            (Some(give), Some(take))
        }
        config::Switch::Off => (None, None),
    };
    let edge = Arc::new(edge::Edge {
        router: edge::router::Router::new(Arc::clone(&registry), Arc::clone(&custom)),
        proxy: http::proxy::Proxy {
            registry: Arc::clone(&registry),
            limits: config.limits.clone(),
            trusted: trusted.clone(),
            ip_guard: Arc::clone(&ip_guard),
            refusals: Arc::clone(&refusals),
            access_log: config.access_log,
            browser_warning: !config.warning.no_browser_warning,
            pools,
            https_addr: addrs.https,
            observer: Arc::clone(&inspector) as Arc<dyn http::observe::Observer>,
            shutdown: shutdown.clone(),
        },
        relays: Arc::clone(&relays),
        custom: Arc::clone(&custom),
        challenges,
        http_mode: config.http_mode,
        conn_limits: http::ConnLimits::new(&config.limits, trusted),
        ssh: ssh_handoff,
        shutdown: shutdown.clone(),
    });
    let history = Arc::new(ops::dashboard::History::start_now());
    let ops = Arc::new(ops::Ops {
        registry: Arc::clone(&registry),
        ip_guard: Arc::clone(&ip_guard),
        spool,
        custom: Arc::clone(&custom),
        acme: acme.clone(),
        history: Arc::clone(&history),
        block_duration: config.limits.block_duration,
        cluster: cluster.clone(),
        inspect_watchers: Arc::clone(&inspector.watchers),
    });
    let reload = reload::Reload {
        keys,
        certs,
        registry: Arc::clone(&registry),
        reserved: config.reserved_names.clone(),
        tcp_ports: config.tcp_ports.clone(),
        keys_only: config.auth_mode == AuthMode::Keys,
    };

    if let Some(acme) = &acme {
        // Before the ready line, so a stored certificate is served from the
        // first handshake on. HTTP-01 works already: :80 is bound (and its
        // accept loop starts right below, before any order gets that far).
        acme.start().await;
    }
    addrs.announce(
        &registry.public().domain,
        &registry.public().connect_command(),
    );

    let expiry = tunnel::expiry::Limits {
        idle: config.limits.tunnel_idle_timeout,
        lifetime: config.limits.tunnel_max_lifetime,
    };
    shutdown.spawn(ssh::serve(listeners.ssh, server, ssh_handoffs));
    shutdown.spawn(edge::redirect::serve(listeners.http, Arc::clone(&edge)));
    if let (Some(cluster), Some(listener)) = (&cluster, listeners.cluster) {
        let link = Arc::new(edge::link::LinkServer {
            tls: cluster.link_tls()?.server,
            edge: Arc::clone(&edge),
            relays,
            views: ops::admin::views(&ops),
            spool: Arc::clone(&ops.spool),
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(edge::link::serve(listener, link));
        shutdown.spawn(Arc::clone(cluster).run(shutdown.clone()));
    }
    if let Some(listener) = listeners.health {
        shutdown.spawn(ops::health::serve(listener, shutdown.clone()));
    }
    shutdown.spawn(edge::https::serve(listeners.https, tls, edge));
    let stats_shutdown = shutdown.clone();
    let limits = config.limits.clone();
    shutdown.spawn(async move { ops::serve(listeners.stats, ops, &limits, stats_shutdown).await });
    shutdown.spawn(ops::dashboard::history::sample(history, shutdown.clone()));
    shutdown.spawn(tunnel::expiry::run(
        Arc::clone(&registry),
        expiry,
        shutdown.clone(),
    ));
    shutdown.spawn(http::pool::Pools::prune(
        Arc::clone(&registry),
        shutdown.clone(),
    ));
    shutdown.spawn(limits::housekeep(ip_guard, refusals, shutdown.clone()));
    shutdown.spawn(Arc::clone(&custom).recheck(shutdown.clone()));
    shutdown.spawn(reload::watch(reload, hangup, shutdown.clone()));
    shutdown.spawn(trim::run(config.memory_trim_interval, shutdown.clone()));

    systemd::ready();

    signal.await;
    // Installed now so it only sees signals sent from here on.
    let second = shutdown::signal().context("cannot install signal handlers")?;
    tokio::select! {
        _ = drain(config.shutdown_grace, &shutdown, cluster.as_deref()) => Ok(()),
        _ = second => {
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        }
    }
}

/// The graceful shutdown: stop accepting, tell the SSH users, let in-flight
/// HTTP requests finish (at most `grace`), then close everything — in a
/// cluster, releasing this node's names at once (no wait for its heartbeat
/// to expire), so its clients' reconnections elsewhere get them back.
async fn drain(grace: Duration, shutdown: &Shutdown, cluster: Option<&cluster::Cluster>) {
    tracing::info!(grace = %limits::human(grace), "shutdown requested: no new connections, finishing in-flight requests");
    systemd::stopping();
    shutdown.trigger();
    let deadline = tokio::time::Instant::now() + grace;
    let mut poll = tokio::time::interval(Duration::from_millis(20));
    loop {
        let in_flight = COUNTERS.requests_in_flight();
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
    if let Some(cluster) = cluster {
        cluster.leave().await;
    }
    if !shutdown.drain(CLOSE_TIME).await {
        tracing::warn!("some connections did not close in time");
    }
}
