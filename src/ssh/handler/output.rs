//! What the session channel shows, from the handler: the banner (the
//! tunnels, their kind of names, the options, the plan's usage, sign-in),
//! the lines said before it went up, a forward granted after it, Ctrl+C's
//! summary, and how the session ends (its exit status).

use std::sync::Arc;

use russh::server::Session as Russh;
use russh::ChannelId;

use super::ClientHandler;
use crate::ssh::banner::{self, Line};
use crate::ssh::settle::{self, Ping};
use crate::tunnel::options::{self, Output};

impl ClientHandler {
    /// Writes to the session channel once the banner is up, else keeps the
    /// line for the banner.
    pub(super) fn say(&mut self, session: &mut Russh, line: Line) {
        match self.channel {
            Some(channel) if self.banner_shown => {
                let text = self.session.render(&line);
                let _ = session.data(channel, text.into_bytes());
            }
            _ => self.pending.push(line),
        }
    }

    pub(super) fn json_output(&self) -> bool {
        self.session.output() == Output::Json
    }

    /// Shows the session banner: the tunnels, what kind of names they are,
    /// the options, and whatever was said before.
    pub(super) fn show_banner(&mut self, channel: ChannelId, session: &mut Russh) {
        self.banner_shown = true;
        let pending = std::mem::take(&mut self.pending);
        let mut text = if self.json_output() {
            let forwards = self.forwards.list().iter();
            forwards.map(|f| self.forwards.tunnel_event(f)).collect()
        } else {
            self.banner_text()
        };
        text.extend(pending.iter().map(|line| self.session.render(line)));
        let _ = session.data(channel, text.into_bytes());
    }

    /// The session banner as text (before the lines said meanwhile).
    fn banner_text(&self) -> String {
        let forwards = self.forwards.list();
        let lines: Vec<String> = forwards
            .iter()
            .map(|f| self.forwards.tunnel_line(f))
            .collect();
        let limits = &self.server.limits;
        let expiry = banner::expiry(limits.tunnel_idle_timeout, limits.tunnel_max_lifetime);
        let mut text = banner::session_banner(&lines, &expiry);
        let options = self.session.options();
        let names = forwards.iter().filter(|f| f.is_name());
        if let (true, false, Some(first)) = (self.pty, options.qr_off, names.clone().next()) {
            text.push_str(&banner::qr(&self.forwards.url(first)));
        }
        // Custom domains are the user's own names: the note about how
        // generated names come about is only for those.
        if names.clone().any(|f| !f.is_custom()) {
            let public = self.server.registry.public();
            text.push_str(&banner::name_kind(
                self.login.name_kind(),
                self.forwards.key().map(|k| k.fingerprint.as_str()),
                &public.connect_command_as(Some("random")),
            ));
        }
        if names.clone().next().is_some() && options.tls != options::Tls::Passthrough {
            text.push_str(&banner::inspector_hint());
        }
        if let Some(account) = self.session.account() {
            text.push_str(&crate::ssh::usage::banner_line(account));
        }
        let summary = options.summary();
        if !summary.is_empty() {
            text.push_str(&banner::line(&format!("  Options: {summary}")));
        }
        let owner = self.forwards.key().map(|k| k.fingerprint.as_str());
        let login = self.server.login_policies(owner, &options);
        if login.required() && names.clone().next().is_some() {
            text.push_str(&banner::sign_in_required(&login.describe()));
        }
        let raw = options.tls == options::Tls::Passthrough || forwards.iter().any(|f| !f.is_name());
        let http_only = options.auth.is_some() || options.cors.is_some() || options.host.is_some();
        if raw && http_only {
            text.push_str(&banner::http_options_on_raw().text());
        }
        text
    }

    /// Ends the session with `status` (the client exits with it), closing
    /// the connection's tunnels.
    pub(super) fn end_session(
        &mut self,
        channel: ChannelId,
        status: u32,
        session: &mut Russh,
    ) -> Result<(), russh::Error> {
        self.close_tunnels("session ended");
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)
    }

    /// The options could not be taken (`line` says why): the usage, and
    /// the session ends with status 2.
    pub(super) fn refuse_options(
        &mut self,
        channel: ChannelId,
        line: Line,
        session: &mut Russh,
    ) -> Result<(), russh::Error> {
        self.session.settle();
        let text = format!("{}{}", line.text(), banner::crlf(options::USAGE));
        session.extended_data(channel, 1, text.into_bytes())?;
        self.end_session(channel, 2, session)
    }

    /// Shows a forward granted after the banner went up; starts timing the
    /// options with the first one ([`settle`]).
    pub(super) fn show_forward(&mut self, session: &mut Russh) {
        let Some(forward) = self.forwards.list().last() else {
            return;
        };
        if let (true, Some(channel)) = (self.banner_shown, self.channel) {
            let text = match self.json_output() {
                true => self.forwards.tunnel_event(forward),
                false => self.forwards.tunnel_line(forward),
            };
            let _ = session.data(channel, text.into_bytes());
        }
        if self.forwards.list().len() == 1 {
            settle::after_forward(Arc::clone(&self.session), Ping::send(session));
        }
    }

    /// Ctrl+C: close the tunnels now, say so, and end the session so the
    /// client exits.
    pub(super) fn stop(&mut self, channel: ChannelId, session: &mut Russh) {
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let mut summary = banner::Summary::default();
        for tunnel in self.server.registry.tunnels_of(self.session_id()) {
            let traffic = tunnel.traffic();
            summary.requests += load(&traffic.requests);
            summary.bytes_out += load(&traffic.bytes_out);
            summary.errors += load(&traffic.errors);
        }
        summary.tunnels = self.close_tunnels("stopped by the user");
        let text = self.session.render(&banner::stopped(&summary));
        let _ = session.data(channel, text.into_bytes());
        let _ = session.exit_status_request(channel, 0);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }
}
