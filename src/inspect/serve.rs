//! The inspector's HTTP/1 server, run over the connection's own
//! `direct-tcpip` channel (`-L 4040:localhost:4040`):
//!
//! ```text
//! GET  /                        the page (app.js, style.css beside it)
//! GET  /api/entries?after=N     entries newer than N; `&wait=1` waits
//!                               (bounded) until there is one: the live feed
//! GET  /api/entries/ID          one entry in full; `?reveal=1` unmasks secrets
//! POST /api/entries/ID/replay   sends it again (JSON edits optional)
//! POST /api/clear               forgets the connection's entries
//! ```
//!
//! Defences: only loopback `Host` names are answered (DNS rebinding),
//! POSTs need the page's own `X-Burrow-Inspector` header and a same-origin
//! `Origin` when one is sent (CSRF), every answer says `nosniff`, and the
//! page's CSP allows nothing but its own script, style and fetches.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::replay::{self, Edits, ReplayError};
use super::{view, Inspector};
use crate::http::{pages, Body};
use crate::tunnel::ConnId;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// Only same-origin script, style and fetches; nothing may frame the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The header the page's POSTs carry (a cross-site form cannot set it,
/// and a cross-site fetch with it needs a preflight nobody answers).
const CSRF_HEADER: &str = "x-burrow-inspector";

/// How long a live-feed request waits for a new entry.
const FEED_WAIT: Duration = Duration::from_secs(20);
/// How long a request head may take to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest replay edit accepted.
const MAX_EDIT_BYTES: usize = 256 * 1024;

/// Serves the inspector of connection `conn` on `stream` until it closes;
/// the connection counts as inspected meanwhile.
pub async fn serve<S>(inspector: Arc<Inspector>, conn: ConnId, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let _watching = inspector.watchers.open(conn);
    let service = service_fn(move |req| {
        let inspector = Arc::clone(&inspector);
        async move { Ok::<_, Infallible>(handle(&inspector, conn, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = served {
        tracing::debug!(conn, error = %err, "inspector connection ended");
    }
}

async fn handle(inspector: &Inspector, conn: ConnId, req: Request<Incoming>) -> Response<Body> {
    if !loopback_host(req.headers()) {
        return error(
            StatusCode::FORBIDDEN,
            "the inspector only answers http://localhost:PORT",
        );
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let mut response = match (&method, path.as_str()) {
        (&Method::GET, "/") => asset("text/html; charset=utf-8", PAGE),
        (&Method::GET, "/app.js") => asset("text/javascript; charset=utf-8", SCRIPT),
        (&Method::GET, "/style.css") => asset("text/css; charset=utf-8", STYLE),
        (&Method::GET, "/api/entries") => list(inspector, conn, &query).await,
        (&Method::POST, "/api/clear") => match same_origin(req.headers()) {
            true => {
                inspector.store.clear(conn);
                pages::json(StatusCode::OK, &serde_json::json!({ "cleared": true }))
            }
            false => csrf_refused(),
        },
        (_, path) => match path.strip_prefix("/api/entries/") {
            Some(rest) => entry_route(inspector, conn, req, rest, &query).await,
            None => error(StatusCode::NOT_FOUND, "no such page"),
        },
    };
    let headers = response.headers_mut();
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    response
}

/// `GET /api/entries/ID` and `POST /api/entries/ID/replay`.
async fn entry_route(
    inspector: &Inspector,
    conn: ConnId,
    req: Request<Incoming>,
    rest: &str,
    query: &str,
) -> Response<Body> {
    let (id, action) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::NOT_FOUND, "no such entry");
    };
    match (req.method(), action) {
        (&Method::GET, "") => match inspector.store.get(conn, id) {
            Some(entry) => {
                let reveal = query.split('&').any(|kv| kv == "reveal=1");
                pages::json(StatusCode::OK, &view::detail(&entry, reveal))
            }
            None => error(StatusCode::NOT_FOUND, "no such entry (dropped, or cleared)"),
        },
        (&Method::POST, "replay") if same_origin(req.headers()) => {
            replay_route(inspector, conn, id, req).await
        }
        (&Method::POST, "replay") => csrf_refused(),
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here"),
    }
}

async fn replay_route(
    inspector: &Inspector,
    conn: ConnId,
    id: u64,
    req: Request<Incoming>,
) -> Response<Body> {
    let body = match Limited::new(req.into_body(), MAX_EDIT_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("edits: {err}")),
    };
    let edits = match body.iter().all(u8::is_ascii_whitespace) {
        true => Edits::default(),
        false => match serde_json::from_slice::<Edits>(&body) {
            Ok(edits) => edits,
            Err(err) => return error(StatusCode::BAD_REQUEST, &format!("edits: {err}")),
        },
    };
    match replay::replay(inspector, conn, id, edits).await {
        Ok(new) => pages::json(StatusCode::OK, &serde_json::json!({ "id": new })),
        Err(ReplayError::NotFound) => {
            error(StatusCode::NOT_FOUND, "no such entry (dropped, or cleared)")
        }
        Err(ReplayError::TunnelGone) => error(StatusCode::GONE, "its tunnel is closed"),
        Err(ReplayError::Invalid(why)) => error(StatusCode::UNPROCESSABLE_ENTITY, &why),
    }
}

/// `GET /api/entries?after=N[&wait=1]`: the newer entries, the ids still
/// kept (the page drops the others), and the connection's tunnels.
async fn list(inspector: &Inspector, conn: ConnId, query: &str) -> Response<Body> {
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    };
    let after = param("after").and_then(|v| v.parse().ok()).unwrap_or(0);
    if param("wait") == Some("1") {
        wait_for_entry(inspector, conn, after).await;
    }
    let entries = inspector.store.list(conn, after);
    let mut tunnels: Vec<String> = inspector
        .registry
        .tunnels_of(conn)
        .iter()
        .filter(|t| t.kind_name() == "http")
        .map(|t| t.key().to_string())
        .collect();
    tunnels.sort();
    let body = serde_json::json!({
        "entries": entries.iter().map(|e| view::summary(e)).collect::<Vec<_>>(),
        "kept": inspector.store.kept(conn),
        "tunnels": tunnels,
    });
    pages::json(StatusCode::OK, &body)
}

/// Waits (at most [`FEED_WAIT`]) until `conn` has an entry newer than `after`.
async fn wait_for_entry(inspector: &Inspector, conn: ConnId, after: u64) {
    let mut added = inspector.store.subscribe();
    let wait = async {
        loop {
            if !inspector.store.list(conn, after).is_empty() {
                return;
            }
            if added.changed().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(FEED_WAIT, wait).await;
}

/// Whether `Host` names this machine's loopback (any port: `-L 5000:…`
/// works too). Anything else is a page on some other site that resolved
/// its name to 127.0.0.1. (`pub(crate)` for `crate::fuzzing`.)
pub(crate) fn loopback_host(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let Some((name, port)) = host.and_then(split_host) else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1") && port_ok
}

/// `name[:port]` or `[v6][:port]` as name and port.
fn split_host(host: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = host.strip_prefix('[') {
        let (name, rest) = v6.split_once(']')?;
        let port = match rest {
            "" => None,
            rest => Some(rest.strip_prefix(':')?),
        };
        return Some((name, port));
    }
    Some(match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    })
}

/// A POST from the page itself: it carries the page's header, and its
/// `Origin`, if any, is the inspector's own.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers.get(CSRF_HEADER).is_none() {
        return false;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    let origin = origin.as_bytes();
    origin.strip_prefix(b"http://") == host
}

fn csrf_refused() -> Response<Body> {
    error(StatusCode::FORBIDDEN, "only the inspector page may do this")
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    pages::json_error(status, message)
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("content-security-policy", CSP)
        .header("x-frame-options", "DENY")
        .header("cross-origin-opener-policy", "same-origin")
        .header("cross-origin-resource-policy", "same-origin")
        .body(pages::full(body))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "page"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        headers
    }

    #[test]
    fn only_loopback_hosts_are_answered() {
        for ok in [
            "localhost:4040",
            "127.0.0.1:5000",
            "[::1]:4040",
            "localhost",
            "LOCALHOST:1",
        ] {
            assert!(loopback_host(&with_host(ok)), "{ok}");
        }
        for bad in [
            "evil.example:4040",
            "localhost.evil.example",
            "127.0.0.2:4040",
            "localhost:x",
            "[::2]:1",
        ] {
            assert!(!loopback_host(&with_host(bad)), "{bad}");
        }
    }

    #[test]
    fn posts_need_the_header_and_a_same_origin() {
        let mut headers = with_host("localhost:4040");
        assert!(!same_origin(&headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("1"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:4040"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&headers));
    }
}
