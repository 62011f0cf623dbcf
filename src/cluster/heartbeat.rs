//! The heartbeat: this node's `alive` key renewed every third of the TTL,
//! the node table read back (nodes that died get their names cleaned up,
//! by one node), and what follows Redis going down and coming back: every
//! tunnel of this node registered again, its counts and the bans resynced.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;

use super::{balance_name, Cluster};
use crate::limits::ip_key;
use crate::shutdown::Shutdown;
use crate::store::{Claim, ClaimOutcome, NodeInfo};
use crate::tunnel::Registry;

impl Cluster {
    /// Renews the heartbeat every third of the TTL; notices Redis going
    /// down and coming back (then registers every tunnel again), and nodes
    /// dying (then their names are cleaned up, by one node).
    pub(super) async fn heartbeat(self: Arc<Self>, shutdown: Shutdown) {
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
    pub(super) async fn beat(&self) -> Result<()> {
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
    pub(super) fn warn_keys_differ(&self, read: &[crate::store::NodeRead]) {
        let mine = self.keys.current();
        for crate::store::NodeRead {
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
    pub(super) async fn clean_up(&self, node: &str, incarnation: u64) {
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

    /// After Redis was down (or lost its data): registers every tunnel of
    /// this node again. A conflict with a claim made meanwhile is settled
    /// by the takeover rule: the newest claim wins, the loser is told.
    /// `false` when Redis failed meanwhile (the next heartbeat retries).
    pub(super) async fn reassert(&self) -> bool {
        let Some(registry) = self.registry() else {
            return true;
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
                    return false;
                }
            }
        }
        self.recount_ips(&registry).await;
        true
    }

    /// Writes this node's per-IP tunnel counts again (Redis may have lost
    /// them).
    pub(super) async fn recount_ips(&self, registry: &Registry) {
        let node_inc = format!("{}/{}", self.node, self.incarnation);
        let mut counts: std::collections::HashMap<IpAddr, i64> = Default::default();
        for tunnel in registry.tunnels() {
            *counts.entry(ip_key(tunnel.client_ip())).or_default() += 1;
        }
        let _ = self.store.reset_tunnel_counts(&node_inc, &counts).await;
    }

    /// Applies the bans Redis holds (after start, or after an outage).
    pub(super) async fn resync_bans(&self) {
        let Ok(bans) = self.store.bans().await else {
            return;
        };
        for (ip, until_ms, reason) in bans {
            self.apply_ban(&ip, until_ms, reason);
        }
    }
}
