//! Which nodes are alive, where their links listen, how many tunnels they
//! hold: the node table each node keeps from the heartbeats it reads
//! every beat (one read of `{burrow}:nodes` and one of the `alive` keys).

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

use crate::store::{NodeInfo, NodeRead};

/// How long a node whose link failed is passed over.
const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// One node, as last seen.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub info: NodeInfo,
    /// Its heartbeat is current (its `alive` key holds its incarnation).
    pub alive: bool,
    /// Tunnels it reported in its last heartbeat.
    pub tunnels: usize,
    /// When its heartbeat was last seen current.
    pub last_seen: Option<SystemTime>,
}

/// What changed in the table after a read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Nodes (id, incarnation) that were alive and are not any more.
    pub died: Vec<(String, u64)>,
    /// Dead incarnations still listed, whose names need cleaning up.
    pub stale: Vec<(String, u64)>,
    /// Nodes that came up (or restarted).
    pub came_up: Vec<String>,
}

/// The node table.
#[derive(Default)]
pub struct Nodes {
    table: RwLock<HashMap<String, Node>>,
    /// Nodes whose link recently failed, until when.
    failing: RwLock<HashMap<String, Instant>>,
}

impl Nodes {
    /// Replaces the table with what Redis says now; returns what changed.
    pub fn update(&self, read: Vec<NodeRead>) -> Changes {
        let mut changes = Changes::default();
        let mut table = self.table.write().expect("nodes lock");
        let mut fresh = HashMap::new();
        for NodeRead { id, info, beat } in read {
            let alive = beat.is_some_and(|(inc, _)| inc == info.incarnation);
            let before = table.get(&id);
            let was_alive =
                before.is_some_and(|n| n.alive && n.info.incarnation == info.incarnation);
            if let Some(old) =
                before.filter(|n| n.alive && (!alive || n.info.incarnation != info.incarnation))
            {
                changes.died.push((id.clone(), old.info.incarnation));
            }
            if alive && !was_alive {
                changes.came_up.push(id.clone());
            }
            if !alive {
                changes.stale.push((id.clone(), info.incarnation));
            }
            let last_seen = match alive {
                true => Some(SystemTime::now()),
                false => before.and_then(|n| n.last_seen),
            };
            let tunnels = beat.map_or(0, |(_, t)| t);
            fresh.insert(
                id.clone(),
                Node {
                    id,
                    info,
                    alive,
                    tunnels,
                    last_seen,
                },
            );
        }
        for (id, old) in table.iter() {
            if old.alive && !fresh.contains_key(id) {
                changes.died.push((id.clone(), old.info.incarnation));
            }
        }
        *table = fresh;
        changes
    }

    /// Whether `node` is alive in incarnation `incarnation`.
    pub fn alive(&self, node: &str, incarnation: u64) -> bool {
        let table = self.table.read().expect("nodes lock");
        table
            .get(node)
            .is_some_and(|n| n.alive && n.info.incarnation == incarnation)
    }

    /// Whether the table knows `node`'s incarnation `incarnation`: `None`
    /// when it does not (a node, or an incarnation, newer than the last
    /// read: the table should be read again before judging).
    pub fn knows(&self, node: &str, incarnation: u64) -> Option<bool> {
        let table = self.table.read().expect("nodes lock");
        let known = table.get(node)?;
        // Incarnations are random: one that is not the one listed is either
        // older (dead) or newer than the last read: unknown either way.
        (known.info.incarnation == incarnation).then_some(known.alive)
    }

    /// Where `node`'s link listens, if it is alive.
    pub fn link(&self, node: &str) -> Option<super::link::Endpoint> {
        let table = self.table.read().expect("nodes lock");
        table
            .get(node)
            .filter(|n| n.alive)
            .map(|n| super::link::Endpoint {
                addr: n.info.link.clone(),
                incarnation: n.info.incarnation,
            })
    }

    /// Every node, sorted by id.
    pub fn all(&self) -> Vec<Node> {
        let mut nodes: Vec<Node> = self
            .table
            .read()
            .expect("nodes lock")
            .values()
            .cloned()
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes
    }

    /// `NODE/INCARNATION` of every live node (whose per-IP counts count).
    pub fn live_incarnations(&self) -> Vec<String> {
        let table = self.table.read().expect("nodes lock");
        table
            .values()
            .filter(|n| n.alive)
            .map(|n| format!("{}/{}", n.id, n.info.incarnation))
            .collect()
    }

    /// Live nodes.
    pub fn alive_count(&self) -> usize {
        self.table
            .read()
            .expect("nodes lock")
            .values()
            .filter(|n| n.alive)
            .count()
    }

    /// The link to `node` failed: its clients are tried last for a while.
    pub fn mark_failing(&self, node: &str) {
        let until = Instant::now() + SKIP_AFTER_FAILURE;
        self.failing
            .write()
            .expect("failing lock")
            .insert(node.to_string(), until);
    }

    /// Whether the link to `node` failed recently.
    pub fn failing(&self, node: &str) -> bool {
        let failing = self.failing.read().expect("failing lock");
        failing
            .get(node)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The link to `node` works again.
    pub fn recovered(&self, node: &str) {
        self.failing.write().expect("failing lock").remove(node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(incarnation: u64) -> NodeInfo {
        NodeInfo {
            incarnation,
            link: "127.0.0.1:1".into(),
            started_ms: 0,
            keys_hash: String::new(),
        }
    }

    #[test]
    fn deaths_restarts_and_stale_incarnations() {
        let nodes = Nodes::default();
        let read = |id: &str, inc: u64, beat: Option<(u64, usize)>| NodeRead {
            id: id.into(),
            info: info(inc),
            beat,
        };
        let up = nodes.update(vec![read("a", 1, Some((1, 3))), read("b", 2, Some((2, 0)))]);
        assert_eq!(up.came_up, ["a", "b"]);
        assert!(nodes.alive("a", 1) && !nodes.alive("a", 2));
        // b's heartbeat expired; a restarted with a new incarnation.
        let changed = nodes.update(vec![read("a", 5, Some((5, 0))), read("b", 2, None)]);
        assert_eq!(changed.died, [("a".to_string(), 1), ("b".to_string(), 2)]);
        assert_eq!(changed.stale, [("b".to_string(), 2)]);
        assert_eq!(changed.came_up, ["a"]);
        assert_eq!(nodes.live_incarnations(), ["a/5"]);
        assert_eq!(nodes.link("b"), None);
        assert_eq!(nodes.link("a").map(|at| at.incarnation), Some(5));
        nodes.mark_failing("a");
        assert!(nodes.failing("a"));
        nodes.recovered("a");
        assert!(!nodes.failing("a"));
    }
}
