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
use std::time::Duration;

use russh::server::{Auth, ChannelOpenHandle, Handle, Handler, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty};

use super::banner;
use super::options::{self, Command, Output};
use crate::config::AuthMode;
use crate::limits::ssh::HandshakePermit;
use crate::limits::Refusal;
use crate::registry::{tcp_key, ClaimError, Claimed, Conn, Kind, Reservation, Tunnel};
use crate::tcp::{Listening, TcpPorts};
use crate::{custom, keys, subdomain, App};

/// Ports that make an HTTPS tunnel. `0` asks the server to pick a port and
/// is treated as HTTP too (any other port is a raw TCP tunnel).
const HTTP_PORTS: [u32; 3] = [80, 443, 0];
/// The bind address that asks for a raw TCP tunnel on a random port:
/// `ssh -R tcp:0:localhost:5432` (plain `-R 0` stays HTTPS, as it always was).
const TCP_ADDRESS: &str = "tcp";

/// Without a session channel this long after the first forward, the client
/// runs `-N`: no options will come.
const SETTLE_NO_SESSION: Duration = Duration::from_millis(500);
/// With a session channel but no shell/exec request after this much more,
/// stop waiting for options.
const SETTLE_NO_COMMAND: Duration = Duration::from_secs(3);

/// Ctrl+C and Ctrl+D as a raw terminal sends them.
const STOP_BYTES: [u8; 2] = [0x03, 0x04];

/// One `-R` the client asked for and got.
struct Forward {
    address: String,
    /// The port the client sent (0 for "pick one").
    requested: u32,
    /// The port we echo in `forwarded-tcpip` opens.
    port: u32,
    /// The registry key: subdomain, or `tcp:PORT`.
    subdomain: String,
    kind: Kind,
}

/// The SSH key a client proved it holds.
struct ClientKey {
    fingerprint: String,
    /// SHA-256 of the key's wire form: what stable names are derived from.
    digest: Vec<u8>,
}

/// What kind of name a connection gets, for the banner.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// Derived from the client's key: the same every time.
    Stable,
    /// Random, because the client has no key (or showed none).
    Random,
    /// Random, because the client asked for one (`random@`).
    Throwaway,
}

pub struct ClientHandler {
    app: Arc<App>,
    conn: Arc<Conn>,
    peer: SocketAddr,
    /// Holds a handshake slot until authentication succeeds.
    permit: Option<HandshakePermit>,
    /// Over a limit: authentication fails while the disconnect is on its way.
    refused: bool,
    /// The name shown during authentication, waiting for the first HTTP
    /// forward to claim it.
    first_name: Option<Reservation>,
    key: Option<ClientKey>,
    /// The user asked for a throwaway name (`random@host`).
    throwaway: bool,
    forwards: Vec<Forward>,
    session: Option<ChannelId>,
    /// The client asked for a terminal (`ssh -t`, or a shell): QR codes
    /// only make sense there.
    pty: bool,
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
            key: None,
            throwaway: false,
            forwards: Vec::new(),
            session: None,
            pty: false,
            banner_shown: false,
            pending: String::new(),
        }
    }

    /// Writes to the session channel once the banner is up, else keeps the
    /// text for the banner.
    fn say(&mut self, session: &mut Session, text: String) {
        match self.session {
            Some(channel) if self.banner_shown => {
                let text = self.conn.render(&text);
                let _ = session.data(channel, text.into_bytes());
            }
            _ => self.pending.push_str(&text),
        }
    }

    fn json_output(&self) -> bool {
        self.conn.options().output == Output::Json
    }

    /// The public address of a forward.
    fn forward_url(&self, forward: &Forward) -> String {
        match forward.kind {
            Kind::Tcp(port) => self.app.tcp_url(port),
            Kind::Name => self.app.url(&forward.subdomain),
        }
    }

    /// How the user asked for the forward, as they typed it after `-R`.
    fn forward_spec(&self, forward: &Forward) -> String {
        match forward.kind {
            Kind::Tcp(_) if forward.requested == 0 => format!("-R {TCP_ADDRESS}:0"),
            Kind::Tcp(_) => format!("-R {}", forward.requested),
            Kind::Name => banner::forward_spec(forward.requested, forward.port),
        }
    }

    /// The `tunnel` event of `output=json`.
    fn tunnel_event(&self, forward: &Forward) -> String {
        let limits = &self.app.config.limits;
        let (kind, port) = match forward.kind {
            Kind::Tcp(port) => ("tcp", Some(port)),
            Kind::Name if self.conn.options().tls == options::Tls::Passthrough => ("tls", None),
            Kind::Name => ("http", None),
        };
        let event = serde_json::json!({
            "event": "tunnel",
            "kind": kind,
            "url": self.forward_url(forward),
            "port": port,
            "subdomain": forward.subdomain,
            "stable": self.key.is_some(),
            "clients": self.app.registry.clients(&forward.subdomain),
            "forward": self.forward_spec(forward),
            "idle_timeout_secs": limits.tunnel_idle_timeout.as_secs(),
            "lifetime_secs": limits.tunnel_max_lifetime.as_secs(),
        });
        format!("{event}\r\n")
    }

    fn show_banner(&mut self, channel: ChannelId, session: &mut Session) {
        self.banner_shown = true;
        if self.json_output() {
            let mut text: String = self.forwards.iter().map(|f| self.tunnel_event(f)).collect();
            text.push_str(&self.conn.render(&std::mem::take(&mut self.pending)));
            let _ = session.data(channel, text.into_bytes());
            return;
        }
        let lines: Vec<String> = self.forwards.iter().map(|f| self.tunnel_line(f)).collect();
        let limits = &self.app.config.limits;
        let expiry = banner::expiry(limits.tunnel_idle_timeout, limits.tunnel_max_lifetime);
        let mut text = banner::session_banner(&lines, &expiry);
        let first_url = self.forwards.iter().find(|f| f.kind == Kind::Name);
        if let (true, false, Some(first)) = (self.pty, self.conn.options().qr_off, first_url) {
            text.push_str(&banner::qr(&self.forward_url(first)));
        }
        // Custom domains are the user's own names: the note about how
        // generated names come about is only for those.
        if self
            .forwards
            .iter()
            .any(|f| f.kind == Kind::Name && !is_custom(f))
        {
            text.push_str(&banner::name_kind(
                self.name_kind(),
                self.key.as_ref().map(|k| k.fingerprint.as_str()),
                &self.app.connect_command_as(Some("random")),
            ));
        }
        let options = self.conn.options();
        let summary = options.summary();
        if !summary.is_empty() {
            text.push_str(&banner::line(&format!("  Options: {summary}")));
        }
        let raw = options.tls == options::Tls::Passthrough
            || self.forwards.iter().any(|f| matches!(f.kind, Kind::Tcp(_)));
        let http_only = options.auth.is_some() || options.cors.is_some() || options.host.is_some();
        if raw && http_only {
            text.push_str(&banner::http_options_on_raw());
        }
        text.push_str(&std::mem::take(&mut self.pending));
        let _ = session.data(channel, text.into_bytes());
    }

    fn tunnel_line(&self, forward: &Forward) -> String {
        banner::tunnel_line(&self.forward_url(forward), &self.forward_spec(forward))
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

    fn keys_only(&self) -> bool {
        self.app.config.auth_mode == AuthMode::Keys
    }

    fn name_kind(&self) -> NameKind {
        match (&self.key, self.throwaway) {
            (Some(_), _) => NameKind::Stable,
            (None, true) => NameKind::Throwaway,
            (None, false) => NameKind::Random,
        }
    }

    /// The stable name of this connection's `index`-th HTTP forward.
    fn stable_name(&self, key: &ClientKey, index: usize) -> String {
        let mut blob = key.digest.clone();
        if index > 0 {
            blob.extend_from_slice(format!("#{index}").as_bytes());
        }
        subdomain::stable_name(&self.app.state.name_secret, &blob)
    }

    /// Picks the name for a new HTTP forward that asked for `requested`:
    /// the requested name if this key may have it, else the stable or
    /// random default. `Err` is the line to show the user. The second value
    /// is a note for the user (a request that was ignored), the third
    /// whether the name was granted (keys file, or DNS for custom domains).
    async fn choose_name(
        &mut self,
        requested: Requested,
    ) -> Result<(Reservation, Option<String>, bool), String> {
        let index = self.forwards.len();
        let name = match requested {
            Requested::Default => return Ok((self.default_name(index), None, false)),
            Requested::Custom(name) => return self.choose_custom(&name).await,
            Requested::Label(name) => name,
        };
        let Some(key) = &self.key else {
            let note = banner::name_needs_key(&name);
            return Ok((self.default_name(index), Some(note), false));
        };
        let keys = self.app.keys.current();
        let owners = keys.owners(&name);
        if !owners.is_empty() {
            if !owners.contains(&key.fingerprint) {
                return Err(banner::name_not_yours(&name));
            }
        } else if self.app.config.reserved_names.contains(&name) {
            return Err(banner::name_reserved(&name));
        }
        let granted = !owners.is_empty();
        Ok((self.app.registry.announce(&name), None, granted))
    }

    /// A custom domain: on, asked for by a key, proven in DNS, and within
    /// the certificate issuance limit. DNS ownership counts as a grant:
    /// keys listed in the TXT record may share the name (`--balance`) and
    /// visitors see no browser warning.
    async fn choose_custom(
        &self,
        name: &str,
    ) -> Result<(Reservation, Option<String>, bool), String> {
        let app = &self.app;
        if !app.custom.enabled {
            return Err(banner::custom_domains_off(name));
        }
        let Some(key) = &self.key else {
            return Err(banner::custom_needs_key(name));
        };
        if let Err(why) = app.custom.verifier.verify(name, &key.fingerprint).await {
            tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), name, fingerprint = %key.fingerprint, reason = %why, "custom domain refused");
            return Err(banner::custom_refused(name, &why));
        }
        if let Err(refusal) = app.custom.certs.admit(name) {
            app.stats.refused(refusal.limit);
            return Err(banner::limit_error(&refusal));
        }
        Ok((app.registry.announce(name), None, true))
    }

    fn default_name(&mut self, index: usize) -> Reservation {
        if index == 0 {
            if let Some(first) = self.first_name.take() {
                return first;
            }
        }
        match &self.key {
            Some(key) => {
                let name = self.stable_name(key, index);
                self.app.registry.announce(&name)
            }
            None => self.app.registry.reserve_random(),
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

    fn refused(&self, address: &str, requested: u32, reason: &str) {
        let (conn, ip) = (self.conn.id, self.peer.ip());
        tracing::info!(conn, %ip, address, port = requested, reason, "forward refused");
    }

    /// The limits every forward passes; `Err` is the line for the user.
    fn admit_forward(&self, address: &str, port: u32) -> Result<(), String> {
        if self
            .forwards
            .iter()
            .any(|f| f.address == address && f.port == port)
        {
            self.refused(address, port, "duplicate forward");
            return Err(banner::duplicate_forward(address, port));
        }
        if let Err(refusal) = self.check_tunnel_limits() {
            self.app.stats.refused(refusal.limit);
            if self.app.refusal_log.first(self.peer.ip(), refusal.limit) {
                tracing::warn!(conn = self.conn.id, ip = %self.peer.ip(), limit = refusal.limit, reason = %refusal.message, "forward refused");
            }
            return Err(banner::limit_error(&refusal));
        }
        Ok(())
    }

    /// Checks and claims one forward bound to `address`:`requested`: an
    /// HTTPS tunnel for ports 80, 443 and 0, a raw TCP tunnel otherwise.
    /// `Ok` carries the forward and an optional note for the user; `Err` is
    /// the line saying why not.
    async fn open_forward(
        &mut self,
        address: &str,
        requested: u32,
        handle: Handle,
    ) -> Result<(Forward, Option<String>), String> {
        if address == TCP_ADDRESS || !HTTP_PORTS.contains(&requested) {
            return self.open_tcp_forward(address, requested, handle).await;
        }
        let port = match requested {
            0 => self.allocate_port(address),
            port => port,
        };
        self.admit_forward(address, port)?;
        let chosen = match requested_name(address, &self.app.config.domain) {
            Ok(wanted) => self.choose_name(wanted).await,
            Err(line) => Err(line),
        };
        let (reservation, mut note, granted) =
            chosen.inspect_err(|_| self.refused(address, requested, "name refused"))?;
        let subdomain = reservation.name().to_string();
        let tunnel = Tunnel::new(
            (subdomain.clone(), Kind::Name),
            Arc::clone(&self.conn),
            (address.to_string(), port),
            handle,
            &self.app.config.limits,
            self.key.as_ref().map(|k| k.fingerprint.clone()),
            granted,
        );
        let claimed = self.app.registry.claim(tunnel, None);
        drop(reservation);
        match claimed {
            Ok(claimed) => {
                let shared = self.claimed(claimed);
                note = join_notes(note, shared);
            }
            Err(ClaimError::Taken) => {
                self.refused(address, requested, "name in use");
                return Err(banner::name_in_use(&subdomain));
            }
            Err(ClaimError::Duplicate) => {
                self.refused(address, requested, "name already served by this connection");
                return Err(banner::served_twice(&self.app.url(&subdomain)));
            }
        }
        tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), subdomain = %subdomain, port = requested, fingerprint = self.key.as_ref().map(|k| k.fingerprint.as_str()), "tunnel opened");
        if custom::is_registry_custom(&subdomain) {
            custom::start_certificate(&self.app, subdomain.clone(), Arc::clone(&self.conn));
        }
        let forward = Forward {
            address: address.to_string(),
            requested,
            port,
            subdomain,
            kind: Kind::Name,
        };
        Ok((forward, note))
    }

    /// After a successful claim: the replaced client is told, clients the
    /// new one joined are told how many serve the name now. Returns the line
    /// for this client when it shares the name.
    fn claimed(&self, claimed: Claimed) -> Option<String> {
        if let Some(old) = claimed.replaced {
            self.app.take_over(&old);
        }
        if claimed.joined.is_empty() {
            return None;
        }
        let text = banner::clients_now(
            &self.app.tunnel_url(&claimed.tunnel),
            claimed.joined.len() + 1,
            self.app.registry.balance(),
        );
        for other in &claimed.joined {
            other.client.notify(text.clone());
        }
        Some(text)
    }

    /// Checks and claims one raw TCP forward: the requested port when it is
    /// in range, free and not another key's (or this key's own, anywhere),
    /// else a random port of the range, with a note saying why.
    async fn open_tcp_forward(
        &mut self,
        address: &str,
        requested: u32,
        handle: Handle,
    ) -> Result<(Forward, Option<String>), String> {
        let app = Arc::clone(&self.app);
        if !app.tcp.enabled() {
            self.refused(address, requested, "tcp tunnels disabled");
            return Err(banner::tcp_disabled(requested, &app.config.domain));
        }
        self.admit_forward(address, requested)?;
        let wanted = u16::try_from(requested).ok().filter(|p| *p > 0);
        let mut note = None;
        let mut claimed = None;
        if let Some(port) = wanted {
            match self.try_tcp_port(port).await {
                Ok(listener) => {
                    match self.claim_tcp(port, listener, (address, requested), handle.clone()) {
                        Ok(c) => claimed = Some((port, c)),
                        Err(ClaimError::Taken) => {
                            note = Some(("is in use by another key's tunnel", port));
                        }
                        Err(ClaimError::Duplicate) => {
                            return Err(banner::served_twice(&app.tcp_url(port)));
                        }
                    }
                }
                Err(why) => note = Some((why, port)),
            }
        }
        let (port, claimed) = match claimed {
            Some(claimed) => claimed,
            None => {
                let keys = app.keys.current();
                let Some((port, listener)) = app.tcp.bind_random(&app.registry, &keys).await else {
                    self.refused(address, requested, "no free tcp port");
                    return Err(banner::tcp_ports_exhausted(&app.tcp.ranges().to_string()));
                };
                let claimed = self
                    .claim_tcp(port, Some(listener), (address, requested), handle)
                    .map_err(|_| banner::tcp_ports_exhausted(&app.tcp.ranges().to_string()))?;
                (port, claimed)
            }
        };
        let note = note.map(|(why, wanted)| banner::tcp_port_instead(wanted, why, port));
        let note = join_notes(note, self.claimed(claimed));
        tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), port, requested, fingerprint = self.key.as_ref().map(|k| k.fingerprint.as_str()), "tcp tunnel opened");
        let forward = Forward {
            address: address.to_string(),
            requested,
            port: echo_port(requested, port),
            subdomain: tcp_key(port),
            kind: Kind::Tcp(port),
        };
        Ok((forward, note))
    }

    /// Whether this key owns TCP port `port` in the keys file.
    fn owns_port(&self, port: u16) -> bool {
        let keys = self.app.keys.current();
        self.key
            .as_ref()
            .is_some_and(|k| keys.port_owners(port).contains(&k.fingerprint))
    }

    /// Binds the requested `port` if this client may have it. `Ok(None)`:
    /// the port is ours already, held by a group this client may join.
    /// `Err` says why not, for the note.
    async fn try_tcp_port(
        &self,
        port: u16,
    ) -> Result<Option<tokio::net::TcpListener>, &'static str> {
        let mine = self.owns_port(port);
        if !mine && !self.app.keys.current().port_owners(port).is_empty() {
            return Err("belongs to another key");
        }
        if !mine && !self.app.tcp.in_range(port) {
            return Err("is outside this server's TCP port range");
        }
        match self.app.tcp.bind(port).await {
            Ok(listener) => Ok(Some(listener)),
            Err(_) if self.app.registry.clients(&tcp_key(port)) > 0 => Ok(None),
            Err(_) => Err("is in use"),
        }
    }

    /// Claims TCP port `port` for this connection; `listener` (when this
    /// client bound the port) starts accepting and lives with the port's
    /// group.
    fn claim_tcp(
        &self,
        port: u16,
        listener: Option<tokio::net::TcpListener>,
        (address, requested): (&str, u32),
        handle: Handle,
    ) -> Result<Claimed, ClaimError> {
        let tunnel = Tunnel::new(
            (tcp_key(port), Kind::Tcp(port)),
            Arc::clone(&self.conn),
            (address.to_string(), echo_port(requested, port)),
            handle,
            &self.app.config.limits,
            self.key.as_ref().map(|k| k.fingerprint.clone()),
            self.owns_port(port),
        );
        let listening: Option<Listening> = listener.map(|l| TcpPorts::serve(&self.app, port, l));
        self.app.registry.claim(tunnel, listening)
    }

    /// Records a granted forward and shows it if the banner is already up.
    fn add_forward(&mut self, forward: Forward, session: &mut Session) {
        if self.banner_shown {
            if self.json_output() {
                if let Some(channel) = self.session {
                    let _ = session.data(channel, self.tunnel_event(&forward).into_bytes());
                }
            } else {
                let text = self.tunnel_line(&forward);
                self.say(session, text);
            }
        }
        if self.forwards.is_empty() {
            self.watch_settling();
        }
        self.forwards.push(forward);
    }

    /// Ends the session with `status` (the client exits with it), closing
    /// the connection's tunnels.
    fn end_session(
        &mut self,
        channel: ChannelId,
        status: u32,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        self.close_tunnels("session ended");
        session.exit_status_request(channel, status)?;
        session.eof(channel)?;
        session.close(channel)
    }

    /// Settles the options if the client shows no sign of sending any: no
    /// session channel shortly after its first forward (`-N`), or no shell
    /// or exec request a while after opening one.
    fn watch_settling(&self) {
        let conn = Arc::clone(&self.conn);
        tokio::spawn(async move {
            tokio::time::sleep(SETTLE_NO_SESSION).await;
            if !conn.has_session() {
                conn.settle();
                return;
            }
            tokio::time::sleep(SETTLE_NO_COMMAND).await;
            conn.settle();
        });
    }

    /// Closes every tunnel of this connection.
    fn close_tunnels(&mut self, why: &str) -> usize {
        let removed = self.app.registry.remove_conn(self.conn.id);
        self.forwards.clear();
        for (key, removed) in &removed {
            tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), subdomain = %key, reason = why, "tunnel closed");
            self.app.clients_left(&removed.remaining);
        }
        removed.len()
    }

    /// Ctrl+C: close the tunnels now, say so, and end the session so the
    /// client exits.
    fn stop(&mut self, channel: ChannelId, session: &mut Session) {
        let mut summary = banner::Summary::default();
        for tunnel in self.app.registry.tunnels() {
            if tunnel.conn == self.conn.id {
                let load =
                    |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
                summary.requests += load(&tunnel.traffic.requests);
                summary.bytes_out += load(&tunnel.traffic.bytes_out);
                summary.errors += load(&tunnel.traffic.errors);
            }
        }
        summary.tunnels = self.close_tunnels("stopped by the user");
        let text = self.conn.render(&banner::stopped(&summary));
        let _ = session.data(channel, text.into_bytes());
        let _ = session.exit_status_request(channel, 0);
        let _ = session.eof(channel);
        let _ = session.close(channel);
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

/// Whether `forward` serves a custom domain (the only names with a dot).
fn is_custom(forward: &Forward) -> bool {
    custom::is_registry_custom(&forward.subdomain)
}

/// Both notes, one after the other.
fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + &b),
        (a, b) => a.or(b),
    }
}

/// What a bind address asks for.
#[derive(Debug, PartialEq, Eq)]
enum Requested {
    /// A generic address (`localhost`, `0.0.0.0`, empty, …): the default name.
    Default,
    /// `api` or `api.DOMAIN`.
    Label(String),
    /// A name outside DOMAIN, e.g. `app.example.org`: served if DNS proves
    /// the client owns it.
    Custom(String),
}

/// The name a bind address asks for, or an error line for an address that
/// is no usable name.
fn requested_name(address: &str, domain: &str) -> Result<Requested, String> {
    const GENERIC: [&str; 8] = [
        "",
        "localhost",
        "0.0.0.0",
        "::",
        "*",
        "127.0.0.1",
        "::1",
        "[::1]",
    ];
    let address = address.trim().trim_end_matches('.').to_ascii_lowercase();
    if GENERIC.contains(&address.as_str()) {
        return Ok(Requested::Default);
    }
    if custom::is_custom_name(&address, domain) {
        return Ok(Requested::Custom(address));
    }
    let label = address
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or(&address);
    if subdomain::is_valid_label(label) {
        Ok(Requested::Label(label.to_string()))
    } else {
        Err(banner::invalid_name(&address))
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
        if self.keys_only() {
            return Ok(Some(banner::keys_only()));
        }
        // Sent before any user name or key is known, and printed by OpenSSH
        // on stderr even with -N: the random URL this connection gets unless
        // it shows a key (a verified key replaces it with its stable name).
        let reservation = self.app.registry.reserve_random();
        let text = banner::auth_banner(&self.app.url(reservation.name()));
        self.first_name = Some(reservation);
        Ok(Some(text))
    }

    // Authentication is arranged so that keys are seen when a client has
    // them:
    //   none → refused, offering publickey and keyboard-interactive
    //          (accepted at once for `random@`, a throwaway name);
    //   publickey (verified) → accepted: a stable name;
    //   keyboard-interactive (keyless clients) → accepted, no prompt: the
    //          random name from the banner.
    // OpenSSH's BatchMode disables keyboard-interactive, so keyless
    // BatchMode clients use `random@`; keyed clients are accepted straight
    // from publickey, never routed through keyboard-interactive, so that
    // BatchMode scripts (the ones that want stable names) keep working.
    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if self.refused {
            return Ok(Auth::reject());
        }
        self.throwaway = user.eq_ignore_ascii_case("random") && !self.keys_only();
        if self.throwaway {
            return Ok(Auth::Accept);
        }
        let methods: &[MethodKind] = if self.keys_only() {
            &[MethodKind::PublicKey]
        } else {
            &[MethodKind::PublicKey, MethodKind::KeyboardInteractive]
        };
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(methods)),
            partial_success: false,
        })
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let listed = || {
            let fingerprint = keys::fingerprint(offer.public_key);
            self.app.keys.current().grant(&fingerprint).is_some()
        };
        if self.refused || self.throwaway || (self.keys_only() && !listed()) {
            return Ok(Auth::reject());
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.refused || self.throwaway {
            return Ok(Auth::reject());
        }
        let fingerprint = keys::fingerprint(key.public_key);
        if self.keys_only() && self.app.keys.current().grant(&fingerprint).is_none() {
            tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), %fingerprint, reason = "key not in the keys file", "authentication refused");
            return Ok(Auth::reject());
        }
        let digest = key
            .public_key
            .fingerprint(russh::keys::HashAlg::Sha256)
            .as_bytes()
            .to_vec();
        self.key = Some(ClientKey {
            fingerprint,
            digest,
        });
        // The random name announced in the banner is not this client's.
        self.first_name = None;
        Ok(Auth::Accept)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        if self.refused || (self.keys_only() && self.key.is_none()) {
            return Ok(Auth::reject());
        }
        // No prompt at all: this step only exists because OpenSSH offers
        // nothing else without a key. The URL was in the banner already.
        let _ = response;
        Ok(Auth::Accept)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        crate::metrics::METRICS.ssh_connection(crate::metrics::SshOutcome::Accepted);
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
        match self.open_forward(address, *port, session.handle()).await {
            Ok((forward, note)) => {
                *port = forward.port;
                if let Some(note) = note {
                    self.say(session, note);
                }
                self.add_forward(forward, session);
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
        if let Some(removed) = self.app.registry.remove(&forward.subdomain, self.conn.id) {
            self.app.clients_left(&removed.remaining);
        }
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
        // Keep the id and the write half (for the request log): input comes
        // through `data`, and an unread read half would eventually block the
        // whole connection, so it is dropped here.
        self.session = Some(channel.id());
        self.conn.set_session(Some(channel.id()));
        let (_input, output) = channel.split();
        self.conn.start_log(output, &self.app.config.limits);
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
        self.pty = true;
        self.conn.log_in_colour();
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
        self.conn.settle();
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
        session.channel_success(channel)?;
        match options::parse(&command) {
            Ok(Command::Options(options)) => {
                self.conn.set_options(options);
                self.show_banner(channel, session);
                Ok(())
            }
            Ok(Command::Help) => {
                self.conn.settle();
                session.data(channel, banner::crlf(options::USAGE).into_bytes())?;
                self.end_session(channel, 0, session)
            }
            Err(message) => {
                self.conn.settle();
                tracing::info!(conn = self.conn.id, ip = %self.peer.ip(), reason = %message, "options refused");
                let text = format!(
                    "{}{}",
                    banner::line(&format!("ERROR: {message}")),
                    banner::crlf(options::USAGE)
                );
                session.extended_data(channel, 1, text.into_bytes())?;
                self.end_session(channel, 2, session)
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_become_names() {
        let d = "tunnel.example";
        assert_eq!(requested_name("localhost", d), Ok(Requested::Default));
        assert_eq!(requested_name("", d), Ok(Requested::Default));
        assert_eq!(requested_name("api", d), Ok(Requested::Label("api".into())));
        assert_eq!(
            requested_name("API.tunnel.example.", d),
            Ok(Requested::Label("api".into()))
        );
        assert_eq!(
            requested_name("App.Example.org.", d),
            Ok(Requested::Custom("app.example.org".into()))
        );
        assert!(requested_name("a.b.tunnel.example", d).is_err());
        assert!(requested_name("10.0.0.1", d).is_err());
        assert!(requested_name("a_b.example.org", d).is_err());
    }
}
