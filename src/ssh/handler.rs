//! One SSH connection: authentication, `tcpip-forward` → registry, the
//! session channel (banner, Ctrl+C) and polite refusals of everything else.
//!
//! Two russh rules shape this file:
//! - Callbacks run inside russh's session loop, so they never await a
//!   [`russh::server::Handle`] call that needs the loop to answer; they only
//!   queue output through the `&mut Session` they are given.
//! - Every `Channel` russh hands us has a bounded queue that the session loop
//!   awaits on. We never keep the session channel's `Channel` object: its
//!   input arrives through [`Handler::data`] instead, so no queue can fill up
//!   and stall the connection.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty};

use super::banner;
use crate::limits::http::TunnelGate;
use crate::limits::ssh::HandshakePermit;
use crate::limits::Refusal;
use crate::registry::{Conn, Reservation, Tunnel};
use crate::App;

/// Ports that make an HTTPS tunnel. `0` asks the server to pick a port and
/// is treated as HTTP too.
const HTTP_PORTS: [u32; 3] = [80, 443, 0];

/// Ctrl+C and Ctrl+D as a raw terminal sends them.
const STOP_BYTES: [u8; 2] = [0x03, 0x04];

/// One `-R` the client asked for and got.
struct Forward {
    address: String,
    /// The port the client sent (0 for "pick one").
    requested: u32,
    /// The port we echo in `forwarded-tcpip` opens.
    port: u32,
    subdomain: String,
}

pub struct ClientHandler {
    app: Arc<App>,
    conn: Arc<Conn>,
    peer: SocketAddr,
    /// Holds a handshake slot until authentication succeeds.
    permit: Option<HandshakePermit>,
    /// Over a limit: authentication fails while the disconnect is on its way.
    refused: bool,
    /// The name shown in the authentication banner, waiting for the first
    /// HTTP forward to claim it.
    first_name: Option<Reservation>,
    forwards: Vec<Forward>,
    session: Option<ChannelId>,
    banner_shown: bool,
    /// Text produced before the session channel could show it.
    pending: String,
}

impl ClientHandler {
    pub fn new(
        app: Arc<App>,
        conn: Arc<Conn>,
        peer: SocketAddr,
        permit: Option<HandshakePermit>,
        refused: bool,
    ) -> Self {
        ClientHandler {
            app,
            conn,
            peer,
            permit,
            refused,
            first_name: None,
            forwards: Vec::new(),
            session: None,
            banner_shown: false,
            pending: String::new(),
        }
    }

    /// Writes to the session channel once the banner is up, else keeps the
    /// text for the banner.
    fn say(&mut self, session: &mut Session, text: String) {
        match self.session {
            Some(channel) if self.banner_shown => {
                let _ = session.data(channel, text.into_bytes());
            }
            _ => self.pending.push_str(&text),
        }
    }

    fn show_banner(&mut self, channel: ChannelId, session: &mut Session) {
        let lines: Vec<String> = self.forwards.iter().map(|f| self.tunnel_line(f)).collect();
        let limits = &self.app.config.limits;
        let expiry = banner::expiry(limits.tunnel_idle_timeout, limits.tunnel_max_lifetime);
        let mut text = banner::session_banner(&lines, &expiry);
        text.push_str(&std::mem::take(&mut self.pending));
        self.banner_shown = true;
        let _ = session.data(channel, text.into_bytes());
    }

    fn tunnel_line(&self, forward: &Forward) -> String {
        banner::tunnel_line(
            &self.app.url(&forward.subdomain),
            &banner::forward_spec(forward.requested, forward.port),
        )
    }

    /// A port for `-R 0` that no other forward of this connection uses with
    /// the same bind address, so OpenSSH can tell the forwards apart: the
    /// public HTTPS port when free, else one from the dynamic range.
    fn allocate_port(&self, address: &str) -> u32 {
        let taken = |port: u32| {
            self.forwards
                .iter()
                .any(|f| f.address == address && f.port == port)
        };
        std::iter::once(u32::from(self.app.public.https_port))
            .chain(49152..=65535)
            .find(|port| !taken(*port))
            .unwrap_or(0)
    }

    fn open_door(&self) -> Auth {
        if self.refused {
            Auth::reject()
        } else {
            Auth::Accept
        }
    }

    /// The tunnel limits, checked before a forward is granted.
    fn check_tunnel_limits(&self) -> Result<(), Refusal> {
        let limits = &self.app.config.limits;
        let registry = &self.app.registry;
        if limits.max_tunnels > 0 && registry.len() >= limits.max_tunnels as usize {
            return Err(Refusal::new(
                "max-tunnels",
                format!(
                    "the server is at its limit of {} tunnels; try again later",
                    limits.max_tunnels
                ),
            ));
        }
        let mine = registry.count_for_ip(self.peer.ip());
        if limits.max_tunnels_per_ip > 0 && mine >= limits.max_tunnels_per_ip as usize {
            return Err(Refusal::new(
                "max-tunnels-per-ip",
                format!(
                    "your IP already has {mine} tunnels open (limit {}); close one first",
                    limits.max_tunnels_per_ip
                ),
            ));
        }
        Ok(())
    }

    /// Closes every tunnel of this connection.
    fn close_tunnels(&mut self, why: &str) -> usize {
        let closed = self.app.registry.remove_conn(self.conn.id);
        for forward in self.forwards.drain(..) {
            tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), subdomain = %forward.subdomain, reason = why, "tunnel closed");
        }
        closed
    }

    /// Ctrl+C: close the tunnels now, say so, and end the session so the
    /// client exits.
    fn stop(&mut self, channel: ChannelId, session: &mut Session) {
        let closed = self.close_tunnels("stopped by the user");
        let _ = session.data(channel, banner::stopped(closed).into_bytes());
        let _ = session.exit_status_request(channel, 0);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }
}

impl Drop for ClientHandler {
    fn drop(&mut self) {
        self.close_tunnels("ssh connection closed");
    }
}

impl Handler for ClientHandler {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        if self.refused {
            return Ok(None);
        }
        let reservation = self.app.registry.reserve_random();
        let text = banner::auth_banner(&self.app.url(reservation.name()));
        self.first_name = Some(reservation);
        Ok(Some(text))
    }

    // Anonymous service: every method succeeds (unless the connection is
    // being refused). Keys are accepted but do not change anything yet.
    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(self.open_door())
    }

    async fn auth_password(&mut self, _user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.open_door())
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.open_door())
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.open_door())
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.conn.set_authenticated();
        self.permit = None;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let requested = *port;
        if !HTTP_PORTS.contains(&requested) {
            tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), port = requested, reason = "unsupported port", "forward refused");
            let text = banner::unsupported_port(requested, &self.app.config.domain);
            self.say(session, text);
            return Ok(false);
        }
        let allocated = if requested == 0 {
            self.allocate_port(address)
        } else {
            requested
        };
        if self
            .forwards
            .iter()
            .any(|f| f.address == address && f.port == allocated)
        {
            tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), port = requested, reason = "duplicate forward", "forward refused");
            self.say(session, banner::duplicate_forward(address, allocated));
            return Ok(false);
        }
        if let Err(refusal) = self.check_tunnel_limits() {
            self.app
                .stats
                .total_rate_limited
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.app.refusal_log.first(self.peer.ip(), refusal.limit) {
                tracing::warn!(conn = self.conn.id, ip = %self.peer.ip(), limit = refusal.limit, reason = %refusal.message, "forward refused");
            }
            self.say(session, banner::limit_error(&refusal));
            return Ok(false);
        }

        let reservation = self
            .first_name
            .take()
            .unwrap_or_else(|| self.app.registry.reserve_random());
        let subdomain = reservation.name().to_string();
        let tunnel = Tunnel::new(
            subdomain.clone(),
            self.conn.id,
            self.peer.ip(),
            address.to_string(),
            allocated,
            session.handle(),
            TunnelGate::new(&self.app.config.limits),
        );
        self.app.registry.insert(reservation, tunnel);
        *port = allocated;
        tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), subdomain = %subdomain, port = requested, "tunnel opened");

        let forward = Forward {
            address: address.to_string(),
            requested,
            port: allocated,
            subdomain,
        };
        if self.banner_shown {
            let text = self.tunnel_line(&forward);
            self.say(session, text);
        }
        self.forwards.push(forward);
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Some(index) = self
            .forwards
            .iter()
            .position(|f| f.address == address && f.port == port)
        else {
            return Ok(false);
        };
        let forward = self.forwards.remove(index);
        self.app.registry.remove(&forward.subdomain, self.conn.id);
        tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), subdomain = %forward.subdomain, reason = "forward cancelled", "tunnel closed");
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.session.is_some() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // Keep only the id: input comes through `data`, and an unread
        // `Channel` would eventually block the whole connection.
        self.session = Some(channel.id());
        self.conn.set_session(Some(channel.id()));
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(
            conn = self.conn.id,
            host = host_to_connect,
            port = port_to_connect,
            "refused direct-tcpip (-L/-D)"
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        self.show_banner(channel, session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data);
        if command.trim().is_empty() {
            return self.shell_request(channel, session).await;
        }
        session.channel_success(channel)?;
        tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), reason = "exec request", "command refused");
        let text = banner::exec_refused(command.trim(), &self.app.config.domain);
        session.extended_data(channel, 1, text.into_bytes())?;
        session.exit_status_request(channel, 2)?;
        session.eof(channel)?;
        session.close(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::debug!(conn = self.conn.id, subsystem = name, "refused subsystem");
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if Some(channel) == self.session && data.iter().any(|b| STOP_BYTES.contains(b)) {
            self.stop(channel, session);
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if Some(channel) == self.session {
            self.session = None;
            self.conn.set_session(None);
        }
        Ok(())
    }
}
