//! `direct-tcpip` (what `ssh -J`, `-L` and `-W` send): burrow offers no
//! outbound forwarding, so a channel is opened only to the request
//! inspector (`-L 4040:localhost:4040`, answered by burrow itself, see
//! [`crate::inspect`]) or to a private alias a device registered
//! (`-R NAME:PORT:…`), and only for a key allowed to reach it
//! ([`crate::tunnel::private`]). Everything else is refused, with the
//! reason in the open-failure text the client prints, and a log line.
//!
//! An allowed open is first connected to the device like a visitor of a
//! raw tunnel ([`Relays::connect`]: the same per-tunnel connection limits,
//! bans, `allow=`, and in a cluster the same forwarding to the node the
//! device is on), and only then accepted, so whatever stops it there is
//! the open failure the client prints too. The channel is then relayed
//! ([`Relays::relay`]) through a spool, with the same idle timeout.
//!
//! [`Relays::connect`]: crate::pipe::relay::Relays::connect
//! [`Relays::relay`]: crate::pipe::relay::Relays::relay

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelOpenFailure};

use super::quota::Held;
use super::Server;
use crate::counters::{Traffic, COUNTERS};
use crate::pipe::channel::ChannelIo;
use crate::pipe::relay::Upstream;
use crate::tunnel::private::{self, Access, Alias, Refused};
use crate::tunnel::route::{AliasOwner, NoDevice};

/// One `direct-tcpip` open, as the client sent it.
pub struct Request {
    /// The target host and port.
    pub host: String,
    pub port: u32,
    /// The connecting client's address (the "visitor" of the alias).
    pub peer: SocketAddr,
    /// Its connection id, for the log.
    pub conn: crate::tunnel::ConnId,
    /// The fingerprint of the key it logged in with, if any.
    pub key: Option<String>,
}

/// Why a `direct-tcpip` open is refused: the counter label and the text
/// the client prints after "open failed:".
struct Refusal {
    label: &'static str,
    reason: ChannelOpenFailure,
}

impl Refusal {
    fn prohibited(label: &'static str, text: String) -> Refusal {
        Refusal {
            label,
            reason: ChannelOpenFailure::Other {
                code: 1,
                reason: text,
            },
        }
    }

    fn connect_failed(label: &'static str, text: String) -> Refusal {
        Refusal {
            label,
            reason: ChannelOpenFailure::Other {
                code: 2,
                reason: text,
            },
        }
    }
}

/// Answers one `direct-tcpip` open (in its own task: it may wait for the
/// cluster directory, and a russh callback must not). The task holds the
/// channel's slot among the connection's `direct-tcpip` channels until it
/// ends.
pub fn open(
    server: Arc<Server>,
    request: Request,
    (channel, slot): (Channel<Msg>, Held),
    reply: ChannelOpenHandle,
) {
    let shutdown = server.shutdown.clone();
    shutdown.spawn(async move {
        let _slot = slot;
        if crate::inspect::is_inspector(&request.host, request.port) {
            let inspector = Arc::clone(&server.inspect);
            let io = accept(&server, channel, reply).await;
            crate::inspect::serve::serve(inspector, request.conn, io).await;
            return;
        }
        let (alias, upstream, local) = match reach(&server, &request).await {
            Ok(reached) => reached,
            Err(refusal) => {
                COUNTERS.private_connection(refusal.label);
                tracing::info!(conn = request.conn, ip = %request.peer.ip(), host = %request.host, port = request.port, reason = refusal.reason.description(), "direct-tcpip refused");
                reply.reject(refusal.reason).await;
                return;
            }
        };
        COUNTERS.private_connection("relayed");
        tracing::info!(conn = request.conn, ip = %request.peer.ip(), alias = %alias, fingerprint = request.key.as_deref(), "private connection opened");
        let io = accept(&server, channel, reply).await;
        let relays = &server.relays;
        relays.relay(upstream, io, &[], request.peer, local).await;
        tracing::debug!(conn = request.conn, alias = %alias, "private connection closed");
    });
}

/// Accepts the client's open: the channel is read through a spool like
/// every channel, so a slow reader on our side cannot stall the client's
/// connection.
async fn accept(server: &Server, channel: Channel<Msg>, reply: ChannelOpenHandle) -> ChannelIo {
    reply.accept().await;
    ChannelIo::new(
        channel,
        Arc::clone(&server.spool),
        Arc::new(Traffic::default()),
        // The device's side is the one accounted (its owner's plan).
        None,
    )
}

/// The alias `request` may reach, with the device's side of the
/// connection already open (so that the device's failure, too, is the
/// open failure the client prints), and the address it was reached at.
async fn reach(
    server: &Server,
    request: &Request,
) -> Result<(Alias, Upstream, SocketAddr), Refusal> {
    let alias = admit(server, request).await?;
    let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), alias.port);
    match server
        .relays
        .connect(&alias.key(), request.peer, local)
        .await
    {
        Ok(upstream) => Ok((alias, upstream, local)),
        Err(why) => Err(Refusal::connect_failed(
            "device-failed",
            format!("{alias} did not take the connection: {why}"),
        )),
    }
}

/// The alias `request` may reach, or why not.
async fn admit(server: &Server, request: &Request) -> Result<Alias, Refusal> {
    let public = server.registry.public();
    let Some(alias) = private::alias(&request.host, request.port, &public.domain) else {
        return Err(Refusal::prohibited(
            "not-private",
            format!(
                "burrow forwards only to private aliases (a device's -R NAME:PORT); {}:{} is none",
                request.host, request.port
            ),
        ));
    };
    let AliasOwner { owner, allow_keys } = match server.registry.alias_owner(&alias.key()).await {
        Ok(owner) => owner,
        Err(NoDevice::Moving) => {
            return Err(Refusal::connect_failed(
                "no-device",
                format!("{alias} is reconnecting to another node; try again in a few seconds"),
            ))
        }
        Err(NoDevice::Nobody) => {
            return Err(Refusal::connect_failed(
                "no-device",
                format!("no device holds the private alias {alias} now"),
            ))
        }
    };
    let keys = server.keys.current();
    let access = Access {
        owner: owner.as_deref(),
        allow_keys: &allow_keys,
        keys: &keys,
    };
    match access.check(request.key.as_deref(), &alias.name) {
        Ok(()) => Ok(alias),
        Err(Refused::NeedsKey) => Err(Refusal::prohibited(
            "needs-key",
            format!("{alias} is private: connect with an SSH key it allows"),
        )),
        Err(Refused::NotAllowed) => Err(Refusal::prohibited(
            "not-allowed",
            format!(
                "your key {} may not connect to {alias} (its owner can add it with allow-keys=, the operator with connect= in the keys file)",
                request.key.as_deref().unwrap_or_default()
            ),
        )),
    }
}
