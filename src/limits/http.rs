//! Visitor limits of one tunnel: token buckets per visitor and per tunnel,
//! concurrent requests and WebSockets per visitor and per tunnel.
//!
//! Checks run cheapest-first and the per-visitor bucket before the tunnel's,
//! so a throttled visitor never spends the tunnel's budget. The number of
//! visitors tracked is bounded ([`MAX_TRACKED_VISITORS`]); beyond it, new
//! visitors share one overflow bucket instead of growing memory.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use super::{ip_key, Activity, Refusal};
use crate::config::{LimitArgs, Rate};

/// Visitors with their own bucket per tunnel. Once that many have one,
/// visitors without a request in flight share one overflow bucket until
/// pruning frees room.
pub const MAX_TRACKED_VISITORS: usize = 1024;

/// The key all untracked visitors share.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

/// Per-tunnel visitor limits.
pub struct TunnelGate {
    visitor_bucket: Option<(DefaultKeyedRateLimiter<IpAddr>, String)>,
    tunnel_bucket: Option<(DefaultDirectRateLimiter, String)>,
    max_inflight_per_visitor: u32,
    max_inflight_per_tunnel: u32,
    max_websockets_per_visitor: u32,
    max_websockets_per_tunnel: u32,
    max_conns_per_visitor: u32,
    max_conns_per_tunnel: u32,
    inflight: Counts,
    websockets: Counts,
    /// Relayed raw connections (TCP tunnels, TLS passthrough).
    connections: Counts,
    /// `--tcp-bandwidth`: KiB per second for relayed connections.
    bandwidth: Option<DefaultDirectRateLimiter>,
    /// Wrong Basic-auth passwords per visitor (`auth=`); `None` when
    /// `--auth-attempts-rate` is 0.
    auth_attempts: Option<AuthAttempts>,
    /// Last time a request or WebSocket started or ended (tunnel idle timeout).
    pub activity: Activity,
}

/// Wrong Basic-auth passwords per visitor: a bucket of
/// `--auth-attempts-burst`, refilled at `--auth-attempts-rate`. A visitor
/// who has spent it is locked out until its next attempt is due, and while
/// locked out no password is checked, the right one included: a guesser
/// cannot tell a hit from a refusal faster than the rate allows.
struct AuthAttempts {
    /// Wrong passwords per visitor (`ip_key`).
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Visitors locked out, and until when (only those: pruned as they
    /// expire).
    locked: DashMap<IpAddr, Instant>,
    /// The rule as the refusal states it: `10 in a row, then 6/m`.
    rule: String,
}

impl AuthAttempts {
    fn new(limits: &LimitArgs) -> Option<AuthAttempts> {
        let (rate, burst) = (limits.auth_attempts_rate, limits.auth_attempts_burst);
        Some(AuthAttempts {
            failures: keyed_limiter(bucket_quota(rate, burst)?),
            locked: small_map(),
            rule: format!("{} in a row, then {rate}", burst.max(1)),
        })
    }

    fn refusal(&self, wait: Duration) -> Refusal {
        Refusal::new(
            "auth-attempts-rate",
            format!(
                "Too many wrong passwords from this visitor ({}); no password is checked until the next attempt is due.",
                self.rule
            ),
        )
        .retry_after(wait)
    }

    /// A lock-out that has passed is left for [`AuthAttempts::prune`].
    fn allowed(&self, visitor: IpAddr) -> Result<(), Refusal> {
        let until = self.locked.get(&ip_key(visitor)).map(|until| *until);
        match until.and_then(|until| until.checked_duration_since(Instant::now())) {
            Some(wait) if !wait.is_zero() => Err(self.refusal(wait)),
            _ => Ok(()),
        }
    }

    fn failed(&self, visitor: IpAddr) -> Result<(), Refusal> {
        let key = ip_key(visitor);
        self.failures.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.failures.clock().now());
            self.locked.insert(key, Instant::now() + wait);
            self.refusal(wait)
        })
    }

    fn prune(&self) {
        self.failures.retain_recent();
        let now = Instant::now();
        self.locked.retain(|_, until| *until > now);
    }
}

/// Shards of each per-tunnel map. DashMap's default grows with the CPU
/// count (4 × CPUs, rounded up: 128 on a 32-core host, ~16 KiB a map) and a
/// tunnel has four such maps; a tunnel's visitors rarely contend, so a few
/// shards keep an idle tunnel at the same size on any machine.
const SHARDS: usize = 4;

fn small_map<V>() -> DashMap<IpAddr, V> {
    DashMap::with_shard_amount(SHARDS)
}

/// A keyed rate limiter whose map is [`small_map`].
fn keyed_limiter(quota: Quota) -> DefaultKeyedRateLimiter<IpAddr> {
    governor::RateLimiter::new(quota, small_map(), Default::default())
}

/// Counts per visitor plus a total.
struct Counts {
    per_visitor: DashMap<IpAddr, u32>,
    total: AtomicU32,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            per_visitor: small_map(),
            total: AtomicU32::new(0),
        }
    }
}

impl Counts {
    /// Takes a slot unless either cap is reached; `None` names which one.
    fn acquire(&self, key: IpAddr, per_visitor: u32, total: u32) -> Result<(), Cap> {
        if total > 0 && self.total.load(Ordering::Relaxed) >= total {
            return Err(Cap::Tunnel);
        }
        let mut mine = self.per_visitor.entry(key).or_insert(0);
        if per_visitor > 0 && *mine >= per_visitor {
            return Err(Cap::Visitor);
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, key: IpAddr) {
        self.total.fetch_sub(1, Ordering::Relaxed);
        if let dashmap::Entry::Occupied(mut entry) = self.per_visitor.entry(key) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }

    fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }
}

enum Cap {
    Visitor,
    Tunnel,
}

/// What a slot is for; decides which counts it uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SlotKind {
    Request,
    WebSocket,
    Connection,
}

/// A held request or WebSocket slot; released on drop.
pub struct Slot {
    gate: Arc<TunnelGate>,
    key: IpAddr,
    kind: SlotKind,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.counts(self.kind).release(self.key);
        self.gate.activity.touch();
    }
}

/// A token bucket of `rate` and `burst`; `None` when the rate is unlimited.
pub fn bucket_quota(rate: Rate, burst: u32) -> Option<Quota> {
    if rate.is_unlimited() {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate.per_second);
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst.max(1))?))
}

/// A limiter counting KiB, with a burst of one second's worth (at least
/// 64 KiB, so one relay buffer always fits).
fn bandwidth_limiter(bytes_per_second: u64) -> Option<DefaultDirectRateLimiter> {
    let kib = NonZeroU32::new(
        u32::try_from(bytes_per_second / 1024)
            .unwrap_or(u32::MAX)
            .max(1),
    )?;
    if bytes_per_second == 0 {
        return None;
    }
    let burst = NonZeroU32::new(kib.get().max(64)).expect("non-zero");
    Some(DefaultDirectRateLimiter::direct(
        Quota::per_second(kib).allow_burst(burst),
    ))
}

fn describe(rate: Rate, burst: u32) -> String {
    format!("{} requests/s, burst {burst}", rate.per_second)
}

impl TunnelGate {
    pub fn new(limits: &LimitArgs) -> Self {
        TunnelGate {
            visitor_bucket: bucket_quota(limits.visitor_rate, limits.visitor_burst).map(|q| {
                (
                    keyed_limiter(q),
                    describe(limits.visitor_rate, limits.visitor_burst),
                )
            }),
            tunnel_bucket: bucket_quota(limits.tunnel_rate, limits.tunnel_burst).map(|q| {
                (
                    DefaultDirectRateLimiter::direct(q),
                    describe(limits.tunnel_rate, limits.tunnel_burst),
                )
            }),
            max_inflight_per_visitor: limits.max_inflight_per_visitor,
            max_inflight_per_tunnel: limits.max_inflight_per_tunnel,
            max_websockets_per_visitor: limits.max_websockets_per_visitor,
            max_websockets_per_tunnel: limits.max_websockets_per_tunnel,
            max_conns_per_visitor: limits.tcp_max_conns_per_visitor,
            max_conns_per_tunnel: limits.tcp_max_conns_per_tunnel,
            inflight: Counts::default(),
            websockets: Counts::default(),
            connections: Counts::default(),
            bandwidth: bandwidth_limiter(limits.tcp_bandwidth),
            auth_attempts: AuthAttempts::new(limits),
            activity: Activity::default(),
        }
    }

    fn counts(&self, kind: SlotKind) -> &Counts {
        match kind {
            SlotKind::Request => &self.inflight,
            SlotKind::WebSocket => &self.websockets,
            SlotKind::Connection => &self.connections,
        }
    }

    /// Admits one more relayed connection (TCP tunnel, TLS passthrough)
    /// from `visitor`.
    pub fn admit_connection(self: &Arc<Self>, visitor: IpAddr) -> Result<Slot, Refusal> {
        self.slot(ip_key(visitor), SlotKind::Connection)
    }

    /// Waits until `bytes` more may be relayed under `--tcp-bandwidth`.
    pub async fn spend_bandwidth(&self, bytes: usize) {
        let Some(limiter) = &self.bandwidth else {
            return;
        };
        let cells = bytes.div_ceil(1024).max(1);
        let cells = NonZeroU32::new(u32::try_from(cells).unwrap_or(u32::MAX)).expect("non-zero");
        // Chunks are at most the relay buffer (16 KiB), under the burst.
        let _ = limiter.until_n_ready(cells).await;
    }

    /// Requests in flight plus relayed connections.
    pub fn open(&self) -> u32 {
        self.inflight.total() + self.connections.total()
    }

    /// The bucket key for a visitor: its IP key, or the shared overflow key
    /// once too many visitors are tracked.
    fn visitor_key(&self, visitor: IpAddr) -> IpAddr {
        let key = ip_key(visitor);
        match &self.visitor_bucket {
            Some((limiter, _)) if limiter.len() >= MAX_TRACKED_VISITORS => {
                // Known visitors keep their bucket; new ones share.
                if self.inflight.per_visitor.contains_key(&key) {
                    key
                } else {
                    OVERFLOW
                }
            }
            _ => key,
        }
    }

    /// Admits one request from `visitor`: buckets, then the in-flight caps.
    pub fn admit_request(self: &Arc<Self>, visitor: IpAddr) -> Result<Slot, Refusal> {
        let key = self.visitor_key(visitor);
        // The limiters' own clocks: building a quanta clock per request cost
        // ~7% of the proxy's CPU.
        if let Some((limiter, text)) = &self.visitor_bucket {
            if let Err(not_until) = limiter.check_key(&key) {
                return Err(Refusal::new(
                    "visitor-rate",
                    format!("Rate limit for this visitor: {text}."),
                )
                .retry_after(not_until.wait_time_from(limiter.clock().now())));
            }
        }
        if let Some((limiter, text)) = &self.tunnel_bucket {
            if let Err(not_until) = limiter.check() {
                return Err(Refusal::new(
                    "tunnel-rate",
                    format!("Rate limit for this tunnel, all visitors together: {text}."),
                )
                .retry_after(not_until.wait_time_from(limiter.clock().now())));
            }
        }
        self.slot(key, SlotKind::Request)
    }

    /// Admits one more WebSocket from `visitor`.
    pub fn admit_websocket(self: &Arc<Self>, visitor: IpAddr) -> Result<Slot, Refusal> {
        self.slot(self.visitor_key(visitor), SlotKind::WebSocket)
    }

    fn slot(self: &Arc<Self>, key: IpAddr, kind: SlotKind) -> Result<Slot, Refusal> {
        let (per_visitor, total) = match kind {
            SlotKind::Request => (self.max_inflight_per_visitor, self.max_inflight_per_tunnel),
            SlotKind::WebSocket => (
                self.max_websockets_per_visitor,
                self.max_websockets_per_tunnel,
            ),
            SlotKind::Connection => (self.max_conns_per_visitor, self.max_conns_per_tunnel),
        };
        match self.counts(kind).acquire(key, per_visitor, total) {
            Ok(()) => {
                self.activity.touch();
                Ok(Slot {
                    gate: Arc::clone(self),
                    key,
                    kind,
                })
            }
            Err(cap) => Err(refusal(kind, cap, per_visitor, total)),
        }
    }

    /// `Err` while `visitor` is locked out for wrong Basic-auth passwords:
    /// then no password is checked.
    pub fn auth_allowed(&self, visitor: IpAddr) -> Result<(), Refusal> {
        self.auth_attempts
            .as_ref()
            .map_or(Ok(()), |attempts| attempts.allowed(visitor))
    }

    /// Records a wrong Basic-auth password; `Err` once the visitor has
    /// used up its attempts (it is locked out until the next is due).
    pub fn auth_failure(&self, visitor: IpAddr) -> Result<(), Refusal> {
        self.auth_attempts
            .as_ref()
            .map_or(Ok(()), |attempts| attempts.failed(visitor))
    }

    /// Requests and WebSockets open right now.
    pub fn busy(&self) -> bool {
        self.inflight.total() > 0 || self.websockets.total() > 0 || self.connections.total() > 0
    }

    /// Forgets visitors whose buckets are full again.
    pub fn prune(&self) {
        if let Some((limiter, _)) = &self.visitor_bucket {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(attempts) = &self.auth_attempts {
            attempts.prune();
        }
    }
}

fn refusal(kind: SlotKind, cap: Cap, per_visitor: u32, total: u32) -> Refusal {
    let retry = Duration::from_secs(1);
    match (kind, cap) {
        (SlotKind::Request, Cap::Visitor) => Refusal::new(
            "max-inflight-per-visitor",
            format!("Too many requests in progress from this visitor (limit {per_visitor})."),
        ),
        (SlotKind::Request, Cap::Tunnel) => Refusal::new(
            "max-inflight-per-tunnel",
            format!("This tunnel is busy: {total} requests in progress."),
        ),
        (SlotKind::WebSocket, Cap::Visitor) => Refusal::new(
            "max-websockets-per-visitor",
            format!("Too many open WebSockets from this visitor (limit {per_visitor})."),
        ),
        (SlotKind::WebSocket, Cap::Tunnel) => Refusal::new(
            "max-websockets-per-tunnel",
            format!("Too many open WebSockets on this tunnel (limit {total})."),
        ),
        (SlotKind::Connection, Cap::Visitor) => Refusal::new(
            "tcp-max-conns-per-visitor",
            format!("Too many open connections from this visitor (limit {per_visitor})."),
        ),
        (SlotKind::Connection, Cap::Tunnel) => Refusal::new(
            "tcp-max-conns-per-tunnel",
            format!("Too many open connections on this tunnel (limit {total})."),
        ),
    }
    .retry_after(retry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn gate(args: &[&str]) -> Arc<TunnelGate> {
        let mut argv = vec!["burrow"];
        argv.extend_from_slice(args);
        let config = crate::config::Config::try_parse_from(argv).unwrap();
        Arc::new(TunnelGate::new(&config.limits))
    }

    #[test]
    fn throttled_visitor_does_not_spend_the_tunnel_budget() {
        let g = gate(&[
            "--visitor-rate",
            "1/h",
            "--visitor-burst",
            "2",
            "--tunnel-rate",
            "1/h",
            "--tunnel-burst",
            "3",
        ]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(g.admit_request(a).is_ok());
        assert!(g.admit_request(a).is_ok());
        for _ in 0..50 {
            let refusal = g.admit_request(a).err().unwrap();
            assert_eq!(refusal.limit, "visitor-rate");
            assert!(refusal.retry_secs().unwrap() > 0);
        }
        // The tunnel bucket still has one token for someone else.
        assert!(g.admit_request(b).is_ok());
        assert_eq!(g.admit_request(b).err().unwrap().limit, "tunnel-rate");
    }

    #[test]
    fn inflight_caps_release_on_drop() {
        let g = gate(&[
            "--max-inflight-per-visitor",
            "1",
            "--max-inflight-per-tunnel",
            "2",
        ]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let first = g.admit_request(a).unwrap();
        assert_eq!(
            g.admit_request(a).err().unwrap().limit,
            "max-inflight-per-visitor"
        );
        let _second = g.admit_request(b).unwrap();
        assert_eq!(
            g.admit_request(c).err().unwrap().limit,
            "max-inflight-per-tunnel"
        );
        assert!(g.busy());
        drop(first);
        assert!(g.admit_request(c).is_ok());
    }

    #[test]
    fn websocket_caps() {
        let g = gate(&[
            "--max-websockets-per-visitor",
            "1",
            "--max-websockets-per-tunnel",
            "5",
        ]);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let _ws = g.admit_websocket(a).unwrap();
        assert_eq!(
            g.admit_websocket(same_64).err().unwrap().limit,
            "max-websockets-per-visitor"
        );
    }

    #[test]
    fn visitors_beyond_the_cap_share_a_bucket() {
        let g = gate(&[
            "--visitor-rate",
            "1/h",
            "--visitor-burst",
            "1",
            "--tunnel-rate",
            "0",
        ]);
        for i in 0..MAX_TRACKED_VISITORS as u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(g.admit_request(ip).is_ok());
        }
        // Two new visitors now share the overflow bucket (burst 1).
        assert!(g.admit_request("192.0.2.200".parse().unwrap()).is_ok());
        assert!(g.admit_request("192.0.2.201".parse().unwrap()).is_err());
        if let Some((limiter, _)) = &g.visitor_bucket {
            assert!(limiter.len() <= MAX_TRACKED_VISITORS + 1);
        }
    }
}
