//! Abuse limits: who may connect, how fast, and how much.
//!
//! - [`ssh`]: per-IP SSH admission (connection rate, handshakes, violations,
//!   blocks).
//! - [`http`]: per-tunnel visitor limits (token buckets, in-flight requests,
//!   WebSockets, relayed connections, bandwidth).
//!
//! Every refusal carries a [`Refusal`] that says which limit was hit and for
//! how long, so the SSH user or the visitor can be told exactly that; and
//! every refusal goes through [`Refusals::refuse`], which counts it and logs
//! it once per IP and limit per minute.
//!
//! (Tunnel idle and lifetime limits live with the tunnels, in
//! `tunnel::expiry`.)

pub mod http;
pub mod ssh;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unit limits count by: an IPv4 address, or the /64 an IPv6 address is
/// in (one IPv6 host usually controls a whole /64).
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// When something last moved, cheap to update from any task.
pub struct Activity(AtomicU64);

impl Default for Activity {
    fn default() -> Self {
        Activity(AtomicU64::new(now_ms()))
    }
}

impl Activity {
    pub fn touch(&self) {
        self.0.store(now_ms(), Ordering::Relaxed);
    }

    /// How long since the last touch.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// Milliseconds since the process started, on tokio's clock (so tests with
/// paused time see it move).
fn now_ms() -> u64 {
    static START: OnceLock<tokio::time::Instant> = OnceLock::new();
    START
        .get_or_init(tokio::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Which limit refused something, in words, and when trying again may work.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The flag name of the limit, e.g. `max-tunnels-per-ip`.
    pub limit: &'static str,
    /// A sentence for the person refused.
    pub message: String,
    /// When a retry can succeed, if that is known.
    pub retry_after: Option<Duration>,
}

impl Refusal {
    pub fn new(limit: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            limit,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// Whole seconds to wait, rounded up, at least 1.
    pub fn retry_secs(&self) -> Option<u64> {
        self.retry_after
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .map(|s| s.max(1))
    }
}

/// Who was refused: a client of the SSH server (logged as a warning: an
/// operator wants to see who hammers the server), or a visitor of a
/// tunnel (logged at info: visitors' floods are the tunnel owner's
/// business, and never count against anyone's SSH access).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Visitor,
}

/// The one place a refusal is recorded: counted in the stats and metrics,
/// and logged once per IP and limit per minute.
#[derive(Default)]
pub struct Refusals {
    logged: LogOnce,
}

impl Refusals {
    /// `refusal` turned `ip` away from `what` (e.g. `forward`, or the
    /// tunnel a request was for).
    pub fn refuse(&self, refusal: &Refusal, ip: IpAddr, side: Side, what: &str) {
        crate::counters::COUNTERS.refused(refusal.limit);
        if !self.logged.first(ip, refusal.limit) {
            return;
        }
        let (limit, reason) = (refusal.limit, &refusal.message);
        match side {
            Side::Client => {
                tracing::warn!(%ip, limit, %reason, what, "refused")
            }
            Side::Visitor => {
                tracing::info!(visitor = %ip, limit, %reason, what, "refused")
            }
        }
    }

    /// `refusal` turned away something no visitor or client asked for
    /// itself (a server-wide rate, such as certificate orders): counted
    /// like every refusal, logged once per limit per minute.
    pub fn refuse_unattributed(&self, refusal: &Refusal, what: &str) {
        crate::counters::COUNTERS.refused(refusal.limit);
        let nobody = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        if self.logged.first(nobody, refusal.limit) {
            let (limit, reason) = (refusal.limit, &refusal.message);
            tracing::warn!(limit, %reason, what, "refused");
        }
    }

    /// Forgets refusals logged more than a minute ago.
    pub fn prune(&self) {
        self.logged.prune();
    }
}

/// Remembers which (IP, limit) refusals were logged recently, so a flood
/// produces one log line per minute per class instead of one per request.
#[derive(Default)]
struct LogOnce {
    seen: dashmap::DashMap<(IpAddr, &'static str), Instant>,
}

impl LogOnce {
    const WINDOW: Duration = Duration::from_secs(60);

    /// True the first time (per window) `limit` refuses `ip`.
    fn first(&self, ip: IpAddr, limit: &'static str) -> bool {
        let now = Instant::now();
        let mut fresh = false;
        self.seen
            .entry((ip_key(ip), limit))
            .and_modify(|last| {
                if now.duration_since(*last) >= Self::WINDOW {
                    *last = now;
                    fresh = true;
                }
            })
            .or_insert_with(|| {
                fresh = true;
                now
            });
        fresh
    }

    fn prune(&self) {
        let now = Instant::now();
        self.seen
            .retain(|_, last| now.duration_since(*last) < Self::WINDOW);
    }
}

/// How often the per-IP state is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// Prunes the per-IP state (blocks, connection windows, logged refusals)
/// every 30 s until shutdown, so rotating addresses cannot grow it.
pub async fn housekeep(
    ip_guard: std::sync::Arc<ssh::IpGuard>,
    refusals: std::sync::Arc<Refusals>,
    shutdown: crate::shutdown::Shutdown,
) {
    let mut ticker = shutdown.ticker(PRUNE_EVERY);
    while ticker.tick().await {
        for (ip, block) in ip_guard.prune() {
            tracing::info!(%ip, reason = %block.reason, "ip unblocked: block expired");
        }
        refusals.prune();
    }
}

/// A timeout flag's value as a bound for `tokio::time::timeout`: 0 means
/// never, which is `Duration::MAX` there (tokio's far future).
pub fn zero_is_never(limit: Duration) -> Duration {
    if limit.is_zero() {
        Duration::MAX
    } else {
        limit
    }
}

/// `90 s`, `2 min`, `1 h 5 min`: durations in messages people read.
/// `1.2 MB`: sizes as people read them (decimal units).
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().si().to_string()
}

pub fn human(duration: Duration) -> String {
    let secs = duration
        .as_secs()
        .max(u64::from(duration.subsec_nanos() > 0));
    match secs {
        0..=119 => format!("{secs} s"),
        120..=7199 => format!("{} min", secs.div_ceil(60)),
        _ if secs % 3600 == 0 => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600).div_ceil(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert_eq!(ip_key(mapped), "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn retry_rounds_up() {
        let r = Refusal::new("x", "y").retry_after(Duration::from_millis(1200));
        assert_eq!(r.retry_secs(), Some(2));
        let r = Refusal::new("x", "y").retry_after(Duration::from_millis(10));
        assert_eq!(r.retry_secs(), Some(1));
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(42)), "42 s");
        assert_eq!(human(Duration::from_secs(600)), "10 min");
        assert_eq!(human(Duration::from_secs(7200)), "2 h");
        assert_eq!(human(Duration::from_secs(3900 + 3600)), "2 h 5 min");
    }
}
