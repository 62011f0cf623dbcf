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
//! A name may be served by several clients at once (`--balance`): each
//! name maps to a [`Group`] of tunnels, one per client, and every lookup
//! picks one of them by the balancing policy, skipping clients that just
//! failed to open a channel. Raw TCP tunnels live in the same map under the
//! key `tcp:PORT` (a key no Host header can ever name), so limits, the
//! admin API, lifetimes and balancing treat every kind of tunnel alike.
//!
//! Names can also be *announced* before they become tunnels: the SSH handler
//! shows the URL of a connection's first forward while authentication is
//! still running (so `-N` users see it), and holds the name until the
//! forward arrives; requests for an announced name wait briefly for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId};

use crate::config::Balance;
use crate::limits::http::TunnelGate;
use crate::limits::ip_key;
use crate::ssh::options::{Output, TunnelOptions};
use crate::subdomain;

/// Identifies one SSH connection for the lifetime of the process.
pub type ConnId = u64;

/// How long visitors wait for a new tunnel's options (they arrive with the
/// session's exec request, after the forward).
pub const OPTIONS_WAIT: Duration = Duration::from_secs(5);

/// How long the proxy waits for the SSH client to answer a channel open
/// before it gives up with 504.
pub const CHANNEL_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client that failed to open a channel is passed over while
/// other clients serve its name.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reached by name on the HTTPS (and HTTP) listener: proxied HTTP, or
    /// raw TLS with the `tls=passthrough` option.
    Name,
    /// Reached on its own public TCP port.
    Tcp(u16),
}

/// The registry key of TCP port `port`.
pub fn tcp_key(port: u16) -> String {
    format!("tcp:{port}")
}

/// Traffic of one tunnel, for the admin API.
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
}

/// One public name (or TCP port) bound to one `tcpip-forward` of one SSH
/// connection.
pub struct Tunnel {
    /// The registry key: the subdomain label, a custom domain's full
    /// lowercase name (the only keys with a dot), or `tcp:PORT`.
    pub subdomain: String,
    pub kind: Kind,
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
    /// operator-approved name: no browser warning), or proven in DNS (a
    /// custom domain).
    pub granted: bool,
    /// The owning connection (options, notices).
    pub client: Arc<Conn>,
    /// Visitor limits and activity of this tunnel.
    pub gate: Arc<TunnelGate>,
    /// Keep-alive connections to the local app, for reuse.
    pub pool: Arc<crate::http::pool::Pool>,
    /// Set once the "closing soon" notice went out.
    pub lifetime_warned: std::sync::atomic::AtomicBool,
    /// Set while the "closing when idle" notice stands (traffic clears it).
    pub idle_warned: std::sync::atomic::AtomicBool,
    /// Shared with the tunnel's channels (never the tunnel itself: its pool
    /// holds connections whose channels would then hold it).
    pub traffic: Arc<Traffic>,
    /// Wall-clock creation time, for the admin API.
    pub created_wall: std::time::SystemTime,
    /// Until when balancing passes this client over (it failed to open a
    /// channel).
    skip_until: Mutex<Option<Instant>>,
    /// Cancelled when the tunnel leaves the registry: raw relays to it end
    /// then, even if the SSH connection lives on with other tunnels.
    pub closed: tokio_util::sync::CancellationToken,
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
    /// A tunnel serving `subdomain` (or `tcp:PORT`) of `kind` for `client`.
    pub fn new(
        (subdomain, kind): (String, Kind),
        client: Arc<Conn>,
        (bind_address, bind_port): (String, u32),
        handle: Handle,
        limits: &crate::config::LimitArgs,
        owner: Option<String>,
        granted: bool,
    ) -> Tunnel {
        Tunnel {
            subdomain,
            kind,
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
            idle_warned: Default::default(),
            traffic: Arc::default(),
            created_wall: std::time::SystemTime::now(),
            skip_until: Mutex::new(None),
            closed: Default::default(),
            handle,
        }
    }

    /// Whether visitors' TLS is relayed to the app instead of terminated.
    pub fn passthrough(&self) -> bool {
        self.kind == Kind::Name
            && self.client.options().tls == crate::ssh::options::Tls::Passthrough
    }

    /// `http`, `tls` or `tcp`, as the admin API shows it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Tcp(_) => "tcp",
            Kind::Name if self.passthrough() => "tls",
            Kind::Name => "http",
        }
    }

    /// Marks the client as failing: balancing skips it for a while.
    pub fn mark_failing(&self) {
        *self.skip_until.lock().expect("skip lock") = Some(Instant::now() + SKIP_AFTER_FAILURE);
    }

    fn skipped(&self) -> bool {
        self.skip_until
            .lock()
            .expect("skip lock")
            .is_some_and(|until| Instant::now() < until)
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
        let started = Instant::now();
        let metrics = &crate::metrics::METRICS;
        match tokio::time::timeout(CHANNEL_OPEN_TIMEOUT, open).await {
            Err(_) => {
                metrics.channel_open_failed("timeout");
                Err(OpenError::Timeout)
            }
            Ok(Ok(channel)) => {
                metrics.channel_opened(started.elapsed());
                *self.skip_until.lock().expect("skip lock") = None;
                Ok(channel)
            }
            Ok(Err(russh::Error::ChannelOpenFailure(reason))) => {
                metrics.channel_open_failed("refused");
                Err(OpenError::Refused(format!("{reason:?}")))
            }
            Ok(Err(_)) => {
                metrics.channel_open_failed("gone");
                Err(OpenError::Gone)
            }
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
    /// The live request log, once the client opened a session to show it.
    log: OnceLock<crate::request_log::RequestLog>,
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
            log: OnceLock::new(),
        }
    }

    /// Starts the request log on the session channel `out`.
    pub fn start_log(&self, out: russh::ChannelWriteHalf<Msg>, limits: &crate::config::LimitArgs) {
        let _ = self.log.get_or_init(|| {
            crate::request_log::RequestLog::start(out, self.settled.subscribe(), limits)
        });
    }

    /// The client asked for a terminal: the request log gets colour.
    pub fn log_in_colour(&self) {
        if let Some(log) = self.log.get() {
            log.set_colour(true);
        }
    }

    /// Whether the client has a session showing the request log.
    pub fn has_log(&self) -> bool {
        self.log.get().is_some()
    }

    /// Shows `event` in the client's request log, if it has a session.
    /// Never waits. `answered`: burrow answered the request itself.
    pub fn log(&self, event: crate::request_log::Event, answered: bool) {
        if let Some(log) = self.log.get() {
            log.push(event, answered, self.options().output == Output::Json);
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

    /// Waits (at most [`OPTIONS_WAIT`]) until the options are known, so
    /// that a request or connection arriving between `tcpip-forward` and
    /// the `auth=`/`allow=`/`tls=` options never slips past them.
    pub async fn options_settled(&self) -> Arc<TunnelOptions> {
        let mut settled = self.settled.subscribe();
        let _ = tokio::time::timeout(OPTIONS_WAIT, settled.wait_for(|s| *s)).await;
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

/// The clients serving one name, oldest first.
pub struct Group {
    members: Vec<Arc<Tunnel>>,
    /// Round-robin position.
    turn: AtomicUsize,
    /// Held while the group exists: a TCP port's listener stops when its
    /// last client goes.
    _listener: Option<crate::tcp::Listening>,
}

impl Group {
    fn new(first: Arc<Tunnel>, listener: Option<crate::tcp::Listening>) -> Self {
        Group {
            members: vec![first],
            turn: AtomicUsize::new(0),
            _listener: listener,
        }
    }

    /// The members in the order they should be tried: the policy's choice
    /// first, clients that recently failed last.
    fn candidates(&self, balance: Balance) -> Vec<Arc<Tunnel>> {
        let n = self.members.len();
        let start = match balance {
            Balance::RoundRobin if n > 1 => self.turn.fetch_add(1, Ordering::Relaxed) % n,
            _ => 0,
        };
        let rotated = (0..n).map(|i| &self.members[(start + i) % n]);
        let (healthy, failing): (Vec<_>, Vec<_>) = rotated.partition(|t| !t.skipped());
        healthy.into_iter().chain(failing).cloned().collect()
    }

    /// The members oldest first, without moving the cursor.
    fn ordered(&self) -> Vec<Arc<Tunnel>> {
        let (healthy, failing): (Vec<_>, Vec<_>) =
            self.members.iter().cloned().partition(|t| !t.skipped());
        healthy.into_iter().chain(failing).collect()
    }

    /// The member the policy picks now.
    fn pick(&self, balance: Balance) -> Option<Arc<Tunnel>> {
        if self.members.len() == 1 {
            return self.members.first().cloned();
        }
        self.candidates(balance).into_iter().next()
    }
}

/// All live tunnels, reserved names and SSH connections.
pub struct Registry {
    tunnels: DashMap<String, Group>,
    balance: Balance,
    /// Announced names and how many connections announced each.
    reserved: DashMap<String, u32>,
    conns: DashMap<ConnId, Arc<Conn>>,
    /// Woken whenever a tunnel is inserted.
    inserted: tokio::sync::Notify,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(Balance::Replace)
    }
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
    /// This same connection serves it already (another of its forwards).
    Duplicate,
}

/// A successful claim.
pub struct Claimed {
    pub tunnel: Arc<Tunnel>,
    /// The same key's older tunnel it took the name from (`replace`).
    pub replaced: Option<Arc<Tunnel>>,
    /// The clients already serving the name that it joined (round-robin or
    /// failover); empty when it serves the name alone.
    pub joined: Vec<Arc<Tunnel>>,
}

/// What the removal of a tunnel left behind.
pub struct Removed {
    /// Clients still serving the name.
    pub remaining: Vec<Arc<Tunnel>>,
}

impl Registry {
    pub fn new(balance: Balance) -> Self {
        Registry {
            tunnels: DashMap::new(),
            balance,
            reserved: DashMap::new(),
            conns: DashMap::new(),
            inserted: tokio::sync::Notify::new(),
        }
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

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

    /// Whether `tunnel` may serve a name next to (or instead of) `held`:
    /// the same key, or two keys the keys file (or DNS) both granted the
    /// name.
    fn may_share(tunnel: &Tunnel, held: &Tunnel) -> bool {
        let same_key = tunnel.owner.is_some() && held.owner == tunnel.owner;
        same_key || (tunnel.granted && held.granted)
    }

    /// Makes `tunnel` live under its name. What happens to a name that is
    /// already held depends on `--balance`: with `replace`, a tunnel of the
    /// same key is taken over (removed and returned); with `round-robin` or
    /// `failover`, a client that may share the name joins the others. Held
    /// by anyone else, the claim fails. `listener` lives as long as the name
    /// has clients.
    pub fn claim(
        &self,
        tunnel: Tunnel,
        listener: Option<crate::tcp::Listening>,
    ) -> Result<Claimed, ClaimError> {
        let tunnel = Arc::new(tunnel);
        let mut claimed = Claimed {
            tunnel: Arc::clone(&tunnel),
            replaced: None,
            joined: Vec::new(),
        };
        match self.tunnels.entry(tunnel.subdomain.clone()) {
            dashmap::Entry::Occupied(mut held) => {
                let group = held.get_mut();
                if group.members.iter().any(|t| t.conn == tunnel.conn) {
                    return Err(ClaimError::Duplicate);
                }
                let oldest = group.members.first().expect("groups are never empty");
                match self.balance {
                    Balance::Replace => {
                        let same_key = tunnel.owner.is_some() && oldest.owner == tunnel.owner;
                        if !same_key {
                            return Err(ClaimError::Taken);
                        }
                        claimed.replaced = Some(std::mem::replace(
                            &mut group.members[0],
                            Arc::clone(&tunnel),
                        ));
                    }
                    Balance::RoundRobin | Balance::Failover => {
                        if !Self::may_share(&tunnel, oldest) {
                            return Err(ClaimError::Taken);
                        }
                        claimed.joined = group.members.clone();
                        group.members.push(Arc::clone(&tunnel));
                    }
                }
            }
            dashmap::Entry::Vacant(slot) => {
                // A TCP port is only served while someone listens on it:
                // the group it meant to join has just gone.
                if matches!(tunnel.kind, Kind::Tcp(_)) && listener.is_none() {
                    return Err(ClaimError::Taken);
                }
                slot.insert(Group::new(Arc::clone(&tunnel), listener));
            }
        }
        self.inserted.notify_waiters();
        Ok(claimed)
    }

    /// The tunnel that serves `subdomain` now (the balancing policy's pick);
    /// if the name is only reserved so far, waits up to [`RESERVED_WAIT`]
    /// for it to go live.
    pub async fn get_or_wait(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.lookup_or_wait(subdomain, Self::get).await
    }

    /// Like [`Registry::get_or_wait`], but the oldest client, without
    /// moving the round-robin cursor: for looking at a name's options (its
    /// clients share a key) rather than sending it something.
    pub async fn peek_or_wait(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.lookup_or_wait(subdomain, Self::peek).await
    }

    async fn lookup_or_wait(
        &self,
        subdomain: &str,
        lookup: fn(&Self, &str) -> Option<Arc<Tunnel>>,
    ) -> Option<Arc<Tunnel>> {
        // The usual case, without setting up a wait.
        if let Some(tunnel) = lookup(self, subdomain) {
            return Some(tunnel);
        }
        let deadline = tokio::time::Instant::now() + RESERVED_WAIT;
        loop {
            let inserted = self.inserted.notified();
            tokio::pin!(inserted);
            inserted.as_mut().enable();
            if let Some(tunnel) = lookup(self, subdomain) {
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

    /// The oldest client of `subdomain`, without moving the round-robin
    /// cursor.
    pub fn peek(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.tunnels
            .get(subdomain)
            .and_then(|g| g.members.first().cloned())
    }

    /// The client the balancing policy picks for `subdomain` now.
    pub fn get(&self, subdomain: &str) -> Option<Arc<Tunnel>> {
        self.tunnels
            .get(subdomain)
            .and_then(|g| g.pick(self.balance))
    }

    /// Every client serving `key`, in the order they should be tried.
    pub fn candidates(&self, key: &str) -> Vec<Arc<Tunnel>> {
        self.tunnels
            .get(key)
            .map(|g| g.candidates(self.balance))
            .unwrap_or_default()
    }

    /// Another client of `tunnel`'s name to try after `tunnel` failed to
    /// open a channel, if one may stand in for it (same owner).
    pub fn stand_in(&self, tunnel: &Tunnel) -> Option<Arc<Tunnel>> {
        self.members(&tunnel.subdomain)
            .into_iter()
            .find(|t| t.conn != tunnel.conn && t.owner == tunnel.owner && !t.skipped())
    }

    /// Every client serving `key`, oldest first (recently failing ones
    /// last), without moving the round-robin cursor.
    pub fn members(&self, key: &str) -> Vec<Arc<Tunnel>> {
        self.tunnels
            .get(key)
            .map(|g| g.ordered())
            .unwrap_or_default()
    }

    /// How long the whole group serving `key` has been without traffic, and
    /// whether any of its clients has something open: a failover standby
    /// is idle by design, and must not expire while its name is in use.
    pub fn group_activity(&self, key: &str) -> (Duration, bool) {
        self.tunnels.get(key).map_or((Duration::MAX, false), |g| {
            let idle = g
                .members
                .iter()
                .map(|t| t.gate.activity.idle_for())
                .min()
                .unwrap_or(Duration::MAX);
            (idle, g.members.iter().any(|t| t.gate.busy()))
        })
    }

    /// How many clients serve `key`.
    pub fn clients(&self, key: &str) -> usize {
        self.tunnels.get(key).map_or(0, |g| g.members.len())
    }

    /// Removes connection `conn`'s client from `subdomain` (a name may have
    /// moved on to another connection in the meantime). `None` if it was
    /// not there.
    pub fn remove(&self, subdomain: &str, conn: ConnId) -> Option<Removed> {
        let dashmap::Entry::Occupied(mut entry) = self.tunnels.entry(subdomain.to_string()) else {
            return None;
        };
        let members = &mut entry.get_mut().members;
        let before = members.len();
        members.retain(|t| {
            let leaving = t.conn == conn;
            if leaving {
                t.closed.cancel();
            }
            !leaving
        });
        if members.len() == before {
            return None;
        }
        let remaining = members.clone();
        if remaining.is_empty() {
            entry.remove();
        }
        Some(Removed { remaining })
    }

    /// Removes every tunnel of connection `conn`; returns the keys it
    /// served and the clients left on each.
    pub fn remove_conn(&self, conn: ConnId) -> Vec<(String, Removed)> {
        let keys: Vec<String> = self
            .tunnels
            .iter()
            .filter(|g| g.members.iter().any(|t| t.conn == conn))
            .map(|g| g.key().clone())
            .collect();
        keys.into_iter()
            .filter_map(|key| self.remove(&key, conn).map(|removed| (key, removed)))
            .collect()
    }

    /// Number of tunnels (a name served by two clients counts twice).
    pub fn len(&self) -> usize {
        self.tunnels.iter().map(|g| g.members.len()).sum()
    }

    /// Number of distinct names and TCP ports served.
    pub fn names_len(&self) -> usize {
        self.tunnels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Number of distinct client IPs that own at least one tunnel.
    pub fn unique_ips(&self) -> usize {
        let mut ips = std::collections::HashSet::new();
        for group in self.tunnels.iter() {
            ips.extend(group.members.iter().map(|t| t.client_ip));
        }
        ips.len()
    }

    /// Tunnels owned by clients in the same limit group as `ip`.
    pub fn count_for_ip(&self, ip: IpAddr) -> usize {
        let key = ip_key(ip);
        self.tunnels
            .iter()
            .map(|g| {
                g.members
                    .iter()
                    .filter(|t| ip_key(t.client_ip) == key)
                    .count()
            })
            .sum()
    }

    /// A snapshot of every live tunnel (every client of every name).
    pub fn tunnels(&self) -> Vec<Arc<Tunnel>> {
        self.tunnels
            .iter()
            .flat_map(|g| g.members.clone())
            .collect()
    }

    /// Whether connection `conn` still owns any tunnel.
    pub fn conn_has_tunnels(&self, conn: ConnId) -> bool {
        self.tunnels
            .iter()
            .any(|g| g.members.iter().any(|t| t.conn == conn))
    }

    pub fn add_conn(&self, conn: Arc<Conn>) {
        self.conns.insert(conn.id, conn);
    }

    /// Number of SSH connections.
    pub fn conns_len(&self) -> usize {
        self.conns.len()
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

    /// Sorted names (and `tcp:PORT` keys) of all live tunnels.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tunnels.iter().map(|t| t.key().clone()).collect();
        names.sort();
        names
    }

    /// How many clients serve each name.
    pub fn client_counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.tunnels
            .iter()
            .map(|g| (g.key().clone(), g.members.len()))
            .collect()
    }
}
