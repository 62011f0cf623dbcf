//! The JSON stats at `GET /` of the stats listener: counters from
//! [`crate::counters`], state read now from the registry, the limits and
//! the spool. The JSON field names are a contract: add fields, never
//! rename.

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::{Response, StatusCode};
use serde::Serialize;

use super::Ops;
use crate::counters::COUNTERS;
use crate::http::pool::Pools;
use crate::http::{pages, Body};

/// The JSON document served at `GET /`.
#[derive(Serialize)]
struct Snapshot {
    active_tunnels: u64,
    unique_ips: u64,
    total_connections: u64,
    total_requests: u64,
    active_websockets: u64,
    active_requests: u64,
    blocked_ips: u64,
    total_blocked: u64,
    total_rate_limited: u64,
    channels_opened: u64,
    channels_reused: u64,
    idle_channels: u64,
    spool_memory_bytes: u64,
    spool_disk_bytes: u64,
    streams_cut: u64,
    /// Distinct names and TCP ports served (`active_tunnels` counts each
    /// client of a shared name).
    active_names: u64,
    /// Private aliases (`-R NAME:PORT`, reached through SSH) served now,
    /// SSH connections let through to them, and `direct-tcpip` opens
    /// refused.
    private_tunnels: u64,
    private_connections: u64,
    private_refused: u64,
    /// Visitors held until a new tunnel's options were known, and for how
    /// long in all.
    held_for_options: u64,
    held_for_options_ms: u64,
    /// Request inspector streams open now (`-L 4040:localhost:4040`).
    inspector_connections: u64,
    /// Certificates of custom domains: the issuer, issued, failed, binds
    /// refused by the issuance limit, passthrough names that need none, and
    /// how many names hold one.
    custom_certs: CustomCerts,
    #[serde(skip_serializing_if = "Option::is_none")]
    subdomains: Option<Vec<String>>,
    /// With `subdomains=true`: how many clients serve each name.
    #[serde(skip_serializing_if = "Option::is_none")]
    clients: Option<std::collections::BTreeMap<String, usize>>,
    /// With ACME on: each certificate in hand (by its first name) and its
    /// expiry in unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificates: Option<std::collections::BTreeMap<String, u64>>,
    /// With ACME on: certificates this node got from the CA since it
    /// started (in a cluster, one node orders each; the others adopt it).
    #[serde(skip_serializing_if = "Option::is_none")]
    acme_orders: Option<u64>,
    /// In a cluster: this node, the nodes with their address, tunnels and
    /// last heartbeat, and whether Redis answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<super::cluster::ClusterStats>,
    /// With plans: per plan, this node's accounts, their transfer and
    /// requests this period, and how many are at a quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    plans: Option<std::collections::BTreeMap<String, super::usage::PlanStats>>,
    /// With plans: the top 10 accounts by transfer this period (the
    /// dashboard's table).
    #[serde(skip_serializing_if = "Option::is_none")]
    top_users: Option<Vec<crate::plans::Usage>>,
}

#[derive(Serialize)]
struct CustomCerts {
    issuer: &'static str,
    issued: u64,
    failed: u64,
    refused: u64,
    passthrough: u64,
    cached: u64,
}

fn custom_certs(ops: &Ops) -> CustomCerts {
    let on_demand = &ops.custom.certs;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    CustomCerts {
        issuer: on_demand.issuer_kind(),
        issued: load(&on_demand.counters.issued),
        failed: load(&on_demand.counters.failed),
        refused: load(&on_demand.counters.refused),
        passthrough: load(&on_demand.counters.passthrough),
        cached: on_demand.cached() as u64,
    }
}

fn snapshot(ops: &Ops, with_subdomains: bool) -> Snapshot {
    let s = &COUNTERS.stats;
    let registry = &ops.registry;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Snapshot {
        active_tunnels: registry.len() as u64,
        unique_ips: registry.unique_ips() as u64,
        total_connections: load(&s.total_connections),
        total_requests: load(&s.total_requests),
        active_websockets: load(&s.active_websockets),
        active_requests: load(&s.active_requests),
        blocked_ips: ops.ip_guard.blocked_count() as u64,
        total_blocked: load(&s.total_blocked),
        total_rate_limited: load(&s.total_rate_limited),
        channels_opened: load(&s.channels_opened),
        channels_reused: load(&s.channels_reused),
        idle_channels: Pools::idle(registry) as u64,
        spool_memory_bytes: ops.spool.memory_used(),
        spool_disk_bytes: ops.spool.disk_used(),
        streams_cut: ops.spool.streams_cut(),
        active_names: registry.names_len() as u64,
        private_tunnels: registry.count_private() as u64,
        private_connections: load(&s.private_connections),
        private_refused: load(&s.private_refused),
        held_for_options: load(&s.held_for_options),
        held_for_options_ms: load(&s.held_for_options_ms),
        inspector_connections: ops.inspect_watchers.open_streams() as u64,
        custom_certs: custom_certs(ops),
        subdomains: with_subdomains.then(|| registry.names()),
        clients: with_subdomains.then(|| registry.client_counts()),
        certificates: ops
            .acme
            .as_ref()
            .map(|acme| acme.expiries().into_iter().collect()),
        acme_orders: ops.acme.as_ref().map(|acme| acme.ordered()),
        cluster: ops.cluster.as_deref().map(super::cluster::stats),
        plans: super::usage::stats(ops),
        top_users: ops.plans.is_some().then(|| super::usage::top(ops, 10)),
    }
}

/// `GET /`: the snapshot; `?subdomains=true` adds the names.
pub fn response(ops: &Ops, query: Option<&str>) -> Response<Body> {
    let with_subdomains = query.is_some_and(|q| q.split('&').any(|kv| kv == "subdomains=true"));
    pages::json(StatusCode::OK, &snapshot(ops, with_subdomains))
}
