//! The request inspector (`ssh -R 80:localhost:3000 -L 4040:localhost:4040
//! HOST`, then http://localhost:4040): the traffic of the connection's own
//! tunnels, live, with details and replay. The SSH login is the
//! authentication: burrow answers that `direct-tcpip` channel itself and
//! only ever shows the connection its own tunnels' requests.
//!
//! - [`capture`]: the hook the HTTP proxy calls (free while no inspector
//!   of that connection is open) and the body tee;
//! - [`store`]: the bounded captured entries (per tunnel and overall);
//! - [`serve`]: the small HTTP/1 server on the SSH channel (page, JSON,
//!   live feed, replay, clear); [`view`] renders entries as JSON;
//! - [`replay`]: sends a captured request to the app again, through the
//!   tunnel like a visitor's.

pub mod capture;
pub mod replay;
pub mod serve;
pub mod store;
pub mod view;

use std::sync::Arc;

use self::capture::{Capture, Origin, Watchers};
use self::store::{Caps, Store};
use crate::config::InspectArgs;
use crate::http::observe::{Observation, Observer, Start};
use crate::http::pool::Pools;
use crate::tunnel::{ConnId, Registry};

/// The port the inspector answers on: `-L PORT:localhost:4040`.
pub const INSPECTOR_PORT: u32 = 4040;

/// Whether a `direct-tcpip` request names the inspector.
pub fn is_inspector(host: &str, port: u32) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    port == INSPECTOR_PORT && matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// What the inspector works with: its entries, who watches, and the way
/// to a tunnel's app for replays.
pub struct Inspector {
    pub store: Arc<Store>,
    pub watchers: Arc<Watchers>,
    /// The tunnels, to find the one a replay goes through.
    pub registry: Arc<Registry>,
    /// The apps' keep-alive connections, which replays share with visitors.
    pub pools: Pools,
}

impl Inspector {
    pub fn new(args: &InspectArgs, registry: Arc<Registry>, pools: Pools) -> Inspector {
        Inspector {
            store: Arc::new(Store::new(Caps::new(args))),
            watchers: Arc::default(),
            registry,
            pools,
        }
    }

    /// A capture for a request through `tunnel` of `conn`, if that
    /// connection has an inspector open or `always` (its `inspect=on`
    /// option); else nothing, at the cost of one atomic load while no
    /// inspector is open anywhere.
    #[inline]
    pub fn capture(&self, start: Start<'_>) -> Option<Capture> {
        if !start.always && !self.watchers.watching(start.conn) {
            return None;
        }
        let origin = Origin {
            conn: start.conn,
            tunnel: start.tunnel.to_string(),
            visitor: start.visitor,
            replay_of: None,
            held: start.held,
        };
        let store = Arc::clone(&self.store);
        Some(Capture::new(store, origin, start.method, start.path))
    }

    /// The connection ended: its entries go.
    pub fn forget(&self, conn: ConnId) {
        self.store.clear(conn);
    }
}

/// The inspector watches the proxy through its observation points.
impl Observer for Inspector {
    #[inline]
    fn observe(&self, start: Start<'_>) -> Option<Box<dyn Observation>> {
        Some(Box::new(self.capture(start)?))
    }
}
