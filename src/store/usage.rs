//! Per-user usage shared by the nodes (plans): each node adds what it
//! counted since its last flush, in one pipeline a second for all its
//! active accounts, and reads back the cluster-wide totals and how many
//! nodes move the account's bytes now (the bandwidth share). So Redis work
//! grows with the accounts active on a node, not with requests or bytes.
//! Accounts a node holds (a connection is open) but that moved nothing
//! there are read back in one MGET, less often.
//!
//! ```text
//! {burrow}:usage:ACCOUNT:LIMIT:START   the count of LIMIT (transfer, requests) in the
//!                                      period starting START (unix s); expires a day
//!                                      after the period
//! {burrow}:usage:bw:ACCOUNT            hash NODE → unix ms it last moved the account's
//!                                      bytes (expires after 10 s; only for plans that
//!                                      limit bandwidth)
//! ```

use anyhow::Result;

use super::{key, Store};

/// How long a node counts as moving an account's bytes after it said so.
pub const ACTIVE_MS: u64 = 3_000;

/// One account's flush: what this node adds, per limit.
pub struct Flush {
    pub account: String,
    /// (period start, period end, amount to add) for transfer, then
    /// requests.
    pub counts: [(u64, u64, u64); 2],
    /// This node moved the account's bytes since the last flush.
    pub active: bool,
    /// The plan limits bandwidth: the nodes moving the account's bytes
    /// are stamped and counted (else nothing is shared but the counts).
    pub shaped: bool,
}

/// What Redis answered for one account.
pub struct Totals {
    /// Cluster-wide transfer and requests of the periods flushed.
    pub counts: [u64; 2],
    /// Nodes moving the account's bytes now (at least 1 when `active`).
    pub nodes: u32,
}

const LIMITS: [&str; 2] = ["transfer", "requests"];

fn counter(account: &str, limit: &str, start: u64) -> String {
    key(&format!("usage:{account}:{limit}:{start}"))
}

impl Store {
    /// Adds every account's counts and reads back the totals, in one
    /// pipeline.
    pub async fn flush_usage(
        &self,
        node: &str,
        now_ms: u64,
        batch: &[Flush],
    ) -> Result<Vec<Totals>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for flush in batch {
            for (limit, (start, end, add)) in LIMITS.iter().zip(flush.counts) {
                let name = counter(&flush.account, limit, start);
                if add == 0 {
                    // Nothing to add: read it (an INCRBY 0 would make the
                    // key, without its expiry, and cost two commands).
                    pipe.get(&name);
                    continue;
                }
                pipe.incr(&name, add);
                pipe.expire_at(&name, (end + 86_400) as i64).ignore();
            }
            if !flush.shaped {
                continue;
            }
            let bw = key(&format!("usage:bw:{}", flush.account));
            if flush.active {
                pipe.hset(&bw, node, now_ms).ignore();
                pipe.pexpire(&bw, 10_000).ignore();
            }
            pipe.hgetall(&bw);
        }
        let flat: Vec<redis::Value> = pipe.query_async(&mut self.conn()).await?;
        // Two counts per account, then its stamps when it is shaped.
        let mut answers = flat.into_iter();
        let mut next = || {
            answers
                .next()
                .ok_or_else(|| anyhow::anyhow!("a short pipeline answer"))
        };
        let mut totals = Vec::with_capacity(batch.len());
        for flush in batch {
            let transfer: Option<u64> = redis::from_redis_value(next()?)?;
            let requests: Option<u64> = redis::from_redis_value(next()?)?;
            let nodes = if flush.shaped {
                let stamps: std::collections::HashMap<String, u64> =
                    redis::from_redis_value(next()?)?;
                stamps
                    .values()
                    .filter(|ms| now_ms.saturating_sub(**ms) < ACTIVE_MS)
                    .count() as u32
            } else {
                1
            };
            totals.push(Totals {
                counts: [transfer.unwrap_or(0), requests.unwrap_or(0)],
                nodes: nodes.max(u32::from(flush.active)),
            });
        }
        Ok(totals)
    }

    /// The cluster-wide transfer and requests of accounts this node holds
    /// but that moved nothing here (`(account, [period starts])`): one
    /// MGET for all of them.
    pub async fn read_usage(&self, accounts: &[(String, [u64; 2])]) -> Result<Vec<[u64; 2]>> {
        if accounts.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = accounts
            .iter()
            .flat_map(|(account, starts)| {
                LIMITS
                    .iter()
                    .zip(starts)
                    .map(|(limit, start)| counter(account, limit, *start))
            })
            .collect();
        let values: Vec<Option<u64>> = redis::cmd("MGET")
            .arg(&names)
            .query_async(&mut self.conn())
            .await?;
        Ok(values
            .chunks(2)
            .map(|c| [c[0].unwrap_or(0), c.get(1).copied().flatten().unwrap_or(0)])
            .collect())
    }

    /// Forgets an account's usage in the periods starting at `starts`
    /// (transfer, requests).
    pub async fn reset_usage(&self, account: &str, starts: [u64; 2]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (limit, start) in LIMITS.iter().zip(starts) {
            pipe.del(counter(account, limit, start)).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }
}
