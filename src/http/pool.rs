//! Keep-alive HTTP/1.1 connections to a tunnel's local app, each over its
//! own `forwarded-tcpip` channel, reused across requests the way a reverse
//! proxy keeps upstream connections alive. A fresh channel costs a round
//! trip to the SSH client plus a TCP connect on the user's machine; reuse
//! saves both on every request but the first.
//!
//! A connection returns to the pool when its response was read to its end
//! (a response cut short leaves it unusable), and is taken again only once
//! hyper says it can take another request, so neither side said
//! `Connection: close`. Broken connections are dropped, the pool holds at
//! most `--channel-pool-size` idle connections per tunnel, and one idle for
//! `--channel-pool-idle` is closed (keep that below the app's own keep-alive
//! timeout, 5 s for Node.js, so we rarely pick one the app is closing).
//!
//! A tunnel's pool hangs off the tunnel as an extension (the tunnel core
//! does not know it): it is made on the first request and dropped, closing
//! its connections, with the tunnel.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http1::SendRequest;

use super::Body;
use crate::shutdown::Shutdown;
use crate::tunnel::{Registry, Tunnel};

/// How often idle connections are checked for their timeout.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The pool settings every tunnel's pool gets.
#[derive(Debug, Clone, Copy)]
pub struct Pools {
    /// `--channel-pool-size`: idle connections kept per tunnel.
    pub max_idle: usize,
    /// `--channel-pool-idle`: how long one may sit idle.
    pub idle_timeout: Duration,
}

impl Pools {
    /// `tunnel`'s pool, made on first use.
    pub fn of(&self, tunnel: &Tunnel) -> Arc<Pool> {
        tunnel.extension(|| Pool {
            idle: Mutex::new(Vec::new()),
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
        })
    }

    /// Closes connections idle for too long or closed by the app, every
    /// second until shutdown, so they expire within a second of their
    /// timeout.
    pub async fn prune(registry: Arc<Registry>, shutdown: Shutdown) {
        let mut ticker = shutdown.ticker(PRUNE_EVERY);
        while ticker.tick().await {
            for tunnel in registry.tunnels() {
                if let Some(pool) = tunnel.existing_extension::<Pool>() {
                    pool.prune();
                }
            }
        }
    }

    /// Idle connections of every tunnel now (the stats' `idle_channels`).
    pub fn idle(registry: &Registry) -> usize {
        let pools = registry.tunnels().into_iter();
        pools
            .filter_map(|t| t.existing_extension::<Pool>())
            .map(|pool| pool.idle())
            .sum()
    }
}

/// The sending half of one HTTP/1.1 connection to the local app.
pub type Sender = SendRequest<Body>;

/// A pooled connection out on one request. Given back when its response
/// ended in full; dropped otherwise (a response cut short leaves the
/// connection unusable, and hyper closes it).
pub struct Lent {
    pool: Weak<Pool>,
    sender: Sender,
}

impl Lent {
    /// The response was read to its end: the connection can take another
    /// request (unless the app said `Connection: close`, which the pool
    /// notices as a closed sender).
    pub fn give_back(self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(self.sender);
        }
    }
}

/// Idle connections of one tunnel, most recently used last.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that can take a request now.
    /// Connections that expired or closed are dropped on the way; one given
    /// back a moment ago may still be finishing its last response (hyper
    /// marks it ready just after the body ended) and is left for later.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        let mut at = idle.len();
        while at > 0 {
            at -= 1;
            let entry = &idle[at];
            if entry.since.elapsed() >= self.idle_timeout || entry.sender.is_closed() {
                idle.remove(at);
            } else if entry.sender.is_ready() {
                return Some(idle.remove(at).sender);
            }
        }
        None
    }

    /// Lends `sender` out for the request it just sent: it comes back once
    /// the response has been read to its end ([`Lent::give_back`]).
    /// `None` when the pool keeps nothing.
    pub fn lend(self: &Arc<Self>, sender: Sender) -> Option<Lent> {
        (self.max_idle > 0).then(|| Lent {
            pool: Arc::downgrade(self),
            sender,
        })
    }

    fn put(&self, sender: Sender) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Closes connections idle for too long or already closed.
    fn prune(&self) {
        let timeout = self.idle_timeout;
        self.lock()
            .retain(|entry| entry.since.elapsed() < timeout && !entry.sender.is_closed());
    }

    /// Idle connections now that are still open.
    pub fn idle(&self) -> usize {
        self.lock().iter().filter(|e| !e.sender.is_closed()).count()
    }
}
