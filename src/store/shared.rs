//! The certificates every node serves: kept in Redis (through [`Store`])
//! with their private keys sealed with the cluster secret, one node at a
//! time ordering each (a lock), and every change announced on the event
//! channel so the other nodes install it. [`SharedCerts`] is the handle
//! the certificate side of a node (ACME, custom domains, the HTTP-01
//! answers) gets; it knows nothing of ACME itself.

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::broadcast;

use super::secret::Secret;
use super::{cert_name, CertKind, Store, StoredCert};

/// How many certificate changes wait for a follower that is behind; past
/// that it is told it lagged, and reads everything again.
pub const CHANGES: usize = 256;

/// A change of the certificates the cluster shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertChange {
    /// `name` of `kind` was stored (issued or renewed) by some node.
    Stored { kind: CertKind, name: String },
    /// Changes may have been missed (the event subscription was broken):
    /// read them all again.
    Resync,
}

/// The shared certificates, as one node sees them.
#[derive(Clone)]
pub struct SharedCerts {
    /// Where the certificates, the account, the locks and the HTTP-01
    /// answers are.
    store: Store,
    /// Seals the private keys before they reach Redis.
    secret: Secret,
    /// Identifies this node's process in the locks it takes (another
    /// incarnation of the same node must not release them).
    token: String,
    /// Fed by the cluster's event subscription.
    changes: broadcast::Sender<CertChange>,
}

impl SharedCerts {
    pub fn new(
        store: Store,
        secret: Secret,
        token: String,
        changes: broadcast::Sender<CertChange>,
    ) -> SharedCerts {
        SharedCerts {
            store,
            secret,
            token,
            changes,
        }
    }

    /// Certificate changes from now on.
    pub fn changes(&self) -> broadcast::Receiver<CertChange> {
        self.changes.subscribe()
    }

    /// The PEM chain and PEM key of `name`, if stored.
    pub async fn load(&self, kind: CertKind, name: &str) -> Result<Option<(String, String)>> {
        let Some(stored) = self.store.cert(kind, name).await? else {
            return Ok(None);
        };
        self.open(kind, name, stored).map(Some)
    }

    /// Stores `name` (replacing what is there) and tells every node.
    pub async fn save(&self, kind: CertKind, name: &str, chain: &str, key: &str) -> Result<()> {
        let cert = self.seal(kind, name, chain, key);
        self.store.save_cert(kind, name, &cert, false).await?;
        Ok(())
    }

    /// Stores `name` unless another node did first; returns the PEM chain
    /// and key in force (so every node serves the same one).
    pub async fn save_first(
        &self,
        kind: CertKind,
        name: &str,
        chain: &str,
        key: &str,
    ) -> Result<(String, String)> {
        let cert = self.seal(kind, name, chain, key);
        let stored = self.store.save_cert(kind, name, &cert, true).await?;
        self.open(kind, name, stored)
    }

    /// Removes `name` of `kind` (no node renews it any more).
    pub async fn forget(&self, kind: CertKind, name: &str) -> Result<()> {
        self.store.forget_cert(kind, name).await
    }

    /// The names stored of `kind`.
    pub async fn names(&self, kind: CertKind) -> Result<Vec<String>> {
        self.store.cert_names(kind).await
    }

    fn seal(&self, kind: CertKind, name: &str, chain: &str, key: &str) -> StoredCert {
        StoredCert {
            chain: chain.to_string(),
            sealed_key: self.secret.seal(&cert_name(kind, name), key.as_bytes()),
        }
    }

    fn open(&self, kind: CertKind, name: &str, stored: StoredCert) -> Result<(String, String)> {
        let context = cert_name(kind, name);
        let key = self
            .secret
            .open(&context, &stored.sealed_key)
            .with_context(|| {
                format!("{context}: the key in Redis is not sealed with this cluster secret")
            })?;
        let key =
            String::from_utf8(key).with_context(|| format!("{context}: the key is not PEM"))?;
        Ok((stored.chain, key))
    }

    /// Takes the lock on ordering `name` for `ttl`: `true` when this node
    /// holds it now (and nobody else did).
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<bool> {
        self.store.lock(&lock_name(name), &self.token, ttl).await
    }

    /// Keeps this node's lock on `name` for `ttl` more: `false` when it
    /// lost it.
    pub async fn renew_lock(&self, name: &str, ttl: Duration) -> Result<bool> {
        self.store
            .renew_lock(&lock_name(name), &self.token, ttl)
            .await
    }

    /// Gives up this node's lock on `name` (someone else's stays).
    pub async fn release_lock(&self, name: &str) -> Result<()> {
        self.store.release_lock(&lock_name(name), &self.token).await
    }

    /// The ACME account of directory `tag`, opened.
    pub async fn account(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        let Some(sealed) = self.store.acme_account(tag).await? else {
            return Ok(None);
        };
        self.open_account(tag, &sealed).map(Some)
    }

    /// Stores the ACME account of directory `tag` unless another node did
    /// first; returns the one in force, opened.
    pub async fn save_account(&self, tag: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let sealed = self.secret.seal(&account_context(tag), plain);
        let stored = self.store.save_acme_account(tag, &sealed).await?;
        self.open_account(tag, &stored)
    }

    fn open_account(&self, tag: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        self.secret
            .open(&account_context(tag), sealed)
            .context("the ACME account in Redis is not sealed with this cluster secret")
    }

    /// Publishes an HTTP-01 answer for `ttl`, for whichever node the CA
    /// reaches.
    pub async fn set_challenge(&self, token: &str, key_auth: &str, ttl: Duration) -> Result<()> {
        self.store.set_challenge(token, key_auth, ttl).await
    }

    /// A pending HTTP-01 answer, published by any node.
    pub async fn challenge(&self, token: &str) -> Result<Option<String>> {
        self.store.challenge(token).await
    }

    /// Withdraws an HTTP-01 answer.
    pub async fn remove_challenge(&self, token: &str) -> Result<()> {
        self.store.remove_challenge(token).await
    }
}

fn lock_name(name: &str) -> String {
    format!("acme:lock:{name}")
}

fn account_context(tag: &str) -> String {
    format!("acme:account:{tag}")
}
