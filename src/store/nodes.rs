//! Heartbeats and the node table: what each node publishes about itself,
//! its `alive` key (renewed every third of the TTL; the node's names die
//! with it), and the clean-up of a dead incarnation's names (one node does
//! it).

use std::time::Duration;

use anyhow::Result;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{key, Store};

/// What a node publishes about itself (`{burrow}:nodes`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub incarnation: u64,
    /// Where its link listens (`HOST:PORT`).
    pub link: String,
    pub started_ms: u64,
    /// SHA-256 of its keys file (empty: none), to warn when nodes differ.
    pub keys_hash: String,
}

/// A node as read from Redis: what it published, and its heartbeat.
#[derive(Debug, Clone)]
pub struct NodeRead {
    pub id: String,
    pub info: NodeInfo,
    /// The incarnation and tunnel count of its current heartbeat; `None`
    /// when it expired.
    pub beat: Option<(u64, usize)>,
}

impl Store {
    /// Announces this node and renews its heartbeat.
    pub async fn register(
        &self,
        node: &str,
        info: &NodeInfo,
        tunnels: usize,
        ttl: Duration,
    ) -> Result<()> {
        let json = serde_json::to_string(info)?;
        let mut pipe = redis::pipe();
        pipe.hset(key("nodes"), node, json).ignore();
        pipe.set_ex(
            key(&format!("alive:{node}")),
            format!("{} {tunnels}", info.incarnation),
            ttl.as_secs().max(1),
        )
        .ignore();
        pipe.query_async::<()>(&mut self.conn()).await?;
        Ok(())
    }

    /// Every node Redis knows, with its heartbeat (`None`: dead).
    pub async fn nodes(&self) -> Result<Vec<NodeRead>> {
        let mut conn = self.conn();
        let all: Vec<(String, String)> = conn.hgetall(key("nodes")).await?;
        let infos: Vec<(String, NodeInfo)> = all
            .into_iter()
            .filter_map(|(node, json)| Some((node, serde_json::from_str(&json).ok()?)))
            .collect();
        if infos.is_empty() {
            return Ok(Vec::new());
        }
        let alive_keys: Vec<String> = infos
            .iter()
            .map(|(n, _)| key(&format!("alive:{n}")))
            .collect();
        let alive: Vec<Option<String>> = conn.mget(alive_keys).await?;
        Ok(infos
            .into_iter()
            .zip(alive)
            .map(|((id, info), beat)| {
                let beat = beat.and_then(|text| {
                    let (inc, tunnels) = text.split_once(' ')?;
                    Some((inc.parse().ok()?, tunnels.parse().ok()?))
                });
                NodeRead { id, info, beat }
            })
            .collect())
    }

    /// Forgets a node (it stopped, or died and its names were cleaned up).
    pub async fn forget_node(&self, node: &str, incarnation: u64) -> Result<()> {
        let mut conn = self.conn();
        let alive: Option<String> = conn.get(key(&format!("alive:{node}"))).await?;
        if alive.as_deref().and_then(|a| a.split(' ').next()) == Some(&incarnation.to_string()) {
            let _: () = conn.del(key(&format!("alive:{node}"))).await?;
        }
        let json: Option<String> = conn.hget(key("nodes"), node).await?;
        let same = json
            .and_then(|j| serde_json::from_str::<NodeInfo>(&j).ok())
            .is_some_and(|info| info.incarnation == incarnation);
        if same {
            let _: () = conn.hdel(key("nodes"), node).await?;
        }
        Ok(())
    }

    /// The keys a (dead) incarnation held, then removes its members and
    /// its traces. Returns the keys, for their events.
    pub async fn clean_up(&self, node: &str, incarnation: u64) -> Result<Vec<String>> {
        let held = key(&format!("held:{node}/{incarnation}"));
        let keys: Vec<String> = self.conn().smembers(&held).await?;
        let prefix = format!("{node}/{incarnation}/");
        for name in &keys {
            let (members, _) = self.members(name).await?;
            for (id, _) in members
                .into_iter()
                .filter(|(id, _)| id.starts_with(&prefix))
            {
                self.release(name, &id).await?;
            }
        }
        let mut conn = self.conn();
        let _: () = conn.del(&held).await?;
        let _: () = conn.del(key(&format!("ipt:{node}/{incarnation}"))).await?;
        self.forget_node(node, incarnation).await?;
        Ok(keys)
    }

    /// Takes the clean-up of a dead incarnation for this node (one node
    /// does it): `true` when this node won.
    pub async fn take_cleanup(&self, node: &str, incarnation: u64) -> Result<bool> {
        let lock = key(&format!("cleanup:{node}/{incarnation}"));
        Ok(redis::cmd("SET")
            .arg(lock)
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async::<Option<String>>(&mut self.conn())
            .await?
            .is_some())
    }
}
