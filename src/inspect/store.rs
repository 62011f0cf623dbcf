//! The captured requests of every inspected connection, in memory and
//! bounded: each tunnel keeps at most so many entries and so many bytes,
//! and all of them together at most so many bytes; the oldest entry goes
//! first (the tunnel's own for a tunnel cap, anyone's for the global one).
//!
//! Entries are grouped by SSH connection: an inspector only ever reads
//! its own connection's entries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::config::InspectArgs;
use crate::tunnel::ConnId;

/// What a body capture keeps: the first this many bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Bookkeeping an entry costs beyond its headers and bodies (so a flood
/// of empty requests still counts against the byte caps).
const ENTRY_OVERHEAD: u64 = 256;

/// The caps, from `--inspect-*`.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// Entries kept per tunnel.
    pub per_tunnel: usize,
    /// Bytes kept per tunnel.
    pub per_tunnel_bytes: u64,
    /// Bytes kept by every tunnel together.
    pub total_bytes: u64,
}

impl Caps {
    pub fn new(args: &InspectArgs) -> Caps {
        Caps {
            per_tunnel: args.inspect_requests_per_tunnel.max(1),
            per_tunnel_bytes: args.inspect_bytes_per_tunnel,
            total_bytes: args.inspect_bytes_total,
        }
    }
}

/// What an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A request and its response.
    Request,
    /// A WebSocket (or other upgrade) the app accepted.
    WebsocketOpen,
    /// That WebSocket ended.
    WebsocketClose,
}

/// One side of an exchange: headers as they went to (or came from) the
/// app, and the start of the body.
#[derive(Debug, Clone, Default)]
pub struct Part {
    /// Header names and values, in order (values not UTF-8 shown lossily).
    pub headers: Vec<(String, String)>,
    /// The first [`BODY_LIMIT`] bytes of the body (or none, when the caps
    /// could not hold them).
    pub body: Bytes,
    /// The whole body's size, as it went by.
    pub size: u64,
    /// `body` is not the whole body.
    pub truncated: bool,
}

impl Part {
    fn cost(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        (headers + self.body.len()) as u64
    }

    fn drop_body(&mut self) {
        if !self.body.is_empty() {
            self.body = Bytes::new();
            self.truncated = true;
        }
    }
}

/// One captured exchange.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Set by the store: increasing, so newer entries have larger ids.
    pub id: u64,
    /// The connection whose tunnel it went through: whose inspector sees it.
    pub conn: ConnId,
    /// The tunnel's registry key (its name).
    pub tunnel: String,
    /// A request, or a WebSocket's open or close.
    pub kind: Kind,
    /// The entry this one replayed, for a replay.
    pub replay_of: Option<u64>,
    /// The request method, as the visitor sent it.
    pub method: String,
    /// Path and query, as the visitor sent them.
    pub path: String,
    /// The app's status; `None` when it never answered.
    pub status: Option<u16>,
    /// Why there is no answer, or what cut it.
    pub error: Option<String>,
    /// burrow answered itself (an access rule, the browser warning, a
    /// limit): the request never reached the app.
    pub by_burrow: bool,
    /// Who sent it (the visitor's address as the proxy saw it).
    pub visitor: SocketAddr,
    /// When it arrived (unix ms).
    pub at_ms: u64,
    /// How long it took to the end of the response (or of the WebSocket),
    /// its wait for the tunnel's options included.
    pub duration_ms: u64,
    /// How long it was held until the tunnel's options were known (0: not
    /// at all).
    pub held_ms: u64,
    /// Who the visitor signed in as, on a tunnel that requires sign-in.
    pub user: Option<String>,
    /// The request as it went to the app.
    pub request: Part,
    /// The response as the app sent it.
    pub response: Part,
}

impl Entry {
    /// The bytes it holds, for the caps.
    pub fn cost(&self) -> u64 {
        let text = self.tunnel.len() + self.method.len() + self.path.len();
        ENTRY_OVERHEAD + text as u64 + self.request.cost() + self.response.cost()
    }
}

/// One tunnel's entries, oldest first.
#[derive(Default)]
struct Ring {
    /// Its entries' ids, oldest first: the front goes at a cap.
    ids: VecDeque<u64>,
    /// What its entries cost together, for the per-tunnel byte cap.
    bytes: u64,
}

#[derive(Default)]
struct Inner {
    /// The last id given out.
    next_id: u64,
    /// Every entry by id: the first is the oldest anywhere.
    entries: BTreeMap<u64, Arc<Entry>>,
    /// Each connection's tunnels' rings.
    conns: HashMap<ConnId, HashMap<String, Ring>>,
    /// Bytes of every entry.
    total: u64,
}

impl Inner {
    /// Removes entry `id` from the map and its ring.
    fn remove(&mut self, id: u64) {
        let Some(entry) = self.entries.remove(&id) else {
            return;
        };
        let cost = entry.cost();
        self.total -= cost;
        let Some(rings) = self.conns.get_mut(&entry.conn) else {
            return;
        };
        if let Some(ring) = rings.get_mut(&entry.tunnel) {
            match ring.ids.front() {
                Some(&oldest) if oldest == id => drop(ring.ids.pop_front()),
                _ => ring.ids.retain(|i| *i != id),
            }
            ring.bytes -= cost;
            if ring.ids.is_empty() {
                rings.remove(&entry.tunnel);
            }
        }
        if rings.is_empty() {
            self.conns.remove(&entry.conn);
        }
    }

    /// Drops a tunnel's oldest entries until one of `cost` fits its caps.
    fn make_room_in_tunnel(&mut self, conn: ConnId, tunnel: &str, cost: u64, caps: &Caps) {
        loop {
            let ring = self.conns.get(&conn).and_then(|r| r.get(tunnel));
            let Some(ring) = ring else { return };
            let full =
                ring.ids.len() >= caps.per_tunnel || ring.bytes + cost > caps.per_tunnel_bytes;
            match (full, ring.ids.front()) {
                (true, Some(&oldest)) => self.remove(oldest),
                _ => return,
            }
        }
    }

    /// Drops the oldest entries anywhere until `cost` more fits in total.
    fn make_room_overall(&mut self, cost: u64, caps: &Caps) {
        while self.total + cost > caps.total_bytes {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                return;
            };
            self.remove(oldest);
        }
    }
}

/// The captured entries of every connection.
pub struct Store {
    /// `--inspect-*`.
    caps: Caps,
    /// The entries and their rings.
    inner: Mutex<Inner>,
    /// The id of the newest entry (0: none yet), for live feeds to wait on.
    newest: tokio::sync::watch::Sender<u64>,
}

impl Store {
    pub fn new(caps: Caps) -> Store {
        Store {
            caps,
            inner: Mutex::default(),
            newest: tokio::sync::watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `entry` (the oldest ones make room), returning its id. Bodies
    /// that alone exceed a cap are not kept (their sizes are).
    pub fn add(&self, mut entry: Entry) -> u64 {
        let caps = &self.caps;
        if entry.cost() > caps.per_tunnel_bytes.min(caps.total_bytes) {
            entry.request.drop_body();
            entry.response.drop_body();
        }
        let cost = entry.cost();
        let id = {
            let mut inner = self.lock();
            inner.make_room_in_tunnel(entry.conn, &entry.tunnel, cost, caps);
            inner.make_room_overall(cost, caps);
            inner.next_id += 1;
            entry.id = inner.next_id;
            let ring = inner.conns.entry(entry.conn).or_default();
            let ring = ring.entry(entry.tunnel.clone()).or_default();
            ring.ids.push_back(entry.id);
            ring.bytes += cost;
            inner.total += cost;
            let id = entry.id;
            inner.entries.insert(id, Arc::new(entry));
            id
        };
        self.newest.send_replace(id);
        id
    }

    /// `conn`'s entries newer than `after`, oldest first.
    pub fn list(&self, conn: ConnId, after: u64) -> Vec<Arc<Entry>> {
        let inner = self.lock();
        let Some(rings) = inner.conns.get(&conn) else {
            return Vec::new();
        };
        let mut ids: Vec<u64> = rings
            .values()
            .flat_map(|ring| ring.ids.iter().copied())
            .filter(|id| *id > after)
            .collect();
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| inner.entries.get(id).cloned())
            .collect()
    }

    /// The ids of `conn`'s entries still kept (the others were dropped).
    pub fn kept(&self, conn: ConnId) -> Vec<u64> {
        self.list(conn, 0).iter().map(|e| e.id).collect()
    }

    /// Entry `id`, if it is `conn`'s and still kept.
    pub fn get(&self, conn: ConnId, id: u64) -> Option<Arc<Entry>> {
        let inner = self.lock();
        inner.entries.get(&id).filter(|e| e.conn == conn).cloned()
    }

    /// Forgets every entry of `conn`.
    pub fn clear(&self, conn: ConnId) {
        let mut inner = self.lock();
        let ids: Vec<u64> = inner
            .conns
            .get(&conn)
            .map(|rings| rings.values().flat_map(|r| r.ids.iter().copied()).collect())
            .unwrap_or_default();
        for id in ids {
            inner.remove(id);
        }
    }

    /// Bytes held by every entry now.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Changes whenever an entry is added (its value: the newest id).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conn: ConnId, tunnel: &str, body: usize) -> Entry {
        Entry {
            id: 0,
            conn,
            tunnel: tunnel.into(),
            kind: Kind::Request,
            replay_of: None,
            method: "GET".into(),
            path: "/".into(),
            status: Some(200),
            error: None,
            visitor: "127.0.0.1:1".parse().unwrap(),
            at_ms: 0,
            duration_ms: 0,
            held_ms: 0,
            user: None,
            by_burrow: false,
            request: Part::default(),
            response: Part {
                body: Bytes::from(vec![b'x'; body]),
                size: body as u64,
                ..Part::default()
            },
        }
    }

    fn caps(per_tunnel: usize, per_tunnel_bytes: u64, total_bytes: u64) -> Caps {
        Caps {
            per_tunnel,
            per_tunnel_bytes,
            total_bytes,
        }
    }

    #[test]
    fn a_tunnel_keeps_its_newest_entries_by_count() {
        let store = Store::new(caps(3, 1 << 20, 1 << 20));
        let ids: Vec<u64> = (0..5).map(|_| store.add(entry(1, "a", 10))).collect();
        assert_eq!(store.kept(1), ids[2..].to_vec());
    }

    #[test]
    fn a_tunnel_keeps_its_newest_entries_by_bytes() {
        let one = entry(1, "a", 1000).cost();
        let store = Store::new(caps(100, one * 2, 1 << 20));
        let ids: Vec<u64> = (0..4).map(|_| store.add(entry(1, "a", 1000))).collect();
        assert_eq!(store.kept(1), ids[2..].to_vec());
        assert_eq!(store.total_bytes(), one * 2);
    }

    #[test]
    fn the_global_cap_drops_the_oldest_anywhere() {
        let one = entry(1, "a", 1000).cost();
        let store = Store::new(caps(100, 1 << 20, one * 3));
        let a1 = store.add(entry(1, "a", 1000));
        let b1 = store.add(entry(2, "b", 1000));
        let a2 = store.add(entry(1, "a", 1000));
        let b2 = store.add(entry(2, "b", 1000));
        assert_eq!(store.kept(1), vec![a2]);
        assert_eq!(store.kept(2), vec![b1, b2]);
        assert!(store.get(1, a1).is_none());
    }

    #[test]
    fn connections_are_apart_and_clear_forgets() {
        let store = Store::new(caps(10, 1 << 20, 1 << 20));
        let mine = store.add(entry(1, "a", 10));
        let theirs = store.add(entry(2, "b", 10));
        assert!(store.get(1, theirs).is_none());
        assert_eq!(store.list(1, 0).len(), 1);
        assert_eq!(store.list(1, mine).len(), 0);
        store.clear(1);
        assert!(store.kept(1).is_empty());
        assert_eq!(store.kept(2), vec![theirs]);
    }

    #[test]
    fn an_entry_too_large_for_the_caps_keeps_no_body() {
        let store = Store::new(caps(10, 2000, 1 << 20));
        let id = store.add(entry(1, "a", 5000));
        let kept = store.get(1, id).unwrap();
        assert!(kept.response.body.is_empty() && kept.response.truncated);
        assert_eq!(kept.response.size, 5000);
    }
}
