//! `tcpip-forward` → a tunnel: which kind (HTTPS name, or raw TCP port),
//! which name or port, the limits every forward passes, the claim in the
//! registry, and what the user is told about it.
//!
//! Ports 80, 443 and 0 make a name tunnel (`0` asks the server to pick a
//! port to echo); a name with any other port (`-R pi-7:22:localhost:22`) a
//! private alias, reached only through SSH ([`crate::tunnel::private`]);
//! any other port without a name, or the bind address `tcp`, a raw TCP
//! tunnel. Who may hold a name or port is the grant rule's call
//! ([`crate::tunnel::names::Grants`]).

use std::net::IpAddr;
use std::sync::Arc;

use super::banner::{self, Line};
use super::session::Session;
use super::Server;
use crate::config::AuthMode;
use crate::limits::{Refusal, Side};
use crate::tunnel::names::{self, ClientKey, Denied, Grants, Namer, Requested};
use crate::tunnel::private::{self, Alias};
use crate::tunnel::registry::{ClaimError, Claimed, Holding, Reservation};
use crate::tunnel::{is_custom_key, tcp_key, Bind, Client, Kind, Owner, Tunnel};

/// Ports that make an HTTPS tunnel. `0` asks the server to pick a port and
/// is treated as HTTP too (any other port is a private alias or a raw TCP
/// tunnel).
const HTTP_PORTS: [u32; 3] = private::NAME_PORTS;
/// The bind address that asks for a raw TCP tunnel on a random port:
/// `ssh -R tcp:0:localhost:5432` (plain `-R 0` stays HTTPS, as it always was).
const TCP_ADDRESS: &str = "tcp";

/// One `-R` the client asked for and got.
pub struct Forward {
    pub address: String,
    /// The port the client sent (0 for "pick one").
    pub requested: u32,
    /// The port we echo in `forwarded-tcpip` opens.
    pub port: u32,
    /// The registry key: subdomain, custom domain or `tcp:PORT`.
    pub key: String,
    pub kind: Kind,
}

impl Forward {
    pub fn is_name(&self) -> bool {
        self.kind == Kind::Name
    }

    /// Whether it serves a custom domain (the only names with a dot).
    pub fn is_custom(&self) -> bool {
        self.is_name() && is_custom_key(&self.key)
    }
}

/// The forwards of one connection, and the names they get.
pub struct Forwards {
    server: Arc<Server>,
    session: Arc<Session>,
    ip: IpAddr,
    /// Default names: stable from the key, else random.
    namer: Namer,
    /// The key the client proved it holds, if any.
    key: Option<ClientKey>,
    granted: Vec<Forward>,
}

/// A granted name, held until its forward is claimed.
struct Chosen {
    reservation: Reservation,
    /// A note for the user (a request that was ignored).
    note: Option<Line>,
    /// Granted by the keys file, or proven in DNS.
    granted: bool,
}

impl Forwards {
    pub fn new(server: Arc<Server>, session: Arc<Session>, ip: IpAddr) -> Forwards {
        Forwards {
            namer: Namer::new(
                Arc::clone(&server.registry),
                Arc::clone(&server.name_secret),
            ),
            server,
            session,
            ip,
            key: None,
            granted: Vec::new(),
        }
    }

    /// The forwards granted so far, in order.
    pub fn list(&self) -> &[Forward] {
        &self.granted
    }

    pub fn key(&self) -> Option<&ClientKey> {
        self.key.as_ref()
    }

    /// Announces the random name a keyless connection will get; returns
    /// its URL.
    pub fn announce_random(&mut self) -> String {
        let name = self.namer.announce_random();
        self.server.registry.public().url(&name)
    }

    /// The client proved it holds `key`: its names are the key's.
    pub fn identify(&mut self, key: ClientKey) {
        self.key = Some(key);
        // The random name announced in the banner is not this client's.
        self.namer.forget_random();
    }

    fn keys_only(&self) -> bool {
        self.server.auth_mode == AuthMode::Keys
    }

    fn grants<'a>(&'a self, keys: &'a crate::keys::KeysFile) -> Grants<'a> {
        Grants {
            keys,
            reserved: &self.server.reserved_names,
            tcp_ports: self.server.tcp.ranges(),
            keys_only: self.keys_only(),
        }
    }

    fn owner_key(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.fingerprint.as_str())
    }

    /// The public address of a forward.
    pub fn url(&self, forward: &Forward) -> String {
        let public = self.server.registry.public();
        public.tunnel_url(&forward.key, forward.kind)
    }

    /// How the user asked for the forward, as they typed it after `-R`.
    fn forward_spec(&self, forward: &Forward) -> String {
        match forward.kind {
            Kind::Tcp(_) if forward.requested == 0 => format!("-R {TCP_ADDRESS}:0"),
            Kind::Tcp(_) => format!("-R {}", forward.requested),
            Kind::Private(port) => format!("-R {}:{port}, private", forward.address),
            Kind::Name => banner::forward_spec(forward.requested, forward.port),
        }
    }

    /// The `tunnel` event of `output=json`.
    pub fn tunnel_event(&self, forward: &Forward) -> String {
        let limits = &self.server.limits;
        let passthrough = self.session.options().tls == crate::tunnel::options::Tls::Passthrough;
        banner::tunnel_event(&banner::TunnelEvent {
            kind: match forward.kind {
                Kind::Tcp(_) => "tcp",
                Kind::Private(_) => "private",
                Kind::Name if passthrough => "tls",
                Kind::Name => "http",
            },
            url: self.url(forward),
            port: match forward.kind {
                Kind::Tcp(port) | Kind::Private(port) => Some(port),
                Kind::Name => None,
            },
            key: forward.key.clone(),
            stable: self.key.is_some(),
            clients: self.server.registry.clients(&forward.key),
            spec: self.forward_spec(forward),
            idle: limits.tunnel_idle_timeout,
            lifetime: limits.tunnel_max_lifetime,
        })
    }

    pub fn tunnel_line(&self, forward: &Forward) -> String {
        banner::tunnel_line(&self.url(forward), &self.forward_spec(forward))
    }

    /// A port for `-R 0` that no other forward of this connection uses with
    /// the same bind address, so OpenSSH can tell the forwards apart: the
    /// public HTTPS port when free, else one from the dynamic range.
    fn allocate_port(&self, address: &str) -> u32 {
        let taken = |port: u32| {
            self.granted
                .iter()
                .any(|f| f.address == address && f.port == port)
        };
        let https = self.server.registry.public().https_port;
        std::iter::once(u32::from(https))
            .chain(49152..=65535)
            .find(|port| !taken(*port))
            .unwrap_or(0)
    }

    /// Picks the name for a new name forward that asked for `requested`:
    /// the requested name if the grant rule lets this key have it, else
    /// the stable or random default. `Err` is the line to show the user.
    async fn choose_name(&mut self, requested: Requested) -> Result<Chosen, Line> {
        let index = self.granted.len();
        let name = match requested {
            Requested::Default => return Ok(self.default_name(index, None)),
            Requested::Custom(name) => return self.choose_custom(&name).await,
            Requested::Label(name) => name,
        };
        if self.key.is_none() {
            return Ok(self.default_name(index, Some(banner::name_needs_key(&name))));
        }
        let keys = self.server.keys.current();
        match self.grants(&keys).name(self.owner_key(), &name) {
            Ok(granted) => Ok(Chosen {
                reservation: self.namer.hold(&name),
                note: None,
                granted,
            }),
            Err(Denied::Reserved) => Err(banner::name_reserved(&name)),
            Err(_) => Err(banner::name_not_yours(&name)),
        }
    }

    fn default_name(&mut self, index: usize, note: Option<Line>) -> Chosen {
        Chosen {
            reservation: self.namer.default_name(self.key.as_ref(), index),
            note,
            granted: false,
        }
    }

    /// A custom domain: on, asked for by a key, proven in DNS, and within
    /// the certificate issuance limit. DNS ownership counts as a grant:
    /// keys listed in the TXT record may share the name (`--balance`) and
    /// visitors see no browser warning.
    async fn choose_custom(&self, name: &str) -> Result<Chosen, Line> {
        let custom = &self.server.custom;
        if !custom.enabled {
            return Err(banner::custom_domains_off(name));
        }
        let Some(key) = &self.key else {
            return Err(banner::custom_needs_key(name));
        };
        if let Err(why) = custom.verifier.verify(name, &key.fingerprint).await {
            tracing::info!(conn = self.session.id(), ip = %self.ip, name, fingerprint = %key.fingerprint, reason = %why, "custom domain refused");
            return Err(banner::custom_refused(name, &why));
        }
        if let Err(refusal) = custom.certs.admit(name) {
            self.server
                .refusals
                .refuse(&refusal, self.ip, Side::Client, "custom domain");
            return Err(banner::limit_error(&refusal));
        }
        Ok(Chosen {
            reservation: self.namer.hold(name),
            note: None,
            granted: true,
        })
    }

    /// The tunnel limits, checked before a forward is granted; in a
    /// cluster they count every node's tunnels (from the heartbeats and the
    /// shared per-IP counts, so approximately).
    async fn check_tunnel_limits(&self) -> Result<(), Refusal> {
        let limits = &self.server.limits;
        let registry = &self.server.registry;
        let total = registry.tunnels_total();
        if limits.max_tunnels > 0 && total >= limits.max_tunnels as usize {
            return Err(Refusal::new(
                "max-tunnels",
                format!(
                    "the server is at its limit of {} tunnels; try again later",
                    limits.max_tunnels
                ),
            ));
        }
        if limits.max_tunnels_per_ip == 0 {
            return Ok(());
        }
        let mine = registry.tunnels_of_ip_everywhere(self.ip).await;
        if mine >= limits.max_tunnels_per_ip as usize {
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
        let (conn, ip) = (self.session.id(), self.ip);
        tracing::info!(conn, %ip, address, port = requested, reason, "forward refused");
    }

    /// The limits every forward passes; `Err` is the line for the user.
    async fn admit_forward(&self, address: &str, port: u32) -> Result<(), Line> {
        let twice = self
            .granted
            .iter()
            .any(|f| f.address == address && f.port == port);
        if twice {
            self.refused(address, port, "duplicate forward");
            return Err(banner::duplicate_forward(address, port));
        }
        self.check_tunnel_limits().await.map_err(|refusal| {
            let ip = self.ip;
            self.server
                .refusals
                .refuse(&refusal, ip, Side::Client, "forward");
            banner::limit_error(&refusal)
        })
    }

    /// A tunnel of this connection for `key` of `kind`, bound as `bind`.
    fn tunnel(&self, key: (String, Kind), bind: Bind, granted: bool) -> Tunnel {
        let owner = Owner {
            key: self.key.as_ref().map(|k| k.fingerprint.clone()),
            granted,
        };
        let client = Arc::clone(&self.session) as Arc<dyn Client>;
        Tunnel::new(key, client, bind, owner, &self.server.limits)
    }

    /// Checks and claims one forward bound to `address`:`requested`: a name
    /// tunnel for ports 80, 443 and 0, a raw TCP tunnel otherwise. `Ok`
    /// carries the port to answer the client with and notes for the user;
    /// the forward is then in [`Forwards::list`]. `Err` is the line saying
    /// why not.
    pub async fn open(&mut self, address: &str, requested: u32) -> Result<(u32, Vec<Line>), Line> {
        let (forward, notes) = if let Some(alias) = self.private_alias(address, requested) {
            self.open_private_forward(address, requested, alias).await?
        } else if address == TCP_ADDRESS || !HTTP_PORTS.contains(&requested) {
            self.open_tcp_forward(address, requested).await?
        } else {
            self.open_name_forward(address, requested).await?
        };
        let port = forward.port;
        self.granted.push(forward);
        Ok((port, notes))
    }

    async fn open_name_forward(
        &mut self,
        address: &str,
        requested: u32,
    ) -> Result<(Forward, Vec<Line>), Line> {
        let port = match requested {
            0 => self.allocate_port(address),
            port => port,
        };
        self.admit_forward(address, port).await?;
        let chosen = match names::requested(address, &self.server.registry.public().domain) {
            Ok(wanted) => self.choose_name(wanted).await,
            Err(address) => Err(banner::invalid_name(&address)),
        };
        let chosen = chosen.inspect_err(|_| self.refused(address, requested, "name refused"))?;
        let key = chosen.reservation.name().to_string();
        let bind = Bind {
            address: address.to_string(),
            port,
        };
        let tunnel = self.tunnel((key.clone(), Kind::Name), bind, chosen.granted);
        let claimed = self.server.registry.claim(tunnel, None).await;
        drop(chosen.reservation);
        let shared = match claimed {
            Ok(claimed) => self.server.registry.announce_claim(&claimed),
            Err(ClaimError::Taken) => {
                self.refused(address, requested, "name in use");
                return Err(banner::name_in_use(&key));
            }
            Err(ClaimError::Duplicate) => {
                self.refused(address, requested, "name already served by this connection");
                let url = self.server.registry.public().url(&key);
                return Err(banner::served_twice(&url));
            }
        };
        tracing::info!(conn = self.session.id(), ip = %self.ip, subdomain = %key, port = requested, fingerprint = self.owner_key(), "tunnel opened");
        if is_custom_key(&key) {
            self.server
                .custom
                .start_certificate(key.clone(), Arc::clone(&self.session) as Arc<dyn Client>);
        }
        let notes = chosen
            .note
            .into_iter()
            .chain(shared.map(|n| banner::notice(&n)));
        let forward = Forward {
            address: address.to_string(),
            requested,
            port,
            key,
            kind: Kind::Name,
        };
        Ok((forward, notes.collect()))
    }

    /// The private alias a forward asks for: a name (`NAME` or
    /// `NAME.DOMAIN`) with a port that makes no HTTPS tunnel.
    fn private_alias(&self, address: &str, requested: u32) -> Option<Alias> {
        if HTTP_PORTS.contains(&requested) || address == TCP_ADDRESS {
            return None;
        }
        private::alias(address, requested, &self.server.registry.public().domain)
    }

    /// Checks and claims one private alias (`-R NAME:PORT:…`): for a key
    /// the grant rule lets hold NAME, never for keyless clients.
    async fn open_private_forward(
        &mut self,
        address: &str,
        requested: u32,
        alias: Alias,
    ) -> Result<(Forward, Vec<Line>), Line> {
        self.admit_forward(address, requested).await?;
        if self.key.is_none() {
            self.refused(address, requested, "private alias without a key");
            return Err(banner::private_needs_key(&alias));
        }
        let keys = self.server.keys.current();
        let granted = match self.grants(&keys).name(self.owner_key(), &alias.name) {
            Ok(granted) => granted,
            Err(denied) => {
                self.refused(address, requested, "private alias refused");
                return Err(match denied {
                    Denied::Reserved => banner::name_reserved(&alias.name),
                    _ => banner::name_not_yours(&alias.name),
                });
            }
        };
        let key = alias.key();
        let bind = Bind {
            address: address.to_string(),
            port: requested,
        };
        let tunnel = self.tunnel((key.clone(), Kind::Private(alias.port)), bind, granted);
        let shared = match self.server.registry.claim(tunnel, None).await {
            Ok(claimed) => self.server.registry.announce_claim(&claimed),
            Err(ClaimError::Taken) => {
                self.refused(address, requested, "private alias in use");
                return Err(banner::private_in_use(&alias));
            }
            Err(ClaimError::Duplicate) => {
                self.refused(
                    address,
                    requested,
                    "alias already served by this connection",
                );
                return Err(banner::duplicate_forward(address, requested));
            }
        };
        tracing::info!(conn = self.session.id(), ip = %self.ip, alias = %alias, fingerprint = self.owner_key(), "private alias opened");
        let forward = Forward {
            address: address.to_string(),
            requested,
            port: requested,
            key,
            kind: Kind::Private(alias.port),
        };
        Ok((
            forward,
            shared.map(|n| banner::notice(&n)).into_iter().collect(),
        ))
    }

    /// Checks and claims one raw TCP forward: the requested port when the
    /// grant rule allows it and it is free, else a random port of the
    /// range, with a note saying why.
    async fn open_tcp_forward(
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
                let keys = server.keys.current();
                let Some((port, listener)) = server.tcp.bind_random(&server.registry, &keys).await
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
    async fn try_tcp_port(
        &self,
        port: u16,
    ) -> Result<(Option<tokio::net::TcpListener>, bool), &'static str> {
        let keys = self.server.keys.current();
        let owned = match self.grants(&keys).port(self.owner_key(), port) {
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
    async fn claim_tcp(
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

    /// `cancel-tcpip-forward`: the client gives up one forward.
    pub fn cancel(&mut self, address: &str, port: u32) -> bool {
        let Some(index) = self
            .granted
            .iter()
            .position(|f| f.address == address && f.port == port)
        else {
            return false;
        };
        let forward = self.granted.remove(index);
        self.server
            .registry
            .cancel(&forward.key, self.session.id(), "forward cancelled");
        true
    }

    /// Closes every tunnel of this connection; returns how many there were.
    pub fn close_all(&mut self, why: &str) -> usize {
        self.granted.clear();
        self.server.registry.leave(self.session.id(), why)
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
