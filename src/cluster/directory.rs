//! The directory the registry consults ([`Directory`] for [`Cluster`]):
//! claims checked cluster-wide, each name's members read from Redis and
//! cached (invalidated by events), liveness from the node table, streams
//! opened over the link, bans and cluster-wide counts shared.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use super::link::StreamError;
use super::{balance_name, Cluster};
use crate::config::Balance;
use crate::limits::ip_key;
use crate::limits::ssh::Block;
use crate::store::{parse_member_id, Claim, ClaimOutcome, Stored};
use crate::tunnel::directory::{Directory, Forwarded, LinkBody, Member, Members, Sent, Verdict};
use crate::tunnel::registry::RESERVED_WAIT;
use crate::tunnel::{unix_ms, BoxFuture, ByteStream, ClaimError, Kind, OpenError, Tunnel};

/// At most this many names are cached; beyond, the cache starts over.
const CACHE_MAX: usize = 100_000;

/// A name's members as last read.
pub(super) struct Cached {
    members: Vec<(String, Stored)>,
    /// No event said they changed since (else they are read again).
    fresh: bool,
}

impl Cluster {
    /// What a stream (or request) to `node` came to, and whether that
    /// node is failing: a link that failed marks it, an answer clears it.
    fn stream_outcome<T>(
        &self,
        node: &str,
        outcome: Result<T, StreamError>,
    ) -> Result<T, OpenError> {
        match outcome {
            Ok(done) => {
                self.nodes.recovered(node);
                Ok(done)
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
    }

    /// Forgets cached routes through `node` (it died).
    pub(super) fn forget_routes_via(&self, node: &str) {
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
    pub(super) fn stale(&self, key: &str) {
        if let Some(mut entry) = self.cache.get_mut(key) {
            entry.fresh = false;
        }
    }

    /// Every cached route is read again on its next lookup (events may
    /// have been missed).
    pub(super) fn all_stale(&self) {
        for mut entry in self.cache.iter_mut() {
            entry.fresh = false;
        }
    }

    /// The members of `key` as stored, and whether the name is announced:
    /// cached, or read (and cached unless announced and still unheld).
    /// While Redis is away
    /// a stale entry still answers. `None`: nobody can tell.
    pub(super) async fn stored_members(&self, key: &str) -> Option<(Vec<(String, Stored)>, bool)> {
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
    pub(super) async fn learn_nodes(&self, stored: &[(String, Stored)]) {
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
    pub(super) fn live(&self, stored: Vec<(String, Stored)>) -> (Vec<Member>, bool) {
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
    pub(super) fn watch_settle(&self, tunnel: &Arc<Tunnel>, id: String) {
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
    pub(super) fn count_ip(&self, tunnel: &Tunnel, delta: i64) {
        let store = self.store.clone();
        let node_inc = format!("{}/{}", self.node, self.incarnation);
        let ip = ip_key(tunnel.client_ip()).to_string();
        tokio::spawn(async move {
            let _ = store.count_tunnels(&node_inc, &ip, delta).await;
        });
    }
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
        key: &'a str,
        member: &'a Member,
        forwarded: Forwarded,
    ) -> BoxFuture<'a, Result<ByteStream, OpenError>> {
        Box::pin(async move {
            let node = &*member.node;
            let Some(at) = self.nodes.link(node) else {
                return Err(OpenError::Refused(format!("node {node} is not alive")));
            };
            let opened = self.links.open(node, &at, key, forwarded).await;
            self.stream_outcome(node, opened)
        })
    }

    fn send<'a>(
        &'a self,
        key: &'a str,
        member: &'a Member,
        forwarded: Forwarded,
        request: hyper::Request<LinkBody>,
    ) -> BoxFuture<'a, Result<Sent, OpenError>> {
        Box::pin(async move {
            let node = &*member.node;
            let Some(at) = self.nodes.link(node) else {
                return Err(OpenError::Refused(format!("node {node} is not alive")));
            };
            let sent = self.links.send(node, &at, key, forwarded, request).await;
            self.stream_outcome(node, sent)
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
