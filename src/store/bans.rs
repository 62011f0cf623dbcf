//! Bans and counters: blocks every node applies, and the cluster-wide
//! counts limits read (SSH connections per IP and minute, tunnels per IP
//! per incarnation).

use anyhow::Result;
use redis::AsyncCommands;

use super::{key, Event, Store};

impl Store {
    /// Records a ban (or replaces one) and tells every node.
    pub async fn ban(&self, ip: &str, until_ms: u64, reason: &str) -> Result<()> {
        let _: () = self
            .conn()
            .hset(key("bans"), ip, format!("{until_ms} {reason}"))
            .await?;
        self.publish(&Event::Ban {
            ip: ip.to_string(),
            until_ms,
            reason: reason.to_string(),
        })
        .await
    }

    /// Lifts a ban everywhere.
    pub async fn unban(&self, ip: &str) -> Result<()> {
        let _: () = self.conn().hdel(key("bans"), ip).await?;
        self.publish(&Event::Unban { ip: ip.to_string() }).await
    }

    /// Every ban in force: IP, until (unix ms), reason.
    pub async fn bans(&self) -> Result<Vec<(String, u64, String)>> {
        let all: Vec<(String, String)> = self.conn().hgetall(key("bans")).await?;
        Ok(all
            .into_iter()
            .filter_map(|(ip, value)| {
                let (until, reason) = value.split_once(' ')?;
                Some((ip, until.parse().ok()?, reason.to_string()))
            })
            .collect())
    }

    /// Counts one SSH connection of `ip` in the current minute; returns
    /// the cluster-wide count so far.
    pub async fn count_connection(&self, ip: &str, minute: u64) -> Result<u64> {
        let counter = key(&format!("conns:{ip}:{minute}"));
        let (count,): (u64,) = redis::pipe()
            .incr(&counter, 1)
            .expire(&counter, 120)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(count)
    }

    /// Adds `delta` to `ip`'s tunnel count on this incarnation.
    pub async fn count_tunnels(&self, node_inc: &str, ip: &str, delta: i64) -> Result<()> {
        let _: i64 = self
            .conn()
            .hincr(key(&format!("ipt:{node_inc}")), ip, delta)
            .await?;
        Ok(())
    }

    /// Replaces an incarnation's per-IP tunnel counts (after an outage).
    pub async fn reset_tunnel_counts(
        &self,
        node_inc: &str,
        counts: &std::collections::HashMap<std::net::IpAddr, i64>,
    ) -> Result<()> {
        let name = key(&format!("ipt:{node_inc}"));
        let mut pipe = redis::pipe();
        pipe.del(&name).ignore();
        for (ip, count) in counts {
            pipe.hset(&name, ip.to_string(), *count).ignore();
        }
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// `ip`'s tunnels on each of the given incarnations, summed.
    pub async fn tunnels_of_ip(&self, node_incs: &[String], ip: &str) -> Result<u64> {
        let mut pipe = redis::pipe();
        for node_inc in node_incs {
            pipe.hget(key(&format!("ipt:{node_inc}")), ip);
        }
        let counts: Vec<Option<i64>> = pipe.query_async(&mut self.conn()).await?;
        Ok(counts.into_iter().flatten().map(|c| c.max(0) as u64).sum())
    }
}
