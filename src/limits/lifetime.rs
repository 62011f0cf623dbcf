//! The housekeeping loop: closes tunnels that sat idle or reached their
//! maximum lifetime (with a notice before the hard limit), and prunes the
//! per-IP and per-visitor tracking so it never grows without bound.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::human;
use crate::registry::Tunnel;
use crate::shutdown::Shutdown;
use crate::App;

/// How often tunnels are checked.
const TICK: Duration = Duration::from_secs(1);
/// How often limit tracking is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// The lifetime notice comes this long before the hard limit (or halfway
/// through a lifetime shorter than twice this).
const LIFETIME_NOTICE: Duration = Duration::from_secs(600);

/// Why a tunnel is being closed by the server.
enum Expiry {
    Idle(Duration),
    Lifetime(Duration),
}

impl Expiry {
    fn describe(&self) -> String {
        match self {
            Expiry::Idle(d) => format!("no traffic for {} (tunnel-idle-timeout)", human(*d)),
            Expiry::Lifetime(d) => {
                format!(
                    "it reached the maximum lifetime of {} (tunnel-max-lifetime)",
                    human(*d)
                )
            }
        }
    }
}

/// Runs until shutdown.
pub async fn run(app: Arc<App>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tick.tick() => {}
        }
        for tunnel in app.registry.tunnels() {
            check(&app, &tunnel);
            // Idle keep-alive channels expire within a tick of their timeout.
            tunnel.pool.prune();
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            prune(&app);
        }
    }
}

fn check(app: &App, tunnel: &Tunnel) {
    let limits = &app.config.limits;
    let age = tunnel.created.elapsed();
    let lifetime = limits.tunnel_max_lifetime;
    let idle = limits.tunnel_idle_timeout;

    if !lifetime.is_zero() && age >= lifetime {
        return expire(app, tunnel, Expiry::Lifetime(lifetime));
    }
    // Idle is judged per name: a failover standby gets no traffic by design.
    let (group_idle, group_busy) = app.registry.group_activity(&tunnel.subdomain);
    if !idle.is_zero() && !group_busy && group_idle >= idle {
        return expire(app, tunnel, Expiry::Idle(idle));
    }
    warn_idle(app, tunnel, group_idle, group_busy);
    let notice = LIFETIME_NOTICE.min(lifetime / 2);
    if !lifetime.is_zero()
        && age + notice >= lifetime
        && !tunnel
            .lifetime_warned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        if let Some(conn) = app.registry.conn(tunnel.conn) {
            conn.notify(crate::ssh::banner::lifetime_notice(
                &app.tunnel_url(tunnel),
                lifetime.saturating_sub(age),
            ));
        }
    }
}

/// Tells the user once when the idle limit is near (the same lead time as
/// the lifetime notice); traffic re-arms the notice.
fn warn_idle(app: &App, tunnel: &Tunnel, group_idle: Duration, group_busy: bool) {
    let idle = app.config.limits.tunnel_idle_timeout;
    if idle.is_zero() {
        return;
    }
    let notice = LIFETIME_NOTICE.min(idle / 2);
    let near = !group_busy && group_idle + notice >= idle;
    let warned = &tunnel.idle_warned;
    if !near {
        warned.store(false, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    if warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    if let Some(conn) = app.registry.conn(tunnel.conn) {
        conn.notify(crate::ssh::banner::idle_notice(
            &app.tunnel_url(tunnel),
            idle.saturating_sub(group_idle),
            idle,
        ));
    }
}

fn expire(app: &App, tunnel: &Tunnel, why: Expiry) {
    app.close_tunnel(tunnel, &why.describe());
}

fn prune(app: &App) {
    for (ip, block) in app.ip_guard.prune() {
        tracing::info!(%ip, reason = %block.reason, "ip unblocked: block expired");
    }
    app.refusal_log.prune();
    for tunnel in app.registry.tunnels() {
        tunnel.gate.prune();
    }
}
