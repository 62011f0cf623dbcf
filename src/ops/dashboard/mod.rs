//! The live dashboard on the stats listener (loopback peers and loopback
//! `Host` names only, checked by [`super::serve`] before anything here):
//!
//! ```text
//! GET /dashboard             the page
//! GET /dashboard/app.js      its script (polls the JSON endpoints)
//! GET /dashboard/style.css   its style sheet
//! GET /history               the last hour in buckets, see [`history`]
//! ```
//!
//! The page, script and style are embedded in the binary: the server may
//! have no internet, so there is no CDN and no library. Script and style
//! are separate paths so the Content-Security-Policy can forbid every
//! inline script and style without hashes to keep in sync.

pub mod history;

use std::time::SystemTime;

use hyper::header::{HeaderValue, ALLOW};
use hyper::{Method, Response, StatusCode};

use crate::counters::COUNTERS;
use crate::http::{pages, Body};

pub use history::History;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// Only same-origin script, style and fetches; nothing may frame the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Serves a dashboard path; `None` when `path` is not one.
pub fn handle(history: &History, method: &Method, path: &str) -> Option<Response<Body>> {
    let (content_type, body) = match path {
        "/dashboard" | "/dashboard/" => ("text/html; charset=utf-8", PAGE),
        "/dashboard/app.js" => ("text/javascript; charset=utf-8", SCRIPT),
        "/dashboard/style.css" => ("text/css; charset=utf-8", STYLE),
        "/history" => return Some(read_only(method).unwrap_or_else(|| snapshot(history))),
        _ => return None,
    };
    Some(read_only(method).unwrap_or_else(|| asset(content_type, body)))
}

/// A 405 for anything but GET and HEAD.
fn read_only(method: &Method) -> Option<Response<Body>> {
    if method == Method::GET || method == Method::HEAD {
        return None;
    }
    let mut response = pages::json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed here; use GET",
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    Some(response)
}

fn snapshot(history: &History) -> Response<Body> {
    let snapshot = history.snapshot(COUNTERS.totals(), SystemTime::now());
    pages::json(StatusCode::OK, &snapshot)
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", content_type)
        // Always the copy embedded in the running binary, even after an
        // upgrade and restart.
        .header("cache-control", "no-store")
        .header("content-security-policy", CSP)
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header("cross-origin-opener-policy", "same-origin")
        .header("cross-origin-resource-policy", "same-origin")
        .body(pages::full(body))
        .expect("static response parts are valid")
}
