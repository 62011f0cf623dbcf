//! The connection's own rules as the callbacks apply them: its limits
//! ([`crate::ssh::quota`]) and the SSH protocol. A request refused by one
//! of them is a strike ([`ClientHandler::strike`]); at the last strike the
//! connection is ended and its IP gets a violation. What no real client
//! ever sends (data over the packet size burrow gave, a window adjust that
//! overflows) ends it at once ([`ClientHandler::end_for`]).

use russh::server::{ChannelOpenHandle, Session as Russh};
use russh::{ChannelId, ChannelOpenFailure};

use super::ClientHandler;
use crate::limits::Refusal;

impl ClientHandler {
    /// A request refused by one of the connection's limits, or against the
    /// protocol: recorded, and at the last strike the connection is ended
    /// and its IP gets a violation (`--violations-before-block`).
    pub(super) fn strike(&mut self, refusal: &Refusal, what: &str) {
        self.session.refused(refusal, what);
        if !self.session.quota().strike() {
            return;
        }
        let max = self.session.quota().max_strikes();
        let last = Refusal::new(
            "max-violations-per-connection",
            format!(
                "{max} requests refused or against the protocol, the last one {}: {}",
                refusal.limit, refusal.message
            ),
        );
        self.end_for(&last);
    }

    /// Ends the connection for what it did, with `refusal` as the
    /// disconnect reason; it counts as a violation of its IP.
    pub(super) fn end_for(&mut self, refusal: &Refusal) {
        if std::mem::replace(&mut self.ending, true) {
            return;
        }
        let ip = self.peer.ip();
        self.session.refused(refusal, "ssh connection");
        tracing::info!(conn = self.session_id(), %ip, limit = refusal.limit, reason = %refusal.message, "ssh connection ended for what it did");
        if let Some(block) = self.server.ip_guard.violated(ip, refusal) {
            self.server.registry.close_ip(ip, &block);
        }
        let reason = format!("{}: {}", refusal.limit, refusal.message);
        self.session.disconnect_then_kill(reason);
    }

    /// A request on a channel that is not the session channel (where only
    /// the session's requests make sense): refused, a strike.
    fn on_session(
        &mut self,
        channel: ChannelId,
        session: &mut Russh,
    ) -> Result<bool, russh::Error> {
        if Some(channel) == self.channel {
            return Ok(true);
        }
        let refusal = protocol("a session request on a channel that is not the session");
        self.strike(&refusal, "session request");
        session.channel_failure(channel)?;
        Ok(false)
    }

    /// Counts a request on the session channel: false (answered with a
    /// failure, a strike) when it is not one, or past the limit.
    pub(super) fn admit_request(
        &mut self,
        channel: ChannelId,
        session: &mut Russh,
    ) -> Result<bool, russh::Error> {
        if !self.on_session(channel, session)? {
            return Ok(false);
        }
        let Err(refusal) = self.session.quota().session_request() else {
            return Ok(true);
        };
        self.strike(&refusal, "session request");
        session.channel_failure(channel)?;
        Ok(false)
    }

    /// The options come once per connection (an exec or a shell): false,
    /// answered with a failure and a strike, for a second one.
    pub(super) fn first_options(
        &mut self,
        channel: ChannelId,
        session: &mut Russh,
    ) -> Result<bool, russh::Error> {
        if !std::mem::replace(&mut self.options_given, true) {
            return Ok(true);
        }
        let refusal = protocol("the options (exec or shell) come once per connection");
        self.strike(&refusal, "session request");
        session.channel_failure(channel)?;
        Ok(false)
    }

    /// A channel open the connection's limits refuse: the open failure
    /// names the limit, and it is a strike.
    pub(super) async fn refuse_open(
        &mut self,
        refusal: Refusal,
        what: &str,
        reply: ChannelOpenHandle,
    ) {
        self.strike(&refusal, what);
        reply.reject(open_failure(&refusal)).await;
    }

    /// Whether data of `len` bytes on `channel` keeps to the protocol:
    /// within the packet size burrow gave (else the connection ends), and
    /// not after the channel's EOF (else a strike).
    pub(super) fn data_allowed(&mut self, channel: ChannelId, len: usize, session: &Russh) -> bool {
        let max = session.config().maximum_packet_size;
        if len > max as usize {
            let text = format!(
                "a data packet of {len} bytes; this server takes {max} at most (the maximum packet size it gave)"
            );
            self.end_for(&protocol(&text));
            return false;
        }
        if self.eof.contains(&channel) {
            self.strike(&protocol("data on a channel after its EOF"), "channel data");
            return false;
        }
        true
    }

    /// A client's window adjust took a channel's window to `new_size`:
    /// russh saturates the sum, so an overflow shows as the ceiling itself
    /// (which no real client's window comes near), and ends the connection.
    pub(super) fn check_window(&mut self, new_size: u32) {
        if new_size == u32::MAX {
            let what = "a window adjust that overflows the channel's window (2^32-1 at most)";
            self.end_for(&protocol(what));
        }
    }
}

/// A request against the SSH protocol (RFC 4254), named as such.
pub(super) fn protocol(what: &str) -> Refusal {
    Refusal::new("protocol", format!("{what} (RFC 4254)"))
}

/// The open failure a refused channel gets: resource shortage, with the
/// limit and its reason as the text the client prints.
fn open_failure(refusal: &Refusal) -> ChannelOpenFailure {
    let mut reason = format!("{}: {}", refusal.limit, refusal.message);
    if let Some(secs) = refusal.retry_secs() {
        reason.push_str(&format!("; try again in {secs} s"));
    }
    ChannelOpenFailure::Other { code: 4, reason }
}
