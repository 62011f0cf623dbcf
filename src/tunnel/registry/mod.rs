//! The registry of live tunnels, shared by the SSH server, the HTTPS proxy,
//! the TCP listeners and the operator's endpoints: a `DashMap` from name
//! (or `tcp:PORT`) to the [`Group`] of tunnels serving it, one per client.
//!
//! It is the one place that answers "who holds name N / port P, and how do
//! I reach it": nothing outside this module touches its maps. Its API is
//! small — [`Registry::claim`], [`Registry::release`], lookups
//! ([`Registry::lookup`] and friends, which may wait for an announced
//! name), and listings (`listings.rs`) — and its results are typed. Where
//! a name is served when this node is part of a cluster is
//! [`super::route`]'s question.
//!
//! A name may be served by several clients at once (`--balance`): every
//! lookup picks one by the balancing policy, skipping clients that just
//! failed to open a stream. Raw TCP tunnels live in the same map under the
//! key `tcp:PORT` (a key no Host header can ever name), so limits, the
//! admin API, lifetimes and balancing treat every kind of tunnel alike.
//!
//! Names can also be *announced* before they become tunnels: the SSH
//! handler shows the URL of a connection's first forward while
//! authentication is still running (so `-N` users see it), and holds the
//! name until the forward arrives; lookups of an announced name wait
//! briefly for it.
//!
//! The registry also keeps the table of client connections (`listings.rs`),
//! so limits, lifetimes and the operator can reach a user's terminal (or
//! end their connection) from outside the connection's own task.

mod listings;

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;

use super::directory::Directory;
use super::public::Public;
use super::{Client, ConnId, Kind, Tunnel};
use crate::config::Balance;
use crate::subdomain;

/// How long a lookup of a reserved (announced, not yet forwarded) name
/// waits for its tunnel: `-N` users see the URL in the authentication
/// banner a moment before their `tcpip-forward` arrives.
pub const RESERVED_WAIT: Duration = Duration::from_secs(5);

/// Something that lives exactly as long as a name has clients (a TCP
/// port's listener): dropped with the group.
pub type Holding = Box<dyn Any + Send + Sync>;

/// The clients serving one name, oldest first.
struct Group {
    members: Vec<Arc<Tunnel>>,
    /// Round-robin position.
    turn: AtomicUsize,
    /// Held while the group exists: a TCP port's listener stops when its
    /// last client goes.
    _holding: Option<Holding>,
}

impl Group {
    fn new(first: Arc<Tunnel>, holding: Option<Holding>) -> Self {
        Group {
            members: vec![first],
            turn: AtomicUsize::new(0),
            _holding: holding,
        }
    }

    /// The members in the order they should be tried: the policy's choice
    /// first, clients that recently failed last.
    fn candidates(&self, balance: Balance) -> Vec<Arc<Tunnel>> {
        let n = self.members.len();
        let start = match balance {
            Balance::RoundRobin if n > 1 => self.turn.fetch_add(1, Ordering::Relaxed) % n,
            _ => 0,
        };
        let rotated = (0..n).map(|i| &self.members[(start + i) % n]);
        let (healthy, failing): (Vec<_>, Vec<_>) = rotated.partition(|t| !t.skipped());
        healthy.into_iter().chain(failing).cloned().collect()
    }

    /// The members oldest first, without moving the cursor.
    fn ordered(&self) -> Vec<Arc<Tunnel>> {
        let (healthy, failing): (Vec<_>, Vec<_>) =
            self.members.iter().cloned().partition(|t| !t.skipped());
        healthy.into_iter().chain(failing).collect()
    }

    /// The member `pick` chooses now.
    fn pick(&self, pick: Pick, balance: Balance) -> Option<Arc<Tunnel>> {
        if self.members.len() == 1 || pick == Pick::Oldest {
            return self.members.first().cloned();
        }
        self.candidates(balance).into_iter().next()
    }
}

/// Which client of a name a lookup returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The one the balancing policy picks now (moves the round-robin
    /// cursor): for sending the name something.
    Next,
    /// The oldest, without moving the cursor: for looking at a name's
    /// options (its clients share a key) rather than sending it something.
    Oldest,
}

/// All live tunnels, announced names and client connections.
pub struct Registry {
    tunnels: DashMap<String, Group>,
    balance: Balance,
    /// How users are told where their tunnels are.
    public: Public,
    /// Announced names and how many connections announced each.
    reserved: DashMap<String, u32>,
    clients: DashMap<ConnId, Arc<dyn Client>>,
    /// Woken whenever a tunnel is inserted.
    inserted: tokio::sync::Notify,
    /// The cluster's view of other nodes, when this node is in one.
    directory: OnceLock<Arc<dyn Directory>>,
    /// Round-robin positions over names' cluster-wide members.
    turns: DashMap<String, usize>,
}

/// A name announced to a connection that has not asked for its forward
/// yet. Dropping it withdraws the announcement.
pub struct Reservation {
    name: String,
    registry: Arc<Registry>,
}

impl Reservation {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let dashmap::Entry::Occupied(mut entry) = self.registry.reserved.entry(self.name.clone())
        {
            *entry.get_mut() -= 1;
            if *entry.get() == 0 {
                entry.remove();
            }
        }
    }
}

/// Why a name could not be claimed.
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimError {
    /// Another key's (or an anonymous) connection holds it.
    Taken,
    /// This same connection serves it already (another of its forwards).
    Duplicate,
}

/// A successful claim.
pub struct Claimed {
    pub tunnel: Arc<Tunnel>,
    /// The same key's older tunnel it took the name from (`replace`).
    pub replaced: Option<Arc<Tunnel>>,
    /// The clients of this node already serving the name that it joined
    /// (round-robin or failover); empty when it serves the name alone here.
    pub joined: Vec<Arc<Tunnel>>,
    /// In a cluster: how many clients serve the name now, on every node
    /// (their nodes tell the others).
    pub clients_elsewhere: Option<usize>,
}

/// What the removal of a tunnel left behind.
pub struct Removed {
    /// The tunnel that left.
    pub tunnel: Arc<Tunnel>,
    /// Clients still serving the name.
    pub remaining: Vec<Arc<Tunnel>>,
}

/// How a name's clients are doing, judged together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupActivity {
    /// Time since the most recent traffic of any client.
    pub idle: Duration,
    /// Whether any client has a request or connection open.
    pub busy: bool,
}

impl Registry {
    pub fn new(balance: Balance, public: Public) -> Self {
        Registry {
            tunnels: DashMap::new(),
            balance,
            public,
            reserved: DashMap::new(),
            clients: DashMap::new(),
            inserted: tokio::sync::Notify::new(),
            directory: OnceLock::new(),
            turns: DashMap::new(),
        }
    }

    /// Makes this node part of a cluster: claims and lookups consult
    /// `directory` from now on.
    pub fn set_directory(&self, directory: Arc<dyn Directory>) {
        let _ = self.directory.set(directory);
    }

    /// The cluster's directory, when this node is in one: only the core
    /// asks it ([`super::route`] decides "here or there" for everyone).
    pub(super) fn directory(&self) -> Option<&Arc<dyn Directory>> {
        self.directory.get()
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// The round-robin position over `key`'s cluster-wide members, moved
    /// on by one.
    pub(super) fn next_turn(&self, key: &str) -> usize {
        let mut turn = self.turns.entry(key.to_string()).or_insert(0);
        let start = *turn;
        *turn = turn.wrapping_add(1);
        start
    }

    /// How users are told where their tunnels are.
    pub fn public(&self) -> &Public {
        &self.public
    }

    /// The public address of `tunnel`.
    pub fn url(&self, tunnel: &Tunnel) -> String {
        self.public.tunnel_url(tunnel.key(), tunnel.kind())
    }

    /// Reserves a fresh random name that no tunnel and no announcement
    /// holds.
    pub fn reserve_random(self: &Arc<Self>) -> Reservation {
        loop {
            let name = subdomain::random_name();
            // Reserve first, then check the tunnels: a concurrent claim of
            // the same random name would have had to reserve it first.
            let fresh = match self.reserved.entry(name.clone()) {
                dashmap::Entry::Occupied(_) => false,
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(1);
                    true
                }
            };
            let reservation = fresh.then(|| Reservation {
                name: name.clone(),
                registry: Arc::clone(self),
            });
            if fresh && !self.tunnels.contains_key(&name) {
                if let Some(directory) = self.directory() {
                    directory.announce(&name);
                }
                return reservation.expect("just made");
            }
        }
    }

    /// Announces `name` (a stable or requested name) without checking who
    /// holds it: lookups of it wait for the forward instead of failing.
    pub fn announce(self: &Arc<Self>, name: &str) -> Reservation {
        *self.reserved.entry(name.to_string()).or_insert(0) += 1;
        if let Some(directory) = self.directory() {
            directory.announce(name);
        }
        Reservation {
            name: name.to_string(),
            registry: Arc::clone(self),
        }
    }

    /// Whether `tunnel` may serve a name next to (or instead of) `held`:
    /// the same key, or two keys the keys file (or DNS) both granted the
    /// name.
    fn may_share(tunnel: &Tunnel, held: &Tunnel) -> bool {
        same_key(tunnel, held) || (tunnel.granted() && held.granted())
    }

    /// Makes `tunnel` live under its key. What happens to a name that is
    /// already held depends on `--balance`: with `replace`, a tunnel of the
    /// same key is taken over (removed and returned); with `round-robin` or
    /// `failover`, a client that may share the name joins the others. Held
    /// by anyone else, the claim fails. `holding` lives as long as the name
    /// has clients (and a TCP port is only claimed with its listener).
    pub async fn claim(
        &self,
        tunnel: Tunnel,
        holding: Option<Holding>,
    ) -> Result<Claimed, ClaimError> {
        let Some(directory) = self.directory() else {
            return self.claim_here(Arc::new(tunnel), holding);
        };
        // The cluster's verdict first: it sees every node's clients.
        let tunnel = Arc::new(tunnel);
        let verdict = directory.claim(&tunnel, self.balance).await?;
        let mut claimed = self
            .claim_here(Arc::clone(&tunnel), holding)
            .inspect_err(|_| directory.released(&tunnel))?;
        claimed.clients_elsewhere = Some(verdict.clients);
        Ok(claimed)
    }

    fn claim_here(
        &self,
        tunnel: Arc<Tunnel>,
        holding: Option<Holding>,
    ) -> Result<Claimed, ClaimError> {
        let mut claimed = Claimed {
            tunnel: Arc::clone(&tunnel),
            replaced: None,
            joined: Vec::new(),
            clients_elsewhere: None,
        };
        match self.tunnels.entry(tunnel.key().to_string()) {
            dashmap::Entry::Occupied(mut held) => {
                let group = held.get_mut();
                if group.members.iter().any(|t| t.conn() == tunnel.conn()) {
                    return Err(ClaimError::Duplicate);
                }
                let oldest = group.members.first().expect("groups are never empty");
                match self.balance {
                    Balance::Replace => {
                        if !same_key(&tunnel, oldest) {
                            return Err(ClaimError::Taken);
                        }
                        let old = std::mem::replace(&mut group.members[0], Arc::clone(&tunnel));
                        old.closed.cancel();
                        claimed.replaced = Some(old);
                    }
                    Balance::RoundRobin | Balance::Failover => {
                        if !Self::may_share(&tunnel, oldest) {
                            return Err(ClaimError::Taken);
                        }
                        claimed.joined = group.members.clone();
                        group.members.push(Arc::clone(&tunnel));
                    }
                }
            }
            dashmap::Entry::Vacant(slot) => {
                // A TCP port is only served while someone listens on it:
                // the group it meant to join has just gone.
                if matches!(tunnel.kind(), Kind::Tcp(_)) && holding.is_none() {
                    return Err(ClaimError::Taken);
                }
                slot.insert(Group::new(Arc::clone(&tunnel), holding));
            }
        }
        self.inserted.notify_waiters();
        Ok(claimed)
    }

    /// The client `pick` chooses for `key` now; if the name is only
    /// announced so far, waits up to [`RESERVED_WAIT`] for it to go live.
    pub async fn lookup(&self, key: &str, pick: Pick) -> Option<Arc<Tunnel>> {
        // The usual case, without setting up a wait.
        if let Some(tunnel) = self.find(key, pick) {
            return Some(tunnel);
        }
        let deadline = tokio::time::Instant::now() + RESERVED_WAIT;
        loop {
            let inserted = self.inserted.notified();
            tokio::pin!(inserted);
            inserted.as_mut().enable();
            if let Some(tunnel) = self.find(key, pick) {
                return Some(tunnel);
            }
            if !self.reserved.contains_key(key) {
                return None;
            }
            if tokio::time::timeout_at(deadline, inserted).await.is_err() {
                return None;
            }
        }
    }

    /// The client `pick` chooses for `key` now, without waiting.
    pub fn find(&self, key: &str, pick: Pick) -> Option<Arc<Tunnel>> {
        self.tunnels
            .get(key)
            .and_then(|g| g.pick(pick, self.balance))
    }

    /// Every client serving `key`, in the order they should be tried.
    pub fn candidates(&self, key: &str) -> Vec<Arc<Tunnel>> {
        self.tunnels
            .get(key)
            .map(|g| g.candidates(self.balance))
            .unwrap_or_default()
    }

    /// Another client of `tunnel`'s name to try after `tunnel` failed to
    /// open a stream, if one may stand in for it (same owner).
    pub fn stand_in(&self, tunnel: &Tunnel) -> Option<Arc<Tunnel>> {
        self.members(tunnel.key())
            .into_iter()
            .find(|t| t.conn() != tunnel.conn() && t.owner() == tunnel.owner() && !t.skipped())
    }

    /// Every client serving `key`, oldest first (recently failing ones
    /// last), without moving the round-robin cursor.
    pub fn members(&self, key: &str) -> Vec<Arc<Tunnel>> {
        self.tunnels
            .get(key)
            .map(|g| g.ordered())
            .unwrap_or_default()
    }

    /// How the clients of `key` are doing together: a failover standby is
    /// idle by design, and must not expire while its name is in use.
    pub fn activity(&self, key: &str) -> GroupActivity {
        let idle_busy = self.tunnels.get(key).map(|g| {
            let idle = g.members.iter().map(|t| t.gate().activity.idle_for()).min();
            let busy = g.members.iter().any(|t| t.gate().busy());
            (idle.unwrap_or(Duration::MAX), busy)
        });
        let (idle, busy) = idle_busy.unwrap_or((Duration::MAX, false));
        GroupActivity { idle, busy }
    }

    /// How many clients serve `key`.
    pub fn clients(&self, key: &str) -> usize {
        self.tunnels.get(key).map_or(0, |g| g.members.len())
    }

    /// Removes connection `conn`'s client from `key` (a name may have moved
    /// on to another connection in the meantime). `None` if it was not
    /// there. Closing is [`lifecycle`](super::lifecycle)'s job: it tells
    /// the users.
    pub(super) fn release(&self, key: &str, conn: ConnId) -> Option<Removed> {
        let dashmap::Entry::Occupied(mut entry) = self.tunnels.entry(key.to_string()) else {
            return None;
        };
        let members = &mut entry.get_mut().members;
        let index = members.iter().position(|t| t.conn() == conn)?;
        let tunnel = members.remove(index);
        tunnel.closed.cancel();
        if let Some(directory) = self.directory() {
            directory.released(&tunnel);
        }
        let remaining = members.clone();
        if remaining.is_empty() {
            entry.remove();
        }
        Some(Removed { tunnel, remaining })
    }

    /// Removes every tunnel of connection `conn`.
    pub(super) fn release_conn(&self, conn: ConnId) -> Vec<Removed> {
        let keys: Vec<String> = self
            .tunnels
            .iter()
            .filter(|g| g.members.iter().any(|t| t.conn() == conn))
            .map(|g| g.key().clone())
            .collect();
        keys.iter()
            .filter_map(|key| self.release(key, conn))
            .collect()
    }
}

/// Whether two tunnels belong to the same key (anonymous ones never do).
fn same_key(a: &Tunnel, b: &Tunnel) -> bool {
    a.owner().is_some() && a.owner() == b.owner()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::tunnel::testing::{registry, tunnel, tunnel_of, FakeClient};

    fn conns(tunnels: &[Arc<Tunnel>]) -> Vec<ConnId> {
        tunnels.iter().map(|t| t.conn()).collect()
    }

    #[tokio::test]
    async fn replace_takes_over_for_the_same_key_only() {
        let registry = registry(Balance::Replace);
        let (a, b, c) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
            FakeClient::new(3, "192.0.2.3"),
        );
        let first = registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        assert!(first.replaced.is_none() && first.joined.is_empty());
        let taken = registry.claim(tunnel(&c, "api", Some("OTHER")), None).await;
        assert_eq!(taken.err(), Some(ClaimError::Taken));
        let anonymous = registry.claim(tunnel(&c, "api", None), None).await;
        assert_eq!(anonymous.err(), Some(ClaimError::Taken));
        let second = registry
            .claim(tunnel(&b, "api", Some("K")), None)
            .await
            .unwrap();
        let old = second.replaced.expect("the same key takes the name over");
        assert_eq!(old.conn(), 1);
        // The old tunnel left the registry: its relays end.
        tokio::time::timeout(Duration::from_secs(1), old.closed())
            .await
            .unwrap();
        assert_eq!(conns(&registry.members("api")), [2]);
        assert_eq!(registry.find("api", Pick::Next).unwrap().conn(), 2);
    }

    #[tokio::test]
    async fn one_connection_serves_a_name_once() {
        let registry = registry(Balance::RoundRobin);
        let a = FakeClient::new(1, "192.0.2.1");
        registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        let again = registry.claim(tunnel(&a, "api", Some("K")), None).await;
        assert_eq!(again.err(), Some(ClaimError::Duplicate));
        assert_eq!(registry.clients("api"), 1);
    }

    #[tokio::test]
    async fn round_robin_spreads_and_oldest_stays_put() {
        let registry = registry(Balance::RoundRobin);
        let (a, b) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
        );
        registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        let joined = registry
            .claim(tunnel(&b, "api", Some("K")), None)
            .await
            .unwrap();
        assert_eq!(conns(&joined.joined), [1]);
        let picks: Vec<ConnId> = (0..4)
            .map(|_| registry.find("api", Pick::Next).unwrap().conn())
            .collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        assert_eq!(registry.find("api", Pick::Oldest).unwrap().conn(), 1);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.names_len(), 1);
    }

    #[tokio::test]
    async fn sharing_needs_the_same_key_or_two_grants() {
        let registry = registry(Balance::RoundRobin);
        let (a, b, c) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
            FakeClient::new(3, "192.0.2.3"),
        );
        let key = |name: &str| (name.to_string(), Kind::Name);
        registry
            .claim(tunnel_of(&a, key("api"), Some("A"), true), None)
            .await
            .unwrap();
        let ungranted = registry
            .claim(tunnel_of(&c, key("api"), Some("C"), false), None)
            .await;
        assert_eq!(ungranted.err(), Some(ClaimError::Taken));
        let granted = registry
            .claim(tunnel_of(&b, key("api"), Some("B"), true), None)
            .await;
        assert!(granted.is_ok());
        // A stand-in must be of the same key: B never serves A's requests.
        let first = registry.find("api", Pick::Oldest).unwrap();
        assert!(registry.stand_in(&first).is_none());
    }

    #[tokio::test]
    async fn failover_serves_the_oldest_and_skips_a_failing_one() {
        let registry = registry(Balance::Failover);
        let (a, b) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
        );
        registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        registry
            .claim(tunnel(&b, "api", Some("K")), None)
            .await
            .unwrap();
        assert_eq!(registry.find("api", Pick::Next).unwrap().conn(), 1);
        assert_eq!(registry.find("api", Pick::Next).unwrap().conn(), 1);
        let oldest = registry.find("api", Pick::Next).unwrap();
        assert_eq!(registry.stand_in(&oldest).unwrap().conn(), 2);
        oldest.mark_failing();
        assert_eq!(registry.find("api", Pick::Next).unwrap().conn(), 2);
        assert_eq!(conns(&registry.candidates("api")), [2, 1]);
        assert_eq!(conns(&registry.members("api")), [2, 1]);
        // The failing client is not a stand-in for the one that works.
        let working = registry.find("api", Pick::Next).unwrap();
        assert!(registry.stand_in(&working).is_none());
    }

    #[tokio::test]
    async fn a_failed_open_marks_the_client_and_a_good_one_clears_it() {
        let registry = registry(Balance::Failover);
        let (a, b) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
        );
        registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        registry
            .claim(tunnel(&b, "api", Some("K")), None)
            .await
            .unwrap();
        a.failing.store(true, Ordering::Relaxed);
        let visitor = "198.51.100.7:40000".parse().unwrap();
        let first = registry.find("api", Pick::Next).unwrap();
        assert!(matches!(
            first.open(visitor).await,
            Err(crate::tunnel::OpenError::Refused(_))
        ));
        first.mark_failing();
        assert_eq!(registry.find("api", Pick::Next).unwrap().conn(), 2);
        a.failing.store(false, Ordering::Relaxed);
        assert!(first.open(visitor).await.is_ok());
        assert_eq!(registry.find("api", Pick::Next).unwrap().conn(), 1);
    }

    /// Sets its flag when dropped.
    struct Listener(Arc<AtomicBool>);
    impl Drop for Listener {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_tcp_port_lives_as_long_as_its_group() {
        let registry = registry(Balance::RoundRobin);
        let (a, b) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
        );
        let key = || (crate::tunnel::tcp_key(20001), Kind::Tcp(20001));
        // Joining a group that has just gone: no listener, no claim.
        let orphan = registry
            .claim(tunnel_of(&a, key(), Some("K"), false), None)
            .await;
        assert_eq!(orphan.err(), Some(ClaimError::Taken));
        let stopped = Arc::new(AtomicBool::new(false));
        let holding = Box::new(Listener(Arc::clone(&stopped))) as Holding;
        registry
            .claim(tunnel_of(&a, key(), Some("K"), false), Some(holding))
            .await
            .unwrap();
        registry
            .claim(tunnel_of(&b, key(), Some("K"), false), None)
            .await
            .unwrap();
        let removed = registry.release("tcp:20001", 1).unwrap();
        assert_eq!(conns(&removed.remaining), [2]);
        assert!(
            !stopped.load(Ordering::Relaxed),
            "a client still serves the port"
        );
        assert!(registry.release("tcp:20001", 1).is_none());
        assert!(registry
            .release("tcp:20001", 2)
            .unwrap()
            .remaining
            .is_empty());
        assert!(
            stopped.load(Ordering::Relaxed),
            "the listener stops with the last client"
        );
        assert!(registry.is_empty());
    }

    #[tokio::test]
    async fn release_conn_removes_every_tunnel_of_the_connection() {
        let registry = registry(Balance::Replace);
        let (a, b) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.1"),
        );
        registry.claim(tunnel(&a, "one", None), None).await.unwrap();
        registry.claim(tunnel(&a, "two", None), None).await.unwrap();
        registry
            .claim(tunnel(&b, "three", None), None)
            .await
            .unwrap();
        assert_eq!(registry.count_for_ip("192.0.2.1".parse().unwrap()), 3);
        assert_eq!(registry.unique_ips(), 1);
        assert_eq!(registry.tunnels_of(1).len(), 2);
        let removed = registry.release_conn(1);
        assert_eq!(removed.len(), 2);
        assert_eq!(registry.names(), ["three"]);
        assert!(!registry.conn_has_tunnels(1));
        assert!(registry.conn_has_tunnels(2));
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_wait_for_an_announced_name_only() {
        let registry = registry(Balance::Replace);
        let a = FakeClient::new(1, "192.0.2.1");
        // Unknown and not announced: no wait at all.
        let started = tokio::time::Instant::now();
        assert!(registry.lookup("nobody", Pick::Next).await.is_none());
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Announced: the lookup waits until the forward claims it.
        let reservation = registry.announce("soon");
        let waiting = {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move { registry.lookup("soon", Pick::Next).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        registry
            .claim(tunnel(&a, "soon", None), None)
            .await
            .unwrap();
        drop(reservation);
        assert_eq!(waiting.await.unwrap().unwrap().conn(), 1);
        // Announced but never forwarded: gives up after RESERVED_WAIT.
        let _held = registry.announce("never");
        let started = tokio::time::Instant::now();
        assert!(registry.lookup("never", Pick::Next).await.is_none());
        assert_eq!(started.elapsed(), RESERVED_WAIT);
    }

    #[tokio::test]
    async fn random_reservations_are_unique_and_withdrawn_on_drop() {
        let registry = registry(Balance::Replace);
        let a = registry.reserve_random();
        let b = registry.reserve_random();
        assert_ne!(a.name(), b.name());
        let name = a.name().to_string();
        let again = registry.announce(&name);
        drop(a);
        assert!(
            registry.reserved.contains_key(&name),
            "still announced once"
        );
        drop(again);
        assert!(!registry.reserved.contains_key(&name));
    }
}
