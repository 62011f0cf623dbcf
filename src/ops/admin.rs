//! The admin API, served on the stats listener (loopback peers only):
//!
//! ```text
//! GET    /tunnels          every tunnel, one entry per client
//! DELETE /tunnels/{name}   close a name (or `tcp:PORT`), telling its clients
//! GET    /bans             the IPs blocked now
//! POST   /bans             {"ip": "203.0.113.9", "duration_secs": 600}
//! DELETE /bans/{ip}        lift a block
//! ```
//!
//! (and, with plans, `/usage`: see [`super::usage`]).
//!
//! Answers are JSON; errors are `{"error": "…"}` with a fitting status.
//! `POST` needs `Content-Type: application/json`, which a web page cannot
//! send cross-origin without a preflight that nothing here answers.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use std::sync::{Arc, Weak};

use super::Ops;
use crate::cluster::link::Views;
use crate::http::{pages, Body};
use crate::tunnel::notice::CLOSED_BY_OPERATOR;
use crate::tunnel::{Kind, Tunnel};

/// Largest request body accepted (a ban is a few dozen bytes).
const MAX_BODY: usize = 16 * 1024;

/// Serves one admin request; `None` when the path is not an admin path.
pub async fn handle(ops: &Ops, req: Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = if path == "/tunnels" {
        match method {
            Method::GET => json(StatusCode::OK, &list_tunnels(ops).await),
            _ => not_allowed("GET"),
        }
    } else if path == "/bans" {
        match method {
            Method::GET => json(StatusCode::OK, &list_bans(ops)),
            Method::POST => ban(ops, req).await,
            _ => not_allowed("GET, POST"),
        }
    } else if let Some(name) = path.strip_prefix("/tunnels/") {
        match method {
            Method::DELETE => close(ops, &decode(name)).await,
            _ => not_allowed("DELETE"),
        }
    } else if let Some(ip) = path.strip_prefix("/bans/") {
        match method {
            Method::DELETE => unban(ops, &decode(ip)),
            _ => not_allowed("DELETE"),
        }
    } else {
        return None;
    };
    Some(response)
}

/// One entry of `GET /tunnels`.
#[derive(Serialize)]
struct TunnelInfo {
    name: String,
    kind: &'static str,
    url: String,
    port: Option<u16>,
    client_ip: String,
    fingerprint: Option<String>,
    created: String,
    last_active: String,
    requests: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Requests answered with a 5xx.
    errors: u64,
    open_connections: u32,
    clients: usize,
    /// In a cluster: the node whose client it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// Behind sign-in: who reached the app lately, newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    signed_in: Vec<SignedInInfo>,
}

/// One signed-in visitor in `GET /tunnels`.
#[derive(Serialize)]
struct SignedInInfo {
    user: String,
    requests: u64,
    last_seen: String,
}

/// Every tunnel: this node's, and in a cluster every node's.
async fn list_tunnels(ops: &Ops) -> Vec<serde_json::Value> {
    let local = local_tunnels(ops);
    match &ops.cluster {
        Some(cluster) => super::cluster::all_tunnels(cluster, local).await,
        None => local,
    }
}

/// This node's tunnels, sorted by name and age.
pub fn local_tunnels(ops: &Ops) -> Vec<serde_json::Value> {
    let mut tunnels: Vec<TunnelInfo> = ops
        .registry
        .tunnels()
        .iter()
        .map(|t| describe(ops, t))
        .collect();
    tunnels.sort_by(|a, b| (&a.name, &a.created).cmp(&(&b.name, &b.created)));
    tunnels
        .into_iter()
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect()
}

fn describe(ops: &Ops, tunnel: &Tunnel) -> TunnelInfo {
    let created = tunnel.created_wall();
    let last_active = SystemTime::now()
        .checked_sub(tunnel.gate().activity.idle_for())
        .unwrap_or(created)
        .max(created);
    let traffic = tunnel.traffic();
    TunnelInfo {
        name: tunnel.key().to_string(),
        kind: tunnel.kind_name(),
        url: ops.registry.url(tunnel),
        port: match tunnel.kind() {
            Kind::Tcp(port) | Kind::Private(port) => Some(port),
            Kind::Name => None,
        },
        client_ip: tunnel.client_ip().to_canonical().to_string(),
        fingerprint: tunnel.owner().map(str::to_string),
        created: rfc3339(created),
        last_active: rfc3339(last_active),
        requests: traffic.requests.load(Ordering::Relaxed),
        bytes_in: traffic.bytes_in.load(Ordering::Relaxed),
        bytes_out: traffic.bytes_out.load(Ordering::Relaxed),
        errors: traffic.errors.load(Ordering::Relaxed),
        open_connections: tunnel.gate().open(),
        clients: ops.registry.clients(tunnel.key()),
        node: ops.cluster.as_ref().map(|c| c.node_id().to_string()),
        signed_in: traffic
            .signed_in
            .recent()
            .into_iter()
            .map(|v| SignedInInfo {
                user: v.user,
                requests: v.requests,
                last_seen: rfc3339(v.last_seen),
            })
            .collect(),
    }
}

/// `DELETE /tunnels/{name}`: every client of the name (on every node) is
/// told and loses it.
async fn close(ops: &Ops, name: &str) -> Response<Body> {
    let mut closed = close_here(ops, name);
    if let Some(cluster) = &ops.cluster {
        closed += super::cluster::close_elsewhere(cluster, name).await;
    }
    if closed == 0 {
        return error(StatusCode::NOT_FOUND, &format!("no tunnel named {name:?}"));
    }
    tracing::info!(
        name,
        clients = closed,
        "tunnel closed through the admin API"
    );
    json(
        StatusCode::OK,
        &serde_json::json!({ "name": name, "closed": closed }),
    )
}

/// Closes this node's clients of `name`; how many there were.
pub fn close_here(ops: &Ops, name: &str) -> usize {
    let clients = ops.registry.members(name);
    for tunnel in &clients {
        ops.registry.close(tunnel, CLOSED_BY_OPERATOR);
    }
    clients.len()
}

/// One entry of `GET /bans`.
#[derive(Serialize)]
struct BanInfo {
    ip: String,
    until: String,
    remaining_secs: u64,
    reason: String,
}

fn list_bans(ops: &Ops) -> Vec<BanInfo> {
    let now = std::time::Instant::now();
    ops.ip_guard
        .blocks()
        .into_iter()
        .map(|(ip, block)| BanInfo {
            ip: ip.to_string(),
            until: rfc3339(block.until_wall),
            remaining_secs: block.until.saturating_duration_since(now).as_secs(),
            reason: block.reason,
        })
        .collect()
}

/// The body of `POST /bans`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    ip: String,
    duration_secs: Option<u64>,
    reason: Option<String>,
}

/// `POST /bans`: blocks the IP (its SSH connections and tunnels close at
/// once; its visitors are turned away) for `duration_secs`, by default
/// `--block-duration`.
async fn ban(ops: &Ops, req: Request<Incoming>) -> Response<Body> {
    // A web page can POST text/plain to loopback without a preflight; it
    // cannot send application/json.
    let json_body = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the ban as Content-Type: application/json",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {MAX_BODY} bytes"),
            )
        }
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body could not be read: {err}"),
            )
        }
    };
    let request: BanRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "expected JSON like {{\"ip\": \"203.0.113.9\", \"duration_secs\": 600}}: {err}"
                ),
            )
        }
    };
    let Ok(ip) = request.ip.trim().parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{:?} is not an IP address", request.ip),
        );
    };
    let duration = match request.duration_secs {
        Some(0) => return error(StatusCode::BAD_REQUEST, "duration_secs must be at least 1"),
        Some(secs) => Duration::from_secs(secs.min(10 * 365 * 24 * 3600)),
        None => ops.block_duration,
    };
    let reason = request
        .reason
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "banned by the server operator".into());
    let block = ops.ip_guard.block_for(ip, duration, reason);
    let closed = ops.registry.close_ip(ip, &block);
    json(
        StatusCode::CREATED,
        &serde_json::json!({
            "ip": crate::limits::ip_key(ip).to_string(),
            "until": rfc3339(block.until_wall),
            "duration_secs": duration.as_secs(),
            "closed_connections": closed,
        }),
    )
}

/// `DELETE /bans/{ip}`.
fn unban(ops: &Ops, ip: &str) -> Response<Body> {
    let Ok(parsed) = ip.parse::<IpAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{ip:?} is not an IP address"),
        );
    };
    if !ops.ip_guard.unblock(parsed) {
        return error(StatusCode::NOT_FOUND, &format!("{ip} is not banned"));
    }
    ops.registry.unblocked(parsed);
    tracing::info!(ip = %parsed, "ban lifted through the admin API");
    json(
        StatusCode::OK,
        &serde_json::json!({ "ip": ip, "unbanned": true }),
    )
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Percent-decodes a path segment (`tcp%3A20001`, `2001%3Adb8%3A%3A1`).
/// Only `%` and two hex digits is an escape (`u8::from_str_radix` alone
/// would also take a sign: `%+a` is not a newline).
pub fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    pages::json(status, value)
}

pub(super) fn error(status: StatusCode, message: &str) -> Response<Body> {
    pages::json_error(status, message)
}

pub(super) fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed here; use {allow}"),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// What this node answers other nodes about itself.
pub struct OpsViews(pub Weak<Ops>);

impl Views for OpsViews {
    fn tunnels(&self) -> Vec<u8> {
        let list = self
            .0
            .upgrade()
            .map(|ops| local_tunnels(&ops))
            .unwrap_or_default();
        serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
    }

    fn close(&self, name: &str) -> usize {
        let Some(ops) = self.0.upgrade() else {
            return 0;
        };
        close_here(&ops, &decode(name))
    }
}

/// The views, for the link's server.
pub fn views(ops: &Arc<Ops>) -> Arc<dyn Views> {
    Arc::new(OpsViews(Arc::downgrade(ops)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(decode("tcp%3A20001"), "tcp:20001");
        assert_eq!(decode("2001%3adb8%3A%3A1"), "2001:db8::1");
        assert_eq!(decode("plain-name"), "plain-name");
        assert_eq!(decode("bad%zz"), "bad%zz");
    }

    #[test]
    fn a_percent_with_a_sign_is_not_an_escape() {
        assert_eq!(decode("%+a"), "%+a");
        assert_eq!(decode("a%+0b"), "a%+0b");
        assert_eq!(decode("%2B"), "+");
    }
}
