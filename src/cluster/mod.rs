//! Several nodes as one service: a tunnel opened on any node is served by
//! every node, names and limits are cluster-wide, and a dead node costs
//! its clients one reconnect, not their URLs.
//!
//! - [`crate::store`] (a leaf below this module): the shared state in
//!   Redis, the cluster secret and the shared certificates;
//! - `directory`: [`Cluster`] as the [`crate::tunnel::directory::Directory`]
//!   the registry consults (claims, cached lookups, streams, bans, counts);
//! - `heartbeat`: the node's liveness, the node table, clean-ups, what
//!   follows a Redis outage; `events`: the event channel applied here;
//!   `reconcile`: what follows the primary moving (Sentinel failover);
//! - [`nodes`]: the node table read from the heartbeats;
//! - `usage`: plans' usage per user, flushed to Redis every second;
//! - [`tls`]: the link's mutual TLS; [`link`]: HTTP/2 streams to other
//!   nodes (their serving side is `crate::edge::link`, above the edge);
//! - this module: [`Cluster`], the node's membership — joining, the
//!   handles the rest of the node gets, the graceful leave.
//!
//! The registry is soft state: the live SSH sessions are the truth, and a
//! node can always register its tunnels again (after Redis was down or
//! lost its data). Lookups are cached per name and invalidated by events,
//! so serving a request does not ask Redis.

mod directory;
mod events;
mod heartbeat;
pub mod link;
pub mod nodes;
mod reconcile;
pub mod tls;
mod usage;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use dashmap::{DashMap, DashSet};

use self::link::Links;
use self::nodes::Nodes;
use crate::config::{Balance, Config};
use crate::limits::ssh::IpGuard;
use crate::pipe::spool::Budget;
use crate::shutdown::Shutdown;
use crate::store::secret::Secret;
use crate::store::shared::{self as certs, CertChange, SharedCerts};
use crate::store::{member_id, Store, Stored};
use crate::tunnel::{unix_ms, Kind, Registry, Tunnel};

/// How long a node may take to reach Redis at start before it gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off of the event subscription after it broke.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(200);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// What the cluster needs from the rest of the node.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub ip_guard: Arc<IpGuard>,
    pub spool: Arc<Budget>,
    /// The keys file, whose hash each heartbeat publishes so nodes can
    /// compare theirs.
    pub keys: Arc<crate::keys::Keys>,
    /// The public TCP ports: every node accepts on ports held elsewhere.
    pub tcp: Arc<crate::pipe::tcp::TcpPorts>,
}

/// This node's membership of the cluster.
pub struct Cluster {
    /// Itself, for the tasks it starts.
    me: Weak<Cluster>,
    /// This node's id.
    node: String,
    /// This process's incarnation: members of an older one are dead.
    incarnation: u64,
    /// Where other nodes reach this node's link.
    advertise: String,
    secret: Secret,
    store: Store,
    nodes: Nodes,
    links: Links,
    /// Names looked up lately: their members as stored (announced names
    /// are not cached: they are asked for again).
    cache: DashMap<String, directory::Cached>,
    /// Woken by every name event (lookups waiting for an announced name).
    changed: tokio::sync::Notify,
    /// Redis answered the last heartbeat.
    redis_up: AtomicBool,
    /// Shutting down: the health check says so.
    draining: AtomicBool,
    registry: Weak<Registry>,
    ip_guard: Arc<IpGuard>,
    balance: Balance,
    ttl: Duration,
    keys: Arc<crate::keys::Keys>,
    tcp: Arc<crate::pipe::tcp::TcpPorts>,
    started_ms: u64,
    /// Bans that came from other nodes, so applying one does not publish
    /// it again.
    from_events: DashSet<(IpAddr, u64)>,
    /// Nodes whose keys file differs from ours, warned about once.
    keys_warned: DashSet<String>,
    /// Certificates stored by any node: the certificate side follows
    /// them (see [`certs`]).
    cert_changes: tokio::sync::broadcast::Sender<CertChange>,
}

impl Cluster {
    /// Joins the cluster `config` names: reaches Redis (or gives up with a
    /// clear error), checks the secret, registers this node.
    pub async fn join(config: &Config, parts: Parts) -> Result<Arc<Cluster>> {
        let args = &config.cluster;
        let target = args.redis_target()?.expect("cluster mode");
        let file = args.cluster_secret.as_deref().expect("validated");
        let secret = Secret::load(file)?;
        let node = match &args.node_id {
            Some(id) => id.clone(),
            None => host_name()?,
        };
        let listen = args.cluster_listen.expect("validated");
        let advertise = args
            .cluster_advertise
            .clone()
            .unwrap_or_else(|| listen.to_string());
        let ca = args.cluster_redis_ca.as_deref();
        let store = tokio::time::timeout(START_TIMEOUT, Store::connect(&target, ca))
            .await
            .map_err(|_| anyhow::anyhow!("--cluster-redis {target}: no answer within 10 s"))?
            .with_context(|| format!("--cluster-redis {target}"))?;
        store.check_secret(&secret.check_value()).await?;
        let tls = tls::LinkTls::new(&secret)?;
        let cluster = Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            links: Links::new(
                &tls,
                &node,
                Arc::clone(&parts.spool),
                config.limits.stream_open_timeout,
            ),
            incarnation: rand::random::<u64>() >> 1 | 1,
            advertise,
            secret,
            store,
            nodes: Nodes::default(),
            cache: DashMap::new(),
            changed: tokio::sync::Notify::new(),
            redis_up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            registry: Arc::downgrade(&parts.registry),
            ip_guard: parts.ip_guard,
            balance: config.balance,
            ttl: args.cluster_node_ttl,
            keys: parts.keys,
            tcp: parts.tcp,
            started_ms: unix_ms(SystemTime::now()),
            from_events: DashSet::new(),
            keys_warned: DashSet::new(),
            cert_changes: tokio::sync::broadcast::channel(certs::CHANGES).0,
            node,
        });
        cluster
            .beat()
            .await
            .context("cannot register this node in Redis")?;
        cluster.resync_bans().await;
        cluster.tcp.follow_cluster();
        cluster.follow_ports().await;
        tracing::info!(node = %cluster.node, link = %cluster.advertise, incarnation = cluster.incarnation, "joined the cluster");
        Ok(cluster)
    }

    /// The secret stable names are derived from, shared by every node: the
    /// first node to join brings its own (so a single node's names survive
    /// becoming the first node of a cluster); sealed with the cluster
    /// secret in Redis.
    pub async fn shared_name_secret(&self, local: &[u8]) -> Result<Vec<u8>> {
        const CONTEXT: &str = "name-secret";
        let sealed = self.secret.seal(CONTEXT, local);
        let stored = self.store.set_nx_bytes(CONTEXT, &sealed).await?;
        let shared = self
            .secret
            .open(CONTEXT, &stored)
            .context("the stable-name secret in Redis is not sealed with this cluster secret")?;
        if shared != local {
            tracing::info!("stable names come from the cluster's shared secret, not this node's state directory");
        }
        Ok(shared)
    }

    /// The link's server TLS configuration.
    pub fn link_tls(&self) -> Result<tls::LinkTls> {
        tls::LinkTls::new(&self.secret)
    }

    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The node table, as last read.
    pub fn nodes(&self) -> Vec<nodes::Node> {
        self.nodes.all()
    }

    /// Whether Redis answered the last heartbeat.
    pub fn redis_up(&self) -> bool {
        self.redis_up.load(Ordering::Relaxed)
    }

    /// Whether this node is shutting down.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The links to other nodes.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The store, for the parts of the node that share state (ACME).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// The certificates the nodes share.
    pub fn certs(&self) -> SharedCerts {
        let token = format!("{}/{}", self.node, self.incarnation);
        let changes = self.cert_changes.clone();
        SharedCerts::new(self.store.clone(), self.secret.clone(), token, changes)
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        self.registry.upgrade()
    }

    fn my_id(&self, conn: u64) -> String {
        member_id(&self.node, self.incarnation, conn)
    }

    fn is_me(&self, node: &str, incarnation: u64) -> bool {
        node == self.node && incarnation == self.incarnation
    }

    /// What the store keeps of `tunnel`.
    fn stored(&self, tunnel: &Tunnel) -> Stored {
        Stored {
            claimed_ms: tunnel.claimed_ms(),
            owner: tunnel.owner().map(str::to_string),
            granted: tunnel.granted(),
            raw: match tunnel.kind() {
                Kind::Tcp(_) | Kind::Private(_) => Some(true),
                Kind::Name => None,
            },
            allow_keys: Vec::new(),
        }
    }

    /// `stored` once `options` are final: the raw flag of a name (TLS
    /// passed through or not), the `allow-keys=` of a private alias.
    fn settled(
        kind: Kind,
        mut stored: Stored,
        options: &crate::tunnel::options::TunnelOptions,
    ) -> Stored {
        match kind {
            Kind::Name => {
                stored.raw = Some(options.tls == crate::tunnel::options::Tls::Passthrough)
            }
            Kind::Private(_) => stored.allow_keys = options.allow_keys.clone(),
            Kind::Tcp(_) => {}
        }
        stored
    }

    /// Runs the heartbeat, the event subscription and (behind Sentinel)
    /// the reconciliation after a failover until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let beat = Arc::clone(&self).heartbeat(shutdown.clone());
        let events = Arc::clone(&self).subscribe(shutdown.clone());
        let primary = Arc::clone(&self).follow_primary(shutdown.clone());
        tokio::join!(beat, events, primary);
    }

    /// Starts leaving: the health check answers `draining`.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Leaves the cluster: releases this node's names and heartbeat now,
    /// so other nodes can take them without waiting for the TTL.
    pub async fn leave(&self) {
        self.drain();
        let cleaned = self.store.clean_up(&self.node, self.incarnation);
        match tokio::time::timeout(Duration::from_secs(3), cleaned).await {
            Ok(Ok(keys)) => tracing::info!(names = keys.len(), "left the cluster: names released"),
            Ok(Err(err)) => tracing::warn!(error = %err, "could not release this node's names"),
            Err(_) => tracing::warn!(
                "Redis did not answer: names are released when the heartbeat expires"
            ),
        }
    }
}

/// The name the claim script knows a balancing mode by.
fn balance_name(balance: Balance) -> &'static str {
    balance.as_str()
}

/// The host's name, the default node id.
fn host_name() -> Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .context("cannot read the host name: give --node-id")?;
    let name = name.trim().to_string();
    if !crate::config::valid_node_id(&name) {
        anyhow::bail!("the host name {name:?} is no valid node id: give --node-id");
    }
    Ok(name)
}
