//! Raw TCP tunnels: `ssh -R 5432:localhost:5432 HOST` gets a public port from
//! `--tcp-ports`, and every connection to it is relayed to the client (see
//! [`super::relay::Relays::serve_visitor`]).
//!
//! This module owns the public ports: choosing one (the requested port when
//! it is in range, free and not another key's; else a random one), binding
//! it, and the accept loop that lives exactly as long as the port's group of
//! clients in the registry ([`Listening`] is dropped with the group).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::relay::Relays;
use crate::config::PortRanges;
use crate::shutdown::Shutdown;
use crate::tunnel::names::Grants;
use crate::tunnel::{tcp_key, Registry};

/// Most ports tried when picking a random one (each try is a bind).
const RANDOM_TRIES: usize = 64;
/// How long a bind waits for our own listener on the same port to close
/// (its last client just left; the same key is reconnecting).
const CLOSING_WAIT: Duration = Duration::from_secs(1);

/// The public TCP ports of this server.
pub struct TcpPorts {
    ranges: PortRanges,
    bind: IpAddr,
    /// Ports whose listener is shutting down right now.
    closing: Arc<DashMap<u16, ()>>,
    /// Where accepted visitors go.
    relays: Arc<Relays>,
    /// In a cluster: listeners of ports held on other nodes (their
    /// visitors are relayed there), so every node accepts on every port.
    standby: DashMap<u16, Listening>,
    /// Set when the node joins a cluster: it stands by for the ports other
    /// nodes hold.
    follows_cluster: AtomicBool,
    /// Accept loops and relays are tasks shutdown waits for.
    shutdown: Shutdown,
}

/// A port's accept loop; dropping it stops the loop and frees the port.
pub struct Listening {
    port: u16,
    stop: CancellationToken,
    closing: Arc<DashMap<u16, ()>>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        // Marked before the loop notices, so a reconnecting client's bind
        // knows to wait for the port instead of giving up on it.
        self.closing.insert(self.port, ());
        self.stop.cancel();
    }
}

impl TcpPorts {
    pub fn new(ranges: PortRanges, bind: IpAddr, relays: Arc<Relays>, shutdown: Shutdown) -> Self {
        TcpPorts {
            ranges,
            bind,
            closing: Arc::new(DashMap::new()),
            relays,
            standby: DashMap::new(),
            follows_cluster: AtomicBool::new(false),
            shutdown,
        }
    }

    /// In a cluster: `port` is held on another node; accept its visitors
    /// here too. A port this node cannot bind is left alone (logged).
    pub async fn stand_by(&self, port: u16) {
        if self.standby.contains_key(&port) || !self.enabled() {
            return;
        }
        match TcpListener::bind(SocketAddr::new(self.bind, port)).await {
            Ok(listener) => {
                let listening = self.serve(port, listener);
                self.standby.insert(port, listening);
            }
            Err(err) => {
                tracing::debug!(port, error = %err, "cannot accept for a port held elsewhere")
            }
        }
    }

    /// In a cluster: `port` is held nowhere else any more.
    /// This node lost the claim of `port`, which it had bound, to another
    /// key: a node standing by for other nodes' ports keeps accepting for
    /// it (the binding took its stand-by listener down).
    pub async fn held_by_another(&self, port: u16) {
        if self.follows_cluster.load(Ordering::Relaxed) {
            self.stand_by(port).await;
        }
    }

    /// From now on this node accepts on ports held on other nodes of its
    /// cluster (`stand_by`), and keeps doing so when a claim here fails.
    pub fn follow_cluster(&self) {
        self.follows_cluster.store(true, Ordering::Relaxed);
    }

    pub fn stand_down(&self, port: u16) {
        self.standby.remove(&port);
    }

    /// Whether TCP tunnels are enabled (`--tcp-ports` is not empty).
    pub fn enabled(&self) -> bool {
        !self.ranges.is_empty()
    }

    pub fn ranges(&self) -> &PortRanges {
        &self.ranges
    }

    pub fn in_range(&self, port: u16) -> bool {
        self.ranges.contains(port)
    }

    /// Binds `port` on `--tcp-bind`. If our own listener for it is still
    /// closing, waits for it (bounded) first.
    pub async fn bind(&self, port: u16) -> std::io::Result<TcpListener> {
        // A port this node accepted for another node's clients is ours now.
        self.stand_down(port);
        let deadline = tokio::time::Instant::now() + CLOSING_WAIT;
        while self.closing.contains_key(&port) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TcpListener::bind(SocketAddr::new(self.bind, port)).await
    }

    /// Binds a random port of the range that no tunnel holds and no key
    /// owns. `None` when none could be bound in [`RANDOM_TRIES`] tries.
    pub async fn bind_random(
        &self,
        registry: &Registry,
        grants: &Grants<'_>,
    ) -> Option<(u16, TcpListener)> {
        let count = self.ranges.count();
        if count == 0 {
            return None;
        }
        let start = rand::random_range(0..count);
        let mut tries = 0;
        for i in 0..count {
            let port = self.ranges.nth((start + i) % count)?;
            if !grants.port_owned(port)
                && registry.clients(&tcp_key(port)) == 0
                && !self.closing.contains_key(&port)
            {
                if let Ok(listener) = TcpListener::bind(SocketAddr::new(self.bind, port)).await {
                    return Some((port, listener));
                }
                tries += 1;
                if tries >= RANDOM_TRIES {
                    return None;
                }
            }
        }
        None
    }

    /// Starts accepting visitors on `listener` for port `port`.
    pub fn serve(&self, port: u16, listener: TcpListener) -> Listening {
        let stop = CancellationToken::new();
        let accepting = Accepting {
            port,
            local: SocketAddr::new(self.bind, port),
            relays: Arc::clone(&self.relays),
            closing: Arc::clone(&self.closing),
            shutdown: self.shutdown.clone(),
        };
        self.shutdown.spawn(accepting.run(listener, stop.clone()));
        Listening {
            port,
            stop,
            closing: Arc::clone(&self.closing),
        }
    }
}

/// One port's accept loop.
struct Accepting {
    port: u16,
    /// The listener's address, when a socket cannot tell its own.
    local: SocketAddr,
    relays: Arc<Relays>,
    closing: Arc<DashMap<u16, ()>>,
    shutdown: Shutdown,
}

impl Accepting {
    async fn run(self, listener: TcpListener, stop: CancellationToken) {
        let (port, key) = (self.port, tcp_key(self.port));
        tracing::debug!(port, "tcp listener started");
        let until = async {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = self.shutdown.requested() => {}
            }
        };
        crate::listen::accept_loop(&listener, "tcp", until, |stream, peer| {
            let local = stream.local_addr().unwrap_or(self.local);
            let relays = Arc::clone(&self.relays);
            let key = key.clone();
            self.shutdown.spawn(async move {
                relays.serve_visitor(&key, stream, &[], peer, local).await;
            });
        })
        .await;
        drop(listener);
        self.closing.remove(&port);
        tracing::debug!(port, "tcp listener stopped");
    }
}
