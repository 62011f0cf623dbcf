//! Here or on another node: the one place that decides where a registry
//! key is served. On a single node the registry is the whole truth; in a
//! cluster its directory ([`super::directory::Directory`]) knows the
//! clients of other nodes too, and [`Registry::route`] picks among all of
//! them. Callers never ask the directory themselves: they get a
//! [`Holder`], whose remote side opens its own stream
//! ([`Remote::open`]), or ask one of the protocol questions below
//! (does the name pass TLS through? may this key reach that alias? is the
//! name held anywhere?), answered here for both cases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::directory::{Directory, Forwarded, LinkBody, Member, Members, Sent};
use super::registry::{Pick, Registry};
use super::{ByteStream, Kind, OpenError, Tunnel, OPTIONS_WAIT};
use crate::config::Balance;

/// How often a remote name's options are looked for while they settle.
const SETTLE_POLL: Duration = Duration::from_millis(100);

/// A name held by a client on another node, and the way to it.
#[derive(Clone)]
pub struct Remote {
    /// The registry key.
    pub key: String,
    /// The client that was picked.
    pub member: Member,
    /// The directory that found it, which opens streams to its node.
    directory: Arc<dyn Directory>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("key", &self.key)
            .field("member", &self.member)
            .finish()
    }
}

impl Remote {
    /// Opens a stream to the member's node, which serves it as `forwarded`
    /// says; bounded by the link's own timeouts.
    pub async fn open(&self, forwarded: Forwarded) -> Result<ByteStream, OpenError> {
        let (key, member) = (&self.key, &self.member);
        self.directory.open(key, member, forwarded).await
    }

    /// Sends one HTTP request to the member's node (see
    /// [`Directory::send`]).
    pub async fn send(
        &self,
        forwarded: Forwarded,
        request: hyper::Request<LinkBody>,
    ) -> Result<Sent, OpenError> {
        let (key, member) = (&self.key, &self.member);
        self.directory.send(key, member, forwarded, request).await
    }
}

/// What a lookup found.
pub enum Holder {
    /// A client of this node.
    Here(Arc<Tunnel>),
    /// A client of another node: forward to it.
    There(Remote),
    /// Only clients of nodes that are gone: answer 503, try again soon.
    Gone,
    /// The directory cannot tell now (its store is down and the name is
    /// not cached) and no client here holds it: answer 503, try again soon.
    Unresolved,
    /// Nobody holds the name.
    Nobody,
}

/// Where a name is held, for questions that are not about serving it.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// By a client here that serves it by name (not a TCP port or alias).
    HereByName,
    /// By a client here of another kind.
    HereOtherwise,
    /// On another node, or on one that is gone (its clients are
    /// reconnecting elsewhere).
    Elsewhere,
    /// The directory cannot tell now.
    Unknown,
    /// Nowhere.
    Nowhere,
}

/// Who may reach a private alias, wherever its device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasOwner {
    /// The fingerprint of the device's key, if it showed one.
    pub owner: Option<String>,
    /// The device's `allow-keys=` (once its options are final).
    pub allow_keys: Vec<String>,
}

/// Why an alias has no device to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoDevice {
    /// Its device was on a node that is gone: it is reconnecting.
    Moving,
    /// Nobody holds it (or the directory cannot tell).
    Nobody,
}

impl Registry {
    /// Who serves `key` for a visitor: a client here, a client of another
    /// node (in a cluster), only nodes that are gone, or nobody. Waits for
    /// an announced name like [`Registry::lookup`].
    pub async fn route(&self, key: &str, pick: Pick) -> Holder {
        let Some(directory) = self.directory() else {
            return self.here_or(key, pick, Holder::Nobody).await;
        };
        let members = match directory.members(key).await {
            Members::Known(members) if !members.is_empty() => members,
            Members::Orphaned => return Holder::Gone,
            // The store cannot tell: this node's own, if any.
            Members::Unknown => return self.here_or(key, pick, Holder::Unresolved).await,
            // Nobody elsewhere: this node's own (an announced name waits).
            Members::Known(_) => return self.here_or(key, pick, Holder::Nobody).await,
        };
        for member in self.order(directory.as_ref(), key, members, pick) {
            if *member.node != *directory.node() {
                let directory = Arc::clone(directory);
                let key = key.to_string();
                return Holder::There(Remote {
                    key,
                    member,
                    directory,
                });
            }
            // Ours: the registry has it, unless it just left.
            let here = self.members(key).into_iter();
            if let Some(tunnel) = here.into_iter().find(|t| t.conn() == member.conn) {
                return Holder::Here(tunnel);
            }
        }
        self.here_or(key, pick, Holder::Nobody).await
    }

    /// This node's client of `key` (waiting for an announced name), else
    /// `none`.
    async fn here_or(&self, key: &str, pick: Pick, none: Holder) -> Holder {
        self.lookup(key, pick).await.map_or(none, Holder::Here)
    }

    /// `members` (oldest first) in the order `pick` tries them: the
    /// policy's choice first; this node's clients that recently failed go
    /// last, and so do other nodes that recently failed.
    fn order(
        &self,
        directory: &dyn Directory,
        key: &str,
        mut members: Vec<Member>,
        pick: Pick,
    ) -> Vec<Member> {
        let n = members.len();
        if pick == Pick::Next && self.balance() == Balance::RoundRobin && n > 1 {
            members.rotate_left(self.next_turn(key) % n);
        }
        let local = self.members(key);
        let failing = |m: &Member| match *m.node == *directory.node() {
            true => local.iter().any(|t| t.conn() == m.conn && t.skipped()),
            false => directory.node_failing(&m.node),
        };
        let (healthy, failing): (Vec<_>, Vec<_>) = members.into_iter().partition(|m| !failing(m));
        healthy.into_iter().chain(failing).collect()
    }

    /// Whether `key` passes TLS through to its app (`tls=passthrough`),
    /// wherever its client is: waits (bounded) for a new tunnel's options,
    /// here or, through the directory, on another node, so a first
    /// connection is never terminated by mistake. `None`: nobody serves it
    /// now (a remote client that leaves while its options settle counts as
    /// not passing through). With it, how long the visitor was held for the
    /// options.
    pub async fn passthrough(&self, key: &str) -> (Option<bool>, Duration) {
        let started = tokio::time::Instant::now();
        let deadline = started + OPTIONS_WAIT;
        let mut first = true;
        loop {
            let remote = match self.route(key, Pick::Oldest).await {
                Holder::Here(tunnel) => {
                    let held = tunnel.settle_options().await.held;
                    let held = if first { held } else { started.elapsed() };
                    return (Some(tunnel.passthrough()), held);
                }
                Holder::There(remote) => remote,
                Holder::Gone | Holder::Unresolved | Holder::Nobody => {
                    return ((!first).then_some(false), started.elapsed());
                }
            };
            if let Some(raw) = remote.member.raw {
                let held = if first {
                    Duration::ZERO
                } else {
                    started.elapsed()
                };
                return (Some(raw), held);
            }
            first = false;
            if tokio::time::Instant::now() >= deadline {
                return (Some(false), started.elapsed());
            }
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    /// Whose device serves private alias `key` and whom it lets in: here,
    /// its key and settled `allow-keys=`; on another node, what the
    /// directory recorded of them.
    pub async fn alias_owner(&self, key: &str) -> Result<AliasOwner, NoDevice> {
        match self.route(key, Pick::Oldest).await {
            Holder::Here(tunnel) => {
                let options = tunnel.options_settled().await;
                Ok(AliasOwner {
                    owner: tunnel.owner().map(str::to_string),
                    allow_keys: options.allow_keys.clone(),
                })
            }
            Holder::There(remote) => Ok(AliasOwner {
                owner: remote.member.owner,
                allow_keys: remote.member.allow_keys,
            }),
            Holder::Gone => Err(NoDevice::Moving),
            Holder::Nobody | Holder::Unresolved => Err(NoDevice::Nobody),
        }
    }

    /// Where `key` is held. Alone, the registry's answer now; in a
    /// cluster, the directory's (which waits for an announced name like
    /// [`Registry::route`]).
    pub async fn held(&self, key: &str) -> Held {
        let by_kind = |tunnel: Arc<Tunnel>| match tunnel.kind() {
            Kind::Name => Held::HereByName,
            Kind::Tcp(_) | Kind::Private(_) => Held::HereOtherwise,
        };
        if self.directory().is_none() {
            return self.find(key, Pick::Oldest).map_or(Held::Nowhere, by_kind);
        }
        match self.route(key, Pick::Oldest).await {
            Holder::Here(tunnel) => by_kind(tunnel),
            Holder::There(_) | Holder::Gone => Held::Elsewhere,
            Holder::Unresolved => Held::Unknown,
            Holder::Nobody => Held::Nowhere,
        }
    }

    /// Tunnels on every node (this one's exactly, the others' as their
    /// heartbeats reported them).
    pub fn tunnels_total(&self) -> usize {
        self.directory()
            .map_or_else(|| self.len(), |d| d.tunnels_total())
    }

    /// Tunnels of `ip`'s limit group on every node, at least this node's;
    /// in a cluster from the shared per-IP counts (approximate).
    pub async fn tunnels_of_ip_everywhere(&self, ip: IpAddr) -> usize {
        let here = self.count_for_ip(ip);
        let Some(directory) = self.directory() else {
            return here;
        };
        let everywhere = directory.tunnels_of_ip(ip).await;
        everywhere.map_or(here, |n| (n as usize).max(here))
    }

    /// In a cluster, counts one SSH connection of `ip` and returns the
    /// cluster-wide count of this minute; `None` alone, or when the store
    /// cannot tell.
    pub async fn connections_this_minute(&self, ip: IpAddr) -> Option<u64> {
        self.directory()?.count_connection(ip).await
    }
}
