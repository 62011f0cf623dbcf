//! Plans in a cluster: every second, this node adds what its accounts
//! counted to Redis in one pipeline (only accounts active here: bytes or
//! requests since the last flush, or a connection open here) and takes
//! back the cluster-wide totals, so a key's usage on node 1 counts on node
//! 2 within about a second; and it learns how many nodes move each
//! account's bytes, so each node's bucket refills at the plan's rate
//! divided by that number.
//!
//! Error bounds: a quota may be overrun by what the other nodes count in
//! one flush interval (plus Redis's round trip); the cluster-wide
//! bandwidth of a key served by N nodes is the plan's rate within one
//! flush interval of a node starting or stopping to move its bytes, and at
//! most N × the rate for that long. When Redis is down, counts stay
//! pending here and are added once it answers again.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Cluster;
use crate::plans::{Account, Limit, Plans};
use crate::shutdown::Shutdown;
use crate::store::usage::Flush;

/// How often usage is flushed to Redis.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

impl Cluster {
    /// Flushes `plans`' usage every [`FLUSH_INTERVAL`] until shutdown, and
    /// once more after it.
    pub async fn share_usage(self: Arc<Self>, plans: Arc<Plans>, shutdown: Shutdown) {
        let mut ticker = shutdown.ticker(FLUSH_INTERVAL);
        while ticker.tick().await {
            self.flush_usage(&plans).await;
        }
        self.flush_usage(&plans).await;
    }

    /// One flush: add, read back, share the bandwidth.
    pub async fn flush_usage(&self, plans: &Plans) {
        self.flush_accounts(plans.accounts(), 2).await;
    }

    /// Flushes `all` (those active here, or held by more than `owners`
    /// references: a connection has them).
    async fn flush_accounts(&self, all: Vec<Arc<Account>>, owners: usize) {
        let mut accounts: Vec<Arc<Account>> = Vec::new();
        let mut batch = Vec::new();
        let mut taken = Vec::new();
        for account in all {
            account.roll_now();
            let active = account.take_moved();
            let held = Arc::strong_count(&account) > owners;
            let pending =
                [Limit::Transfer, Limit::Requests].map(|l| account.meter(l).take_pending());
            if !active && !held && pending == [0, 0] {
                continue;
            }
            let counts = [Limit::Transfer, Limit::Requests].map(|limit| {
                let (start, end) = account.meter(limit).period();
                (start, end, 0)
            });
            let counts = [
                (counts[0].0, counts[0].1, pending[0]),
                (counts[1].0, counts[1].1, pending[1]),
            ];
            batch.push(Flush {
                account: account.id().to_string(),
                counts,
                active,
            });
            taken.push(pending);
            accounts.push(account);
        }
        if batch.is_empty() {
            return;
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match self.store.flush_usage(&self.node, now_ms, &batch).await {
            Ok(totals) => {
                for ((account, flush), totals) in accounts.iter().zip(&batch).zip(totals) {
                    for (i, limit) in [Limit::Transfer, Limit::Requests].into_iter().enumerate() {
                        account
                            .meter(limit)
                            .set_base(flush.counts[i].0, totals.counts[i]);
                    }
                    account.set_share(totals.nodes);
                    account.recheck();
                }
            }
            Err(err) => {
                tracing::debug!(error = %err, "usage not flushed; kept for the next flush");
                for (account, pending) in accounts.iter().zip(taken) {
                    account.meter(Limit::Transfer).give_back(pending[0]);
                    account.meter(Limit::Requests).give_back(pending[1]);
                }
            }
        }
    }

    /// Forgets `account`'s usage this period everywhere (the admin API's
    /// reset; other nodes see it at their next flush).
    pub async fn reset_usage(&self, plans: &Plans, account: &str) {
        let Some(found) = plans.get(account) else {
            return;
        };
        let starts = [Limit::Transfer, Limit::Requests].map(|l| found.meter(l).period().0);
        if let Err(err) = self.store.reset_usage(account, starts).await {
            tracing::warn!(error = %err, %account, "usage not reset in Redis");
        }
    }
}

/// A login on this node reads the account's cluster-wide totals at once.
impl crate::plans::Shared for Cluster {
    fn refresh<'a>(
        &'a self,
        account: &'a Arc<Account>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.flush_accounts(vec![Arc::clone(account)], 0))
    }
}
