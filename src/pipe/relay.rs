//! Raw byte relays: the one behind an HTTP/1.1 upgrade (WebSocket) and the
//! one behind raw TCP tunnels and TLS passthrough ([`Relays::serve_visitor`]).
//!
//! Both directions are copied at once; each may be capped in bytes, the
//! whole relay is closed after an idle timeout with no bytes either way, and
//! TCP relays may share a tunnel's bandwidth budget (`--tcp-bandwidth`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::counters::COUNTERS;
use crate::limits::http::{Slot, TunnelGate};
use crate::limits::ssh::IpGuard;
use crate::limits::{human, Activity, Refusals, Side};
use crate::tunnel::directory::{Carry, Forwarded};
use crate::tunnel::registry::Pick;
use crate::tunnel::route::{Holder, Remote};
use crate::tunnel::{ByteStream, Registry, Tunnel};

/// What raw relays (TCP ports, TLS passthrough) work with.
pub struct Relays {
    pub registry: Arc<Registry>,
    pub ip_guard: Arc<IpGuard>,
    pub refusals: Arc<Refusals>,
    /// `--tcp-idle-timeout`.
    pub idle: Duration,
}

/// Copy buffer per direction.
const BUFFER: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed.
    Closed,
    /// One direction passed the byte cap.
    TooManyBytes,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed.
    Error,
    /// The tunnel owner's plan's transfer quota is used up.
    Quota,
}

/// The limits of one relay.
#[derive(Clone, Default)]
pub struct RelayLimits {
    /// Bytes allowed in each direction; 0 = no cap.
    pub max_bytes: u64,
    /// Closed after this long with no bytes either way; 0 = never.
    pub idle: Duration,
    /// The flag prefix the limits come from, for messages (`websocket`, `tcp`).
    pub flags: &'static str,
    /// The tunnel whose bandwidth budget the bytes are spent from.
    pub bandwidth: Option<Arc<TunnelGate>>,
    /// The tunnel owner's plan account: the relay ends when its transfer
    /// quota is used up.
    pub quota: Option<Arc<crate::plans::Account>>,
}

impl RelayEnd {
    pub fn describe(&self, limits: &RelayLimits) -> String {
        let flags = limits.flags;
        match self {
            RelayEnd::Closed => "closed".into(),
            RelayEnd::TooManyBytes => format!(
                "cut after {} bytes in one direction ({flags}-max-bytes)",
                limits.max_bytes
            ),
            RelayEnd::Idle => format!("idle for {} ({flags}-idle-timeout)", human(limits.idle)),
            RelayEnd::Error => "connection error".into(),
            RelayEnd::Quota => match &limits.quota {
                Some(account) => format!(
                    "closed: the {} plan's transfer quota is used up",
                    account.plan().name
                ),
                None => "closed: the transfer quota is used up".into(),
            },
        }
    }
}

/// Relays between `a` and `b` until both close or a limit ends it.
pub async fn relay<A, B>(a: A, b: B, limits: &RelayLimits) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    relay_counted(a, b, limits, &Moved::default()).await
}

/// Bytes a relay moved in each direction so far.
#[derive(Debug, Default)]
pub struct Moved {
    pub a_to_b: AtomicU64,
    pub b_to_a: AtomicU64,
}

/// [`relay`], counting the bytes into `moved` as they go.
pub async fn relay_counted<A, B>(a: A, b: B, limits: &RelayLimits, moved: &Moved) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let activity = Arc::new(Activity::default());
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let forward = pump(&mut a_read, &mut b_write, limits, &activity, &moved.a_to_b);
    let backward = pump(&mut b_read, &mut a_write, limits, &activity, &moved.b_to_a);
    let idle = idle_expired(&activity, limits.idle);
    let quota = async {
        match &limits.quota {
            Some(account) => account.transfer_used_up().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(forward, backward, idle, quota);
    // The first direction to end decides, unless it merely closed: then the
    // other direction may still finish (half-close).
    let rest: Pin<&mut (dyn Future<Output = RelayEnd> + Send)> = tokio::select! {
        end = &mut forward => {
            if end != RelayEnd::Closed {
                return end;
            }
            backward
        }
        end = &mut backward => {
            if end != RelayEnd::Closed {
                return end;
            }
            forward
        }
        _ = &mut idle => return RelayEnd::Idle,
        _ = &mut quota => return RelayEnd::Quota,
    };
    tokio::select! {
        end = rest => end,
        _ = idle => RelayEnd::Idle,
        _ = quota => RelayEnd::Quota,
    }
}

/// Copies one direction; on EOF, shuts the writer down (half-close) so the
/// other direction can finish.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    limits: &RelayLimits,
    activity: &Activity,
    moved: &AtomicU64,
) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => {
                let _ = writer.shutdown().await;
                return RelayEnd::Closed;
            }
            Ok(n) => n,
            Err(_) => return RelayEnd::Error,
        };
        total += n as u64;
        if limits.max_bytes > 0 && total > limits.max_bytes {
            return RelayEnd::TooManyBytes;
        }
        activity.touch();
        if let Some(gate) = &limits.bandwidth {
            gate.spend_bandwidth(n).await;
        }
        if writer.write_all(&buf[..n]).await.is_err() {
            return RelayEnd::Error;
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Resolves once `activity` has been still for `idle` (never when zero).
pub async fn idle_expired(activity: &Activity, idle: Duration) {
    if idle.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let left = idle.saturating_sub(activity.idle_for());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left).await;
    }
}

impl Relays {
    /// Relays one visitor connection of a raw tunnel (a TCP port, or TLS
    /// passed through by SNI) to a client serving `key` — on this node, or
    /// (in a cluster) on the node that holds it. `prefix` holds bytes
    /// already read from the visitor (a peeked ClientHello); `local` is the
    /// address the visitor connected to.
    pub async fn serve_visitor<S>(
        &self,
        key: &str,
        stream: S,
        prefix: &[u8],
        visitor: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match self.connect(key, visitor, local).await {
            Ok(upstream) => self.relay(upstream, stream, prefix, visitor, local).await,
            Err(why) => tracing::debug!(%key, %visitor, why = %why, "connection not served"),
        }
    }

    /// Admits a visitor of `key` and opens the app's side of its
    /// connection, before anything is accepted from the visitor: a caller
    /// that can still refuse (an SSH `direct-tcpip` open) passes the reason
    /// on.
    pub async fn connect(
        &self,
        key: &str,
        visitor: SocketAddr,
        local: SocketAddr,
    ) -> Result<Upstream, Unserved> {
        match self.registry.route(key, Pick::Next).await {
            Holder::There(remote) => self.open_there(&remote, visitor, local).await,
            Holder::Here(_) => self.connect_here(key, visitor).await,
            Holder::Gone | Holder::Nobody | Holder::Unresolved => Err(Unserved::NoClient),
        }
    }

    /// Relays `stream` (after `prefix`, bytes already read from it) through
    /// `upstream` until either side ends, the visitor is blocked or, here,
    /// the tunnel closes.
    pub async fn relay<S>(
        &self,
        upstream: Upstream,
        stream: S,
        prefix: &[u8],
        visitor: SocketAddr,
        local: SocketAddr,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (tunnel, mut io, _slot) = match upstream {
            Upstream::Here { tunnel, io, slot } => (Some(tunnel), io, Some(slot)),
            // Its limits and PROXY header apply on the holding node.
            Upstream::There(link) => (None, link, None),
        };
        let proxy = tunnel.as_ref().and_then(|t| t.client().options().proxy);
        let mut head = proxy
            .map(|version| crate::forwarded::proxy_header(version, visitor, local))
            .unwrap_or_default();
        head.extend_from_slice(prefix);
        if !head.is_empty() && io.write_all(&head).await.is_err() {
            return;
        }
        let limits = RelayLimits {
            max_bytes: 0,
            idle: self.idle,
            flags: "tcp",
            bandwidth: tunnel.as_ref().map(|t| Arc::clone(t.gate())),
            quota: tunnel.as_ref().and_then(|t| t.client().account()),
        };
        let closed = async {
            match &tunnel {
                Some(tunnel) => tunnel.closed().await,
                None => std::future::pending().await,
            }
        };
        // A visitor blocked (or a tunnel closed) mid-connection is cut at
        // once, not when the connection ends by itself.
        tokio::select! {
            end = relay(stream, io, &limits) => {
                if end == RelayEnd::Quota {
                    tracing::info!(%visitor, end = %end.describe(&limits), "relayed connection closed");
                } else {
                    tracing::debug!(%visitor, end = %end.describe(&limits), "relayed connection ended");
                }
            }
            _ = self.ip_guard.until_blocked(visitor.ip()) => {
                tracing::debug!(%visitor, "relayed connection cut: the visitor was blocked");
            }
            _ = closed => {
                tracing::debug!(%visitor, "relayed connection cut: the tunnel was closed");
            }
        }
    }

    /// Opens a stream over the cluster link to the node holding `remote`.
    /// A ban cuts it here too.
    async fn open_there(
        &self,
        remote: &Remote,
        visitor: SocketAddr,
        local: SocketAddr,
    ) -> Result<Upstream, Unserved> {
        if self.ip_guard.blocked(visitor.ip()).is_some() {
            return Err(Unserved::Blocked);
        }
        COUNTERS.forwarded("raw");
        let forwarded = Forwarded {
            carry: Carry::Raw,
            visitor,
            local,
        };
        match remote.open(forwarded).await {
            Ok(link) => Ok(Upstream::There(link)),
            // The node's own words when it answered, else the link's.
            Err(err) => Err(Unserved::Failed(err.to_string())),
        }
    }

    /// Admits the visitor and opens a stream through the first client of
    /// `key` on this node that takes one (clients that fail are passed over
    /// for a while): [`Relays::connect`] without the cluster hop, for a
    /// connection another node forwarded.
    pub async fn connect_here(&self, key: &str, visitor: SocketAddr) -> Result<Upstream, Unserved> {
        if self.ip_guard.blocked(visitor.ip()).is_some() {
            return Err(Unserved::Blocked);
        }
        // Only clients that relay raw bytes: a name's clients may differ in
        // `tls=` (options are per connection), and a ClientHello must never
        // reach an app that expects HTTP.
        let candidates = self.registry.candidates(key);
        let mut failed = Unserved::NoClient;
        for tunnel in candidates.into_iter().filter(|t| t.relays_raw()) {
            let settled = tunnel.settle_options().await;
            COUNTERS.held_for_options(settled.held);
            let options = settled.options;
            if !options.allows(visitor.ip()) {
                return Err(Unserved::NotAllowed);
            }
            let slot = match tunnel.gate().admit_connection(visitor.ip()) {
                Ok(slot) => slot,
                Err(refusal) => {
                    self.refusals
                        .refuse(&refusal, visitor.ip(), Side::Visitor, key);
                    return Err(Unserved::Limited(refusal.message));
                }
            };
            if let Some(account) = tunnel.client().account() {
                if let Err(refusal) = account.admit_request() {
                    COUNTERS.quota_refused(&account.plan().name, refusal.limit);
                    self.refusals
                        .refuse(&refusal, visitor.ip(), Side::Visitor, key);
                    return Err(Unserved::Limited(refusal.message));
                }
            }
            match tunnel.open(visitor).await {
                Ok(io) => {
                    COUNTERS.connection_relayed(tunnel.traffic());
                    return Ok(Upstream::Here { tunnel, io, slot });
                }
                Err(err) => {
                    tracing::debug!(%key, conn = tunnel.conn(), error = ?err, "stream open failed; trying the next client");
                    tunnel.mark_failing();
                    failed = Unserved::Failed(format!("the client could not open it: {err}"));
                }
            }
        }
        Err(failed)
    }
}

/// The app's side of a visitor's connection, admitted and open.
pub enum Upstream {
    /// A stream through a client on this node, holding the visitor's
    /// connection slot of its tunnel.
    Here {
        tunnel: Arc<Tunnel>,
        io: ByteStream,
        slot: Slot,
    },
    /// A stream over the cluster link to the node holding the tunnel.
    There(ByteStream),
}

/// Why a visitor's connection reached no app; the text is what an SSH
/// client that asked for it is told.
#[derive(Debug)]
pub enum Unserved {
    /// The visitor's address is blocked.
    Blocked,
    /// No client serves the name now.
    NoClient,
    /// The tunnel's `allow=` list leaves the visitor out.
    NotAllowed,
    /// A connection limit said no (its refusal, which names it).
    Limited(String),
    /// Every client (or the holding node) failed to open it: why, in words.
    Failed(String),
}

impl std::fmt::Display for Unserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unserved::Blocked => f.write_str("your address is blocked"),
            Unserved::NoClient => f.write_str("no client serves it now"),
            Unserved::NotAllowed => f.write_str("your address is not in its allow= list"),
            Unserved::Limited(refusal) => f.write_str(refusal),
            Unserved::Failed(why) => f.write_str(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_closes() {
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(a, b, &RelayLimits::default()).await });
        a_peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b_peer.write_all(b"pong").await.unwrap();
        a_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(a_peer);
        drop(b_peer);
        assert_eq!(relay.await.unwrap(), RelayEnd::Closed);
    }

    #[tokio::test]
    async fn byte_cap_ends_the_relay() {
        let (a, mut a_peer) = tokio::io::duplex(64 * 1024);
        let (b, _b_peer) = tokio::io::duplex(64 * 1024);
        let limits = RelayLimits {
            max_bytes: 1000,
            ..Default::default()
        };
        let relay = tokio::spawn(async move { relay(a, b, &limits).await });
        a_peer.write_all(&[1u8; 2000]).await.unwrap();
        assert_eq!(relay.await.unwrap(), RelayEnd::TooManyBytes);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relay_is_closed() {
        let (a, _a_peer) = tokio::io::duplex(1024);
        let (b, _b_peer) = tokio::io::duplex(1024);
        let limits = RelayLimits {
            idle: Duration::from_secs(30),
            ..Default::default()
        };
        let end = relay(a, b, &limits).await;
        assert_eq!(end, RelayEnd::Idle);
    }
}
