//! Replay: a captured request sent to the app again (optionally edited),
//! through the same tunnel and the same path a visitor's request takes
//! ([`crate::http::upstream`]: a pooled or fresh `forwarded-tcpip`
//! channel), captured as a new entry marked as a replay of the first.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use hyper::{Method, Request, Uri};

use super::capture::{Capture, Origin};
use super::store::{Entry, Kind};
use super::Inspector;
use crate::http::{pages, upstream};
use crate::tunnel::ConnId;

/// How long a replay may take, response body included.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Changes to the captured request, as the page sends them.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Edits {
    /// Replaces the method when given.
    pub method: Option<String>,
    /// Replaces the path and query when given (must start with `/`).
    pub path: Option<String>,
    /// Replaces every header when given.
    pub headers: Option<Vec<(String, String)>>,
    /// Replaces the body (as UTF-8 text) when given.
    pub body: Option<String>,
}

/// Why a replay could not be sent.
#[derive(Debug)]
pub enum ReplayError {
    /// No such entry for this connection (dropped, or never its own).
    NotFound,
    /// The request cannot be replayed as captured (and why).
    Invalid(String),
    /// The tunnel it went through is gone.
    TunnelGone,
}

/// Replays entry `id` of `conn` with `edits`; returns the new entry's id
/// (an app that fails gives an entry too, with the error).
pub async fn replay(
    inspector: &Inspector,
    conn: ConnId,
    id: u64,
    edits: Edits,
) -> Result<u64, ReplayError> {
    let entry = inspector.store.get(conn, id).ok_or(ReplayError::NotFound)?;
    if entry.kind != Kind::Request {
        return Err(ReplayError::Invalid(
            "a WebSocket cannot be replayed".into(),
        ));
    }
    if entry.request.truncated && edits.body.is_none() {
        return Err(ReplayError::Invalid(
            "the request body was not captured in full (over 64 KiB); edit it to replay".into(),
        ));
    }
    let tunnel = inspector
        .registry
        .tunnels_of(conn)
        .into_iter()
        .find(|t| t.key() == entry.tunnel)
        .ok_or(ReplayError::TunnelGone)?;
    let req = build(&entry, edits)?;
    let origin = Origin {
        conn,
        tunnel: entry.tunnel.clone(),
        visitor: entry.visitor,
        replay_of: Some(id),
        held: std::time::Duration::ZERO,
    };
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_string();
    let mut capture = Capture::new(
        Arc::clone(&inspector.store),
        origin,
        req.method().as_str(),
        &path,
    );
    let kept_as = capture.kept_as();
    let req = capture.request(req);
    let registry = (&*inspector.registry, &inspector.pools);
    let exchange = async {
        match upstream::send(registry, &tunnel, req, entry.visitor, None).await {
            // The connection is not given back: a replay is rare, and
            // dropping it closes the connection once the response is in.
            Ok((response, _lent)) => {
                capture.answered(response.status(), response.headers());
                let response = response.map(|body| body.map_err(Into::into));
                let body = capture.finish(response).into_body();
                // Read to its end so the entry gets its body and is kept.
                let _ = body.collect().await;
            }
            Err(_) => drop(capture),
        }
    };
    let _ = tokio::time::timeout(REPLAY_TIMEOUT, exchange).await;
    Ok(kept_as.get().copied().unwrap_or(0))
}

/// The request to send: the captured one, as it went to the app, with
/// `edits` applied.
fn build(entry: &Entry, edits: Edits) -> Result<Request<crate::http::Body>, ReplayError> {
    let invalid =
        |what: &str, err: &dyn std::fmt::Display| ReplayError::Invalid(format!("{what}: {err}"));
    let method = edits.method.as_deref().unwrap_or(&entry.method);
    let method = Method::from_bytes(method.as_bytes()).map_err(|e| invalid("method", &e))?;
    let path = edits.path.as_deref().unwrap_or(&entry.path);
    if !path.starts_with('/') {
        return Err(ReplayError::Invalid("the path must start with /".into()));
    }
    let uri: Uri = path.parse().map_err(|e| invalid("path", &e))?;
    let body = match edits.body {
        Some(text) => Bytes::from(text),
        None => entry.request.body.clone(),
    };
    let headers = edits
        .headers
        .unwrap_or_else(|| entry.request.headers.clone());
    let mut req = Request::new(pages::full(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid("header name", &e))?;
        // The body may have changed: hyper states its length.
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        let value = HeaderValue::from_str(&value).map_err(|e| invalid("header value", &e))?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}
