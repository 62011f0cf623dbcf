//! `tcpip-forward` → a tunnel: which kind (HTTPS name, or raw TCP port),
//! which name or port, the limits every forward passes, the claim in the
//! registry, and what the user is told about it.
//!
//! - this module: the connection's forwards, the dispatch by kind,
//!   cancelling, and how a forward is described to the user;
//! - [`admit`]: the limits every forward passes;
//! - [`name`]: name tunnels (a stable, random, requested or custom name);
//! - [`alias`]: private aliases (`-R NAME:PORT`);
//! - [`tcp`]: raw TCP ports.
//!
//! Ports 80, 443 and 0 make a name tunnel (`0` asks the server to pick a
//! port to echo); a name with any other port (`-R pi-7:22:localhost:22`) a
//! private alias, reached only through SSH ([`crate::tunnel::private`]);
//! any other port without a name, or the bind address `tcp`, a raw TCP
//! tunnel. Who may hold a name or port is the grant rule's call
//! ([`crate::tunnel::names::Grants`]).

mod admit;
mod alias;
mod name;
mod tcp;

use std::net::IpAddr;
use std::sync::Arc;

use super::banner::{self, Line};
use super::session::Session;
use super::Server;
use crate::config::AuthMode;
use crate::keys::KeysFile;
use crate::tunnel::names::{ClientKey, Grants, Namer};
use crate::tunnel::private::{self};
use crate::tunnel::{is_custom_key, Bind, Client, Kind, Owner, Tunnel};

/// Ports that make an HTTPS tunnel. `0` asks the server to pick a port and
/// is treated as HTTP too (any other port is a private alias or a raw TCP
/// tunnel).
pub(super) const HTTP_PORTS: [u32; 3] = private::NAME_PORTS;
/// The bind address that asks for a raw TCP tunnel on a random port:
/// `ssh -R tcp:0:localhost:5432` (plain `-R 0` stays HTTPS, as it always was).
pub(super) const TCP_ADDRESS: &str = "tcp";

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

    /// The keys file and what `--auth-url` granted, as they are now.
    fn files(&self) -> (Arc<KeysFile>, Arc<KeysFile>) {
        (self.server.keys.current(), self.server.granted())
    }

    fn grants<'a>(&'a self, (keys, granted): &'a (Arc<KeysFile>, Arc<KeysFile>)) -> Grants<'a> {
        Grants {
            keys,
            granted,
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
            login: self.login(forward),
        })
    }

    /// Who must sign in to visit `forward` (name tunnels only).
    fn login(&self, forward: &Forward) -> Option<String> {
        if !forward.is_name() {
            return None;
        }
        let options = self.session.options();
        let policies = self.server.login_policies(self.owner_key(), &options);
        policies.required().then(|| policies.describe())
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
