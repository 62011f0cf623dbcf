//! Where what watches requests plugs into the proxy: an [`Observer`] is
//! asked once per request that reaches a tunnel's phases, and what it
//! returns sees the exchange at fixed points of the pipeline (as it
//! arrived, as it goes to the app, the app's answer or burrow's own, the
//! response on its way, a WebSocket's close). The proxy owns these points
//! and knows nothing of who observes; the request inspector is one
//! observer.

use std::net::SocketAddr;

use hyper::{HeaderMap, Request, Response, StatusCode};

use super::Body;
use crate::tunnel::ConnId;

/// A request as it reaches a tunnel's proxy phases.
pub struct Start<'a> {
    /// The client connection whose tunnel it is for.
    pub conn: ConnId,
    /// The tunnel's registry key.
    pub tunnel: &'a str,
    /// The tunnel asked for every request to be observed (`inspect=on`).
    pub always: bool,
    /// Who sent it.
    pub visitor: SocketAddr,
    pub method: &'a str,
    /// Path and query, as the visitor sent them.
    pub path: &'a str,
    /// How long it was held for the tunnel's options before this.
    pub held: std::time::Duration,
}

/// Decides, per request, whether it is observed.
pub trait Observer: Send + Sync + 'static {
    /// An observation of the request `start` describes, or `None`; called
    /// for every request, so `None` must cost next to nothing.
    fn observe(&self, start: Start<'_>) -> Option<Box<dyn Observation>>;
}

/// One exchange being observed, in pipeline order. Dropped before
/// [`Observation::finish`] or [`Observation::answered_here`], the exchange
/// failed.
pub trait Observation: Send {
    /// The request's headers as the visitor sent them (what shows when
    /// burrow answers it itself).
    fn arrived(&mut self, headers: &HeaderMap);
    /// The visitor signed in as `user` (a guard said so).
    fn identified(&mut self, user: &str);
    /// The request as it goes to the app; its body may be wrapped (never
    /// held back).
    fn request(&mut self, req: Request<Body>) -> Request<Body>;
    /// The app's response head.
    fn answered(&mut self, status: StatusCode, headers: &HeaderMap);
    /// burrow answered the request itself (a gate or a limit said no).
    fn answered_here(self: Box<Self>, response: Response<Body>) -> Response<Body>;
    /// For an exchange that became a WebSocket: what to call when it
    /// closes.
    fn websocket(&self) -> Option<WebSocketEnd>;
    /// The response on its way to the visitor; its body may be wrapped,
    /// and the observation ends with it.
    fn finish(self: Box<Self>, response: Response<Body>) -> Response<Body>;
}

/// Called once when an observed WebSocket closes: bytes from the visitor,
/// bytes to them, and why, when a limit cut it.
pub type WebSocketEnd = Box<dyn FnOnce(u64, u64, Option<String>) + Send>;
