//! The registry of live tunnels, shared by the SSH server, the HTTPS proxy and
//! the stats endpoint: a `DashMap` from subdomain to a [`Tunnel`].
//!
//! A [`Tunnel`] holds the russh [`Handle`] of the SSH connection that asked
//! for it; the proxy opens `forwarded-tcpip` channels straight through that
//! handle, so there is no per-tunnel loopback listener anywhere.
//!
//! It also keeps the table of SSH connections ([`Conn`]), so that limits and
//! lifetimes can write to a user's terminal or close their connection from
//! outside the connection's own handler.
//!
//! Names can also be *announced* before they become tunnels: the SSH handler
//! shows the URL of a connection's first forward while authentication is
//! still running (so `-N` users see it), and holds the name until the
//! forward arrives; requests for an announced name wait briefly for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId};

use crate::limits::http::TunnelGate;
use crate::limits::ip_key;
use crate::ssh::options::{Output, TunnelOptions};
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
    /// SHA256 fingerprint of the SSH key that owns the tunnel, if any.
    pub owner: Option<String>,
    /// The name was granted to the owner's key by the keys file (a known
    /// operator-approved name: no browser warning).
    pub granted: bool,
    /// The owning connection (options, notices).
    pub client: Arc<Conn>,
    /// Visitor limits and activity of this tunnel.
    pub gate: Arc<TunnelGate>,
    /// Keep-alive connections to the local app, for reuse.
    pub pool: Arc<crate::http::pool::Pool>,
    /// Set once the "closing soon" notice went out.
    pub lifetime_warned: std::sync::atomic::AtomicBool,
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
        client: Arc<Conn>,
        (bind_address, bind_port): (String, u32),
        handle: Handle,
        limits: &crate::config::LimitArgs,
        owner: Option<String>,
        granted: bool,
    ) -> Tunnel {
        Tunnel {
            subdomain,
            owner,
            granted,
            conn: client.id,
            client_ip: client.ip,
            client,
            bind_address,
            bind_port,
            created: Instant::now(),
            gate: Arc::new(TunnelGate::new(limits)),
            pool: crate::http::pool::Pool::new(limits.channel_pool_size, limits.channel_pool_idle),
            lifetime_warned: Default::default(),
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

/// How long a closed session's client gets to leave by itself before the
/// connection is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// One SSH connection, as the rest of the server sees it.
pub struct Conn {
    pub id: ConnId,
    pub ip: IpAddr,
    /// Cancelling it cuts the socket (see `ssh::KillableStream`).
    pub kill: tokio_util::sync::CancellationToken,
    authenticated: std::sync::atomic::AtomicBool,
    /// Options given as the SSH command; they apply to every tunnel.
    options: RwLock<Arc<TunnelOptions>>,
    /// Becomes true once the options are known (the session's shell or
    /// exec request arrived, or clearly never will).
    settled: tokio::sync::watch::Sender<bool>,
    handle: OnceLock<Handle>,
    session: Mutex<Option<ChannelId>>,
}

impl Conn {
    pub fn new(id: ConnId, ip: IpAddr) -> Self {
        Conn {
            id,
            ip,
            kill: Default::default(),
            authenticated: Default::default(),
            options: RwLock::new(Arc::new(TunnelOptions::default())),
            settled: tokio::sync::watch::Sender::new(false),
            handle: OnceLock::new(),
            session: Mutex::new(None),
        }
    }

    pub fn options(&self) -> Arc<TunnelOptions> {
        Arc::clone(&self.options.read().expect("options lock"))
    }

    /// Sets the connection's options and marks them settled.
    pub fn set_options(&self, options: TunnelOptions) {
        *self.options.write().expect("options lock") = Arc::new(options);
        self.settle();
    }

    /// Marks the options as final (none will come).
    pub fn settle(&self) {
        self.settled.send_replace(true);
    }

    pub fn has_session(&self) -> bool {
        self.session.lock().expect("session lock").is_some()
    }

    /// Waits (at most `limit`) until the options are known, so that a
    /// request arriving between `tcpip-forward` and the `auth=`/`allow=`
    /// options never slips past them.
    pub async fn options_settled(&self, limit: Duration) -> Arc<TunnelOptions> {
        let mut settled = self.settled.subscribe();
        let _ = tokio::time::timeout(limit, settled.wait_for(|s| *s)).await;
        self.options()
    }

    /// `text` as the user's session shows it: unchanged, or as a JSON line
    /// with `output=json`.
    pub fn render(&self, text: &str) -> String {
        match self.options().output {
            Output::Text => text.to_string(),
            Output::Json => crate::ssh::banner::json_lines(text),
        }
    }

    pub fn set_authenticated(&self) {
        self.authenticated
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_handle(&self, handle: Handle) {
        let _ = self.handle.set(handle);
    }

    /// Records the session channel (or its end) so notices can reach it.
    pub fn set_session(&self, channel: Option<ChannelId>) {
        *self.session.lock().expect("session lock") = channel;
    }

    fn target(&self) -> Option<(Handle, ChannelId)> {
        let channel = (*self.session.lock().expect("session lock"))?;
        Some((self.handle.get()?.clone(), channel))
    }

    /// Writes `text` to the user's terminal, if they have a session. Never
    /// waits: the write happens in its own task.
    pub fn notify(&self, text: String) {
        let text = self.render(&text);
        if let Some((handle, channel)) = self.target() {
            tokio::spawn(async move {
                let _ = handle.data(channel, text.into_bytes()).await;
            });
        }
    }

    /// Says `text` (if there is a session), then ends the connection with
    /// `reason` as the SSH disconnect message.
    pub fn close(&self, text: String, reason: String) {
        let text = self.render(&text);
        let target = self.target();
        let kill = self.kill.clone();
        let Some(handle) = self.handle.get().cloned() else {
            kill.cancel();
            return;
        };
        tokio::spawn(async move {
            if let Some((_, channel)) = target {
                let _ = handle.data(channel, text.into_bytes()).await;
                let _ = handle.exit_status_request(channel, 1).await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
                // OpenSSH exits by itself once its session closes, after
                // printing what we sent; a disconnect right now could beat
                // the text to the terminal. Only a client that stays gets it.
                tokio::time::sleep(CLOSE_GRACE).await;
            }
            disconnect_then_kill(handle, kill, reason).await;
        });
    }

    /// Sends a disconnect with `reason`, and cuts the socket if the
    /// connection is still there after a grace period (a client that
    /// ignores it, or a stalled key exchange that cannot carry it).
    pub fn disconnect_then_kill(&self, reason: String) {
        let Some(handle) = self.handle.get().cloned() else {
            self.kill.cancel();
            return;
        };
        tokio::spawn(disconnect_then_kill(handle, self.kill.clone(), reason));
    }
}

async fn disconnect_then_kill(
    handle: Handle,
    kill: tokio_util::sync::CancellationToken,
    reason: String,
) {
    let send = handle.disconnect(russh::Disconnect::ByApplication, reason, "en".into());
    let _ = tokio::time::timeout(KILL_GRACE, send).await;
    tokio::time::sleep(KILL_GRACE).await;
    kill.cancel();
}

/// How long a disconnected client gets before its socket is cut.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// All live tunnels, reserved names and SSH connections.
#[derive(Default)]
pub struct Registry {
    tunnels: DashMap<String, Arc<Tunnel>>,
    /// Announced names and how many connections announced each.
    reserved: DashMap<String, u32>,
    conns: DashMap<ConnId, Arc<Conn>>,
    /// Woken whenever a tunnel is inserted.
    inserted: tokio::sync::Notify,
}

/// How long a request for a reserved (announced, not yet forwarded) name
/// waits for its tunnel: `-N` users see the URL in the authentication
/// banner a moment before their `tcpip-forward` arrives.
pub const RESERVED_WAIT: Duration = Duration::from_secs(5);

/// A name announced to a connection that has not asked for its forward
/// yet. Dropping it withdraws the announcement.
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
        if let dashmap::Entry::Occupied(mut entry) = self.registry.reserved.entry(self.name.clone())
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// Why a name could not be claimed.
#[derive(Debug)]
pub enum ClaimError {
    /// Another key's (or an anonymous) connection holds it.
    Taken,
}

/// A successful claim; `replaced` is the same key's older tunnel it took
/// the name from.
pub struct Claimed {
    pub tunnel: Arc<Tunnel>,
    pub replaced: Option<Arc<Tunnel>>,
}

impl Registry {
    /// Reserves a fresh random name that no tunnel and no announcement
    /// holds.
    pub fn reserve_random(self: &Arc<Self>) -> Reservation {
        loop {
            let name = subdomain::random_name();
            // Reserve first, then check the tunnels: a concurrent claim of
            // the same random name would have had to reserve it first.
            let fresh = match self.reserved.entry(name.clone()) {
                dashmap::Entry::Occupied(_) => false,
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(1);
                    true
                }
            };
            if fresh && !self.tunnels.contains_key(&name) {
                return Reservation {
                    name,
                    registry: Arc::clone(self),
                };
            }
            if fresh {
                drop(Reservation {
                    name,
                    registry: Arc::clone(self),
                });
            }
        }
    }

    /// Announces `name` (a stable or requested name) without checking who
    /// holds it: requests for it wait for the forward instead of failing.
    pub fn announce(self: &Arc<Self>, name: &str) -> Reservation {
        *self.reserved.entry(name.to_string()).or_insert(0) += 1;
        Reservation {
            name: name.to_string(),
            registry: Arc::clone(self),
        }
    }

    /// Makes `tunnel` live under its name. A name held by a tunnel of the
    /// same key is taken over (that tunnel is removed and returned); held by
    /// anyone else, the claim fails.
    pub fn claim(&self, tunnel: Tunnel) -> Result<Claimed, ClaimError> {
        let tunnel = Arc::new(tunnel);
        let replaced = match self.tunnels.entry(tunnel.subdomain.clone()) {
            dashmap::Entry::Occupied(mut held) => {
                let same_key = tunnel.owner.is_some() && held.get().owner == tunnel.owner;
                if !same_key {
                    return Err(ClaimError::Taken);
                }
                Some(held.insert(Arc::clone(&tunnel)))
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(Arc::clone(&tunnel));
                None
            }
        };
        self.inserted.notify_waiters();
        Ok(Claimed { tunnel, replaced })
    }

    /// The live tunnel `subdomain`; if the name is only reserved so far,
    /// waits up to [`RESERVED_WAIT`] for it to go live.
    pub async fn get_or_wait(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        // The usual case, without setting up a wait.
        if let Some(tunnel) = self.get(subdomain) {
            return Some(tunnel);
        }
        let deadline = tokio::time::Instant::now() + RESERVED_WAIT;
        loop {
            let inserted = self.inserted.notified();
            tokio::pin!(inserted);
            inserted.as_mut().enable();
            if let Some(tunnel) = self.get(subdomain) {
                return Some(tunnel);
            }
            if !self.reserved.contains_key(subdomain) {
                return None;
            }
            if tokio::time::timeout_at(deadline, inserted).await.is_err() {
                return None;
            }
        }
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

    /// Tunnels owned by clients in the same limit group as `ip`.
    pub fn count_for_ip(&self, ip: IpAddr) -> usize {
        let key = ip_key(ip);
        self.tunnels
            .iter()
            .filter(|t| ip_key(t.client_ip) == key)
            .count()
    }

    /// A snapshot of every live tunnel.
    pub fn tunnels(&self) -> Vec<Arc<Tunnel>> {
        self.tunnels.iter().map(|t| Arc::clone(t.value())).collect()
    }

    /// Whether connection `conn` still owns any tunnel.
    pub fn conn_has_tunnels(&self, conn: ConnId) -> bool {
        self.tunnels.iter().any(|t| t.conn == conn)
    }

    pub fn add_conn(&self, conn: Arc<Conn>) {
        self.conns.insert(conn.id, conn);
    }

    pub fn remove_conn_entry(&self, conn: ConnId) {
        self.conns.remove(&conn);
    }

    pub fn conn(&self, conn: ConnId) -> Option<Arc<Conn>> {
        self.conns.get(&conn).map(|c| Arc::clone(c.value()))
    }

    /// Connections from the same limit group as `ip`.
    pub fn conns_of_ip(&self, ip: IpAddr) -> Vec<Arc<Conn>> {
        let key = ip_key(ip);
        self.conns
            .iter()
            .filter(|c| ip_key(c.ip) == key)
            .map(|c| Arc::clone(c.value()))
            .collect()
    }

    /// Sorted names of all live tunnels.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tunnels.iter().map(|t| t.key().clone()).collect();
        names.sort();
        names
    }
}
