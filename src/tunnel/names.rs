//! Which name a forward gets, and the one grant rule that says who may
//! hold a name or a TCP port.
//!
//! [`Grants`] is that rule. Admission asks it before a forward is granted
//! (`ssh::forward`), and a keys-file reload asks it again of every live
//! tunnel ([`Registry::enforce`](super::Registry::enforce)): the two can
//! never drift apart.
//!
//! Names come in four kinds: *stable* (derived from the client's key and
//! the server's secret, the same on every connection), *random* (keyless
//! clients, `random@`), *requested* (`-R api:80:…`, for a key the rule
//! allows) and *custom* domains (proven in DNS, see `custom`).

use std::sync::Arc;

use super::registry::{Registry, Reservation};
use crate::config::PortRanges;
use crate::keys::KeysFile;
use crate::subdomain;

/// Why the grant rule says no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// `--auth-mode keys`, and the key is not (or no longer) listed.
    KeyNotListed,
    /// The keys file grants the name (or port) to other keys.
    OtherKey,
    /// A `--reserved-names` name that the keys file grants to nobody.
    Reserved,
    /// A port outside `--tcp-ports` that the keys file grants to nobody.
    OutOfRange,
}

/// The grant rule: what the keys file (and `--auth-url`'s answers), the
/// reserved names and the TCP port range allow each key.
pub struct Grants<'a> {
    pub keys: &'a KeysFile,
    /// What `--auth-url` granted the keys it allowed, read like the keys
    /// file (empty without it).
    pub granted: &'a KeysFile,
    pub reserved: &'a [String],
    pub tcp_ports: &'a PortRanges,
    /// `--auth-mode keys`: only listed keys may hold anything.
    pub keys_only: bool,
}

impl Grants<'_> {
    /// May the key `owner` (fingerprint; `None` for keyless clients) hold
    /// `name`? `Ok(true)`: the keys file grants it to that key (an
    /// operator-approved name); `Ok(false)`: nobody owns it.
    pub fn name(&self, owner: Option<&str>, name: &str) -> Result<bool, Denied> {
        let owners = [self.keys.owners(name), self.granted.owners(name)];
        if owners.iter().all(|o| o.is_empty()) {
            return match self.reserved.iter().any(|r| r == name) {
                true => Err(Denied::Reserved),
                false => Ok(false),
            };
        }
        owners
            .iter()
            .any(|o| owned_by(o, owner))
            .then_some(true)
            .ok_or(Denied::OtherKey)
    }

    /// May the key `owner` hold TCP port `port`? `Ok(true)`: the keys file
    /// grants it to that key (it may lie outside the range); `Ok(false)`:
    /// nobody owns it and it is in the range.
    pub fn port(&self, owner: Option<&str>, port: u16) -> Result<bool, Denied> {
        let owners = [self.keys.port_owners(port), self.granted.port_owners(port)];
        if owners.iter().all(|o| o.is_empty()) {
            return match self.tcp_ports.contains(port) {
                true => Ok(false),
                false => Err(Denied::OutOfRange),
            };
        }
        owners
            .iter()
            .any(|o| owned_by(o, owner))
            .then_some(true)
            .ok_or(Denied::OtherKey)
    }

    /// Whether anyone owns TCP port `port` (a random port never is one).
    pub fn port_owned(&self, port: u16) -> bool {
        !self.keys.port_owners(port).is_empty() || !self.granted.port_owners(port).is_empty()
    }

    /// May the key `owner` hold anything at all?
    pub fn listed(&self, owner: Option<&str>) -> Result<(), Denied> {
        let granted = |fp: &str| self.keys.grant(fp).is_some() || self.granted.grant(fp).is_some();
        let listed = owner.is_some_and(granted);
        match !self.keys_only || listed {
            true => Ok(()),
            false => Err(Denied::KeyNotListed),
        }
    }
}

fn owned_by(owners: &[String], owner: Option<&str>) -> bool {
    owner.is_some_and(|fp| owners.iter().any(|o| o == fp))
}

/// What a bind address asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Requested {
    /// A generic address (`localhost`, `0.0.0.0`, empty, …): the default name.
    Default,
    /// `api` or `api.DOMAIN`.
    Label(String),
    /// A name outside DOMAIN, e.g. `app.example.org`: served if DNS proves
    /// the client owns it.
    Custom(String),
}

/// The name a bind address asks for; `Err` for an address that is no
/// usable name (the lowercased address, for the message).
pub fn requested(address: &str, domain: &str) -> Result<Requested, String> {
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
    let address = subdomain::dns_name(address.trim());
    if GENERIC.contains(&address.as_str()) {
        return Ok(Requested::Default);
    }
    if subdomain::is_custom_name(&address, domain) {
        return Ok(Requested::Custom(address));
    }
    let label = address
        .strip_suffix(domain)
        .and_then(|rest| rest.strip_suffix('.'))
        .unwrap_or(&address);
    if subdomain::is_valid_label(label) {
        Ok(Requested::Label(label.to_string()))
    } else {
        Err(address)
    }
}

/// The SSH key a client proved it holds.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// SHA-256 of the key's wire form: what stable names are derived from.
    pub digest: Vec<u8>,
}

/// The default names of one connection: its key's stable names (one per
/// forward), else random ones, the first of them announced before login.
pub struct Namer {
    registry: Arc<Registry>,
    /// The server's stable-name secret.
    secret: Arc<[u8]>,
    /// The random name shown during authentication, waiting for the first
    /// name forward to claim it.
    first: Option<Reservation>,
}

impl Namer {
    pub fn new(registry: Arc<Registry>, secret: Arc<[u8]>) -> Namer {
        Namer {
            registry,
            secret,
            first: None,
        }
    }

    /// Announces the random name a keyless connection will get, before
    /// anyone knows whether it has a key; returns it.
    pub fn announce_random(&mut self) -> String {
        let reservation = self.registry.reserve_random();
        let name = reservation.name().to_string();
        self.first = Some(reservation);
        name
    }

    /// The client showed a key: the announced random name is not its.
    pub fn forget_random(&mut self) {
        self.first = None;
    }

    /// The default name of the connection's `index`-th name forward.
    pub fn default_name(&mut self, key: Option<&ClientKey>, index: usize) -> Reservation {
        if index == 0 {
            if let Some(first) = self.first.take() {
                return first;
            }
        }
        match key {
            Some(key) => self.registry.announce(&self.stable(key, index)),
            None => self.registry.reserve_random(),
        }
    }

    /// Holds `name` (granted by the rule) until its forward is claimed.
    pub fn hold(&self, name: &str) -> Reservation {
        self.registry.announce(name)
    }

    /// The stable name of a key's `index`-th name forward.
    fn stable(&self, key: &ClientKey, index: usize) -> String {
        let mut blob = key.digest.clone();
        if index > 0 {
            blob.extend_from_slice(format!("#{index}").as_bytes());
        }
        subdomain::stable_name(&self.secret, &blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE3Bmmpai/x6KKuADMz+m+VaKn/P4voCQacL+HMZkkBU alice";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILiW73TJIhnYKySsyz2s3hhv+Ss9MbJXIVnCPNboOoMi bob";

    fn fp(line: &str) -> String {
        crate::keys::fingerprint(&russh::keys::PublicKey::from_openssh(line).unwrap())
    }

    #[test]
    fn the_grant_rule() {
        let keys = KeysFile::parse(&format!("names=api,ports=5432 {KEY_A}\n{KEY_B}")).unwrap();
        let reserved = ["www".to_string()];
        let ranges = crate::config::parse_port_ranges("20000-20009").unwrap();
        let grants = Grants {
            keys: &keys,
            granted: &KeysFile::default(),
            reserved: &reserved,
            tcp_ports: &ranges,
            keys_only: true,
        };
        let (a, b) = (fp(KEY_A), fp(KEY_B));
        assert_eq!(grants.name(Some(&a), "api"), Ok(true));
        assert_eq!(grants.name(Some(&b), "api"), Err(Denied::OtherKey));
        assert_eq!(grants.name(None, "api"), Err(Denied::OtherKey));
        assert_eq!(grants.name(Some(&b), "free"), Ok(false));
        assert_eq!(grants.name(Some(&a), "www"), Err(Denied::Reserved));
        assert_eq!(grants.port(Some(&a), 5432), Ok(true));
        assert_eq!(grants.port(Some(&b), 5432), Err(Denied::OtherKey));
        assert_eq!(grants.port(Some(&b), 20001), Ok(false));
        assert_eq!(grants.port(Some(&b), 30000), Err(Denied::OutOfRange));
        assert_eq!(grants.listed(Some(&b)), Ok(()));
        assert_eq!(
            grants.listed(Some("SHA256:other")),
            Err(Denied::KeyNotListed)
        );
        assert_eq!(grants.listed(None), Err(Denied::KeyNotListed));
        let open = Grants {
            keys_only: false,
            ..grants
        };
        assert_eq!(open.listed(None), Ok(()));
    }

    #[test]
    fn bind_addresses_become_names() {
        let d = "tunnel.example";
        assert_eq!(requested("localhost", d), Ok(Requested::Default));
        assert_eq!(requested("", d), Ok(Requested::Default));
        assert_eq!(requested("api", d), Ok(Requested::Label("api".into())));
        assert_eq!(
            requested("API.tunnel.example.", d),
            Ok(Requested::Label("api".into()))
        );
        assert_eq!(
            requested("App.Example.org.", d),
            Ok(Requested::Custom("app.example.org".into()))
        );
        assert!(requested("a.b.tunnel.example", d).is_err());
        assert!(requested("10.0.0.1", d).is_err());
        assert!(requested("a_b.example.org", d).is_err());
    }
}
