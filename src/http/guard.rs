//! The proxy's guard phase: what decides, for a request that passed the
//! tunnel's own access checks, whether it goes on to the app — and may
//! change its headers on the way (who the visitor is) — plugs in here. The
//! proxy owns the phase and runs its guards in order; it knows nothing of
//! what they check. Sign-in at the edge is one guard.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};

use super::{Body, Scheme};
use crate::request_log::Seen;
use crate::tunnel::options::TunnelOptions;
use crate::tunnel::{BoxFuture, Tunnel};

/// A request at the guard phase.
pub struct Checkpoint<'a> {
    pub tunnel: &'a Arc<Tunnel>,
    /// The connection's settled options.
    pub options: &'a TunnelOptions,
    /// The visitor's real address.
    pub visitor: SocketAddr,
    /// The host the visitor asked for, as it came.
    pub host: &'a str,
    pub scheme: Scheme,
    /// The request as it arrived: a guard that knows who the visitor is
    /// says so here, for the request log and the inspector.
    pub seen: &'a Seen,
}

/// Headers a guard vouches for (who the visitor is), put on the request as
/// an extension: the rewrite removes every visitor's copy of them and adds
/// these (`rewrite::to_origin_request`), so an app can trust them.
#[derive(Clone, Debug, Default)]
pub struct Vouched(pub Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>);

/// A guard's verdict.
pub enum Guarded {
    /// On to the next guard, then the app (headers possibly changed).
    Pass(Request<Incoming>),
    /// burrow answers itself (a sign-in redirect, 401, 403, …).
    Answer(Response<Body>),
}

/// One guard of the phase.
pub trait Guard: Send + Sync + 'static {
    /// Decides about `req`; called for every request of every tunnel, so a
    /// guard with nothing to check for a tunnel must answer `Pass` at once.
    fn guard<'a>(&'a self, at: Checkpoint<'a>, req: Request<Incoming>) -> BoxFuture<'a, Guarded>;
}
