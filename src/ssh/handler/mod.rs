//! The russh callbacks of one SSH connection, and only those: each one
//! hands over to [`super::auth`] (who may log in, and as what), to
//! [`super::forward`] (`tcpip-forward` → a tunnel) or to the session
//! channel below (banner, options, Ctrl+C), to [`crate::inspect`] (the one
//! `direct-tcpip` answered: the request inspector), and refuses the rest
//! politely.
//!
//! What the session channel shows (banner, lines, Ctrl+C, the session's
//! end) is [`output`].
//!
//! Every request first passes the connection's own rules ([`guard`]: its
//! limits, [`super::quota`], and the protocol); a request refused there is
//! a strike, and the last strike ends the connection.
//!
//! Two russh rules shape this file:
//! - Callbacks run inside russh's session loop, so they never await a
//!   [`russh::server::Handle`] call that needs the loop to answer; they only
//!   queue output through the `&mut Session` they are given.
//! - Every `Channel` russh hands us has a bounded queue that the session loop
//!   awaits on. We never keep the session channel's `Channel` object: its
//!   input arrives through [`Handler::data`] instead, so no queue can fill up
//!   and stall the connection.

mod guard;
mod output;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session as Russh};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty};

use self::guard::protocol;
use super::auth::Login;
use super::banner::{self, Line};
use super::forward::Forwards;
use super::session::Session;
use super::settle::{self, Ping};
use super::Server;
use crate::counters::{SshOutcome, COUNTERS};
use crate::limits::ssh::HandshakePermit;
use crate::tunnel::options::{self, Command};

/// Ctrl+C and Ctrl+D as a raw terminal sends them.
const STOP_BYTES: [u8; 2] = [0x03, 0x04];

/// The state of one SSH connection, owned by its russh session.
pub struct ClientHandler {
    server: Arc<Server>,
    session: Arc<Session>,
    peer: SocketAddr,
    /// Holds a handshake slot until authentication succeeds.
    permit: Option<HandshakePermit>,
    login: Login,
    forwards: Forwards,
    /// The session channel, while it is open.
    channel: Option<ChannelId>,
    /// The client asked for a terminal (`ssh -t`, or a shell): QR codes
    /// only make sense there.
    pty: bool,
    banner_shown: bool,
    /// Lines produced before the session channel could show them (at most
    /// a line or two per forward request, which the quota bounds).
    pending: Vec<Line>,
    /// The options (an exec, or a shell without them) were given: they are
    /// the connection's, once.
    options_given: bool,
    /// Channels the client sent EOF on, until they close: data after it
    /// breaks the protocol.
    eof: HashSet<ChannelId>,
    /// The connection is being ended for what it did: nothing more counts.
    ending: bool,
}

impl ClientHandler {
    pub fn new(
        server: Arc<Server>,
        session: Arc<Session>,
        peer: SocketAddr,
        permit: Option<HandshakePermit>,
        refused: bool,
    ) -> Self {
        let keys = (Arc::clone(&server.keys), server.auth_url.clone());
        ClientHandler {
            login: Login::new(keys, server.auth_mode, peer, refused),
            forwards: Forwards::new(Arc::clone(&server), Arc::clone(&session), peer.ip()),
            server,
            session,
            peer,
            permit,
            channel: None,
            pty: false,
            banner_shown: false,
            pending: Vec::new(),
            options_given: false,
            eof: HashSet::new(),
            ending: false,
        }
    }

    /// Closes every tunnel of this connection.
    fn close_tunnels(&mut self, why: &str) -> usize {
        self.forwards.close_all(why)
    }

    fn session_id(&self) -> crate::tunnel::ConnId {
        self.session.id()
    }
}

impl Drop for ClientHandler {
    fn drop(&mut self) {
        self.session.ended();
        self.close_tunnels("ssh connection closed");
    }
}

impl Handler for ClientHandler {
    type Error = russh::Error;

    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        Ok(self.login.banner(|| self.forwards.announce_random()))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.login.none(user))
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login.key_offered(offer.public_key))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let (auth, key) = self.login.key_verified(user, key.public_key).await;
        if let Some(key) = key {
            self.forwards.identify(key);
        }
        Ok(auth)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login.keyboard_interactive(user).await)
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.login.password(user, password).await)
    }

    async fn auth_succeeded(&mut self, session: &mut Russh) -> Result<(), Self::Error> {
        self.permit = None;
        if let Some(reason) = self.login.denied() {
            // In only to be told why not: OpenSSH prints a disconnect's
            // reason, not a refused key's.
            COUNTERS.ssh_outcome(SshOutcome::Refused);
            let reason = format!("burrow: {reason}");
            return session.disconnect(russh::Disconnect::ByApplication, &reason, "");
        }
        COUNTERS.ssh_outcome(SshOutcome::Accepted);
        self.session.set_authenticated();
        let fp = self.forwards.key().map(|k| k.fingerprint.clone());
        let ip = crate::tunnel::Client::ip(&*self.session);
        if let (Some(account), Some(plans)) =
            (self.server.account(fp.as_deref(), ip), &self.server.plans)
        {
            plans.refresh(&account).await;
            self.session.set_account(account);
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Russh,
    ) -> Result<bool, Self::Error> {
        if self.login.denied().is_some() {
            return Ok(false);
        }
        self.session.set_handle(session.handle());
        if let Err(refusal) = self.session.quota().forward() {
            self.say(session, banner::limit_error(&refusal));
            self.strike(&refusal, "forward");
            return Ok(false);
        }
        // Boxed: russh keeps each callback's future inside its session
        // future, which lives as long as the connection; inline, this one
        // (name choice, limits, the claim, the cluster directory) would
        // make every idle connection's task kilobytes larger.
        match Box::pin(self.forwards.open(address, *port)).await {
            Ok((granted, notes)) => {
                *port = granted;
                for note in notes {
                    self.say(session, note);
                }
                self.show_forward(session);
                Ok(true)
            }
            Err(line) => {
                self.say(session, line);
                Ok(false)
            }
        }
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Russh,
    ) -> Result<bool, Self::Error> {
        if self.forwards.cancel(address, port) {
            return Ok(true);
        }
        let text = format!(
            "cancel-tcpip-forward for {address}:{port}, which this connection does not hold"
        );
        self.strike(&protocol(&text), "forward");
        Ok(false)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if let Err(refusal) = self.session.quota().channel_open() {
            self.refuse_open(refusal, "session channel", reply).await;
            return Ok(());
        }
        if self.channel.is_some() {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        // Keep the id and the write half (for the request log): input comes
        // through `data`, and an unread read half would eventually block the
        // whole connection, so it is dropped here.
        self.channel = Some(channel.id());
        self.session.set_channel(Some(channel.id()));
        let (_input, output) = channel.split();
        self.session.start_log(output, &self.server.request_log);
        // Written ahead of the confirmation, which russh sends once this
        // returns: the client's exec comes right behind the ping's answer.
        let ping = Ping::send(session);
        reply.accept().await;
        settle::after_session(Arc::clone(&self.session), ping);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Russh,
    ) -> Result<(), Self::Error> {
        let quota = self.session.quota();
        let slot = match quota.channel_open().and_then(|()| quota.direct_channel()) {
            Ok(slot) => slot,
            Err(refusal) => {
                self.refuse_open(refusal, "direct-tcpip", reply).await;
                return Ok(());
            }
        };
        let request = super::direct::Request {
            host: host_to_connect.to_string(),
            port: port_to_connect,
            peer: self.peer,
            conn: self.session_id(),
            key: self.forwards.key().map(|k| k.fingerprint.clone()),
        };
        super::direct::open(Arc::clone(&self.server), request, (channel, slot), reply);
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
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, session)? {
            return Ok(());
        }
        self.pty = true;
        self.session.log_in_colour();
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, session)? {
            return Ok(());
        }
        session.channel_success(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, session)? || !self.first_options(channel, session)? {
            return Ok(());
        }
        session.channel_success(channel)?;
        self.session.settle();
        self.show_banner(channel, session);
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, session)? || !self.first_options(channel, session)? {
            return Ok(());
        }
        session.channel_success(channel)?;
        let command = match self.session.quota().command(data) {
            Ok(command) => String::from_utf8_lossy(command),
            Err(refusal) => {
                self.strike(&refusal, "session request");
                return self.refuse_options(channel, banner::limit_error(&refusal), session);
            }
        };
        match options::parse_for(&command, self.server.signin_providers()) {
            Ok(Command::Options(options)) => {
                self.session.set_options(*options);
                self.show_banner(channel, session);
                Ok(())
            }
            Ok(Command::Help) => {
                self.session.settle();
                session.data(channel, banner::crlf(options::USAGE).into_bytes())?;
                self.end_session(channel, 0, session)
            }
            Ok(Command::Usage(output)) => {
                self.session.settle();
                let json = output == options::Output::Json;
                let text = super::usage::command(self.session.account(), json);
                session.data(channel, text.into_bytes())?;
                self.end_session(channel, 0, session)
            }
            Err(message) => {
                tracing::info!(conn = self.session_id(), ip = %self.peer.ip(), reason = %message, "options refused");
                self.refuse_options(channel, Line::error(message), session)
            }
        }
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, session)? {
            return Ok(());
        }
        tracing::debug!(
            conn = self.session_id(),
            subsystem = name,
            "refused subsystem"
        );
        session.channel_failure(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.admit_request(channel, session)? {
            return Ok(());
        }
        session.channel_failure(channel)
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        if !self.data_allowed(channel, data.len(), session) {
            return Ok(());
        }
        if Some(channel) == self.channel && data.iter().any(|b| STOP_BYTES.contains(b)) {
            self.stop(channel, session);
        }
        Ok(())
    }

    /// Extended data from a client means nothing to burrow (the relays
    /// drop it), but keeps to the same rules as data.
    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        data: &[u8],
        session: &mut Russh,
    ) -> Result<(), Self::Error> {
        self.data_allowed(channel, data.len(), session);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Russh,
    ) -> Result<(), Self::Error> {
        self.eof.insert(channel);
        Ok(())
    }

    async fn window_adjusted(
        &mut self,
        _channel: ChannelId,
        new_size: u32,
        _session: &mut Russh,
    ) -> Result<(), Self::Error> {
        self.check_window(new_size);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Russh,
    ) -> Result<(), Self::Error> {
        self.eof.remove(&channel);
        if Some(channel) == self.channel {
            self.channel = None;
            self.session.set_channel(None);
        }
        Ok(())
    }
}
