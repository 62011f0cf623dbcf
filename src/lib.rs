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
//!   [`forwarded`], [`state`], [`tls`], [`systemd`], [`plans`] (per-user
//!   quotas and usage); and the certificate
//!   side: [`acme`], [`custom`], [`reload`].
//!
//! [`run`] binds every listener first (so a bad flag fails before anything
//! starts), then serves until the shutdown signal resolves.

pub mod acme;
pub mod authz;
pub mod cluster;
pub mod config;
pub mod counters;
pub mod custom;
pub mod edge;
pub mod escape;
pub mod forwarded;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod inspect;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod login;
pub mod ops;
pub mod pipe;
pub mod plans;
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
use crate::listen::{BoundAddrs, Listeners};
use crate::shutdown::Shutdown;

/// After the grace period, how long closing connections get to say goodbye
/// (SSH disconnects) before the process exits anyway.
const CLOSE_TIME: Duration = Duration::from_secs(2);

/// Runs the server until `signal` resolves, then shuts down gracefully.
///
/// Everything that only reads comes first, then the listeners, and only
/// then what writes files: a bad flag never leaves a key or secret behind.
pub async fn run(config: Config, signal: impl Future<Output = ()>) -> Result<()> {
    let shutdown = Shutdown::new();
    let inputs = Inputs::read(&config, &shutdown)?;
    let plans = inputs.plans.clone();
    let secrets = ops::auth::Secrets::read(&config.admin)?;
    let listeners = Listeners::bind(&config).await?;
    listen::raise_open_files_limit();
    let host_key = ssh::load_or_create_host_key(&config.host_key)?;
    let state = state::State::open(&config.state_dir)?;
    let admin = secrets.into_auth(&state.dir)?;
    let addrs = listeners.addrs();
    let core = Core::new(&config, &inputs, &addrs, &shutdown);
    let cluster = join_cluster(&config, &core, &inputs).await?;
    let name_secret = match &cluster {
        // The same key gets the same stable name on every node.
        Some(cluster) => cluster.shared_name_secret(&state.name_secret).await?,
        None => state.name_secret.to_vec(),
    };
    share_certificates(&core, &inputs, cluster.as_deref());
    let login = sign_in(&config, (&core, &inputs, cluster.as_deref()), &name_secret)?;
    let identity = (host_key, name_secret, admin);
    let layers = Layers::new(
        &config,
        (&core, &inputs, cluster.as_ref(), login),
        &addrs,
        identity,
    );
    if let Some(acme) = &inputs.acme {
        // Before the ready line, so a stored certificate is served from the
        // first handshake on. HTTP-01 works already: :80 is bound (and its
        // accept loop starts right below, before any order gets that far).
        acme.start().await;
    }
    addrs.announce(&config.domain, &core.registry.public().connect_command());
    serve(&config, listeners, (inputs, core, layers), cluster.as_ref())?;
    systemd::ready();

    signal.await;
    // Installed now so it only sees signals sent from here on.
    let second = shutdown::signal().context("cannot install signal handlers")?;
    tokio::select! {
        _ = drain(config.shutdown_grace, &shutdown, cluster.as_deref()) => {}
        _ = second => {
            tracing::warn!("second signal: exiting now");
            plans.iter().for_each(|p| p.save_logged());
            std::process::exit(1);
        }
    }
    // Last, once the connections closed: their last bytes count.
    plans.iter().for_each(|p| p.save_logged());
    Ok(())
}

/// What is read before anything is bound or written: certificates, the
/// keys file, the ACME set-up (its TSIG key file), the SIGHUP handler.
struct Inputs {
    certs: Arc<tls::Certs>,
    keys: Arc<keys::Keys>,
    challenges: Arc<acme::http01::Challenges>,
    refusals: Arc<limits::Refusals>,
    acme: Option<Arc<acme::Acme>>,
    /// The sign-in providers (read from the flags and the providers file).
    providers: login::Providers,
    /// The operator's side of sign-in (providers' names, the server's
    /// policy).
    operator: identity::Operator,
    /// `--auth-url`, when set.
    auth_url: Option<Arc<authz::AuthUrl>>,
    /// Per-user plans and their usage, when configured.
    plans: Option<Arc<plans::Plans>>,
    /// Installed early, so a SIGHUP never kills the process.
    hangup: tokio::signal::unix::Signal,
}

impl Inputs {
    fn read(config: &Config, shutdown: &Shutdown) -> Result<Inputs> {
        let certs = tls::Certs::load(config)?;
        let providers = login::Providers::load(&config.login, &config.domain)?;
        let keys = keys::Keys::load(config.keys_file.as_deref(), &providers.names())?;
        let keys = Arc::new(keys);
        let challenges = Arc::new(acme::http01::Challenges::default());
        let refusals = Arc::new(limits::Refusals::default());
        let acme = acme::Acme::new(
            config,
            Arc::clone(&certs),
            Arc::clone(&challenges),
            (Arc::clone(&refusals), shutdown.clone()),
        )?;
        let names = providers.names();
        let required = match &config.login.login_required {
            Some(text) => Some(
                identity::LoginPolicy::parse(text, &names)
                    .map_err(|e| anyhow::anyhow!("--login-required: {e}"))?,
            ),
            None => None,
        };
        let operator = identity::Operator {
            providers: names.clone(),
            required,
        };
        let auth_url = authz::AuthUrl::new(&config.login, names, Arc::clone(&refusals))?;
        let plans = plans::Plans::load(&config.plans, &config.state_dir)?;
        let plan_names = plans.as_ref().map_or_else(
            || vec![plans::DEFAULT_PLAN.to_string()],
            |p| p.current().names(),
        );
        keys.set_plans(plan_names)?;
        Ok(Inputs {
            certs,
            keys,
            challenges,
            refusals,
            acme,
            providers,
            operator,
            auth_url,
            plans,
            hangup: reload::hangup_signal()?,
        })
    }
}

/// The shared parts, from the core up: every layer gets a narrow handle
/// holding what it uses of these.
struct Core {
    registry: Arc<tunnel::Registry>,
    ip_guard: Arc<limits::ssh::IpGuard>,
    trusted: forwarded::TrustedProxies,
    spool: Arc<pipe::spool::Budget>,
    custom: Arc<custom::CustomDomains>,
    relays: Arc<pipe::relay::Relays>,
    tcp: Arc<pipe::tcp::TcpPorts>,
    pools: http::pool::Pools,
    inspector: Arc<inspect::Inspector>,
    shutdown: Shutdown,
}

impl Core {
    fn new(config: &Config, inputs: &Inputs, addrs: &BoundAddrs, shutdown: &Shutdown) -> Core {
        let public = tunnel::public::Public {
            domain: config.domain.clone(),
            https_port: config.public_https_port.unwrap_or(addrs.https.port()),
            ssh_port: addrs.ssh.port(),
        };
        let registry = Arc::new(tunnel::Registry::new(config.balance, public));
        let ip_guard = Arc::new(limits::ssh::IpGuard::new(&config.limits));
        let custom = Arc::new(custom::CustomDomains::new(
            config,
            Arc::clone(&inputs.certs),
            Arc::clone(&registry),
        ));
        let relays = Arc::new(pipe::relay::Relays {
            registry: Arc::clone(&registry),
            ip_guard: Arc::clone(&ip_guard),
            refusals: Arc::clone(&inputs.refusals),
            idle: config.limits.tcp_idle_timeout,
        });
        let tcp = Arc::new(pipe::tcp::TcpPorts::new(
            config.tcp_ports.clone(),
            config.tcp_bind,
            Arc::clone(&relays),
            shutdown.clone(),
        ));
        let pools = http::pool::Pools {
            max_idle: config.pool.channel_pool_size,
            idle_timeout: config.pool.channel_pool_idle,
        };
        let inspector = Arc::new(inspect::Inspector::new(
            &config.inspect,
            Arc::clone(&registry),
            pools,
        ));
        Core {
            trusted: forwarded::TrustedProxies::new(&config.limits.trusted_proxies),
            spool: pipe::spool::Budget::new((&config.spool).into()),
            registry,
            ip_guard,
            custom,
            relays,
            tcp,
            pools,
            inspector,
            shutdown: shutdown.clone(),
        }
    }
}

/// In cluster mode: joins the cluster, whose directory the registry
/// consults from now on.
async fn join_cluster(
    config: &Config,
    core: &Core,
    inputs: &Inputs,
) -> Result<Option<Arc<cluster::Cluster>>> {
    if !config.cluster.enabled() {
        return Ok(None);
    }
    let parts = cluster::Parts {
        registry: Arc::clone(&core.registry),
        ip_guard: Arc::clone(&core.ip_guard),
        spool: Arc::clone(&core.spool),
        keys: Arc::clone(&inputs.keys),
        tcp: Arc::clone(&core.tcp),
    };
    let cluster = cluster::Cluster::join(config, parts).await?;
    let directory = Arc::clone(&cluster) as Arc<dyn tunnel::directory::Directory>;
    core.registry.set_directory(directory);
    Ok(Some(cluster))
}

/// Where certificates come from: in a cluster every node serves the same
/// ones, kept in Redis; custom domains get theirs from the CA when ACME is
/// on (renewed only while a tunnel binds the name), else self-signed
/// (shared in a cluster).
fn share_certificates(core: &Core, inputs: &Inputs, cluster: Option<&cluster::Cluster>) {
    let shared = cluster.map(|cluster| cluster.certs());
    if let Some(shared) = &shared {
        inputs.challenges.share(shared.clone());
        core.custom.certs.share(shared.clone());
        if let Some(acme) = &inputs.acme {
            acme.share(shared.clone());
        }
    }
    if let Some(acme) = &inputs.acme {
        let custom = Arc::clone(&core.custom);
        acme.renew_only_while(Arc::new(move |name| {
            let custom = Arc::clone(&custom);
            Box::pin(async move { custom.wants_certificate(&name).await })
        }));
    }
    let issuer: Option<Arc<dyn custom::issuer::Issuer>> = match (&inputs.acme, shared) {
        (Some(acme), _) => Some(Arc::new(acme::OnDemandIssuer(Arc::clone(acme)))),
        (None, Some(shared)) => Some(Arc::new(custom::issuer::SharedSelfSigned::new(shared))),
        (None, None) => None,
    };
    if let Some(issuer) = issuer {
        core.custom.certs.set_issuer(issuer);
    }
}

/// Sign-in at the edge, when a provider is configured: its keys come from
/// the stable-name secret, which every node of a cluster shares.
fn sign_in(
    config: &Config,
    (core, inputs, cluster): (&Core, &Inputs, Option<&cluster::Cluster>),
    name_secret: &[u8],
) -> Result<Option<Arc<login::Login>>> {
    let root: [u8; 32] = name_secret
        .try_into()
        .context("the stable-name secret is not 32 bytes")?;
    let parts = login::Parts {
        providers: inputs.providers.clone(),
        operator: inputs.operator.clone(),
        root,
        keys: Arc::clone(&inputs.keys),
        auth_url: inputs.auth_url.clone(),
        store: cluster.map(|c| c.store().clone()),
        registry: Arc::clone(&core.registry),
        custom: Arc::clone(&core.custom),
    };
    login::Login::new(config, parts)
}

/// The layers above the core, each with its handle.
struct Layers {
    ssh: Arc<ssh::Server>,
    /// SSH clients on the HTTPS port go to the SSH server
    /// (`--ssh-on-https`).
    ssh_handoffs: Option<listen::Handoffs>,
    edge: Arc<edge::Edge>,
    ops: Arc<ops::Ops>,
    history: Arc<ops::dashboard::History>,
    reload: reload::Reload,
    login: Option<Arc<login::Login>>,
}

impl Layers {
    fn new(
        config: &Config,
        (core, inputs, cluster, login): (
            &Core,
            &Inputs,
            Option<&Arc<cluster::Cluster>>,
            Option<Arc<login::Login>>,
        ),
        addrs: &BoundAddrs,
        (host_key, name_secret, admin): (russh::keys::PrivateKey, Vec<u8>, ops::auth::AdminAuth),
    ) -> Layers {
        let ssh_parts = ssh::Parts {
            registry: Arc::clone(&core.registry),
            keys: Arc::clone(&inputs.keys),
            auth_url: inputs.auth_url.clone(),
            signin: (!inputs.providers.is_empty()).then(|| inputs.operator.clone()),
            tcp: Arc::clone(&core.tcp),
            relays: Arc::clone(&core.relays),
            custom: Arc::clone(&core.custom),
            ip_guard: Arc::clone(&core.ip_guard),
            refusals: Arc::clone(&inputs.refusals),
            trusted: core.trusted.clone(),
            spool: Arc::clone(&core.spool),
            inspect: Arc::clone(&core.inspector),
            plans: inputs.plans.clone(),
            shutdown: core.shutdown.clone(),
        };
        let ssh = ssh::Server::new(config, ssh_parts, host_key, Arc::from(name_secret));
        let (handoff, ssh_handoffs) = match config.ssh_on_https {
            config::Switch::On => {
                let (give, take) = listen::handoff();
                (Some(give), Some(take))
            }
            config::Switch::Off => (None, None),
        };
        let proxy_parts = http::proxy::Parts {
            registry: Arc::clone(&core.registry),
            trusted: core.trusted.clone(),
            ip_guard: Arc::clone(&core.ip_guard),
            refusals: Arc::clone(&inputs.refusals),
            pools: core.pools,
            observer: Arc::clone(&core.inspector) as Arc<dyn http::observe::Observer>,
            guards: login
                .iter()
                .map(|l| Arc::new(login::gate::Gate(Arc::clone(l))) as Arc<dyn http::guard::Guard>)
                .collect(),
            shutdown: core.shutdown.clone(),
        };
        let proxy = http::proxy::Proxy::new(config, proxy_parts, addrs.https);
        let edge_parts = edge::Parts {
            relays: Arc::clone(&core.relays),
            custom: Arc::clone(&core.custom),
            challenges: Arc::clone(&inputs.challenges),
            login: login.clone(),
            ssh: handoff,
            shutdown: core.shutdown.clone(),
        };
        let history = Arc::new(ops::dashboard::History::start_now());
        let ops_parts = ops::Parts {
            registry: Arc::clone(&core.registry),
            ip_guard: Arc::clone(&core.ip_guard),
            spool: Arc::clone(&core.spool),
            custom: Arc::clone(&core.custom),
            acme: inputs.acme.clone(),
            history: Arc::clone(&history),
            cluster: cluster.cloned(),
            inspect_watchers: Arc::clone(&core.inspector.watchers),
            plans: inputs.plans.clone(),
            auth: admin,
        };
        let reload = reload::Reload {
            keys: Arc::clone(&inputs.keys),
            certs: Arc::clone(&inputs.certs),
            registry: Arc::clone(&core.registry),
            reserved: config.reserved_names.clone(),
            tcp_ports: config.tcp_ports.clone(),
            keys_only: config.auth_mode == AuthMode::Keys,
            auth_url: inputs.auth_url.clone(),
            plans: inputs.plans.clone(),
        };
        Layers {
            ssh: Arc::new(ssh),
            ssh_handoffs,
            edge: Arc::new(edge::Edge::new(config, proxy, edge_parts)),
            ops: Arc::new(ops::Ops::new(config, ops_parts)),
            history,
            reload,
            login,
        }
    }
}

/// Starts every listener's accept loop and every background task; they
/// run until shutdown.
fn serve(
    config: &Config,
    listeners: Listeners,
    (inputs, core, layers): (Inputs, Core, Layers),
    cluster: Option<&Arc<cluster::Cluster>>,
) -> Result<()> {
    let shutdown = &core.shutdown;
    let tls = tls::server_config(Arc::clone(&inputs.certs));
    shutdown.spawn(ssh::serve(listeners.ssh, layers.ssh, layers.ssh_handoffs));
    shutdown.spawn(edge::redirect::serve(
        listeners.http,
        Arc::clone(&layers.edge),
    ));
    if let (Some(cluster), Some(listener)) = (cluster, listeners.cluster) {
        let link = Arc::new(edge::link::LinkServer {
            tls: cluster.link_tls()?.server,
            edge: Arc::clone(&layers.edge),
            relays: Arc::clone(&core.relays),
            views: ops::admin::views(&layers.ops),
            spool: Arc::clone(&core.spool),
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(edge::link::serve(listener, link));
        shutdown.spawn(Arc::clone(cluster).run(shutdown.clone()));
        if let Some(plans) = &inputs.plans {
            plans.share(Arc::clone(cluster) as Arc<dyn plans::Shared>);
            let usage = Arc::clone(cluster).share_usage(Arc::clone(plans), shutdown.clone());
            shutdown.spawn(usage);
        }
    }
    if let Some(listener) = listeners.health {
        shutdown.spawn(ops::health::serve(listener, shutdown.clone()));
    }
    shutdown.spawn(edge::https::serve(listeners.https, tls, layers.edge));
    let limits = config.limits.clone();
    let stats = (listeners.stats, layers.ops, shutdown.clone());
    shutdown.spawn(async move { ops::serve(stats.0, stats.1, &limits, stats.2).await });
    let history = ops::dashboard::history::sample(layers.history, shutdown.clone());
    shutdown.spawn(history);
    let expiry = tunnel::expiry::Limits {
        idle: config.limits.tunnel_idle_timeout,
        lifetime: config.limits.tunnel_max_lifetime,
    };
    let registry = Arc::clone(&core.registry);
    shutdown.spawn(tunnel::expiry::run(registry, expiry, shutdown.clone()));
    let registry = Arc::clone(&core.registry);
    shutdown.spawn(http::pool::Pools::prune(registry, shutdown.clone()));
    let refusals = Arc::clone(&inputs.refusals);
    shutdown.spawn(limits::housekeep(core.ip_guard, refusals, shutdown.clone()));
    shutdown.spawn(Arc::clone(&core.custom).recheck(shutdown.clone()));
    shutdown.spawn(reload::watch(
        layers.reload,
        inputs.hangup,
        shutdown.clone(),
    ));
    shutdown.spawn(trim::run(config.memory_trim_interval, shutdown.clone()));
    if let Some(plans) = &inputs.plans {
        let interval = config.plans.usage_save_interval;
        shutdown.spawn(Arc::clone(plans).keep_saved(interval, shutdown.clone()));
    }
    shutdown.spawn(prune_sign_in(
        (layers.login, inputs.auth_url),
        shutdown.clone(),
    ));
    Ok(())
}

/// How often sign-in's per-visitor counts and caches are pruned.
const SIGN_IN_PRUNE: Duration = Duration::from_secs(60);

/// Prunes sign-in's and `--auth-url`'s caches until shutdown.
async fn prune_sign_in(
    (login, auth_url): (Option<Arc<login::Login>>, Option<Arc<authz::AuthUrl>>),
    shutdown: Shutdown,
) {
    if login.is_none() && auth_url.is_none() {
        return;
    }
    let mut ticker = shutdown.ticker(SIGN_IN_PRUNE);
    while ticker.tick().await {
        login.iter().for_each(|l| l.prune());
        auth_url.iter().for_each(|a| a.prune());
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
