//! Several nodes as one service: a tunnel opened on any node is served by
//! every node, names and limits are cluster-wide, and a dead node costs
//! its clients one reconnect, not their URLs.
//!
//! - [`store`]: the shared state in Redis (keys, Lua scripts, events);
//! - [`nodes`]: the node table read from the heartbeats;
//! - [`secret`], [`tls`]: the cluster secret and the link's mutual TLS;
//! - [`certs`]: the certificates every node serves (ACME, custom domains);
//! - [`link`]: HTTP/2 streams between nodes; [`serve`]: serving them;
//! - this module: [`Cluster`], the node's membership — the
//!   [`crate::tunnel::directory::Directory`] the registry
//!   consults, the heartbeat, the event subscription, clean-ups, the
//!   graceful leave.
//!
//! The registry is soft state: the live SSH sessions are the truth, and a
//! node can always register its tunnels again (after Redis was down or
//! lost its data). Lookups are cached per name and invalidated by events,
//! so serving a request does not ask Redis.

pub mod certs;
pub mod link;
pub mod nodes;
pub mod secret;
pub mod serve;
pub mod store;
pub mod tls;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use dashmap::{DashMap, DashSet};
use futures_util::StreamExt;

use self::certs::{CertChange, SharedCerts};
use self::link::{Links, StreamError};
use self::nodes::Nodes;
use self::secret::Secret;
use self::store::{
    member_id, parse_member_id, Claim, ClaimOutcome, Event, NodeInfo, Store, Stored,
};
use crate::config::{Balance, Config};
use crate::limits::ip_key;
use crate::limits::ssh::{Block, IpGuard};
use crate::pipe::spool::Budget;
use crate::shutdown::Shutdown;
use crate::tunnel::directory::{Directory, Forwarded, Member, Members, Verdict};
use crate::tunnel::registry::RESERVED_WAIT;
use crate::tunnel::route::Remote;
use crate::tunnel::{
    unix_ms, BoxFuture, ByteStream, ClaimError, Kind, OpenError, Registry, Tunnel,
};

/// How long a node may take to reach Redis at start before it gives up.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many names are cached; beyond, the cache starts over.
const CACHE_MAX: usize = 100_000;
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
    cache: DashMap<String, Cached>,
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
        let url = args.cluster_redis.as_deref().expect("cluster mode");
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
        let store = tokio::time::timeout(START_TIMEOUT, Store::connect(url))
            .await
            .map_err(|_| anyhow::anyhow!("--cluster-redis {url}: no answer within 10 s"))?
            .with_context(|| format!("--cluster-redis {url}"))?;
        store.check_secret(&secret.check_value()).await?;
        let tls = tls::LinkTls::new(&secret)?;
        let cluster = Arc::new_cyclic(|me| Cluster {
            me: me.clone(),
            links: Links::new(&tls, &node, Arc::clone(&parts.spool)),
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

    /// Runs the heartbeat and the event subscription until shutdown, then
    /// leaves the cluster (this node's names are free at once).
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let beat = Arc::clone(&self).heartbeat(shutdown.clone());
        let events = Arc::clone(&self).subscribe(shutdown.clone());
        tokio::join!(beat, events);
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

    /// Renews the heartbeat every third of the TTL; notices Redis going
    /// down and coming back (then registers every tunnel again), and nodes
    /// dying (then their names are cleaned up, by one node).
    async fn heartbeat(self: Arc<Self>, shutdown: Shutdown) {
        let mut ticker = shutdown.ticker(self.ttl / 3);
        while ticker.tick().await {
            let result = self.beat().await;
            let was_up = self.redis_up.swap(result.is_ok(), Ordering::Relaxed);
            match (was_up, result) {
                (true, Err(err)) => {
                    tracing::warn!(error = %err, "Redis is down: serving the tunnels held here and the routes cached; new tunnels are accepted here");
                }
                (false, Ok(())) => {
                    tracing::info!("Redis is back: registering this node's tunnels again");
                    self.reassert().await;
                    self.resync_bans().await;
                }
                _ => {}
            }
        }
    }

    /// One heartbeat: renew, read the node table, act on changes.
    async fn beat(&self) -> Result<()> {
        let info = NodeInfo {
            incarnation: self.incarnation,
            link: self.advertise.clone(),
            started_ms: self.started_ms,
            keys_hash: self.keys.current().hash().to_string(),
        };
        let tunnels = self.registry().map_or(0, |r| r.len());
        self.store
            .register(&self.node, &info, tunnels, self.ttl)
            .await?;
        let read = self.store.nodes().await?;
        self.warn_keys_differ(&read);
        let changes = self.nodes.update(read);
        for (node, incarnation) in changes.died.iter().chain(&changes.stale) {
            if !self.is_me(node, *incarnation) {
                self.forget_routes_via(node);
                self.clean_up(node, *incarnation).await;
            }
        }
        Ok(())
    }

    /// Warns (once per node) when another node reads a different keys
    /// file: names granted here might not be granted there.
    fn warn_keys_differ(&self, read: &[store::NodeRead]) {
        let mine = self.keys.current();
        for store::NodeRead {
            id: node,
            info,
            beat,
        } in read
        {
            let differs = info.keys_hash != mine.hash();
            if beat.is_some() && differs && self.keys_warned.insert(node.clone()) {
                tracing::warn!(%node, "node reads a different keys file: copy the same file to every node");
            }
        }
    }

    /// Removes the names of a dead incarnation (one node does it).
    async fn clean_up(&self, node: &str, incarnation: u64) {
        match self.store.take_cleanup(node, incarnation).await {
            Ok(true) => match self.store.clean_up(node, incarnation).await {
                Ok(keys) => {
                    tracing::info!(%node, incarnation, names = keys.len(), "node gone: its names are free")
                }
                Err(err) => tracing::warn!(%node, error = %err, "clean-up of a dead node failed"),
            },
            Ok(false) => {}
            Err(err) => tracing::debug!(error = %err, "clean-up lock"),
        }
    }

    /// Forgets cached routes through `node` (it died).
    fn forget_routes_via(&self, node: &str) {
        let prefix = format!("{node}/");
        for mut entry in self.cache.iter_mut() {
            if entry.members.iter().any(|(id, _)| id.starts_with(&prefix)) {
                entry.fresh = false;
            }
        }
        self.changed.notify_waiters();
    }

    /// `key`'s members changed: read them again on the next lookup (the
    /// old ones still serve while Redis is away).
    fn stale(&self, key: &str) {
        if let Some(mut entry) = self.cache.get_mut(key) {
            entry.fresh = false;
        }
    }

    /// Every cached route is read again on its next lookup (events may
    /// have been missed).
    fn all_stale(&self) {
        for mut entry in self.cache.iter_mut() {
            entry.fresh = false;
        }
    }

    /// After Redis was down (or lost its data): registers every tunnel of
    /// this node again. A conflict with a claim made meanwhile is settled
    /// by the takeover rule: the newest claim wins, the loser is told.
    async fn reassert(&self) {
        let Some(registry) = self.registry() else {
            return;
        };
        self.all_stale();
        let balance = balance_name(self.balance);
        for tunnel in registry.tunnels() {
            let id = self.my_id(tunnel.conn());
            let mut stored = self.stored(&tunnel);
            if tunnel.client().options_final() {
                let options = tunnel.client().options();
                stored = Self::settled(tunnel.kind(), stored, &options);
            }
            let claim = Claim {
                key: tunnel.key(),
                id: &id,
                stored: &stored,
                balance,
                reassert: true,
            };
            match self.store.claim(claim).await {
                Ok(ClaimOutcome::Taken) => {
                    tracing::info!(key = %tunnel.key(), "a newer claim took this name while Redis was down");
                    registry.lost(tunnel.key(), tunnel.conn());
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "registering again failed; next heartbeat retries");
                    self.redis_up.store(false, Ordering::Relaxed);
                    return;
                }
            }
        }
        self.recount_ips(&registry).await;
    }

    /// Writes this node's per-IP tunnel counts again (Redis may have lost
    /// them).
    async fn recount_ips(&self, registry: &Registry) {
        let node_inc = format!("{}/{}", self.node, self.incarnation);
        let mut counts: std::collections::HashMap<IpAddr, i64> = Default::default();
        for tunnel in registry.tunnels() {
            *counts.entry(ip_key(tunnel.client_ip())).or_default() += 1;
        }
        let _ = self.store.reset_tunnel_counts(&node_inc, &counts).await;
    }

    /// Applies the bans Redis holds (after start, or after an outage).
    async fn resync_bans(&self) {
        let Ok(bans) = self.store.bans().await else {
            return;
        };
        for (ip, until_ms, reason) in bans {
            self.apply_ban(&ip, until_ms, reason);
        }
    }

    /// Follows the event channel, resubscribing after it breaks (every
    /// cached route is forgotten then: events may have been missed).
    async fn subscribe(self: Arc<Self>, shutdown: Shutdown) {
        let mut backoff = RESUBSCRIBE_MIN;
        loop {
            let subscribed = tokio::select! {
                _ = shutdown.requested() => return,
                subscribed = self.store.subscribe() => subscribed,
            };
            match subscribed {
                Ok(pubsub) => {
                    backoff = RESUBSCRIBE_MIN;
                    self.all_stale();
                    let _ = self.cert_changes.send(CertChange::Resync);
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            _ = shutdown.requested() => return,
                            message = messages.next() => message,
                        };
                        let Some(message) = message else { break };
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        match serde_json::from_str::<Event>(&payload) {
                            Ok(event) => self.on_event(event),
                            Err(err) => tracing::debug!(error = %err, "unknown cluster event"),
                        }
                    }
                    // Kept while Redis is away (routes keep working); dropped
                    // when the subscription is back.
                }
                Err(err) => tracing::debug!(error = %err, "cluster event subscription failed"),
            }
            tokio::select! {
                _ = shutdown.requested() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
        }
    }

    /// Acts on one event from any node (this one included).
    fn on_event(&self, event: Event) {
        match event {
            Event::Name {
                key,
                clients,
                by,
                replaced,
            } => self.on_name(&key, clients, by.as_deref(), replaced.as_deref()),
            Event::Settled { key } => {
                self.stale(&key);
                self.changed.notify_waiters();
            }
            Event::Ban {
                ip,
                until_ms,
                reason,
            } => self.apply_ban(&ip, until_ms, reason),
            Event::Unban { ip } => {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    self.ip_guard.unblock(ip);
                }
            }
            Event::Kick { key, reason } => {
                if let Some(registry) = self.registry() {
                    for tunnel in registry.members(&key) {
                        registry.close(&tunnel, &reason);
                    }
                }
            }
            Event::Cert { kind, name } => {
                // Nobody following (ACME off, no custom domains) is fine.
                let _ = self.cert_changes.send(CertChange::Stored { kind, name });
            }
        }
    }

    /// The members of `key` changed: forget the cached route, close a
    /// tunnel of this node that lost the name to another node, and tell
    /// this node's clients of it how many serve it now.
    fn on_name(&self, key: &str, clients: usize, by: Option<&str>, replaced: Option<&str>) {
        // Nobody holds it any more: its cached members are all gone, so
        // the entry goes too (with random names churning, stale entries
        // of dead names would otherwise pile up to `CACHE_MAX`).
        match clients {
            0 => drop(self.cache.remove(key)),
            _ => self.stale(key),
        }
        self.changed.notify_waiters();
        let Some(registry) = self.registry() else {
            return;
        };
        let by = by.and_then(parse_member_id);
        let by_here = by.filter(|(node, inc, _)| self.is_me(node, *inc));
        if let Some((node, inc, conn)) = replaced.and_then(parse_member_id) {
            // A takeover within this node is the local claim's business.
            if self.is_me(node, inc) && by_here.is_none() {
                registry.lost(key, conn);
            }
        }
        let by_here = by_here.map(|(node, _, conn)| (node, conn));
        registry.clients_changed(key, clients, by_here);
        self.follow_port(&registry, key, clients);
    }

    /// Every node accepts on every TCP port held in the cluster: a port
    /// held only elsewhere gets a stand-by listener here, which goes when
    /// nobody holds the port any more (or this node's own client does).
    fn follow_port(&self, registry: &Registry, key: &str, clients: usize) {
        let Some(port) = key.strip_prefix("tcp:").and_then(|p| p.parse::<u16>().ok()) else {
            return;
        };
        if clients == 0 {
            self.tcp.stand_down(port);
        } else if registry.clients(key) == 0 {
            let tcp = Arc::clone(&self.tcp);
            tokio::spawn(async move { tcp.stand_by(port).await });
        }
    }

    /// At start: stand-by listeners for the TCP ports held elsewhere.
    async fn follow_ports(&self) {
        let (Ok(ports), Some(registry)) = (self.store.ports().await, self.registry()) else {
            return;
        };
        for key in ports {
            if let Members::Known(members) = Directory::members(self, &key).await {
                self.follow_port(&registry, &key, members.len());
            }
        }
    }

    /// Blocks `ip` here as another node did (unless it is over already).
    fn apply_ban(&self, ip: &str, until_ms: u64, reason: String) {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return;
        };
        let left = Duration::from_millis(until_ms.saturating_sub(unix_ms(SystemTime::now())));
        if left.is_zero() {
            return;
        }
        if let Some(current) = self.ip_guard.blocked(ip) {
            if unix_ms(current.until_wall) >= until_ms {
                return;
            }
        }
        self.from_events.insert((ip_key(ip), until_ms));
        let block = self.ip_guard.block_for(ip, left, reason);
        if let Some(registry) = self.registry() {
            registry.close_ip_here(ip, &block.until_utc(), &block.reason);
        }
    }

    /// The members of `key` as stored, and whether the name is announced:
    /// cached, or read (and cached unless announced and still unheld).
    /// While Redis is away
    /// a stale entry still answers. `None`: nobody can tell.
    async fn stored_members(&self, key: &str) -> Option<(Vec<(String, Stored)>, bool)> {
        let stale = match self.cache.get(key) {
            Some(entry) if entry.fresh => return Some((entry.members.clone(), false)),
            Some(entry) => Some(entry.members.clone()),
            None => None,
        };
        let read = match self.redis_up() {
            true => self.store.members(key).await.ok(),
            false => None,
        };
        let Some((members, reserved)) = read else {
            return stale.map(|members| (members, false));
        };
        // An announced name nobody holds yet is asked for again; one that
        // is held is cached like any other.
        if !reserved || !members.is_empty() {
            if self.cache.len() >= CACHE_MAX {
                self.cache.clear();
            }
            let cached = Cached {
                members: members.clone(),
                fresh: true,
            };
            self.cache.insert(key.to_string(), cached);
        }
        Some((members, reserved))
    }

    /// Reads the node table again when `stored` names a node (or an
    /// incarnation) it does not know yet: one that joined since the last
    /// heartbeat.
    async fn learn_nodes(&self, stored: &[(String, Stored)]) {
        let unknown = stored.iter().any(|(id, _)| {
            parse_member_id(id).is_some_and(|(node, inc, _)| {
                !self.is_me(node, inc) && self.nodes.knows(node, inc).is_none()
            })
        });
        if unknown {
            if let Ok(read) = self.store.nodes().await {
                self.nodes.update(read);
            }
        }
    }

    /// The live ones of `stored`, oldest first; whether any was dead.
    fn live(&self, stored: Vec<(String, Stored)>) -> (Vec<Member>, bool) {
        let mut dead = false;
        let mut live: Vec<(String, Member)> = stored
            .into_iter()
            .filter_map(|(id, stored)| {
                let (node, incarnation, conn) = parse_member_id(&id)?;
                let alive = self.is_me(node, incarnation) || self.nodes.alive(node, incarnation);
                dead |= !alive;
                let member = Member {
                    node: Arc::from(node),
                    conn,
                    claimed_ms: stored.claimed_ms,
                    owner: stored.owner,
                    granted: stored.granted,
                    raw: stored.raw,
                    allow_keys: stored.allow_keys,
                };
                alive.then(|| (id.clone(), member))
            })
            .collect();
        live.sort_by(|(a_id, a), (b_id, b)| (a.claimed_ms, a_id).cmp(&(b.claimed_ms, b_id)));
        (live.into_iter().map(|(_, m)| m).collect(), dead)
    }

    /// Records what `tunnel`'s options decide once they are final: a
    /// name's raw flag, a private alias's `allow-keys=`.
    fn watch_settle(&self, tunnel: &Arc<Tunnel>, id: String) {
        let kind = tunnel.kind();
        let settles = matches!(kind, Kind::Name | Kind::Private(_));
        let Some(cluster) = self.me.upgrade().filter(|_| settles) else {
            return;
        };
        let tunnel = Arc::downgrade(tunnel);
        tokio::spawn(async move {
            let Some(strong) = tunnel.upgrade() else {
                return;
            };
            let client = Arc::clone(strong.client());
            let key = strong.key().to_string();
            let stored = cluster.stored(&strong);
            drop(strong);
            let options = crate::tunnel::options_settled(&*client).await;
            let stored = Self::settled(kind, stored, &options);
            // A private alias without allow-keys= has nothing to record.
            let changed = kind == Kind::Name || !stored.allow_keys.is_empty();
            if changed && tunnel.upgrade().is_some() {
                let _ = cluster.store.settle(&key, &id, &stored).await;
            }
        });
    }

    /// Counts `tunnel` in its IP's cluster-wide tunnel count.
    fn count_ip(&self, tunnel: &Tunnel, delta: i64) {
        let store = self.store.clone();
        let node_inc = format!("{}/{}", self.node, self.incarnation);
        let ip = ip_key(tunnel.client_ip()).to_string();
        tokio::spawn(async move {
            let _ = store.count_tunnels(&node_inc, &ip, delta).await;
        });
    }
}

/// A name's members as last read.
struct Cached {
    members: Vec<(String, Stored)>,
    /// No event said they changed since (else they are read again).
    fresh: bool,
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

impl Directory for Cluster {
    fn node(&self) -> &str {
        &self.node
    }

    fn claim<'a>(
        &'a self,
        tunnel: &'a Arc<Tunnel>,
        balance: Balance,
    ) -> BoxFuture<'a, Result<Verdict, ClaimError>> {
        Box::pin(async move {
            let id = self.my_id(tunnel.conn());
            let stored = self.stored(tunnel);
            let claim = Claim {
                key: tunnel.key(),
                id: &id,
                stored: &stored,
                balance: balance_name(balance),
                reassert: false,
            };
            self.stale(tunnel.key());
            let outcome = if self.redis_up() {
                self.store.claim(claim).await
            } else {
                Err(anyhow::anyhow!("Redis is down"))
            };
            match outcome {
                Ok(ClaimOutcome::Claimed { clients, replaced }) => {
                    self.count_ip(tunnel, 1);
                    self.watch_settle(tunnel, id);
                    let elsewhere = replaced
                        .as_deref()
                        .and_then(parse_member_id)
                        .is_some_and(|(node, inc, _)| !self.is_me(node, inc));
                    Ok(Verdict {
                        replaced_elsewhere: elsewhere,
                        clients,
                    })
                }
                Ok(ClaimOutcome::Taken) => Err(ClaimError::Taken),
                Ok(ClaimOutcome::Duplicate) => Err(ClaimError::Duplicate),
                Err(err) => {
                    // Degraded: accepted here; registered when Redis is back.
                    if self.redis_up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %err, "Redis is down: accepting tunnels on this node only");
                    }
                    let clients = self.registry().map_or(0, |r| r.clients(tunnel.key())) + 1;
                    Ok(Verdict {
                        replaced_elsewhere: false,
                        clients,
                    })
                }
            }
        })
    }

    fn released(&self, tunnel: &Tunnel) {
        self.stale(tunnel.key());
        self.count_ip(tunnel, -1);
        let (store, key, id) = (
            self.store.clone(),
            tunnel.key().to_string(),
            self.my_id(tunnel.conn()),
        );
        tokio::spawn(async move {
            if let Err(err) = store.release(&key, &id).await {
                tracing::debug!(%key, error = %err, "release not recorded (Redis down?)");
            }
        });
    }

    fn announce(&self, name: &str) {
        let (store, name) = (self.store.clone(), name.to_string());
        tokio::spawn(async move {
            let _ = store.reserve(&name).await;
        });
    }

    fn members<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Members> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + RESERVED_WAIT;
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let Some((stored, reserved)) = self.stored_members(key).await else {
                    return Members::Unknown;
                };
                self.learn_nodes(&stored).await;
                let (live, dead) = self.live(stored);
                if !live.is_empty() {
                    return Members::Known(live);
                }
                if dead {
                    return Members::Orphaned;
                }
                if !reserved || tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return Members::Known(Vec::new());
                }
            }
        })
    }

    fn open<'a>(
        &'a self,
        remote: &'a Remote,
        forwarded: Forwarded,
    ) -> BoxFuture<'a, Result<ByteStream, OpenError>> {
        Box::pin(async move {
            let node = &*remote.member.node;
            let Some(at) = self.nodes.link(node) else {
                return Err(OpenError::Refused(format!("node {node} is not alive")));
            };
            match self.links.open(node, &at, &remote.key, forwarded).await {
                Ok(stream) => {
                    self.nodes.recovered(node);
                    Ok(stream)
                }
                // The node answered: it is not the one failing.
                Err(StreamError::Refused(why)) => {
                    self.nodes.recovered(node);
                    Err(OpenError::Refused(why))
                }
                Err(StreamError::Link(err)) => {
                    self.nodes.mark_failing(node);
                    Err(OpenError::Refused(err.to_string()))
                }
            }
        })
    }

    fn node_failed(&self, node: &str) {
        self.nodes.mark_failing(node);
    }

    fn node_failing(&self, node: &str) -> bool {
        self.nodes.failing(node)
    }

    fn blocked(&self, ip: IpAddr, block: &Block) {
        let until_ms = unix_ms(block.until_wall);
        if self.from_events.remove(&(ip_key(ip), until_ms)).is_some() {
            return;
        }
        let (store, reason) = (self.store.clone(), block.reason.clone());
        let ip = ip_key(ip).to_string();
        tokio::spawn(async move {
            if let Err(err) = store.ban(&ip, until_ms, &reason).await {
                tracing::warn!(%ip, error = %err, "ban not shared with the cluster (Redis down?)");
            }
        });
    }

    fn unblocked(&self, ip: IpAddr) {
        let (store, ip) = (self.store.clone(), ip_key(ip).to_string());
        tokio::spawn(async move {
            let _ = store.unban(&ip).await;
        });
    }

    fn count_connection(&self, ip: IpAddr) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            if !self.redis_up() {
                return None;
            }
            let minute = unix_ms(SystemTime::now()) / 60_000;
            let ip = ip_key(ip).to_string();
            self.store.count_connection(&ip, minute).await.ok()
        })
    }

    fn tunnels_of_ip(&self, ip: IpAddr) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async move {
            if !self.redis_up() {
                return None;
            }
            let live = self.nodes.live_incarnations();
            let ip = ip_key(ip).to_string();
            self.store.tunnels_of_ip(&live, &ip).await.ok()
        })
    }

    fn tunnels_total(&self) -> usize {
        let others: usize = self
            .nodes
            .all()
            .iter()
            .filter(|n| n.alive && n.id != self.node)
            .map(|n| n.tunnels)
            .sum();
        others + self.registry().map_or(0, |r| r.len())
    }
}
