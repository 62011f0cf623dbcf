//! Certificates as stored: the chain, the key sealed with the cluster
//! secret, a set of the names stored per kind; the ACME account; pending
//! HTTP-01 answers. Storing one publishes it, so every node serves it.

use std::time::Duration;

use anyhow::Result;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{key, Event, Store};

/// Which certificates a shared one is among.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum CertKind {
    /// From the ACME CA: `main` or a single name.
    Acme,
    /// A custom domain's self-signed certificate (ACME is off).
    SelfSigned,
}

impl CertKind {
    /// The part of its keys that names the kind.
    fn tag(self) -> &'static str {
        match self {
            CertKind::Acme => "cert",
            CertKind::SelfSigned => "self-signed",
        }
    }
}

/// The key of the set listing the stored certificates of `kind`.
fn stored_list(kind: CertKind) -> String {
    key(&format!("acme:stored:{}", kind.tag()))
}

/// The name (without the prefix) a shared certificate is stored under;
/// also the context its key is sealed for, so a sealed key cannot be
/// passed off as another name's.
pub fn cert_name(kind: CertKind, name: &str) -> String {
    format!("acme:{}:{name}", kind.tag())
}

/// A certificate as stored: the PEM chain, and the PEM key sealed with
/// the cluster secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCert {
    /// Public: stored as it is.
    pub chain: String,
    /// Sealed for [`cert_name`], so only the cluster's nodes read it.
    pub sealed_key: Vec<u8>,
}

/// Stores a certificate (KEYS: its hash, the kind's name set), unless
/// ARGV[5] is 'nx' and one is stored already; publishes the change when
/// it stored. Returns the chain and sealed key in force.
/// ARGV: events channel, chain, sealed key, the event (JSON), mode, name.
const SAVE_CERT: &str = r#"
if ARGV[5] == 'nx' and redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'chain', 'key')
end
redis.call('HSET', KEYS[1], 'chain', ARGV[2], 'key', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[1], ARGV[4])
return {ARGV[2], ARGV[3]}
"#;

impl Store {
    /// Stores the certificate `name` of `kind` and tells every node; with
    /// `first`, only if none is stored yet. Returns the one in force.
    pub async fn save_cert(
        &self,
        kind: CertKind,
        name: &str,
        cert: &StoredCert,
        first: bool,
    ) -> Result<StoredCert> {
        let event = serde_json::to_string(&Event::Cert {
            kind,
            name: name.to_string(),
        })?;
        let (chain, sealed_key): (String, Vec<u8>) = Script::new(SAVE_CERT)
            .key(key(&cert_name(kind, name)))
            .key(stored_list(kind))
            .arg(key("events"))
            .arg(&cert.chain)
            .arg(&cert.sealed_key)
            .arg(event)
            .arg(if first { "nx" } else { "set" })
            .arg(name)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(StoredCert { chain, sealed_key })
    }

    /// The certificate `name` of `kind`, if one is stored.
    pub async fn cert(&self, kind: CertKind, name: &str) -> Result<Option<StoredCert>> {
        let (chain, sealed_key): (Option<String>, Option<Vec<u8>>) = self
            .conn()
            .hmget(key(&cert_name(kind, name)), &["chain", "key"])
            .await?;
        Ok(chain
            .zip(sealed_key)
            .map(|(chain, sealed_key)| StoredCert { chain, sealed_key }))
    }

    /// Removes the certificate `name` of `kind` and its name from the list.
    pub async fn forget_cert(&self, kind: CertKind, name: &str) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(key(&cert_name(kind, name)))
            .ignore()
            .srem(stored_list(kind), name)
            .ignore();
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// The names of the certificates of `kind` stored.
    pub async fn cert_names(&self, kind: CertKind) -> Result<Vec<String>> {
        let mut names: Vec<String> = self.conn().smembers(stored_list(kind)).await?;
        names.sort();
        Ok(names)
    }

    /// The ACME account of directory `tag` (sealed), if one is stored.
    pub async fn acme_account(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(&format!("acme:account:{tag}")).await
    }

    /// Stores the ACME account of directory `tag` unless one is stored
    /// already (two nodes may create one at once); returns the one in
    /// force.
    pub async fn save_acme_account(&self, tag: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        self.set_nx_bytes(&format!("acme:account:{tag}"), sealed)
            .await
    }

    /// Publishes an HTTP-01 key authorization for `ttl`: every node answers
    /// the CA with it.
    pub async fn set_challenge(&self, token: &str, key_auth: &str, ttl: Duration) -> Result<()> {
        let _: () = self
            .conn()
            .pset_ex(
                key(&format!("acme:http01:{token}")),
                key_auth,
                ttl.as_millis().max(1) as u64,
            )
            .await?;
        Ok(())
    }

    /// The key authorization of HTTP-01 token `token`, if it is pending.
    pub async fn challenge(&self, token: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .get(key(&format!("acme:http01:{token}")))
            .await?)
    }

    /// Withdraws HTTP-01 token `token`.
    pub async fn remove_challenge(&self, token: &str) -> Result<()> {
        let _: () = self
            .conn()
            .del(key(&format!("acme:http01:{token}")))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_events_and_names() {
        let event = Event::Cert {
            kind: CertKind::SelfSigned,
            name: "app.example.org".into(),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"t":"cert","kind":"self-signed","name":"app.example.org"}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        assert_eq!(cert_name(CertKind::Acme, "main"), "acme:cert:main");
        assert_ne!(
            cert_name(CertKind::Acme, "a.example"),
            cert_name(CertKind::SelfSigned, "a.example")
        );
    }
}
