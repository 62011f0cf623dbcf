//! Raw TCP tunnels: the port asked for when the grant rule allows it
//! (bound here, or joined when this key's other client holds it), else a
//! random free one from the range; the claim with its listener.

use std::sync::Arc;

use super::{Forward, Forwards};
use crate::ssh::banner::{self, Line};
use crate::tunnel::names::Denied;
use crate::tunnel::registry::{ClaimError, Claimed, Holding};
use crate::tunnel::{tcp_key, Bind, Kind};

impl Forwards {
    /// Checks and claims one raw TCP forward: the requested port when the
    /// grant rule allows it and it is free, else a random port of the
    /// range, with a note saying why.
    pub(super) async fn open_tcp_forward(
        &mut self,
        address: &str,
        requested: u32,
    ) -> Result<(Forward, Vec<Line>), Line> {
        let server = Arc::clone(&self.server);
        let ranges = || server.tcp.ranges().to_string();
        if !server.tcp.enabled() {
            self.refused(address, requested, "tcp tunnels disabled");
            return Err(banner::tcp_disabled(
                requested,
                &server.registry.public().domain,
            ));
        }
        self.admit_forward(address, requested).await?;
        let wanted = u16::try_from(requested).ok().filter(|p| *p > 0);
        let mut note = None;
        let mut claimed = None;
        if let Some(port) = wanted {
            match self.try_tcp_port(port).await {
                Ok((listener, owned)) => {
                    match self
                        .claim_tcp(port, listener, (address, requested), owned)
                        .await
                    {
                        Ok(c) => claimed = Some((port, c)),
                        Err(ClaimError::Taken) => {
                            note = Some(("is in use by another key's tunnel", port));
                            server.tcp.held_by_another(port).await;
                        }
                        Err(ClaimError::Duplicate) => {
                            let url = server.registry.public().tcp_url(port);
                            return Err(banner::served_twice(&url));
                        }
                    }
                }
                Err(why) => note = Some((why, port)),
            }
        }
        let (port, claimed) = match claimed {
            Some(claimed) => claimed,
            None => {
                let files = self.files();
                let grants = self.grants(&files);
                let Some((port, listener)) =
                    server.tcp.bind_random(&server.registry, &grants).await
                else {
                    self.refused(address, requested, "no free tcp port");
                    return Err(banner::tcp_ports_exhausted(&ranges()));
                };
                let claimed = self
                    .claim_tcp(port, Some(listener), (address, requested), false)
                    .await
                    .map_err(|_| banner::tcp_ports_exhausted(&ranges()))?;
                (port, claimed)
            }
        };
        let note = note.map(|(why, wanted)| banner::tcp_port_instead(wanted, why, port));
        let shared = server.registry.announce_claim(&claimed);
        let notes = note.into_iter().chain(shared.map(|n| banner::notice(&n)));
        tracing::info!(conn = self.session.id(), ip = %self.ip, port, requested, fingerprint = self.owner_key(), "tcp tunnel opened");
        let forward = Forward {
            address: address.to_string(),
            requested,
            port: echo_port(requested, port),
            key: tcp_key(port),
            kind: Kind::Tcp(port),
        };
        Ok((forward, notes.collect()))
    }

    /// Binds the requested `port` if this client may have it, with whether
    /// its key owns it. A `None` listener: the port is ours already, held
    /// by a group this client may join. `Err` says why not, for the note.
    pub(super) async fn try_tcp_port(
        &self,
        port: u16,
    ) -> Result<(Option<tokio::net::TcpListener>, bool), &'static str> {
        let files = self.files();
        let owned = match self.grants(&files).port(self.owner_key(), port) {
            Ok(owned) => owned,
            Err(Denied::OutOfRange) => return Err("is outside this server's TCP port range"),
            Err(_) => return Err("belongs to another key"),
        };
        match self.server.tcp.bind(port).await {
            Ok(listener) => Ok((Some(listener), owned)),
            Err(_) if self.server.registry.clients(&tcp_key(port)) > 0 => Ok((None, owned)),
            Err(_) => Err("is in use"),
        }
    }

    /// Claims TCP port `port` for this connection; `listener` (when this
    /// client bound the port) starts accepting and lives with the port's
    /// group.
    pub(super) async fn claim_tcp(
        &self,
        port: u16,
        listener: Option<tokio::net::TcpListener>,
        (address, requested): (&str, u32),
        owned: bool,
    ) -> Result<Claimed, ClaimError> {
        let bind = Bind {
            address: address.to_string(),
            port: echo_port(requested, port),
        };
        let tunnel = self.tunnel((tcp_key(port), Kind::Tcp(port)), bind, owned);
        let listening = listener.map(|l| Box::new(self.server.tcp.serve(port, l)) as Holding);
        self.server.registry.claim(tunnel, listening).await
    }
}

/// The port `forwarded-tcpip` opens echo for a TCP forward: OpenSSH matches
/// channels by the port it asked for, or for `0` by the one we allocated.
fn echo_port(requested: u32, public: u16) -> u32 {
    if requested == 0 {
        u32::from(public)
    } else {
        requested
    }
}
