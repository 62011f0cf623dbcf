//! Prometheus metrics at `GET /metrics` on the stats listener, in the text
//! exposition format, with the `prometheus-client` crate.
//!
//! Two kinds of numbers: events counted where they happen (requests by
//! status class and their duration, SSH connections by outcome, refusals by
//! limit, channel opens and their latency, bytes relayed), kept in the
//! process-wide [`METRICS`]; and state read at scrape time (tunnels by
//! kind, connections, spool usage, blocks), taken from the registry and the
//! JSON stats so that the two endpoints never disagree.

use std::sync::atomic::Ordering;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::App;

type Labels = Vec<(&'static str, &'static str)>;

/// Event counters, shared by the whole process.
pub struct Metrics {
    ssh_connections: Family<Labels, Counter>,
    http_requests: Family<Labels, Counter>,
    http_duration: Histogram,
    refusals: Family<Labels, Counter>,
    channel_open_failures: Family<Labels, Counter>,
    channel_open_duration: Histogram,
    bytes: Family<Labels, Counter>,
    /// The two series of `bytes`, looked up once: they count every read and
    /// write of every channel.
    bytes_in: Counter,
    bytes_out: Counter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let bytes: Family<Labels, Counter> = Family::default();
    Metrics {
        bytes_in: bytes.get_or_create_owned(&vec![("direction", "in")]),
        bytes_out: bytes.get_or_create_owned(&vec![("direction", "out")]),
        bytes,
        ssh_connections: Family::default(),
        http_requests: Family::default(),
        // 1 ms … ~33 s.
        http_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        refusals: Family::default(),
        channel_open_failures: Family::default(),
        // 0.5 ms … ~16 s.
        channel_open_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
    }
});

/// How an SSH connection ended up.
#[derive(Clone, Copy)]
pub enum SshOutcome {
    /// Authenticated.
    Accepted,
    /// Refused by a limit (connection rate, handshakes).
    Refused,
    /// Dropped: the IP is blocked.
    Blocked,
    /// The handshake or authentication failed or timed out.
    Failed,
}

impl Metrics {
    pub fn ssh_connection(&self, outcome: SshOutcome) {
        let outcome = match outcome {
            SshOutcome::Accepted => "accepted",
            SshOutcome::Refused => "refused",
            SshOutcome::Blocked => "blocked",
            SshOutcome::Failed => "failed",
        };
        self.ssh_connections
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// A response to a visitor (from the app or from burrow itself), and
    /// how long it took until its head.
    pub fn http_response(&self, status: u16, took: Duration) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .get_or_create(&vec![("code", class)])
            .inc();
        self.http_duration.observe(took.as_secs_f64());
    }

    /// A limit refused someone (its flag name).
    pub fn refused(&self, limit: &'static str) {
        self.refusals.get_or_create(&vec![("limit", limit)]).inc();
    }

    pub fn channel_opened(&self, took: Duration) {
        self.channel_open_duration.observe(took.as_secs_f64());
    }

    /// `reason`: `refused`, `timeout` or `gone`.
    pub fn channel_open_failed(&self, reason: &'static str) {
        self.channel_open_failures
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Bytes relayed to users' apps.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    /// Bytes relayed from users' apps.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
    }

    /// The running totals the dashboard's history samples.
    /// Derived from the responses by class, so a request is counted once.
    pub fn totals(&self) -> Totals {
        let responses = |class: &'static str| {
            self.http_requests
                .get_or_create(&vec![("code", class)])
                .get()
        };
        Totals {
            requests: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(responses)
                .iter()
                .sum(),
            errors: responses("5xx"),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
        }
    }
}

/// Totals since the process started (see [`Metrics::totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Responses to visitors, whoever answered them.
    pub requests: u64,
    /// The 5xx among them (the app failed, or burrow could not reach it).
    pub errors: u64,
    /// Bytes relayed to users' apps.
    pub bytes_in: u64,
    /// Bytes relayed from users' apps.
    pub bytes_out: u64,
}

impl Totals {
    /// What happened between `earlier` and `self` (counters only grow; a
    /// saturating difference keeps a reordering from ever going negative).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
        }
    }
}

/// The text exposition of every metric.
pub fn render(app: &App) -> String {
    let mut registry = Registry::with_prefix("burrow");
    let m = &*METRICS;
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
        "tunnel",
        "Bytes relayed to (in) and from (out) users' apps",
        Unit::Bytes,
        m.bytes.clone(),
    );
    register_state(&mut registry, app);
    register_custom_certs(&mut registry, app);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

/// Gauges and counters read from the live state.
fn register_state(registry: &mut Registry, app: &App) {
    let s = &app.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let tunnels: Family<Labels, prometheus_client::metrics::gauge::Gauge> = Family::default();
    for kind in ["http", "tls", "tcp"] {
        // Every kind appears, at 0 when there is none.
        let _ = tunnels.get_or_create(&vec![("kind", kind)]);
    }
    for tunnel in app.registry.tunnels() {
        tunnels
            .get_or_create(&vec![("kind", tunnel.kind_name())])
            .inc();
    }
    registry.register("tunnels", "Live tunnels by kind", tunnels);
    registry.register(
        "tunnel_names",
        "Distinct names and TCP ports served",
        gauge(app.registry.names_len() as u64),
    );
    registry.register(
        "ssh_connections_open",
        "Open SSH connections",
        gauge(app.registry.conns_len() as u64),
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
        gauge(app.ip_guard.blocked_count() as u64),
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
    registry.register_with_unit(
        "spool_memory",
        "Memory holding data for slow visitors",
        Unit::Bytes,
        gauge(app.spool.memory_used()),
    );
    registry.register_with_unit(
        "spool_disk",
        "Disk holding data for slow visitors",
        Unit::Bytes,
        gauge(app.spool.disk_used()),
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
    for (name, unix) in app.acme.as_ref().map(|a| a.expiries()).unwrap_or_default() {
        expiry
            .get_or_create(&vec![("name", name)])
            .set(i64::try_from(unix).unwrap_or(i64::MAX));
    }
    registry.register(
        "certificate_expiry_timestamp_seconds",
        "Expiry (unix seconds) of each ACME certificate in hand, by its first name",
        expiry,
    );
    registry.register(
        "streams_cut",
        "Streams cut because a spool limit was reached",
        ConstCounter::new(app.spool.streams_cut()),
    );
}

/// Certificates of custom domains, from the same counters as the JSON
/// stats (binds refused by `custom-cert-rate` are in `refusals`).
fn register_custom_certs(registry: &mut Registry, app: &App) {
    let counters = &app.custom.certs.counters;
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
        ConstGauge::new(i64::try_from(app.custom.certs.cached()).unwrap_or(i64::MAX)),
    );
}
