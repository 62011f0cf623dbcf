//! Private aliases: a device's `ssh -R NAME:PORT:localhost:22 HOST` makes
//! `NAME:PORT` reachable through SSH only (`ssh -J HOST user@NAME`,
//! `ssh -L 5432:NAME:5432 HOST`), by the keys allowed to, and nothing is
//! published. This module owns the two rules of that: which bind address
//! and which `direct-tcpip` target name an alias, and who may connect.
//!
//! Who may *bind* `NAME` is the grant rule of public names
//! ([`super::names::Grants::name`]); keyless clients may not.

use crate::keys::KeysFile;
use crate::subdomain;

/// Ports whose forwards are HTTP(S) name tunnels whatever the bind address
/// says, so a name there is never a private alias.
pub const NAME_PORTS: [u32; 3] = [80, 443, 0];

/// A private alias, `NAME:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// A DNS label (lowercase).
    pub name: String,
    pub port: u16,
}

impl Alias {
    /// Its registry key.
    pub fn key(&self) -> String {
        super::private_key(&self.name, self.port)
    }
}

impl std::fmt::Display for Alias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.port)
    }
}

/// The alias name in a private alias's registry key (`private:NAME:PORT`).
pub fn name_of(key: &str) -> &str {
    let rest = key.strip_prefix("private:").unwrap_or(key);
    rest.rsplit_once(':').map_or(rest, |(name, _)| name)
}

/// The alias `host`:`port` names: `NAME` or `NAME.DOMAIN` (any case, a
/// trailing dot allowed) and a port 1–65535. `None`: not an alias
/// (`localhost`, an IP address, another domain, port 0).
pub fn alias(host: &str, port: u32, domain: &str) -> Option<Alias> {
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    let host = crate::subdomain::dns_name(host);
    let name = match host.strip_suffix(domain) {
        Some(rest) => rest.strip_suffix('.')?,
        None => host.as_str(),
    };
    let generic = ["localhost", "tcp"].contains(&name);
    (subdomain::is_valid_label(name) && !generic).then(|| Alias {
        name: name.to_string(),
        port,
    })
}

/// Why a key may not connect to an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The connecting client showed no key.
    NeedsKey,
    /// Neither the alias's owner, nor in its `allow-keys=`, nor granted it
    /// by `connect=` in the keys file.
    NotAllowed,
}

/// Who may connect to one alias.
pub struct Access<'a> {
    /// The fingerprint of the key that bound the alias.
    pub owner: Option<&'a str>,
    /// The binder's `allow-keys=`.
    pub allow_keys: &'a [String],
    /// The keys file, whose `connect=` patterns grant aliases to keys.
    pub keys: &'a KeysFile,
}

impl Access<'_> {
    /// May the key `connector` (fingerprint; `None`: keyless) connect to
    /// the alias named `name`? Its owner may, keys it lists in
    /// `allow-keys=` may, and keys the keys file grants it with `connect=`.
    pub fn check(&self, connector: Option<&str>, name: &str) -> Result<(), Refused> {
        let connector = connector.ok_or(Refused::NeedsKey)?;
        let owner = self.owner == Some(connector);
        let listed = self.allow_keys.iter().any(|k| k == connector);
        let granted = self
            .keys
            .grant(connector)
            .is_some_and(|grant| grant.may_connect(name));
        match owner || listed || granted {
            true => Ok(()),
            false => Err(Refused::NotAllowed),
        }
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
    fn targets_that_name_an_alias() {
        let d = "tunnel.example";
        let pi = |port| {
            Some(Alias {
                name: "pi-7".into(),
                port,
            })
        };
        assert_eq!(alias("pi-7", 22, d), pi(22));
        assert_eq!(alias("PI-7.tunnel.example.", 22, d), pi(22));
        assert_eq!(alias("pi-7", 5432, d), pi(5432));
        for host in [
            "localhost",
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "example.org",
            "a.b.tunnel.example",
            "tcp",
            "",
        ] {
            assert_eq!(alias(host, 22, d), None, "{host}");
        }
        assert_eq!(alias("pi-7", 0, d), None);
        assert_eq!(alias("pi-7", 70000, d), None);
        assert_eq!(alias("pi-7", 22, d).unwrap().key(), "private:pi-7:22");
        assert_eq!(name_of("private:pi-7:22"), "pi-7");
    }

    #[test]
    fn who_may_connect() {
        let (a, b) = (fp(KEY_A), fp(KEY_B));
        let keys = KeysFile::parse(&format!("connect=fleet-* {KEY_B}\n{KEY_A}")).unwrap();
        let none = KeysFile::default();
        let owned_by_a = Access {
            owner: Some(&a),
            allow_keys: &[],
            keys: &none,
        };
        assert_eq!(owned_by_a.check(Some(&a), "pi"), Ok(()));
        assert_eq!(owned_by_a.check(Some(&b), "pi"), Err(Refused::NotAllowed));
        assert_eq!(owned_by_a.check(None, "pi"), Err(Refused::NeedsKey));
        let listed = [b.clone()];
        let shared = Access {
            allow_keys: &listed,
            ..owned_by_a
        };
        assert_eq!(shared.check(Some(&b), "pi"), Ok(()));
        let granted = Access {
            owner: Some(&a),
            allow_keys: &[],
            keys: &keys,
        };
        assert_eq!(granted.check(Some(&b), "fleet-3"), Ok(()));
        assert_eq!(granted.check(Some(&b), "pi"), Err(Refused::NotAllowed));
    }
}
