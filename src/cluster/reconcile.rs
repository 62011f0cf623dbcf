//! What follows the primary moving (behind Sentinel). The store moves to
//! the new primary by itself ([`crate::store::Store::generations`]), but a
//! promotion can lose writes the old primary had acknowledged: replication
//! is asynchronous, and a planned `SENTINEL FAILOVER` lost about 1,850
//! acknowledged writes in our measurements without failing a single
//! command. So on every new generation this node reconciles as after an
//! outage, assuming nothing about what the new primary holds: its
//! heartbeat renewed, every local tunnel registered again (the newest claim
//! wins a conflict), its own members that no local tunnel backs any more
//! released (a release the promotion lost), the bans read again, and every
//! cached route read again on its next lookup.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::Cluster;
use crate::shutdown::Shutdown;
use crate::store::parse_member_id;
use crate::tunnel::{ConnId, Registry};

/// A reconciliation that failed (the new primary not writable yet) is
/// tried again this often, until one succeeds or the primary moves again.
const RECONCILE_RETRY: Duration = Duration::from_millis(500);
/// A member of this node that no local tunnel backs is released only if it
/// is still unbacked this much later: a claim in flight when the members
/// were read is in the registry by then (its Redis round trip is bounded
/// by the 1.5 s command timeout).
const STALE_GRACE: Duration = Duration::from_secs(2);

/// A member of this node in Redis that no local tunnel backs.
struct Unbacked {
    key: String,
    id: String,
    conn: ConnId,
}

impl Cluster {
    /// Reconciles on every new generation of the primary until shutdown
    /// (returns at once when the primary cannot move: one Redis).
    pub(super) async fn follow_primary(self: Arc<Self>, shutdown: Shutdown) {
        if !self.store.follows_primary() {
            return;
        }
        let mut generations = self.store.generations();
        loop {
            tokio::select! {
                _ = shutdown.requested() => return,
                changed = generations.changed() => if changed.is_err() { return },
            }
            let generation = *generations.borrow_and_update();
            tracing::info!(
                generation,
                "the Redis primary moved: registering this node's state again"
            );
            while !shutdown.is_requested() && !generations.has_changed().unwrap_or(true) {
                if self.reconcile().await {
                    break;
                }
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(RECONCILE_RETRY) => {}
                }
            }
        }
    }

    /// One reconciliation with the primary now: `true` when every step
    /// went through.
    async fn reconcile(&self) -> bool {
        if let Err(err) = self.beat().await {
            tracing::debug!(error = %err, "the new primary does not take the heartbeat yet");
            return false;
        }
        if !self.redis_up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis is back (a new primary)");
        }
        if !self.reassert().await {
            return false;
        }
        self.resync_bans().await;
        match self.release_unbacked().await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(
                    released,
                    "released names this node no longer holds (the promotion lost their release)"
                )
            }
            Err(err) => {
                tracing::debug!(error = %err, "releasing unbacked names failed");
                return false;
            }
        }
        true
    }

    /// Releases this node's members that no local tunnel backs (checked
    /// twice, [`STALE_GRACE`] apart); how many.
    async fn release_unbacked(&self) -> Result<usize> {
        let Some(registry) = self.registry() else {
            return Ok(0);
        };
        let suspects = self.unbacked(&registry).await?;
        if suspects.is_empty() {
            return Ok(0);
        }
        tokio::time::sleep(STALE_GRACE).await;
        let mut released = 0;
        for Unbacked { key, id, conn } in suspects {
            if !backed(&registry, &key, conn) {
                self.store.release(&key, &id).await?;
                released += 1;
            }
        }
        Ok(released)
    }

    /// This incarnation's members in Redis (found through its `held` set)
    /// without a local tunnel.
    async fn unbacked(&self, registry: &Registry) -> Result<Vec<Unbacked>> {
        let node_inc = format!("{}/{}", self.node, self.incarnation);
        let mut found = Vec::new();
        for key in self.store.held(&node_inc).await? {
            let (members, _) = self.store.members(&key).await?;
            for (id, _) in members {
                let Some((node, incarnation, conn)) = parse_member_id(&id) else {
                    continue;
                };
                if self.is_me(node, incarnation) && !backed(registry, &key, conn) {
                    let key = key.clone();
                    found.push(Unbacked { key, id, conn });
                }
            }
        }
        Ok(found)
    }
}

/// Whether connection `conn` serves `key` here.
fn backed(registry: &Registry, key: &str, conn: ConnId) -> bool {
    registry.members(key).iter().any(|t| t.conn() == conn)
}
