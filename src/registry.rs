//! The registry of live tunnels, shared by the SSH server, the HTTPS proxy and
//! the stats endpoint: a `DashMap` from subdomain to a [`Tunnel`].
//!
//! A [`Tunnel`] holds the russh [`Handle`] of the SSH connection that asked
//! for it; the proxy opens `forwarded-tcpip` channels straight through that
//! handle, so there is no per-tunnel loopback listener anywhere.
//!
//! Names can also be *reserved* before they become tunnels: the SSH handler
//! reserves the name of a connection's first forward while authentication is
//! still running, so it can show the URL in the authentication banner.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::{DashMap, DashSet};
use russh::server::{Handle, Msg};
use russh::Channel;

use crate::subdomain;

/// Identifies one SSH connection for the lifetime of the process.
pub type ConnId = u64;

/// How long the proxy waits for the SSH client to answer a channel open
/// before it gives up with 504.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// One public name bound to one `tcpip-forward` of one SSH connection.
pub struct Tunnel {
    pub subdomain: String,
    /// The SSH connection that owns the tunnel.
    pub conn: ConnId,
    pub client_ip: IpAddr,
    /// Bind address and port exactly as the client sent them in
    /// `tcpip-forward` (the allocated port for `-R 0`). OpenSSH only accepts
    /// `forwarded-tcpip` channels that echo them.
    pub bind_address: String,
    pub bind_port: u32,
    pub created: Instant,
    handle: Handle,
}

/// Why a channel to the client's local app could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The client answered with a failure (usually: nothing listens on the
    /// local port, so its connect() was refused).
    Refused(String),
    /// The client did not answer within [`CHANNEL_OPEN_TIMEOUT`].
    Timeout,
    /// The SSH connection is gone.
    Gone,
}

impl Tunnel {
    pub fn new(
        subdomain: String,
        conn: ConnId,
        client_ip: IpAddr,
        bind_address: String,
        bind_port: u32,
        handle: Handle,
    ) -> Tunnel {
        Tunnel {
            subdomain,
            conn,
            client_ip,
            bind_address,
            bind_port,
            created: Instant::now(),
            handle,
        }
    }

    /// Opens a `forwarded-tcpip` channel to the client, naming the visitor as
    /// the originator.
    pub async fn open_channel(&self, visitor: SocketAddr) -> Result<Channel<Msg>, OpenError> {
        let open = self.handle.channel_open_forwarded_tcpip(
            self.bind_address.clone(),
            self.bind_port,
            visitor.ip().to_string(),
            u32::from(visitor.port()),
        );
        match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, open).await {
            Err(_) => Err(OpenError::Timeout),
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                Err(OpenError::Refused(format!("{reason:?}")))
            }
            Ok(Err(_)) => Err(OpenError::Gone),
        }
    }
}

/// All live tunnels and reserved names.
#[derive(Default)]
pub struct Registry {
    tunnels: DashMap<String, Arc<Tunnel>>,
    reserved: DashSet<String>,
}

/// A name held for a connection that has not asked for its forward yet.
/// Dropping it releases the name.
pub struct Reservation {
    name: String,
    registry: Arc<Registry>,
}

impl Reservation {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.registry.reserved.remove(&self.name);
    }
}

impl Registry {
    /// Reserves a fresh random name that no tunnel and no other reservation
    /// holds.
    pub fn reserve_random(self: &Arc<Self>) -> Reservation {
        loop {
            let name = subdomain::random_name();
            // Insert first, then check the tunnels: a concurrent `insert` of
            // the same name would have had to reserve it first.
            if !self.tunnels.contains_key(&name) && self.reserved.insert(name.clone()) {
                return Reservation {
                    name,
                    registry: Arc::clone(self),
                };
            }
        }
    }

    /// Turns a reservation into a live tunnel.
    pub fn insert(&self, reservation: Reservation, tunnel: Tunnel) -> Arc<Tunnel> {
        debug_assert_eq!(reservation.name, tunnel.subdomain);
        let tunnel = Arc::new(tunnel);
        self.tunnels
            .insert(tunnel.subdomain.clone(), Arc::clone(&tunnel));
        drop(reservation);
        tunnel
    }

    pub fn get(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.tunnels.get(subdomain).map(|t| Arc::clone(t.value()))
    }

    /// Removes `subdomain` if it still belongs to connection `conn` (a name
    /// may have moved on to another connection in the meantime).
    pub fn remove(&self, subdomain: &str, conn: ConnId) -> bool {
        self.tunnels
            .remove_if(subdomain, |_, t| t.conn == conn)
            .is_some()
    }

    /// Removes every tunnel of connection `conn`; returns how many.
    pub fn remove_conn(&self, conn: ConnId) -> usize {
        let before = self.tunnels.len();
        self.tunnels.retain(|_, t| t.conn != conn);
        before.saturating_sub(self.tunnels.len())
    }

    pub fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Number of distinct client IPs that own at least one tunnel.
    pub fn unique_ips(&self) -> usize {
        let ips: std::collections::HashSet<IpAddr> =
            self.tunnels.iter().map(|t| t.client_ip).collect();
        ips.len()
    }

    /// Sorted names of all live tunnels.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tunnels.iter().map(|t| t.key().clone()).collect();
        names.sort();
        names
    }
}
