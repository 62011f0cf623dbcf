//! The tunnel core: what a tunnel is, how it reaches its client, and who
//! holds which name. It knows neither SSH nor HTTP.
//!
//! A [`Tunnel`] is one public name (or TCP port) served by one client
//! connection. It reaches its client only through the small [`Client`]
//! interface: open a byte stream to the client's forward (naming the
//! visitor), read the connection's options, tell the user something, write
//! to their request log, end the connection. The SSH session implements it
//! (`ssh::session`); whatever else holds a tunnel (a node of a cluster)
//! would implement it too, and nothing above this module would change.
//!
//! - [`registry`]: name → group of tunnels; claim, release, lookup, wait.
//! - [`names`]: name choice and the one grant rule (who may hold what).
//! - [`lifecycle`]: the one way a tunnel is closed, takeover, bans.
//! - [`expiry`]: idle and lifetime limits with their notices.
//! - [`options`]: the per-connection options (`auth=`, `allow=`, `tls=`…).
//! - [`notice`]: what the core tells users, typed (rendered by `ssh::banner`).
//! - [`public`]: the public addresses users are told (URLs, connect command).

pub mod directory;
pub mod expiry;
pub mod lifecycle;
pub mod names;
pub mod notice;
pub mod options;
pub mod private;
pub mod public;
pub mod registry;
pub mod route;

use std::any::{Any, TypeId};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::LimitArgs;
use crate::counters::{OpenFailure, COUNTERS};
use crate::limits::http::TunnelGate;
use crate::request_log::Event;

pub use crate::counters::Traffic;
pub use notice::Notice;
pub use options::TunnelOptions;
pub use registry::{ClaimError, Registry};

/// Identifies one client connection for the lifetime of the process.
pub type ConnId = u64;

/// How long a client that failed to open a stream is passed over while
/// other clients serve its name.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// A future the [`Client`] interface returns (object-safe async).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A byte stream to a user's app, both directions.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// An open byte stream to a user's app. Dropping it closes it.
pub type ByteStream = Box<dyn Stream>;

/// What a tunnel carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Reached by name on the HTTPS (and HTTP) listener: proxied HTTP, or
    /// raw TLS with the `tls=passthrough` option.
    Name,
    /// Reached on its own public TCP port.
    Tcp(u16),
    /// A private alias `NAME:PORT`: reached only through SSH (`ssh -J`,
    /// `ssh -L`) by keys allowed to, never published (see [`private`]).
    Private(u16),
}

/// The registry key of TCP port `port` (a key no Host header can name).
pub fn tcp_key(port: u16) -> String {
    format!("tcp:{port}")
}

/// The registry key of the private alias `name`:`port` (a key no Host
/// header can name).
pub fn private_key(name: &str, port: u16) -> String {
    format!("private:{name}:{port}")
}

/// Whether a registry key is a custom domain (labels under DOMAIN have no
/// dot, TCP keys are `tcp:PORT`).
pub fn is_custom_key(key: &str) -> bool {
    key.contains('.')
}

/// The forward a tunnel serves, exactly as the client asked for it. An SSH
/// client only accepts streams that echo it (the bind address and port of
/// its `tcpip-forward`, or the allocated port for `-R 0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub address: String,
    pub port: u32,
}

/// Why a stream to the client's app could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The client answered with a failure (usually: nothing listens on the
    /// local port, so its connect() was refused), in its own words.
    Refused(String),
    /// The client did not answer within [`Tunnel::open_timeout`].
    Timeout,
    /// The client's connection is gone.
    Gone,
    /// A limit of the client's connection said no (already recorded).
    Limited(crate::limits::Refusal),
}

/// In the words an error page or an SSH open failure shows.
impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Refused(why) if !why.is_empty() => f.write_str(why),
            OpenError::Refused(_) => f.write_str("refused"),
            OpenError::Timeout => f.write_str("no answer"),
            OpenError::Gone => f.write_str("the connection is gone"),
            OpenError::Limited(refusal) => write!(f, "{}: {}", refusal.limit, refusal.message),
        }
    }
}

/// The connection behind one or more tunnels, as the core uses it.
pub trait Client: Send + Sync + 'static {
    /// The connection's id, unique for the process's lifetime.
    fn id(&self) -> ConnId;
    /// The address the connection came from.
    fn ip(&self) -> IpAddr;
    /// Opens a byte stream to the client's forward `bind`, with `visitor`
    /// as its originator; its bytes are counted into `traffic`. The caller
    /// bounds the wait ([`Tunnel::open_timeout`]).
    fn open<'a>(
        &'a self,
        bind: &'a Bind,
        visitor: SocketAddr,
        traffic: &'a Arc<Traffic>,
    ) -> BoxFuture<'a, Result<ByteStream, OpenError>>;
    /// The connection's options as known now.
    fn options(&self) -> Arc<TunnelOptions>;
    /// Whether the options are final (they arrive a moment after the
    /// forwards, with the session's command).
    fn options_final(&self) -> bool;
    /// Resolves once the options are final (the caller bounds the wait).
    fn options_settle(&self) -> BoxFuture<'_, ()>;
    /// Tells the user `notice` in their terminal, if they have one. Never
    /// waits.
    fn notify(&self, notice: Notice);
    /// Tells the user `notice`, then ends the connection with `reason`.
    fn close(&self, notice: Notice, reason: String);
    /// Adds `event` to the user's request log, if they have one; never
    /// waits. `answered`: burrow answered the request itself.
    fn log(&self, event: Event, answered: bool);
    /// Whether anyone reads the request log (no need to build events else).
    fn has_log(&self) -> bool;
    /// The user's plan account, when plans are configured (quotas and
    /// bandwidth follow the user, not the tunnel).
    fn account(&self) -> Option<Arc<crate::plans::Account>> {
        None
    }
}

/// How long visitors wait for a new tunnel's options (they arrive with the
/// session's command, after the forward).
pub const OPTIONS_WAIT: Duration = Duration::from_secs(5);

/// A connection's options once final, and how long it took to get them.
pub struct Settled {
    pub options: Arc<TunnelOptions>,
    /// How long the caller waited for them (zero when they were final
    /// already): a visitor held this long is told so in the request log and
    /// the inspector, and counted (`COUNTERS.held_for_options`) by the
    /// caller that held it.
    pub held: Duration,
}

/// Waits (at most [`OPTIONS_WAIT`]) until `client`'s options are final, so
/// that a request or connection arriving between the forward and the
/// `auth=`/`allow=`/`tls=` options never slips past them.
pub async fn settle_options(client: &dyn Client) -> Settled {
    if client.options_final() {
        let options = client.options();
        return Settled {
            options,
            held: Duration::ZERO,
        };
    }
    let started = Instant::now();
    let _ = tokio::time::timeout(OPTIONS_WAIT, client.options_settle()).await;
    Settled {
        options: client.options(),
        held: started.elapsed(),
    }
}

/// [`settle_options`], for callers that only want the options.
pub async fn options_settled(client: &dyn Client) -> Arc<TunnelOptions> {
    settle_options(client).await.options
}

/// Who a tunnel belongs to.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    /// SHA256 fingerprint of the client's SSH key, if it showed one.
    pub key: Option<String>,
    /// The name (or port) was granted to that key by the keys file (an
    /// operator-approved name: no browser warning), or proven in DNS (a
    /// custom domain).
    pub granted: bool,
}

/// One public name (or TCP port) served by one client connection.
pub struct Tunnel {
    /// The registry key: the subdomain label, a custom domain's full
    /// lowercase name (the only keys with a dot), or `tcp:PORT`.
    key: String,
    kind: Kind,
    client: Arc<dyn Client>,
    bind: Bind,
    owner: Owner,
    created: Instant,
    /// Wall-clock creation time, for the admin API.
    created_wall: SystemTime,
    /// Visitor limits and activity of this tunnel.
    gate: Arc<TunnelGate>,
    /// Shared with the tunnel's streams (never the tunnel itself: per-
    /// protocol state such as a connection pool holds streams that would
    /// then hold it).
    traffic: Arc<Traffic>,
    /// Which notices before a limit went out (see [`expiry`]).
    warned: expiry::Warned,
    /// Until when balancing passes this client over (it failed to open a
    /// stream).
    skip_until: Mutex<Option<Instant>>,
    /// Cancelled when the tunnel leaves the registry: raw relays to it end
    /// then, even if the connection lives on with other tunnels.
    closed: CancellationToken,
    /// When it claimed its key (unix ms): the oldest client serves first
    /// (failover), the newest wins a takeover, cluster-wide.
    claimed_ms: u64,
    /// Per-protocol state that lives as long as the tunnel.
    extensions: Extensions,
    /// How long [`Tunnel::open`] waits for the client's answer
    /// (`--stream-open-timeout`; `Duration::MAX` for as long as it takes).
    open_timeout: Duration,
}

impl Tunnel {
    /// A tunnel serving `key` of `kind` for `client`'s forward `bind`.
    pub fn new(
        (key, kind): (String, Kind),
        client: Arc<dyn Client>,
        bind: Bind,
        owner: Owner,
        limits: &LimitArgs,
    ) -> Tunnel {
        Tunnel {
            key,
            kind,
            client,
            bind,
            owner,
            created: Instant::now(),
            created_wall: SystemTime::now(),
            gate: Arc::new(TunnelGate::new(limits)),
            traffic: Arc::default(),
            warned: expiry::Warned::default(),
            skip_until: Mutex::new(None),
            closed: CancellationToken::new(),
            claimed_ms: unix_ms(SystemTime::now()),
            extensions: Extensions::default(),
            open_timeout: crate::limits::zero_is_never(limits.stream_open_timeout),
        }
    }

    /// How long a stream open waits for the client's answer.
    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    /// When it claimed its key (unix ms).
    pub fn claimed_ms(&self) -> u64 {
        self.claimed_ms
    }

    /// The registry key (name, custom domain or `tcp:PORT`).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn client(&self) -> &Arc<dyn Client> {
        &self.client
    }

    /// The id of the connection that holds the tunnel.
    pub fn conn(&self) -> ConnId {
        self.client.id()
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client.ip()
    }

    pub fn bind(&self) -> &Bind {
        &self.bind
    }

    /// The owner's key fingerprint, if it showed one.
    pub fn owner(&self) -> Option<&str> {
        self.owner.key.as_deref()
    }

    /// Granted by the keys file or proven in DNS.
    pub fn granted(&self) -> bool {
        self.owner.granted
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    pub fn created_wall(&self) -> SystemTime {
        self.created_wall
    }

    pub fn gate(&self) -> &Arc<TunnelGate> {
        &self.gate
    }

    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    /// Resolves once the tunnel has left the registry.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// The connection's options once they are final (bounded wait).
    pub async fn options_settled(&self) -> Arc<TunnelOptions> {
        options_settled(&*self.client).await
    }

    /// The connection's options once final, and how long that took.
    pub async fn settle_options(&self) -> Settled {
        settle_options(&*self.client).await
    }

    /// Whether visitors' TLS is relayed to the app instead of terminated.
    pub fn passthrough(&self) -> bool {
        self.kind == Kind::Name && self.client.options().tls == options::Tls::Passthrough
    }

    /// Whether the tunnel takes raw bytes (a TCP port, or TLS passed
    /// through): a ClientHello must never reach an app expecting HTTP.
    pub fn relays_raw(&self) -> bool {
        matches!(self.kind, Kind::Tcp(_) | Kind::Private(_)) || self.passthrough()
    }

    /// `http`, `tls` or `tcp`, as the admin API and metrics show it.
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Tcp(_) => "tcp",
            Kind::Private(_) => "private",
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

    /// Opens a byte stream to the client's app, naming `visitor` as the
    /// originator; counted, and bounded by [`Tunnel::open_timeout`].
    pub async fn open(&self, visitor: SocketAddr) -> Result<ByteStream, OpenError> {
        let started = Instant::now();
        let open = self.client.open(&self.bind, visitor, &self.traffic);
        let failure = match tokio::time::timeout(self.open_timeout, open).await {
            Ok(Ok(stream)) => {
                COUNTERS.stream_opened(started.elapsed());
                *self.skip_until.lock().expect("skip lock") = None;
                return Ok(stream);
            }
            Err(_) => OpenError::Timeout,
            Ok(Err(err)) => err,
        };
        COUNTERS.stream_failed(match failure {
            OpenError::Refused(_) => OpenFailure::Refused,
            OpenError::Timeout => OpenFailure::Timeout,
            OpenError::Gone => OpenFailure::Gone,
            OpenError::Limited(_) => OpenFailure::Limited,
        });
        Err(failure)
    }

    /// The tunnel's `T` (e.g. the HTTP proxy's connection pool), made by
    /// `init` on first use; it lives as long as the tunnel.
    pub fn extension<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        self.extensions.get_or_init(init)
    }

    /// The tunnel's `T`, if something made one.
    pub fn existing_extension<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.extensions.get()
    }
}

/// Milliseconds since the unix epoch.
pub fn unix_ms(time: SystemTime) -> u64 {
    let since = time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Per-protocol state hanging off a tunnel, by type: the core holds it
/// without knowing what it is.
#[derive(Default)]
struct Extensions(Mutex<Vec<(TypeId, Arc<dyn Any + Send + Sync>)>>);

impl Extensions {
    fn get<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let slots = self.0.lock().expect("extensions lock");
        slots
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, value)| Arc::clone(value).downcast().ok())
    }

    fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Arc<T> {
        let mut slots = self.0.lock().expect("extensions lock");
        if let Some((_, value)) = slots.iter().find(|(id, _)| *id == TypeId::of::<T>()) {
            return Arc::clone(value).downcast().expect("slot holds its type");
        }
        let value = Arc::new(init());
        slots.push((
            TypeId::of::<T>(),
            Arc::clone(&value) as Arc<dyn Any + Send + Sync>,
        ));
        value
    }
}

/// A client for the core's unit tests: records what it was told, and
/// answers stream opens with an in-memory pipe (or not at all, once
/// `failing` is set).
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    pub struct FakeClient {
        pub id: ConnId,
        pub ip: IpAddr,
        pub notices: Mutex<Vec<Notice>>,
        /// Set once the core ended the connection, with the reason.
        pub ended: Mutex<Option<String>>,
        pub failing: AtomicBool,
        pub options: Mutex<Arc<TunnelOptions>>,
    }

    impl FakeClient {
        pub fn new(id: ConnId, ip: &str) -> Arc<FakeClient> {
            Arc::new(FakeClient {
                id,
                ip: ip.parse().unwrap(),
                notices: Mutex::default(),
                ended: Mutex::default(),
                failing: AtomicBool::new(false),
                options: Mutex::default(),
            })
        }

        pub fn notices(&self) -> Vec<Notice> {
            self.notices.lock().unwrap().clone()
        }

        pub fn ended(&self) -> Option<String> {
            self.ended.lock().unwrap().clone()
        }
    }

    impl Client for FakeClient {
        fn id(&self) -> ConnId {
            self.id
        }

        fn ip(&self) -> IpAddr {
            self.ip
        }

        fn open<'a>(
            &'a self,
            _bind: &'a Bind,
            _visitor: SocketAddr,
            _traffic: &'a Arc<Traffic>,
        ) -> BoxFuture<'a, Result<ByteStream, OpenError>> {
            let failing = self.failing.load(Ordering::Relaxed);
            Box::pin(async move {
                if failing {
                    return Err(OpenError::Refused("Connect failed".into()));
                }
                let (ours, _theirs) = tokio::io::duplex(64);
                Ok(Box::new(ours) as ByteStream)
            })
        }

        fn options(&self) -> Arc<TunnelOptions> {
            Arc::clone(&self.options.lock().unwrap())
        }

        fn options_final(&self) -> bool {
            true
        }

        fn options_settle(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }

        fn notify(&self, notice: Notice) {
            self.notices.lock().unwrap().push(notice);
        }

        fn close(&self, notice: Notice, reason: String) {
            self.notify(notice);
            *self.ended.lock().unwrap() = Some(reason);
        }

        fn log(&self, _event: Event, _answered: bool) {}

        fn has_log(&self) -> bool {
            false
        }
    }

    /// A registry for `domain` `tunnel.example` balancing by `balance`.
    pub fn registry(balance: crate::config::Balance) -> Arc<Registry> {
        let public = public::Public {
            domain: "tunnel.example".into(),
            https_port: 443,
            ssh_port: 22,
        };
        Arc::new(Registry::new(balance, public))
    }

    /// A name tunnel for `key` held by `client`, owned by key `owner`.
    pub fn tunnel(client: &Arc<FakeClient>, key: &str, owner: Option<&str>) -> Tunnel {
        tunnel_of(client, (key.to_string(), Kind::Name), owner, false)
    }

    /// A tunnel of any kind, `granted` or not.
    pub fn tunnel_of(
        client: &Arc<FakeClient>,
        key: (String, Kind),
        owner: Option<&str>,
        granted: bool,
    ) -> Tunnel {
        use clap::Parser;
        let config = crate::config::Config::parse_from(["burrow"]);
        let owner = Owner {
            key: owner.map(str::to_string),
            granted,
        };
        let bind = Bind {
            address: "localhost".into(),
            port: 80,
        };
        let client = Arc::clone(client) as Arc<dyn Client>;
        Tunnel::new(key, client, bind, owner, &config.limits)
    }
}
