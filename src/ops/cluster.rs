//! The operator's views of a cluster: every node's tunnels in one list
//! (with a `node` column), closing a name on every node, the `cluster`
//! section of the stats. (What this node answers other nodes over the
//! link is in [`super::admin`].)

use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use crate::cluster::link;
use crate::cluster::Cluster;

/// The `cluster` section of the stats.
#[derive(Serialize)]
pub struct ClusterStats {
    node_id: String,
    /// `up` or `down`: whether Redis answered the last heartbeat.
    redis: &'static str,
    nodes: Vec<NodeStats>,
}

#[derive(Serialize)]
struct NodeStats {
    id: String,
    /// Where its link listens.
    address: String,
    alive: bool,
    /// Tunnels it reported in its last heartbeat.
    tunnels: usize,
    /// When its heartbeat was last seen current (RFC 3339).
    last_heartbeat: Option<String>,
}

/// The `cluster` section of the stats.
pub fn stats(cluster: &Cluster) -> ClusterStats {
    let nodes = cluster
        .nodes()
        .into_iter()
        .map(|node| NodeStats {
            address: node.info.link.clone(),
            alive: node.alive,
            tunnels: node.tunnels,
            last_heartbeat: node
                .last_seen
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            id: node.id,
        })
        .collect();
    ClusterStats {
        node_id: cluster.node_id().to_string(),
        redis: if cluster.redis_up() { "up" } else { "down" },
        nodes,
    }
}

/// The other live nodes: id and link endpoint.
fn others(cluster: &Cluster) -> Vec<(String, link::Endpoint)> {
    cluster
        .nodes()
        .into_iter()
        .filter(|n| n.alive && n.id != cluster.node_id())
        .map(|n| {
            let at = link::Endpoint {
                addr: n.info.link,
                incarnation: n.info.incarnation,
            };
            (n.id, at)
        })
        .collect()
}

/// Every node's tunnels: `local` (this node's, already with their `node`)
/// and what each other live node answers; a node that does not answer is
/// left out (logged). `clients` counts each name's entries cluster-wide.
pub async fn all_tunnels(
    cluster: &Cluster,
    local: Vec<serde_json::Value>,
) -> Vec<serde_json::Value> {
    let mut all = local;
    for (node, at) in others(cluster) {
        let request = Request::builder()
            .method(Method::GET)
            .uri("/tunnels")
            .body(link::empty())
            .expect("a valid request");
        match cluster.links().request(&node, &at, request).await {
            Ok((StatusCode::OK, body)) => {
                let list: Vec<serde_json::Value> =
                    serde_json::from_slice(&body).unwrap_or_default();
                all.extend(list);
            }
            Ok((status, _)) => tracing::warn!(%node, %status, "node did not list its tunnels"),
            Err(err) => tracing::warn!(%node, error = %err, "node did not list its tunnels"),
        }
    }
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for entry in &all {
        *counts
            .entry(entry["name"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    for entry in &mut all {
        let count = counts[entry["name"].as_str().unwrap_or("")];
        entry["clients"] = count.into();
    }
    all.sort_by(|a, b| {
        let key = |v: &serde_json::Value| (v["name"].to_string(), v["created"].to_string());
        key(a).cmp(&key(b))
    });
    all
}

/// Asks every other live node to close its clients of `name`; how many
/// they closed.
pub async fn close_elsewhere(cluster: &Cluster, name: &str) -> usize {
    let mut closed = 0;
    let path = format!("/tunnels/{}", encode(name));
    for (node, at) in others(cluster) {
        let request = Request::builder()
            .method(Method::DELETE)
            .uri(path.as_str())
            .body(link::empty())
            .expect("a valid request");
        match cluster.links().request(&node, &at, request).await {
            Ok((StatusCode::OK, body)) => {
                let answer: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                closed += answer["closed"].as_u64().unwrap_or(0) as usize;
            }
            Ok((status, _)) => tracing::warn!(%node, %status, "node did not close the tunnel"),
            Err(err) => tracing::warn!(%node, error = %err, "node did not close the tunnel"),
        }
    }
    closed
}

/// Percent-encodes what a path segment cannot carry as is.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
