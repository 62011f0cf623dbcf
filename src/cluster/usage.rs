//! Plans in a cluster: every second, this node adds what its accounts
//! counted to Redis in one pipeline (only accounts active here: bytes or
//! requests since the last flush) and takes back the cluster-wide totals
//! (accounts with a connection open here but nothing moved: every 30 s, in
//! one MGET), so a key's usage on node 1 counts on node
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
/// Accounts held here that moved nothing are read back every this many
/// flushes (30 s): what other nodes counted reaches their `-- usage` and
/// notices that late; a login reads at once, and bytes moving again flush
/// within a second.
const IDLE_EVERY: u32 = 30;

/// An account that moved bytes or counted something since the last flush.
struct Busy {
    account: Arc<Account>,
    /// What it counted (transfer, requests), taken for this flush.
    pending: [u64; 2],
    /// It moved bytes here (its node counts for the bandwidth share).
    active: bool,
}

impl Cluster {
    /// Flushes `plans`' usage every [`FLUSH_INTERVAL`] until shutdown, and
    /// once more after it; idle accounts are read back every
    /// [`IDLE_EVERY`] flushes.
    pub async fn share_usage(self: Arc<Self>, plans: Arc<Plans>, shutdown: Shutdown) {
        let mut ticker = shutdown.ticker(FLUSH_INTERVAL);
        let mut ticks = 0u32;
        while ticker.tick().await {
            ticks = ticks.wrapping_add(1);
            self.flush_accounts(plans.accounts(), 2, ticks.is_multiple_of(IDLE_EVERY))
                .await;
        }
        // The last counts, as the node leaves.
        self.flush_accounts(plans.accounts(), 2, false).await;
    }

    /// Flushes those of `all` that moved bytes or counted something here;
    /// with `idle`, also reads back the totals of those held by more than
    /// `owners` references (a connection has them) that did not.
    async fn flush_accounts(&self, all: Vec<Arc<Account>>, owners: usize, idle: bool) {
        let mut busy: Vec<Busy> = Vec::new();
        let mut quiet: Vec<Arc<Account>> = Vec::new();
        for account in all {
            account.roll_now();
            let active = account.take_moved();
            let pending =
                [Limit::Transfer, Limit::Requests].map(|l| account.meter(l).take_pending());
            if active || pending != [0, 0] {
                busy.push(Busy {
                    account,
                    pending,
                    active,
                });
            } else if idle && Arc::strong_count(&account) > owners {
                quiet.push(account);
            }
        }
        self.flush_busy(busy).await;
        self.read_quiet(quiet).await;
    }

    /// Adds what `busy` accounts counted; reads back totals and shares.
    async fn flush_busy(&self, busy: Vec<Busy>) {
        if busy.is_empty() {
            return;
        }
        let batch: Vec<Flush> = busy
            .iter()
            .map(|busy| {
                let [transfer, requests] =
                    [Limit::Transfer, Limit::Requests].map(|l| busy.account.meter(l).period());
                Flush {
                    account: busy.account.id().to_string(),
                    counts: [
                        (transfer.0, transfer.1, busy.pending[0]),
                        (requests.0, requests.1, busy.pending[1]),
                    ],
                    active: busy.active,
                    shaped: busy.account.plan().bandwidth > 0,
                }
            })
            .collect();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match self.store.flush_usage(&self.node, now_ms, &batch).await {
            Ok(totals) => {
                for ((Busy { account, .. }, flush), totals) in busy.iter().zip(&batch).zip(totals) {
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
                for Busy {
                    account, pending, ..
                } in &busy
                {
                    account.meter(Limit::Transfer).give_back(pending[0]);
                    account.meter(Limit::Requests).give_back(pending[1]);
                }
            }
        }
    }

    /// Reads back the totals of `quiet` accounts (counted on other nodes).
    async fn read_quiet(&self, quiet: Vec<Arc<Account>>) {
        if quiet.is_empty() {
            return;
        }
        let asked: Vec<(String, [u64; 2])> = quiet
            .iter()
            .map(|account| {
                let starts =
                    [Limit::Transfer, Limit::Requests].map(|l| account.meter(l).period().0);
                (account.id().to_string(), starts)
            })
            .collect();
        match self.store.read_usage(&asked).await {
            Ok(totals) => {
                for ((account, (_, starts)), totals) in quiet.iter().zip(&asked).zip(totals) {
                    for (i, limit) in [Limit::Transfer, Limit::Requests].into_iter().enumerate() {
                        account.meter(limit).set_base(starts[i], totals[i]);
                    }
                    account.recheck();
                }
            }
            Err(err) => tracing::debug!(error = %err, "idle usage not read back"),
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
        Box::pin(self.flush_accounts(vec![Arc::clone(account)], 0, true))
    }
}
