//! SSH admission per source IP: new connections per sliding minute,
//! concurrent unauthenticated handshakes, violations and blocks.
//!
//! Only SSH-side misbehaviour counts as a violation. What visitors do to a
//! tunnel never does, so a visitor flood can never get the tunnel's owner
//! blocked.
//!
//! All maps are pruned by [`IpGuard::prune`] (called periodically), and every
//! entry expires within the longest window it serves (a minute, the violation
//! window, the block), so rotating source addresses cannot grow memory
//! without bound.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use super::{human, ip_key, Refusal};
use crate::config::LimitArgs;

const MINUTE: Duration = Duration::from_secs(60);
/// Violations older than this are forgotten.
const VIOLATION_WINDOW: Duration = Duration::from_secs(3600);

/// A block on one IP key.
#[derive(Debug, Clone)]
pub struct Block {
    pub until: Instant,
    /// The same moment on the wall clock, for messages.
    pub until_wall: SystemTime,
    pub reason: String,
}

impl Block {
    /// `2026-11-22 14:05:09 UTC`.
    pub fn until_utc(&self) -> String {
        let text = humantime::format_rfc3339_seconds(self.until_wall).to_string();
        format!("{} UTC", text.trim_end_matches('Z').replace('T', " "))
    }
}

/// What happened when an IP connected.
pub enum Admission {
    /// Go ahead; the permit holds a handshake slot until authentication.
    Allowed(HandshakePermit),
    /// Blocked: drop before the SSH version exchange.
    Blocked(Block),
    /// Over a limit: refuse with the reason. `newly_blocked` is set when this
    /// violation tipped the IP into a block.
    Refused {
        refusal: Refusal,
        newly_blocked: Option<Block>,
        /// The handshake limits are refused cheaply before the SSH version
        /// exchange; the connection rate after it, so the client can print
        /// the reason.
        before_version: bool,
    },
}

/// Which connections `--max-conns-per-minute` counted.
#[derive(Clone, Copy)]
enum RateScope {
    /// This node's, in its own sliding minute.
    ThisNode,
    /// Every node's, in the shared per-minute counter.
    Cluster,
}

pub struct IpGuard {
    max_per_minute: u32,
    violations_before_block: u32,
    block_duration: Duration,
    max_handshakes_per_ip: u32,
    max_handshakes: u32,
    recent: DashMap<IpAddr, VecDeque<Instant>>,
    violations: DashMap<IpAddr, (u32, Instant)>,
    blocks: DashMap<IpAddr, Block>,
    handshakes: DashMap<IpAddr, u32>,
    handshakes_total: AtomicU32,
    /// Woken on every new block, so open relays can cut a blocked visitor.
    blocked_now: tokio::sync::Notify,
}

/// A slot among the concurrent unauthenticated handshakes. Released on drop
/// (authentication done, or connection gone).
pub struct HandshakePermit {
    guard: Arc<IpGuard>,
    key: IpAddr,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.guard.handshakes_total.fetch_sub(1, Ordering::Relaxed);
        if let dashmap::Entry::Occupied(mut entry) = self.guard.handshakes.entry(self.key) {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

impl IpGuard {
    pub fn new(limits: &LimitArgs) -> Self {
        IpGuard {
            max_per_minute: limits.max_conns_per_minute,
            violations_before_block: limits.violations_before_block,
            block_duration: limits.block_duration,
            max_handshakes_per_ip: limits.max_handshakes_per_ip,
            max_handshakes: limits.max_handshakes,
            recent: DashMap::new(),
            violations: DashMap::new(),
            blocks: DashMap::new(),
            handshakes: DashMap::new(),
            handshakes_total: AtomicU32::new(0),
            blocked_now: tokio::sync::Notify::new(),
        }
    }

    /// The active block on `ip`, if any.
    pub fn blocked(&self, ip: IpAddr) -> Option<Block> {
        let key = ip_key(ip);
        let block = self.blocks.get(&key)?.clone();
        (block.until > Instant::now()).then_some(block)
    }

    /// Decides on a new SSH connection from `ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let key = ip_key(ip);
        if let Some(block) = self.blocked(ip) {
            return Admission::Blocked(block);
        }
        let now = Instant::now();

        if self.max_handshakes_per_ip > 0 {
            let open = self.handshakes.get(&key).map_or(0, |n| *n);
            if open >= self.max_handshakes_per_ip {
                let refusal = Refusal::new(
                    "max-handshakes-per-ip",
                    format!(
                        "too many SSH handshakes in progress from your IP (limit {}); finish or close the others",
                        self.max_handshakes_per_ip
                    ),
                );
                return self.violation(key, refusal, true);
            }
        }
        if self.max_handshakes > 0
            && self.handshakes_total.load(Ordering::Relaxed) >= self.max_handshakes
        {
            // A global squeeze is nobody's fault in particular: refuse, but
            // do not count it against this IP.
            return Admission::Refused {
                refusal: Refusal::new(
                    "max-handshakes",
                    format!(
                        "the server has {} SSH handshakes in progress; try again in a few seconds",
                        self.max_handshakes
                    ),
                )
                .retry_after(Duration::from_secs(5)),
                newly_blocked: None,
                before_version: true,
            };
        }

        if self.max_per_minute > 0 {
            let mut times = self.recent.entry(key).or_default();
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) >= MINUTE)
            {
                times.pop_front();
            }
            if times.len() >= self.max_per_minute as usize {
                let wait = MINUTE.saturating_sub(now.duration_since(times[0]));
                drop(times);
                let refusal = self.conn_rate_refusal(RateScope::ThisNode, wait);
                return self.violation(key, refusal, false);
            }
            times.push_back(now);
        }

        *self.handshakes.entry(key).or_insert(0) += 1;
        self.handshakes_total.fetch_add(1, Ordering::Relaxed);
        Admission::Allowed(HandshakePermit {
            guard: Arc::clone(self),
            key,
        })
    }

    /// `--max-conns-per-minute` over every node of a cluster: `count` is
    /// the IP's connections this minute to any node (a shared counter, so
    /// approximate at the minute's edges). `Some` when it is over. Not a
    /// violation: the node that counted past the limit may not be this one.
    pub fn over_cluster_rate(&self, count: u64) -> Option<Refusal> {
        let over = self.limits_conn_rate() && count > u64::from(self.max_per_minute);
        over.then(|| self.conn_rate_refusal(RateScope::Cluster, MINUTE))
    }

    /// Whether `--max-conns-per-minute` is on (a cluster need not count).
    pub fn limits_conn_rate(&self) -> bool {
        self.max_per_minute > 0
    }

    /// The one `--max-conns-per-minute` refusal.
    fn conn_rate_refusal(&self, scope: RateScope, wait: Duration) -> Refusal {
        let to = match scope {
            RateScope::ThisNode => "",
            RateScope::Cluster => " to this service",
        };
        let limit = self.max_per_minute;
        let message = format!(
            "more than {limit} new SSH connections per minute from your IP{to}; try again in {}",
            human(wait)
        );
        Refusal::new("max-conns-per-minute", message).retry_after(wait)
    }

    /// Counts a violation for `key` and refuses the connection; blocks the
    /// key when the count is reached.
    fn violation(&self, key: IpAddr, refusal: Refusal, before_version: bool) -> Admission {
        let newly_blocked = self.count_violation(key, &refusal);
        Admission::Refused {
            refusal,
            newly_blocked,
            before_version,
        }
    }

    /// Counts a violation of `ip` made on a connection it already has (one
    /// ended for what it did: `--max-violations-per-connection`); the block,
    /// when this one tipped the IP into one.
    pub fn violated(&self, ip: IpAddr, refusal: &Refusal) -> Option<Block> {
        self.count_violation(ip_key(ip), refusal)
    }

    /// Counts a violation for `key`: the block, when the count is reached.
    fn count_violation(&self, key: IpAddr, refusal: &Refusal) -> Option<Block> {
        let now = Instant::now();
        let count = {
            let mut entry = self.violations.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= VIOLATION_WINDOW {
                *entry = (0, now);
            }
            entry.0 += 1;
            entry.1 = now;
            entry.0
        };
        (self.violations_before_block > 0 && count >= self.violations_before_block).then(|| {
            self.violations.remove(&key);
            self.block(
                key,
                format!("{count} violations: last one {}", refusal.limit),
            )
        })
    }

    /// Blocks `ip` for the configured duration.
    pub fn block(&self, ip: IpAddr, reason: String) -> Block {
        self.block_for(ip, self.block_duration, reason)
    }

    /// Blocks `ip` for `duration`.
    pub fn block_for(&self, ip: IpAddr, duration: Duration, reason: String) -> Block {
        let block = Block {
            until: Instant::now() + duration,
            until_wall: SystemTime::now() + duration,
            reason,
        };
        self.blocks.insert(ip_key(ip), block.clone());
        self.blocked_now.notify_waiters();
        block
    }

    /// Resolves once `ip` is blocked (at once if it is already).
    pub async fn until_blocked(&self, ip: IpAddr) {
        loop {
            let next = self.blocked_now.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if self.blocked(ip).is_some() {
                return;
            }
            next.await;
        }
    }

    /// Lifts the block on `ip`; whether one was in force.
    pub fn unblock(&self, ip: IpAddr) -> bool {
        self.blocks
            .remove(&ip_key(ip))
            .is_some_and(|(_, block)| block.until > Instant::now())
    }

    /// The blocks in force, by IP key.
    pub fn blocks(&self) -> Vec<(IpAddr, Block)> {
        let now = Instant::now();
        let mut blocks: Vec<(IpAddr, Block)> = self
            .blocks
            .iter()
            .filter(|b| b.until > now)
            .map(|b| (*b.key(), b.value().clone()))
            .collect();
        blocks.sort_by_key(|(ip, _)| *ip);
        blocks
    }

    /// Number of IPs blocked right now.
    pub fn blocked_count(&self) -> usize {
        let now = Instant::now();
        self.blocks.iter().filter(|b| b.until > now).count()
    }

    /// Drops expired state. Returns the blocks that just ended, for logging.
    pub fn prune(&self) -> Vec<(IpAddr, Block)> {
        let now = Instant::now();
        self.recent.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < MINUTE)
        });
        self.violations
            .retain(|_, (_, last)| now.duration_since(*last) < VIOLATION_WINDOW);
        let mut ended = Vec::new();
        self.blocks.retain(|ip, block| {
            let live = block.until > now;
            if !live {
                ended.push((*ip, block.clone()));
            }
            live
        });
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn guard(args: &[&str]) -> Arc<IpGuard> {
        let mut argv = vec!["burrow"];
        argv.extend_from_slice(args);
        let config = crate::config::Config::try_parse_from(argv).unwrap();
        Arc::new(IpGuard::new(&config.limits))
    }

    #[test]
    fn eleventh_connection_in_a_minute_is_refused() {
        let g = guard(&["--max-handshakes-per-ip", "0"]);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let permits: Vec<_> = (0..10)
            .map(|_| match g.admit(ip) {
                Admission::Allowed(p) => p,
                _ => panic!("refused too early"),
            })
            .collect();
        match g.admit(ip) {
            Admission::Refused { refusal, .. } => {
                assert_eq!(refusal.limit, "max-conns-per-minute");
                assert!(refusal.retry_after.unwrap() <= MINUTE);
            }
            _ => panic!("11th connection admitted"),
        }
        // Another IP is unaffected.
        assert!(matches!(
            g.admit("198.51.100.8".parse().unwrap()),
            Admission::Allowed(_)
        ));
        drop(permits);
    }

    #[test]
    fn violations_block_and_blocks_expire() {
        let g = guard(&[
            "--max-conns-per-minute",
            "1",
            "--violations-before-block",
            "2",
            "--block-duration",
            "1h",
        ]);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let _first = g.admit(ip);
        assert!(matches!(
            g.admit(ip),
            Admission::Refused {
                newly_blocked: None,
                ..
            }
        ));
        assert!(matches!(
            g.admit(ip),
            Admission::Refused {
                newly_blocked: Some(_),
                ..
            }
        ));
        // Same /64, other host: blocked too.
        assert!(matches!(
            g.admit("2001:db8::99".parse().unwrap()),
            Admission::Blocked(_)
        ));
        assert_eq!(g.blocked_count(), 1);
        assert!(g.blocked(ip).is_some());
    }

    #[test]
    fn handshake_slots_are_released() {
        let g = guard(&[
            "--max-handshakes-per-ip",
            "2",
            "--violations-before-block",
            "0",
        ]);
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        let a = g.admit(ip);
        let _b = g.admit(ip);
        match g.admit(ip) {
            Admission::Refused {
                refusal,
                before_version,
                ..
            } => {
                assert_eq!(refusal.limit, "max-handshakes-per-ip");
                assert!(before_version);
            }
            _ => panic!("third handshake admitted"),
        }
        drop(a);
        assert!(matches!(g.admit(ip), Admission::Allowed(_)));
    }

    #[test]
    fn prune_forgets_expired_blocks() {
        let g = guard(&[]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        g.block_for(ip, Duration::ZERO, "test".into());
        let ended = g.prune();
        assert_eq!(ended.len(), 1);
        assert_eq!(g.blocked_count(), 0);
    }
}
