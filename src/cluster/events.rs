//! The event channel: every node's changes (names, settled options, bans,
//! kicks, certificates) as they happen, applied here — a cached route
//! forgotten, a tunnel that lost its name closed, a ban applied, a port
//! stood by for. Resubscribed with back-off after it breaks or the primary
//! moves, forgetting every cached route (events may have been missed).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Cluster, RESUBSCRIBE_MAX, RESUBSCRIBE_MIN};
use crate::limits::ip_key;
use crate::shutdown::Shutdown;
use crate::store::parse_member_id;
use crate::store::shared::CertChange;
use crate::store::Event;
use crate::tunnel::directory::{Directory, Members};
use crate::tunnel::{unix_ms, Registry};

impl Cluster {
    /// Follows the event channel, resubscribing after it breaks (every
    /// cached route is forgotten then: events may have been missed).
    pub(super) async fn subscribe(self: Arc<Self>, shutdown: Shutdown) {
        let mut backoff = RESUBSCRIBE_MIN;
        loop {
            let subscribed = tokio::select! {
                _ = shutdown.requested() => return,
                subscribed = self.store.subscribe() => subscribed,
            };
            match subscribed {
                Ok(mut events) => {
                    backoff = RESUBSCRIBE_MIN;
                    self.all_stale();
                    let _ = self.cert_changes.send(CertChange::Resync);
                    loop {
                        let payload = tokio::select! {
                            _ = shutdown.requested() => return,
                            payload = events.next() => payload,
                        };
                        // The connection broke, or the primary moved.
                        let Some(payload) = payload else { break };
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
    pub(super) fn on_event(&self, event: Event) {
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
    pub(super) fn on_name(
        &self,
        key: &str,
        clients: usize,
        by: Option<&str>,
        replaced: Option<&str>,
    ) {
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
    pub(super) fn follow_port(&self, registry: &Registry, key: &str, clients: usize) {
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
    pub(super) async fn follow_ports(&self) {
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
    pub(super) fn apply_ban(&self, ip: &str, until_ms: u64, reason: String) {
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
}
