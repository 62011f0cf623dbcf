//! Every counter of the process in one place: the JSON stats, the
//! Prometheus event metrics and each tunnel's [`Traffic`].
//!
//! One event is recorded by one call here (a proxied request, a channel
//! opened, a refusal, bytes moved), which bumps every store that counts it,
//! so the stats endpoint, `/metrics` and the admin API never disagree.
//! Counters are plain atomics (or `prometheus-client` counters) bumped on
//! the hot path; gauges are held by RAII guards ([`Gauge`]) so an early
//! return or a dropped future can never leave them skewed.
//!
//! Everything here is process-wide ([`COUNTERS`]): one server per process,
//! and every module reaches it without a handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Label sets of the event metrics.
pub type Labels = Vec<(&'static str, &'static str)>;

/// The process's counters.
pub static COUNTERS: LazyLock<Counters> = LazyLock::new(Counters::default);

/// Process-wide counters: the JSON stats' atomics and the event metrics.
#[derive(Default)]
pub struct Counters {
    pub stats: Stats,
    pub metrics: Metrics,
}

/// The numbers of the JSON stats endpoint that are counted, not read from
/// state (field names are a contract: see `ops::stats`).
#[derive(Default)]
pub struct Stats {
    pub total_connections: AtomicU64,
    pub total_requests: AtomicU64,
    pub active_websockets: AtomicU64,
    pub active_requests: AtomicU64,
    pub total_blocked: AtomicU64,
    pub total_rate_limited: AtomicU64,
    /// Byte streams (`forwarded-tcpip` channels) opened to users' apps.
    pub channels_opened: AtomicU64,
    /// Requests sent over a pooled keep-alive connection instead.
    pub channels_reused: AtomicU64,
    /// SSH connections (`ssh -J`, `-L`, `-W`) let through to a private
    /// alias.
    pub private_connections: AtomicU64,
    /// `direct-tcpip` opens refused: no such alias, a key not allowed,
    /// or a target that is no private alias at all.
    pub private_refused: AtomicU64,
    /// Visitors (a TLS handshake, a request, a raw connection) that waited
    /// for a new tunnel's options, and for how long in all (ms).
    pub held_for_options: AtomicU64,
    pub held_for_options_ms: AtomicU64,
}

/// The `code` label of `http_requests`, in the order of `Metrics::responses`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where `status` counts in `STATUS_CLASSES`.
fn class_of(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// Event metrics (Prometheus), rendered by `ops::metrics`.
pub struct Metrics {
    pub ssh_connections: Family<Labels, Counter>,
    pub http_requests: Family<Labels, Counter>,
    /// The series of `http_requests` by class (1xx … 5xx), looked up once:
    /// every response counts into one.
    responses: [Counter; 5],
    pub http_duration: Histogram,
    pub refusals: Family<Labels, Counter>,
    pub channel_open_failures: Family<Labels, Counter>,
    pub channel_open_duration: Histogram,
    pub bytes: Family<Labels, Counter>,
    /// The two series of `bytes`, looked up once: they count every read and
    /// write of every stream.
    bytes_in: Counter,
    bytes_out: Counter,
    /// Cluster: visitors' requests and connections forwarded to the node
    /// holding their tunnel, by kind (`http`, `raw`).
    pub forwarded: Family<Labels, Counter>,
    /// Cluster: bytes sent to (`out`) and received from (`in`) other nodes
    /// on forwarded streams.
    pub forwarded_bytes: Family<Labels, Counter>,
    /// Cluster: link connections that failed or broke.
    pub link_errors: Counter,
    /// `direct-tcpip` opens to private aliases, by result (`relayed`, or
    /// the refusal: `not-private`, `needs-key`, `not-allowed`, `no-device`,
    /// `device-failed`).
    pub private_connections: Family<Labels, Counter>,
    /// How long visitors waited for a new tunnel's options.
    pub options_hold: Histogram,
    /// Refusals by a user's plan, by plan and limit (`max-tunnels`,
    /// `transfer`, `requests`): plan names come from the plans file, so the
    /// cardinality is bounded by it.
    pub quota_refusals: Family<Vec<(&'static str, String)>, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let bytes: Family<Labels, Counter> = Family::default();
        let http_requests: Family<Labels, Counter> = Family::default();
        Metrics {
            responses: STATUS_CLASSES
                .map(|class| http_requests.get_or_create_owned(&vec![("code", class)])),
            http_requests,
            bytes_in: bytes.get_or_create_owned(&vec![("direction", "in")]),
            bytes_out: bytes.get_or_create_owned(&vec![("direction", "out")]),
            bytes,
            ssh_connections: Family::default(),
            // 1 ms … ~33 s.
            http_duration: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            refusals: Family::default(),
            channel_open_failures: Family::default(),
            // 0.5 ms … ~16 s.
            channel_open_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            forwarded: Family::default(),
            forwarded_bytes: Family::default(),
            link_errors: Counter::default(),
            private_connections: Family::default(),
            // 1 ms … ~8 s.
            options_hold: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            quota_refusals: Family::default(),
        }
    }
}

/// Traffic of one tunnel, for the admin API and the Ctrl+C summary.
#[derive(Default)]
pub struct Traffic {
    /// HTTP requests, or TCP/TLS connections, accepted for the tunnel.
    pub requests: AtomicU64,
    /// Bytes sent to the client's app (visitor → app).
    pub bytes_in: AtomicU64,
    /// Bytes received from the client's app (app → visitor).
    pub bytes_out: AtomicU64,
    /// Requests answered with a 5xx (by the app, or by burrow when the app
    /// could not be reached).
    pub errors: AtomicU64,
    /// Who reached the app signed in (tunnels behind `login=` only).
    pub signed_in: SignedIn,
}

/// The visitors most recently let through sign-in, newest first, for the
/// admin API: at most [`SignedIn::KEPT`] of them, so a tunnel visited by
/// thousands of people keeps a bounded list.
#[derive(Default)]
pub struct SignedIn(std::sync::Mutex<std::collections::VecDeque<Visit>>);

/// One signed-in visitor of a tunnel.
#[derive(Clone, Debug)]
pub struct Visit {
    /// Their label: the e-mail, else the provider's name for them.
    pub user: String,
    /// Requests of theirs that reached the app.
    pub requests: u64,
    /// When the last one did.
    pub last_seen: std::time::SystemTime,
}

impl SignedIn {
    /// How many visitors a tunnel remembers.
    pub const KEPT: usize = 16;

    /// `user` reached the app once more.
    pub fn saw(&self, user: &str) {
        let mut visits = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::SystemTime::now();
        let mut visit = match visits.iter().position(|v| v.user == user) {
            Some(at) => visits.remove(at).expect("a position in range"),
            None => Visit {
                user: user.to_string(),
                requests: 0,
                last_seen: now,
            },
        };
        visit.requests = visit.requests.saturating_add(1);
        visit.last_seen = now;
        visits.push_front(visit);
        visits.truncate(Self::KEPT);
    }

    /// The visitors, newest first.
    pub fn recent(&self) -> Vec<Visit> {
        let visits = self.0.lock().unwrap_or_else(|e| e.into_inner());
        visits.iter().cloned().collect()
    }
}

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

/// Why a stream to a user's app could not be opened, as metrics label it.
#[derive(Clone, Copy)]
pub enum OpenFailure {
    Refused,
    Timeout,
    Gone,
    /// A limit of the client's connection (counted as a refusal too).
    Limited,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    /// A TCP connection reached the SSH listener.
    pub fn ssh_connected(&self) {
        bump(&self.stats.total_connections);
    }

    /// How an SSH connection's admission or login ended.
    pub fn ssh_outcome(&self, outcome: SshOutcome) {
        let outcome = match outcome {
            SshOutcome::Accepted => "accepted",
            SshOutcome::Refused => "refused",
            SshOutcome::Blocked => "blocked",
            SshOutcome::Failed => "failed",
        };
        self.metrics
            .ssh_connections
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// A limit refused someone (its flag name).
    pub fn refused(&self, limit: &'static str) {
        bump(&self.stats.total_rate_limited);
        self.metrics
            .refusals
            .get_or_create(&vec![("limit", limit)])
            .inc();
    }

    /// A user's plan refused something (`limit`: `max-tunnels`,
    /// `transfer`, `requests`).
    pub fn quota_refused(&self, plan: &str, limit: &str) {
        self.metrics
            .quota_refusals
            .get_or_create(&vec![
                ("plan", plan.to_string()),
                ("limit", limit.to_string()),
            ])
            .inc();
    }

    /// An IP was blocked (automatically or by the operator).
    pub fn blocked(&self) {
        bump(&self.stats.total_blocked);
    }

    /// A request passed every check and goes to the tunnel's app.
    pub fn request_proxied(&self, traffic: &Traffic) {
        bump(&self.stats.total_requests);
        bump(&traffic.requests);
    }

    /// A TCP or passthrough connection was relayed to the tunnel's app.
    pub fn connection_relayed(&self, traffic: &Traffic) {
        bump(&traffic.requests);
    }

    /// A response to a visitor (from the app or from burrow itself), and
    /// how long it took until its head. A 5xx for a tunnel counts as its
    /// error.
    pub fn response(&self, status: u16, took: Duration, traffic: Option<&Traffic>) {
        self.metrics.responses[class_of(status)].inc();
        self.metrics.http_duration.observe(took.as_secs_f64());
        if let (Some(traffic), 500..) = (traffic, status) {
            bump(&traffic.errors);
        }
    }

    /// A visitor waited `held` for a new tunnel's options (nothing is
    /// counted when it did not wait).
    pub fn held_for_options(&self, held: Duration) {
        if held.is_zero() {
            return;
        }
        bump(&self.stats.held_for_options);
        let ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX);
        self.stats
            .held_for_options_ms
            .fetch_add(ms, Ordering::Relaxed);
        self.metrics.options_hold.observe(held.as_secs_f64());
    }

    /// A stream to a user's app was opened, `took` after asking.
    pub fn stream_opened(&self, took: Duration) {
        bump(&self.stats.channels_opened);
        self.metrics
            .channel_open_duration
            .observe(took.as_secs_f64());
    }

    /// A stream to a user's app could not be opened.
    pub fn stream_failed(&self, why: OpenFailure) {
        let reason = match why {
            OpenFailure::Refused => "refused",
            OpenFailure::Timeout => "timeout",
            OpenFailure::Gone => "gone",
            OpenFailure::Limited => "limited",
        };
        self.metrics
            .channel_open_failures
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// A request went over a pooled keep-alive connection.
    pub fn stream_reused(&self) {
        bump(&self.stats.channels_reused);
    }

    /// Bytes written to a user's app.
    pub fn bytes_in(&self, traffic: &Traffic, n: u64) {
        traffic.bytes_in.fetch_add(n, Ordering::Relaxed);
        self.metrics.bytes_in.inc_by(n);
    }

    /// Bytes read from a user's app.
    pub fn bytes_out(&self, traffic: &Traffic, n: u64) {
        traffic.bytes_out.fetch_add(n, Ordering::Relaxed);
        self.metrics.bytes_out.inc_by(n);
    }

    /// The running totals the dashboard's history samples, derived from the
    /// responses by class, so a request is counted once.
    pub fn totals(&self) -> Totals {
        let responses = &self.metrics.responses;
        Totals {
            requests: responses.iter().map(Counter::get).sum(),
            errors: responses[class_of(500)].get(),
            bytes_in: self.metrics.bytes_in.get(),
            bytes_out: self.metrics.bytes_out.get(),
        }
    }

    /// A visitor's request (`http`) or connection (`raw`) went to the node
    /// holding its tunnel.
    pub fn forwarded(&self, kind: &'static str) {
        self.metrics
            .forwarded
            .get_or_create(&vec![("kind", kind)])
            .inc();
    }

    /// Bytes moved on forwarded streams (`in`: from other nodes).
    pub fn forwarded_bytes(&self, direction: &'static str, n: u64) {
        self.metrics
            .forwarded_bytes
            .get_or_create(&vec![("direction", direction)])
            .inc_by(n);
    }

    /// A `direct-tcpip` to a private alias was let through (`relayed`) or
    /// refused (the reason).
    pub fn private_connection(&self, result: &'static str) {
        match result {
            "relayed" => bump(&self.stats.private_connections),
            _ => bump(&self.stats.private_refused),
        }
        self.metrics
            .private_connections
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// A link connection to another node failed or broke.
    pub fn link_error(&self) {
        self.metrics.link_errors.inc();
    }

    /// Requests in flight now.
    pub fn requests_in_flight(&self) -> u64 {
        self.stats.active_requests.load(Ordering::Relaxed)
    }
}

/// Holds a gauge up for as long as it lives (a request, a WebSocket).
pub struct Gauge(&'static AtomicU64);

impl Gauge {
    /// A proxied request in flight.
    pub fn request() -> Gauge {
        Gauge::hold(&COUNTERS.stats.active_requests)
    }

    /// An open WebSocket.
    pub fn websocket() -> Gauge {
        Gauge::hold(&COUNTERS.stats.active_websockets)
    }

    fn hold(gauge: &'static AtomicU64) -> Gauge {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Totals since the process started (see [`Counters::totals`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_in_visitors_are_kept_newest_first_and_bounded() {
        let signed_in = SignedIn::default();
        signed_in.saw("alice@example.com");
        signed_in.saw("bob@example.com");
        signed_in.saw("alice@example.com");
        let recent = signed_in.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].user, "alice@example.com");
        assert_eq!(recent[0].requests, 2);
        assert_eq!(recent[1].requests, 1);
        for n in 0..40 {
            signed_in.saw(&format!("visitor{n}@example.com"));
        }
        let recent = signed_in.recent();
        assert_eq!(recent.len(), SignedIn::KEPT);
        assert_eq!(recent[0].user, "visitor39@example.com");
    }
}
