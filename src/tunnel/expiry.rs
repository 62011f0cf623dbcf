//! Tunnels that sat idle or lived too long are closed, each with a notice
//! before the hard limit (`--tunnel-idle-timeout`, `--tunnel-max-lifetime`).
//! A tick every second looks at every tunnel; every 30 s it also prunes
//! each tunnel's visitor buckets, so they never grow without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{Notice, Registry, Tunnel};
use crate::limits::human;
use crate::shutdown::Shutdown;

/// How often tunnels are checked.
const TICK: Duration = Duration::from_secs(1);
/// How often the tunnels' visitor buckets are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// The notice comes this long before the hard limit (or halfway through a
/// limit shorter than twice this).
const NOTICE_BEFORE: Duration = Duration::from_secs(600);

/// The two limits, zero for none.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub lifetime: Duration,
}

/// Which notices a tunnel got (kept on the tunnel).
#[derive(Default)]
pub struct Warned {
    /// The "closing soon" notice went out.
    lifetime: AtomicBool,
    /// The "closing when idle" notice stands (traffic clears it).
    idle: AtomicBool,
}

/// Why a tunnel is being closed by the server.
enum Expiry {
    Idle(Duration),
    Lifetime(Duration),
}

impl Expiry {
    fn describe(&self) -> String {
        match self {
            Expiry::Idle(d) => format!("no traffic for {} (tunnel-idle-timeout)", human(*d)),
            Expiry::Lifetime(d) => format!(
                "it reached the maximum lifetime of {} (tunnel-max-lifetime)",
                human(*d)
            ),
        }
    }
}

/// Checks every tunnel each second until shutdown.
pub async fn run(registry: Arc<Registry>, limits: Limits, shutdown: Shutdown) {
    let mut ticker = shutdown.ticker(TICK);
    let mut last_prune = tokio::time::Instant::now();
    while ticker.tick().await {
        let prune = last_prune.elapsed() >= PRUNE_EVERY;
        if prune {
            last_prune = tokio::time::Instant::now();
        }
        for tunnel in registry.tunnels() {
            check(&registry, &tunnel, limits);
            if prune {
                tunnel.gate().prune();
            }
        }
    }
}

fn check(registry: &Registry, tunnel: &Tunnel, limits: Limits) {
    let age = tunnel.created().elapsed();
    let Limits { idle, lifetime } = plan_limits(tunnel, limits);
    if !lifetime.is_zero() && age >= lifetime {
        return registry.close(tunnel, &Expiry::Lifetime(lifetime).describe());
    }
    // Idle is judged per name: a failover standby gets no traffic by design.
    let group = registry.activity(tunnel.key());
    if !idle.is_zero() && !group.busy && group.idle >= idle {
        return registry.close(tunnel, &Expiry::Idle(idle).describe());
    }
    warn_idle(registry, tunnel, group.idle, group.busy, idle);
    let notice = NOTICE_BEFORE.min(lifetime / 2);
    if !lifetime.is_zero()
        && age + notice >= lifetime
        && !tunnel.warned.lifetime.swap(true, Ordering::Relaxed)
    {
        tunnel.client().notify(Notice::LifetimeSoon {
            url: registry.url(tunnel),
            left: lifetime.saturating_sub(age),
        });
    }
}

/// The server's limits, or the owner's plan's where it sets its own.
fn plan_limits(tunnel: &Tunnel, limits: Limits) -> Limits {
    let Some(account) = tunnel.client().account() else {
        return limits;
    };
    let plan = account.plan();
    Limits {
        idle: plan.tunnel_idle_timeout.unwrap_or(limits.idle),
        lifetime: plan.tunnel_max_lifetime.unwrap_or(limits.lifetime),
    }
}

/// Tells the user once when the idle limit is near (the same lead time as
/// the lifetime notice); traffic re-arms the notice.
fn warn_idle(
    registry: &Registry,
    tunnel: &Tunnel,
    group_idle: Duration,
    busy: bool,
    idle: Duration,
) {
    if idle.is_zero() {
        return;
    }
    let notice = NOTICE_BEFORE.min(idle / 2);
    let near = !busy && group_idle + notice >= idle;
    if !near {
        tunnel.warned.idle.store(false, Ordering::Relaxed);
        return;
    }
    if tunnel.warned.idle.swap(true, Ordering::Relaxed) {
        return;
    }
    tunnel.client().notify(Notice::IdleSoon {
        url: registry.url(tunnel),
        left: idle.saturating_sub(group_idle),
        idle,
    });
}
