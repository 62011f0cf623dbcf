//! Prometheus metrics at `GET /metrics` on the stats listener, in the text
//! exposition format, with the `prometheus-client` crate.
//!
//! Two kinds of numbers: events counted where they happen (requests by
//! status class and their duration, SSH connections by outcome, refusals by
//! limit, channel opens and their latency, bytes relayed), kept in the
//! process-wide [`COUNTERS`]; and state read at scrape time (tunnels by
//! kind, connections, spool usage, blocks), taken from the registry and the
//! JSON stats' counters so that the two endpoints never disagree.

use std::sync::atomic::Ordering;

use hyper::Response;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use super::Ops;
use crate::counters::{Labels, COUNTERS};
use crate::http::{pages, Body};

/// `GET /metrics`.
pub fn response(ops: &Ops) -> Response<Body> {
    Response::builder()
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .header("cache-control", "no-store")
        .body(pages::full(render(ops)))
        .expect("static response parts are valid")
}

/// The text exposition of every metric.
pub fn render(ops: &Ops) -> String {
    let mut registry = Registry::with_prefix("burrow");
    let m = &COUNTERS.metrics;
    registry.register(
        "ssh_connections",
        "SSH connections by outcome",
        m.ssh_connections.clone(),
    );
    registry.register(
        "http_requests",
        "HTTP responses to visitors by status class",
        m.http_requests.clone(),
    );
    registry.register_with_unit(
        "http_request_duration",
        "Time from a visitor's request to the response head",
        Unit::Seconds,
        m.http_duration.clone(),
    );
    registry.register(
        "refusals",
        "Refusals by the limit that refused",
        m.refusals.clone(),
    );
    registry.register(
        "quota_refusals",
        "Refusals by a user's plan, by plan and limit",
        m.quota_refusals.clone(),
    );
    registry.register(
        "channel_open_failures",
        "forwarded-tcpip channels the SSH client did not open, by reason",
        m.channel_open_failures.clone(),
    );
    registry.register_with_unit(
        "channel_open_duration",
        "Time for an SSH client to open a forwarded-tcpip channel",
        Unit::Seconds,
        m.channel_open_duration.clone(),
    );
    registry.register_with_unit(
        "options_hold",
        "Time visitors waited for a new tunnel's options (its auth=, allow=, tls=)",
        Unit::Seconds,
        m.options_hold.clone(),
    );
    registry.register_with_unit(
        "tunnel",
        "Bytes relayed to (in) and from (out) users' apps",
        Unit::Bytes,
        m.bytes.clone(),
    );
    register_state(&mut registry, ops);
    register_custom_certs(&mut registry, ops);
    register_cluster(&mut registry, ops);
    super::usage::register_metrics(&mut registry, ops);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Gauges and counters read from the live state.
fn register_state(registry: &mut Registry, ops: &Ops) {
    let s = &COUNTERS.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let tunnels: Family<Labels, prometheus_client::metrics::gauge::Gauge> = Family::default();
    for kind in ["http", "tls", "tcp"] {
        // Every kind appears, at 0 when there is none.
        let _ = tunnels.get_or_create(&vec![("kind", kind)]);
    }
    for tunnel in ops.registry.tunnels() {
        tunnels
            .get_or_create(&vec![("kind", tunnel.kind_name())])
            .inc();
    }
    registry.register("tunnels", "Live tunnels by kind", tunnels);
    registry.register(
        "tunnel_names",
        "Distinct names and TCP ports served",
        gauge(ops.registry.names_len() as u64),
    );
    registry.register(
        "ssh_connections_open",
        "Open SSH connections",
        gauge(ops.registry.client_conns() as u64),
    );
    registry.register(
        "http_requests_in_flight",
        "Proxied requests in flight",
        gauge(load(&s.active_requests)),
    );
    registry.register(
        "websockets_open",
        "Open WebSockets",
        gauge(load(&s.active_websockets)),
    );
    registry.register(
        "blocked_ips",
        "IPs blocked now",
        gauge(ops.ip_guard.blocked_count() as u64),
    );
    registry.register(
        "blocks",
        "Blocks applied (automatic and by the operator)",
        ConstCounter::new(load(&s.total_blocked)),
    );
    registry.register(
        "channels_opened",
        "forwarded-tcpip channels opened",
        ConstCounter::new(load(&s.channels_opened)),
    );
    registry.register(
        "channels_reused",
        "Requests sent over a pooled keep-alive connection",
        ConstCounter::new(load(&s.channels_reused)),
    );
    registry.register(
        "private_connections",
        "direct-tcpip opens to private aliases, relayed or refused (by reason)",
        COUNTERS.metrics.private_connections.clone(),
    );
    registry.register_with_unit(
        "spool_memory",
        "Memory holding data for slow visitors",
        Unit::Bytes,
        gauge(ops.spool.memory_used()),
    );
    registry.register_with_unit(
        "spool_disk",
        "Disk holding data for slow visitors",
        Unit::Bytes,
        gauge(ops.spool.disk_used()),
    );
    registry.register(
        "tokio_alive_tasks",
        "Tasks alive in the async runtime (for leak checks)",
        gauge(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks() as u64,
        ),
    );
    let expiry: Family<Vec<(&'static str, String)>, prometheus_client::metrics::gauge::Gauge> =
        Family::default();
    for (name, unix) in ops.acme.as_ref().map(|a| a.expiries()).unwrap_or_default() {
        expiry
            .get_or_create(&vec![("name", name)])
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }
    registry.register(
        "certificate_expiry_timestamp_seconds",
        "Expiry (unix seconds) of each ACME certificate in hand, by its first name",
        expiry,
    );
    if let Some(acme) = &ops.acme {
        registry.register(
            "acme_orders",
            "Certificates this node got from the ACME CA (in a cluster, one node orders each)",
            ConstCounter::new(acme.ordered()),
        );
    }
    registry.register(
        "streams_cut",
        "Streams cut because a spool limit was reached",
        ConstCounter::new(ops.spool.streams_cut()),
    );
}

/// The cluster: forwarding between nodes, the link, the node table.
fn register_cluster(registry: &mut Registry, ops: &Ops) {
    let Some(cluster) = &ops.cluster else {
        return;
    };
    let m = &COUNTERS.metrics;
    registry.register(
        "cluster_forwarded",
        "Visitors' requests (http) and connections (raw) forwarded to the node holding their tunnel",
        m.forwarded.clone(),
    );
    registry.register_with_unit(
        "cluster_forwarded",
        "Bytes on forwarded streams, to (out) and from (in) other nodes",
        Unit::Bytes,
        m.forwarded_bytes.clone(),
    );
    registry.register(
        "cluster_link_errors",
        "Link connections to other nodes that failed or broke",
        m.link_errors.clone(),
    );
    let gauge = |v: usize| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let alive = cluster.nodes().iter().filter(|n| n.alive).count();
    registry.register("cluster_nodes", "Live nodes of the cluster", gauge(alive));
    registry.register(
        "cluster_redis_up",
        "1 while Redis answers the heartbeat, 0 while it is down",
        gauge(usize::from(cluster.redis_up())),
    );
}

/// Certificates of custom domains, from the same counters as the JSON
/// stats (binds refused by `custom-cert-rate` are in `refusals`).
fn register_custom_certs(registry: &mut Registry, ops: &Ops) {
    let counters = &ops.custom.certs.counters;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let certs: Family<Labels, Counter> = Family::default();
    for (outcome, value) in [
        ("issued", load(&counters.issued)),
        ("failed", load(&counters.failed)),
        ("passthrough", load(&counters.passthrough)),
    ] {
        certs
            .get_or_create(&vec![("outcome", outcome)])
            .inc_by(value);
    }
    registry.register(
        "custom_certs",
        "Custom-domain certificates by outcome (passthrough: bound names that need none)",
        certs,
    );
    registry.register(
        "custom_certs_cached",
        "Custom domains holding a certificate",
        ConstGauge::new(i64::try_from(ops.custom.certs.cached()).unwrap_or(i64::MAX)),
    );
}
