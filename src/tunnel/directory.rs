//! The seam a cluster plugs into: who holds names on *other* nodes, and
//! how to reach them. On a single node there is no directory and the
//! registry is the whole truth; with one (`cluster::Directory`, on Redis)
//! a claim is checked cluster-wide first, and a lookup may answer that the
//! name is held elsewhere ([`super::route::Holder::There`]), which the
//! edge then forwards to that node. Nothing above `tunnel/` knows how the
//! directory works, or asks it: [`super::route`] does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{Request, Response};

use super::{BoxFuture, ByteStream, ClaimError, ConnId, OpenError, Tunnel};
use crate::config::Balance;
use crate::limits::ssh::Block;

/// One client of a name, wherever it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node it is connected to.
    pub node: Arc<str>,
    /// Its connection on that node.
    pub conn: ConnId,
    /// When it claimed the name (unix ms, the claiming node's clock): the
    /// oldest serves first, the newest wins a takeover.
    pub claimed_ms: u64,
    /// The fingerprint of its key, if it showed one.
    pub owner: Option<String>,
    /// Granted by the keys file or proven in DNS.
    pub granted: bool,
    /// Whether it takes raw bytes (a TCP port, or `tls=passthrough`);
    /// `None` until its options are final.
    pub raw: Option<bool>,
    /// A private alias's `allow-keys=` (empty until its options are final).
    pub allow_keys: Vec<String>,
}

/// A name's clients across the cluster, as the directory knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Members {
    /// Every live client, oldest first (empty: nobody holds it).
    Known(Vec<Member>),
    /// Held only by nodes that are gone (dead, or unreachable): its
    /// clients are reconnecting elsewhere.
    Orphaned,
    /// The directory cannot tell now (the shared store is down and the
    /// name is not cached): only this node's own tunnels can be served.
    Unknown,
}

/// What a stream to another node carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// HTTP/1.1 requests (over TLS terminated here, or plain HTTP), for
    /// the other node to serve as its own; `https` is the visitor's scheme.
    Http { https: bool },
    /// Raw bytes (a TCP tunnel, or TLS passed through) for the tunnel.
    Raw,
}

/// Who a forwarded stream is for, as the other node needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    pub carry: Carry,
    /// The visitor's real address.
    pub visitor: SocketAddr,
    /// The address the visitor connected to (a PROXY header's destination).
    pub local: SocketAddr,
}

/// The body of an HTTP request or response carried to another node (the
/// same type as the edge's `http::Body`).
pub type LinkBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What became of an HTTP request sent to another node.
pub enum Sent {
    /// That node's answer (its body read through a spool here).
    Answered(Response<LinkBody>),
    /// That node only takes streams (an older version): the request, back
    /// untouched, to be carried on a stream instead.
    Unsupported(Request<LinkBody>),
}

/// A cluster-wide claim that went through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// A client on another node lost the name to this one (it is told by
    /// its own node).
    pub replaced_elsewhere: bool,
    /// How many clients serve the name now, cluster-wide.
    pub clients: usize,
}

/// The cluster's view of names held elsewhere.
pub trait Directory: Send + Sync + 'static {
    /// This node's id.
    fn node(&self) -> &str;

    /// Checks and records `tunnel`'s claim of its key cluster-wide, under
    /// `balance`; called before the local claim. The same rules as on one
    /// node: [`ClaimError::Taken`] when another key holds it anywhere.
    /// Once the tunnel's options are final, the directory records whether
    /// it takes raw bytes.
    fn claim<'a>(
        &'a self,
        tunnel: &'a Arc<Tunnel>,
        balance: Balance,
    ) -> BoxFuture<'a, Result<Verdict, ClaimError>>;

    /// `tunnel` left this node (or its local claim failed after all).
    fn released(&self, tunnel: &Tunnel);

    /// `name` is announced to a connection of this node (its forward comes
    /// in a moment): other nodes wait for it instead of answering 404.
    fn announce(&self, name: &str);

    /// The clients of `key` across the cluster, oldest first (cached; the
    /// store is asked on a miss).
    fn members<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Members>;

    /// Opens a stream for `key` to `member`'s node, which serves it as
    /// `forwarded` says; bounded by the link's own timeouts.
    fn open<'a>(
        &'a self,
        key: &'a str,
        member: &'a Member,
        forwarded: Forwarded,
    ) -> BoxFuture<'a, Result<ByteStream, OpenError>>;

    /// Sends one HTTP request (no upgrade) for `key` to `member`'s node as
    /// a request of its own on the link, which that node serves as
    /// `forwarded` says; the request's headers are the visitor's, HTTP/2
    /// form (the host in the URI).
    fn send<'a>(
        &'a self,
        key: &'a str,
        member: &'a Member,
        forwarded: Forwarded,
        request: Request<LinkBody>,
    ) -> BoxFuture<'a, Result<Sent, OpenError>>;

    /// Opening a stream to `node` failed: pass its clients over for a while.
    fn node_failed(&self, node: &str);

    /// Whether `node` failed recently (its clients are tried last).
    fn node_failing(&self, node: &str) -> bool;

    /// `ip` was blocked on this node: every node blocks it.
    fn blocked(&self, ip: IpAddr, block: &Block);

    /// `ip`'s block was lifted on this node: every node lifts it.
    fn unblocked(&self, ip: IpAddr);

    /// Counts one SSH connection of `ip`; the cluster-wide count of this
    /// minute, or `None` when the store cannot tell.
    fn count_connection(&self, ip: IpAddr) -> BoxFuture<'_, Option<u64>>;

    /// Tunnels of `ip` (its limit group) on every node, or `None` when the
    /// store cannot tell.
    fn tunnels_of_ip(&self, ip: IpAddr) -> BoxFuture<'_, Option<u64>>;

    /// Tunnels on every live node, as their heartbeats reported them.
    fn tunnels_total(&self) -> usize;
}
