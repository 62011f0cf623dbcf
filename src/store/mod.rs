//! The cluster's shared state in Redis: the connection, the key layout and
//! the typed operations on it, one file per concern — [`names`] (claims and
//! lookups), [`nodes`] (heartbeats and the node table), [`bans`] (bans and
//! counters), [`certs`] (certificates, the ACME account, HTTP-01 answers),
//! [`values`] (raw values and locks), [`usage`] (plans' usage per user) — plus [`secret`], the cluster secret
//! that seals what must not be read from Redis, and [`shared`], the
//! certificates every node serves. Where Redis is: [`target`] (what
//! `--cluster-redis` names), `primary` (the connection to the primary),
//! `follow` (behind Sentinel, moving to a new primary), [`subscription`]
//! (the event channel, on the primary of the moment). Everything else
//! talks to Redis through here; nothing here knows tunnels, SSH or HTTP.
//!
//! Every key starts with `{burrow}:` — one hash tag, so all of them live in
//! one slot and the Lua scripts below work on a single Redis, behind
//! Sentinel, or on Redis Cluster alike:
//!
//! ```text
//! {burrow}:check             the cluster secret's check value (a node with another secret stops)
//! {burrow}:nodes             hash node → JSON (incarnation, link address, start, keys-file hash)
//! {burrow}:alive:NODE        "INCARNATION TUNNELS", expires after the node TTL (the heartbeat)
//! {burrow}:name:KEY          hash NODE/INCARNATION/CONN → "CLAIMED_MS OWNER GRANTED RAW"
//! {burrow}:held:NODE/INC     set of the keys that incarnation holds (cleanup after a crash)
//! {burrow}:ports             set of `tcp:PORT` keys held anywhere (every node listens on them)
//! {burrow}:reserved:NAME     a name announced to a logging-in client (expires in 10 s,
//!                            deleted when it is claimed)
//! {burrow}:bans              hash IP → "UNTIL_MS REASON"
//! {burrow}:ipt:NODE/INC      hash IP → tunnels of that IP on that node
//! {burrow}:conns:IP:MINUTE   SSH connections of that IP in that minute (expires)
//! {burrow}:acme:account:TAG  the ACME account (sealed), one per CA directory
//! {burrow}:acme:cert:NAME    hash chain → PEM chain, key → PEM key (sealed): an ACME
//!                            certificate (NAME: `main`, or a single name)
//! {burrow}:acme:self-signed:NAME  the same, a custom domain's self-signed certificate
//! {burrow}:acme:stored:KIND  set of the NAMEs stored of that kind (`cert`, `self-signed`)
//! {burrow}:acme:lock:NAME    the node ordering NAME now (its token; expires)
//! {burrow}:acme:http01:TOKEN  a pending HTTP-01 challenge's key authorization (expires)
//! {burrow}:login:code:ID     a sign-in one-time code that was spent (expires with it)
//! {burrow}:usage:ACCOUNT:LIMIT:START  a plan account's transfer or requests in a period
//! {burrow}:usage:bw:ACCOUNT  hash NODE → when it last moved the account's bytes
//! {burrow}:events            pub/sub channel: JSON events (names, bans, kicks, certificates)
//! ```
//!
//! A member of a name is alive while its node's `alive` key holds the
//! member's incarnation: a node that stops renewing it loses all its names
//! at once, with no per-name expiry, so an idle cluster costs Redis one
//! write per node per heartbeat whatever the number of tunnels.

pub mod bans;
pub mod certs;
mod follow;
pub mod names;
pub mod nodes;
mod primary;
pub mod secret;
pub mod shared;
pub mod subscription;
pub mod target;
pub mod usage;
pub mod values;

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use redis::AsyncCommands;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::certs::{cert_name, CertKind, StoredCert};
pub use self::names::{member_id, parse_member_id, Claim, ClaimOutcome, Stored};
pub use self::nodes::{NodeInfo, NodeRead};
pub use self::subscription::Events;
pub use self::target::Target;

use self::primary::{Conn, Primary};

/// Every key's prefix (and hash tag).
pub const PREFIX: &str = "{burrow}:";

/// An event on `{burrow}:events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Event {
    /// The members of `key` changed: `clients` serve it now, `by` made
    /// the change, `replaced` lost it to `by`.
    Name {
        key: String,
        clients: usize,
        by: Option<String>,
        replaced: Option<String>,
    },
    /// A member's options became final (whether it takes raw bytes).
    Settled { key: String },
    /// An IP was blocked until `until_ms`.
    Ban {
        ip: String,
        until_ms: u64,
        reason: String,
    },
    /// A block was lifted.
    Unban { ip: String },
    /// The operator closed `key` (all its clients, every node).
    Kick { key: String, reason: String },
    /// A certificate was stored (issued or renewed): every node serves it.
    Cert { kind: CertKind, name: String },
}

/// A handle on the cluster's Redis: on the primary of the moment (see
/// [`Store::generations`]).
#[derive(Clone)]
pub struct Store {
    primary: Primary,
}

fn key(rest: &str) -> String {
    format!("{PREFIX}{rest}")
}

impl Store {
    /// Connects to `target`: one Redis, or the primary its sentinels name
    /// (then followed wherever it moves). `ca`: a PEM file with the CA(s)
    /// to trust instead of the system's, for TLS. Fails when Redis cannot
    /// be reached now.
    pub async fn connect(target: &Target, ca: Option<&Path>) -> Result<Store> {
        let ca = ca.map(read_ca).transpose()?;
        let primary = match target {
            Target::Single { url } => Primary::single(url, ca.as_deref()).await,
            Target::Sentinel(sentinels) => follow::connect(sentinels, ca.as_deref()).await,
        };
        let primary = primary.map_err(|err| explain_tls(err, ca.is_some()))?;
        Ok(Store { primary })
    }

    /// Whether the primary can move (Sentinel): then watch
    /// [`Store::generations`].
    pub fn follows_primary(&self) -> bool {
        self.primary.followed_by_sentinels()
    }

    /// The primary's generation: a new one starts every time the store
    /// moves to another primary, which may not have every write the last
    /// one acknowledged. Never changes for one Redis.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.primary.generations()
    }

    fn conn(&self) -> Conn {
        self.primary.conn()
    }

    /// Records the secret's check value, or compares it with the one the
    /// cluster has: `Err` when they differ.
    pub async fn check_secret(&self, value: &str) -> Result<()> {
        let mut conn = self.conn();
        let _: bool = conn.set_nx(key("check"), value).await?;
        let stored: String = conn.get(key("check")).await?;
        if stored != value {
            return Err(anyhow!(
                "this node's cluster secret is not the cluster's (Redis holds another check value): copy the cluster's --cluster-secret file to this node"
            ));
        }
        Ok(())
    }

    /// Publishes `event` to every node.
    pub async fn publish(&self, event: &Event) -> Result<()> {
        let json = serde_json::to_string(event)?;
        let _: i64 = self.conn().publish(key("events"), json).await?;
        Ok(())
    }

    /// Round-trip time of one PING, for the stats.
    pub async fn ping(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(started.elapsed())
    }
}

/// The PEM file `--cluster-redis-ca` names, checked to hold a certificate.
fn read_ca(file: &Path) -> Result<Vec<u8>> {
    let context = || format!("--cluster-redis-ca {}", file.display());
    let pem = std::fs::read(file).with_context(|| format!("{}: cannot read it", context()))?;
    if CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .next()
        .is_none()
    {
        bail!("{}: no PEM certificate in it", context());
    }
    Ok(pem)
}

/// A failed connection, with a hint when it was the server's certificate.
fn explain_tls(err: anyhow::Error, own_ca: bool) -> anyhow::Error {
    let text = format!("{err:#}");
    if !(text.contains("certificate") || text.contains("UnknownIssuer")) {
        return err;
    }
    match own_ca {
        true => {
            err.context("Redis's TLS certificate is not signed by the CA in --cluster-redis-ca")
        }
        false => err.context(
            "Redis's TLS certificate is not trusted: give its CA with --cluster-redis-ca FILE",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_json() {
        let event = Event::Name {
            key: "api".into(),
            clients: 2,
            by: Some("a/1/3".into()),
            replaced: None,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""t":"name""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
        let from_lua = r#"{"t":"name","key":"x","clients":1,"by":"a/1/2"}"#;
        assert!(matches!(
            serde_json::from_str::<Event>(from_lua).unwrap(),
            Event::Name { replaced: None, .. }
        ));
    }
}
