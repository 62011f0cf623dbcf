//! The SSH server: accepting connections (admission limits first), the
//! russh configuration (keys, keepalives, timeouts) and the host key on
//! disk.
//!
//! Each accepted socket runs one russh session with its own
//! [`handler::ClientHandler`]:
//! - [`auth`]: who may log in, and as what;
//! - [`forward`]: `tcpip-forward` → a tunnel in the registry;
//! - [`session`]: the connection as the tunnel core sees it (its
//!   [`crate::tunnel::Client`]): channels, options, notices;
//! - [`banner`]: every line the user reads, as text or `output=json`;
//! - [`quota`]: what one connection may make the server hold or do, and
//!   the strikes of a client that keeps asking past it;
//! - [`answer`]: a client that stops answering the server;
//! - [`killable`]: cutting a connection that ignores a disconnect;
//! - [`usage`]: a user's plan and usage, as the banner and `-- usage` show it.

mod answer;
mod auth;
pub mod banner;
mod direct;
mod forward;
pub mod handler;
mod killable;
mod quota;
mod read_ahead;
pub mod session;
mod settle;
mod usage;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::keys::{Algorithm, PrivateKey};
use russh::server::Config as RusshConfig;
use russh::{MethodKind, MethodSet, SshId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use self::session::Session;
use crate::config::{AuthMode, Config, ConnectionArgs, LimitArgs, RequestLogArgs};
use crate::counters::{SshOutcome, COUNTERS};
use crate::custom::CustomDomains;
use crate::forwarded::TrustedProxies;
use crate::keys::Keys;
use crate::limits::ssh::{Admission, HandshakePermit, IpGuard};
use crate::limits::{Refusals, Side};
use crate::listen::Handoffs;
use crate::pipe::relay::Relays;
use crate::pipe::spool::Budget;
use crate::pipe::tcp::TcpPorts;
use crate::shutdown::Shutdown;
use crate::tunnel::{Client, ConnId, Notice, Registry};

/// What the SSH server works with: the handle every connection of it
/// holds. Built by [`Server::new`]; its fields are this module's.
pub struct Server {
    registry: Arc<Registry>,
    limits: LimitArgs,
    /// What one connection may make the server hold or do.
    connection: ConnectionArgs,
    /// The live request log's settings.
    request_log: RequestLogArgs,
    auth_mode: AuthMode,
    /// `--reserved-names`.
    reserved_names: Vec<String>,
    keys: Arc<Keys>,
    /// `--auth-url`: asked at login about keys the keys file does not list.
    auth_url: Option<Arc<crate::authz::AuthUrl>>,
    /// Sign-in, when a provider is configured: `login=` is only accepted
    /// then, naming its providers.
    signin: Option<crate::identity::Operator>,
    /// Public TCP ports for raw tunnels.
    tcp: Arc<TcpPorts>,
    /// Relays raw connections to tunnels: private aliases' SSH
    /// connections go through it like TCP visitors.
    relays: Arc<Relays>,
    custom: Arc<CustomDomains>,
    ip_guard: Arc<IpGuard>,
    refusals: Arc<Refusals>,
    /// Whose PROXY header is believed.
    trusted: TrustedProxies,
    /// Keys the HMAC that turns an SSH key into its stable name (in a
    /// cluster, the secret every node shares).
    name_secret: Arc<[u8]>,
    /// Always [`russh_config`]'s: keepalives paired with the inactivity
    /// timeout, so idle `-N` tunnels live.
    russh: Arc<RusshConfig>,
    /// Memory and disk for slow visitors of every channel.
    spool: Arc<Budget>,
    /// The request inspector connections open with `-L 4040:localhost:4040`.
    inspect: Arc<crate::inspect::Inspector>,
    /// Per-user plans and accounts, when configured.
    plans: Option<Arc<crate::plans::Plans>>,
    shutdown: Shutdown,
}

/// The node's shared parts the SSH server is built from.
pub struct Parts {
    pub registry: Arc<Registry>,
    pub keys: Arc<Keys>,
    pub auth_url: Option<Arc<crate::authz::AuthUrl>>,
    pub signin: Option<crate::identity::Operator>,
    pub tcp: Arc<TcpPorts>,
    pub relays: Arc<Relays>,
    pub custom: Arc<CustomDomains>,
    pub ip_guard: Arc<IpGuard>,
    pub refusals: Arc<Refusals>,
    pub trusted: TrustedProxies,
    pub spool: Arc<Budget>,
    pub inspect: Arc<crate::inspect::Inspector>,
    pub plans: Option<Arc<crate::plans::Plans>>,
    pub shutdown: Shutdown,
}

impl Server {
    /// The providers `login=` may name; `None` when sign-in is off (then
    /// `login=` is refused).
    fn signin_providers(&self) -> Option<&[String]> {
        self.signin.as_ref().map(|s| s.providers.as_slice())
    }

    /// Who must sign in to visit the tunnels of key `owner` with
    /// `options`: the server's policy, the operator's for the key, the
    /// owner's own (empty when sign-in is off).
    fn login_policies(
        &self,
        owner: Option<&str>,
        options: &crate::tunnel::options::TunnelOptions,
    ) -> crate::identity::Policies {
        let Some(signin) = &self.signin else {
            return Default::default();
        };
        let auth_url = self.auth_url.as_deref();
        let key = owner.and_then(|fp| crate::authz::operator_policy(&self.keys, auth_url, fp));
        let all = [signin.required.clone(), key, options.login.clone()];
        crate::identity::Policies::new(all.into_iter().flatten())
    }

    /// The plan account of a user: key `fp`, or (keyless) the client's
    /// `ip`; `None` without plans.
    fn account(
        &self,
        fp: Option<&str>,
        ip: std::net::IpAddr,
    ) -> Option<Arc<crate::plans::Account>> {
        let plans = self.plans.as_ref()?;
        Some(match fp {
            Some(fp) => {
                let auth_url = self.auth_url.as_deref();
                let plan = crate::authz::operator_plan(&self.keys, auth_url, fp);
                plans.account(&crate::plans::key_account(fp), plan.as_deref())
            }
            None => plans.account(&crate::plans::ip_account(ip), None),
        })
    }

    /// What `--auth-url` granted the keys it allowed (empty without it).
    fn granted(&self) -> Arc<crate::keys::KeysFile> {
        self.auth_url
            .as_ref()
            .map_or_else(Default::default, |a| a.granted())
    }

    /// The server `config` describes, answering with `host_key` and
    /// naming keys with `name_secret`.
    pub fn new(
        config: &Config,
        parts: Parts,
        host_key: PrivateKey,
        name_secret: Arc<[u8]>,
    ) -> Server {
        Server {
            registry: parts.registry,
            limits: config.limits.clone(),
            connection: config.connection.clone(),
            request_log: config.request_log.clone(),
            auth_mode: config.auth_mode,
            reserved_names: config.reserved_names.clone(),
            keys: parts.keys,
            auth_url: parts.auth_url,
            signin: parts.signin,
            tcp: parts.tcp,
            relays: parts.relays,
            custom: parts.custom,
            ip_guard: parts.ip_guard,
            refusals: parts.refusals,
            trusted: parts.trusted,
            name_secret,
            russh: russh_config(host_key, config.login.auth_url.is_some(), &config.limits),
            spool: parts.spool,
            inspect: parts.inspect,
            plans: parts.plans,
            shutdown: parts.shutdown,
        }
    }
}

/// How the server notices a vanished client: a keepalive after
/// `interval` of silence, the connection closed after `max` of them go
/// unanswered (`--ssh-keepalive-interval`, `--ssh-keepalive-max`). A hard
/// ceiling on silence of one interval more replaces russh's 600 s default,
/// which would otherwise be the only bound when keepalives are off; a live
/// client answers every keepalive, so it only fires for peers that stopped
/// talking altogether.
fn keepalive(interval: Duration, max: u32) -> (Option<Duration>, usize, Option<Duration>) {
    if interval.is_zero() {
        return (None, 0, None);
    }
    let silence = interval.saturating_mul(max.saturating_add(2));
    (Some(interval), max as usize, Some(silence))
}

/// Builds the russh configuration around the host key.
/// `passwords`: `--auth-url` judges passwords too.
fn russh_config(host_key: PrivateKey, passwords: bool, limits: &LimitArgs) -> Arc<RusshConfig> {
    let (keepalive_interval, keepalive_max, inactivity_timeout) =
        keepalive(limits.ssh_keepalive_interval, limits.ssh_keepalive_max);
    let mut methods = vec![
        MethodKind::None,
        MethodKind::PublicKey,
        MethodKind::KeyboardInteractive,
    ];
    if passwords {
        methods.push(MethodKind::Password);
    }
    let methods = MethodSet::from(&methods[..]);
    Arc::new(RusshConfig {
        server_id: SshId::Standard(format!("SSH-2.0-burrow_{}", env!("CARGO_PKG_VERSION")).into()),
        methods,
        keys: vec![host_key],
        keepalive_interval,
        keepalive_max,
        inactivity_timeout,
        // Anonymous logins are accepted, so there is nothing to slow down.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        nodelay: true,
        ..RusshConfig::default()
    })
}

/// Loads the OpenSSH host key at `path`, generating an ed25519 key there
/// (mode 0600, written atomically) when the file does not exist.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    let context = || format!("--host-key {}", path.display());
    if path.exists() {
        return russh::keys::load_secret_key(path, None)
            .with_context(|| format!("{}: cannot load the SSH host key", context()));
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .with_context(|| format!("{}: cannot generate a host key", context()))?;
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .with_context(|| format!("{}: cannot encode the host key", context()))?;
    crate::state::write_private_file(path, pem.as_bytes()).with_context(context)?;
    tracing::info!(path = %path.display(), "generated a new ed25519 SSH host key");
    Ok(key)
}

/// Accepts SSH connections until shutdown: on its own listener, and those
/// another listener hands over (`handoffs`: SSH on the HTTPS port).
pub async fn serve(listener: TcpListener, server: Arc<Server>, handoffs: Option<Handoffs>) {
    let shutdown = server.shutdown.clone();
    if let Some(handoffs) = handoffs {
        shutdown.spawn(take_handoffs(Arc::clone(&server), handoffs));
    }
    crate::listen::accept_loop(&listener, "ssh", shutdown.requested(), |socket, peer| {
        start(&server, socket, peer, Arrival::Direct);
    })
    .await;
}

/// Serves the connections handed over until shutdown.
async fn take_handoffs(server: Arc<Server>, mut handoffs: Handoffs) {
    let shutdown = server.shutdown.clone();
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            next = handoffs.next() => match next {
                Some((socket, peer)) => start(&server, socket, peer, Arrival::HandedOver),
                None => return,
            },
        }
    }
}

/// How a connection reached the SSH server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// On the SSH listener: a PROXY header may come first.
    Direct,
    /// From another listener, whose PROXY header (if any) was read there.
    HandedOver,
}

fn start(server: &Arc<Server>, socket: TcpStream, peer: SocketAddr, arrival: Arrival) {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    COUNTERS.ssh_connected();
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let task = admit(Arc::clone(server), conn, socket, peer, arrival);
    server.shutdown.spawn(task);
}

/// Applies the per-IP admission limits to a new connection, then serves it
/// (or refuses it as cheaply as the limit allows).
async fn admit(
    server: Arc<Server>,
    conn: ConnId,
    mut socket: TcpStream,
    peer: SocketAddr,
    arrival: Arrival,
) {
    let timeout = server.limits.handshake_timeout;
    let peer = match arrival {
        Arrival::HandedOver => peer,
        Arrival::Direct => match server.trusted.resolve(&mut socket, peer, timeout).await {
            Ok(client) => client,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "dropped: bad PROXY header");
                return;
            }
        },
    };
    match server.ip_guard.admit(peer.ip()) {
        Admission::Allowed(permit) => {
            if let Some(refusal) = cluster_rate(&server, peer.ip()).await {
                COUNTERS.ssh_outcome(SshOutcome::Refused);
                let ip = peer.ip();
                server
                    .refusals
                    .refuse(&refusal, ip, Side::Client, "ssh connection");
                let text = format!("burrow: {}: {}\r\n", refusal.limit, refusal.message);
                return refuse_before_version(socket, &text).await;
            }
            serve_connection(server, conn, socket, peer, Some(permit), None).await
        }
        Admission::Blocked(block) => {
            COUNTERS.ssh_outcome(SshOutcome::Blocked);
            // Cheapest possible refusal: before the version exchange.
            // RFC 4253 §4.2 lets the server send text lines first.
            let text = format!(
                "burrow: your IP is blocked until {} ({})\r\n",
                block.until_utc(),
                block.reason
            );
            refuse_before_version(socket, &text).await;
        }
        Admission::Refused {
            refusal,
            newly_blocked,
            before_version,
        } => {
            COUNTERS.ssh_outcome(SshOutcome::Refused);
            let ip = peer.ip();
            server
                .refusals
                .refuse(&refusal, ip, Side::Client, "ssh connection");
            if let Some(block) = newly_blocked {
                server.registry.close_ip(ip, &block);
            }
            if before_version {
                let text = format!("burrow: {}: {}\r\n", refusal.limit, refusal.message);
                refuse_before_version(socket, &text).await;
            } else {
                // Finish the key exchange so OpenSSH prints the reason
                // ("Received disconnect ...: too many ...").
                let reason = format!("{}: {}", refusal.limit, refusal.message);
                serve_connection(server, conn, socket, peer, None, Some(reason)).await;
            }
        }
    }
}

/// In a cluster, `--max-conns-per-minute` counts the IP's connections to
/// every node. `Some` when this one is over it.
async fn cluster_rate(server: &Server, ip: std::net::IpAddr) -> Option<crate::limits::Refusal> {
    if !server.ip_guard.limits_conn_rate() {
        return None;
    }
    let count = server.registry.connections_this_minute(ip).await?;
    server.ip_guard.over_cluster_rate(count)
}

/// Writes one line and closes, without speaking SSH at all.
async fn refuse_before_version(mut socket: TcpStream, text: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = socket.write_all(text.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// Runs one SSH connection to its end. With `refused`, the connection is
/// disconnected with that reason as soon as the key exchange allows.
async fn serve_connection(
    server: Arc<Server>,
    id: ConnId,
    socket: TcpStream,
    peer: SocketAddr,
    permit: Option<HandshakePermit>,
    refused: Option<String>,
) {
    let parts = session::Parts {
        spool: Arc::clone(&server.spool),
        refusals: Arc::clone(&server.refusals),
        limits: &server.connection,
    };
    let session = Arc::new(Session::new(id, peer.ip(), parts));
    server
        .registry
        .add_client(Arc::clone(&session) as Arc<dyn Client>);
    let deadline = Instant::now() + server.limits.handshake_timeout;
    let handler = handler::ClientHandler::new(
        Arc::clone(&server),
        Arc::clone(&session),
        peer,
        permit,
        refused.is_some(),
    );
    let config = Arc::clone(&server.russh);
    // The socket is wrapped so the connection can be cut even when the
    // client ignores a disconnect (or stalls the key exchange, when russh
    // cannot send one at all).
    let socket = killable::KillableStream::new(socket, session.kill_switch());
    let socket = read_ahead::ReadAhead::new(socket);
    // Boxed, so the connection's task stays small once the handshake is
    // over (an idle tunnel keeps its task for as long as it lives).
    let handshake = Box::pin(russh::server::run_stream(config, socket, handler));
    let started = tokio::time::timeout_at(deadline, handshake).await;
    let running = match started {
        Ok(Ok(running)) => running,
        Ok(Err(err)) => {
            COUNTERS.ssh_outcome(SshOutcome::Failed);
            tracing::debug!(conn = id, %peer, error = %err, "ssh handshake failed");
            server.registry.remove_client(id);
            return;
        }
        Err(_) => {
            COUNTERS.ssh_outcome(SshOutcome::Failed);
            tracing::debug!(conn = id, %peer, "no ssh version line before the handshake timeout");
            server.registry.remove_client(id);
            return;
        }
    };
    let handle = running.handle();
    session.set_handle(handle.clone());
    if let Some(reason) = refused {
        let _ = handle
            .disconnect(russh::Disconnect::TooManyConnections, reason, "en".into())
            .await;
    }
    run_to_end(&server, &session, (running, handle), deadline, peer).await;
    server.registry.remove_client(id);
    server.inspect.forget(id);
    tracing::debug!(conn = id, %peer, "ssh connection closed");
}

/// Drives a connection's russh session until it ends, watching the
/// authentication deadline and shutdown.
async fn run_to_end<S>(
    server: &Server,
    session: &Session,
    (running, handle): (S, russh::server::Handle),
    deadline: Instant,
    peer: SocketAddr,
) where
    S: std::future::Future<Output = Result<(), russh::Error>>,
{
    let id = session.id();
    let stop = &server.shutdown;
    tokio::pin!(running);
    let mut watch_handshake = true;
    let mut told_restart = false;
    loop {
        tokio::select! {
            result = &mut running => {
                if let Err(err) = result {
                    tracing::debug!(conn = id, %peer, error = %err, "ssh session ended");
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline), if watch_handshake => {
                watch_handshake = false;
                if !session.is_authenticated() {
                    COUNTERS.ssh_outcome(SshOutcome::Failed);
                    let limit = server.limits.handshake_timeout;
                    tracing::info!(conn = id, ip = %peer.ip(), limit = "handshake-timeout", "ssh authentication timed out");
                    let reason = format!(
                        "handshake-timeout: authentication did not finish within {}",
                        crate::limits::human(limit)
                    );
                    session.disconnect_then_kill(reason);
                }
            }
            // Requests may still be on their way through this connection:
            // say what is coming, and keep it up until the last phase.
            _ = stop.requested(), if !told_restart => {
                told_restart = true;
                session.notify(Notice::Restarting);
            }
            _ = stop.finishing() => {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "burrow is restarting; reconnect in a few seconds".into(),
                        "en".into(),
                    )
                    .await;
                return;
            }
        }
    }
}
