//! The live dashboard on the stats listener (loopback peers and loopback
//! `Host` names only, checked by [`super::serve`] before anything here):
//!
//! ```text
//! GET /dashboard             the page
//! GET /dashboard/app.js      its script (polls the JSON endpoints)
//! GET /dashboard/style.css   its style sheet
//! GET /history               the last hour in buckets, see [`history`]
//! GET /dashboard/login.js    the sign-in form's script
//! POST /dashboard/login      {"token": "…"} → the dashboard's cookie
//! ```
//!
//! Without the admin token (or its cookie) `/dashboard` answers the
//! sign-in form (401): its script posts the token as JSON (the listener's
//! one rule for POST) and reloads once the cookie is set ([`super::auth`]).
//!
//! The page, script and style are embedded in the binary: the server may
//! have no internet, so there is no CDN and no library. Script and style
//! are separate paths so the Content-Security-Policy can forbid every
//! inline script and style without hashes to keep in sync.

pub mod history;

use std::time::SystemTime;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::counters::COUNTERS;
use crate::http::{pages, Body};

pub use history::History;

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");
const SIGN_IN_PAGE: &str = include_str!("login.html");
const SIGN_IN_SCRIPT: &str = include_str!("login.js");
/// Largest sign-in body (a token is a few dozen bytes).
const MAX_SIGN_IN_BODY: usize = 4096;

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
        "/dashboard/login.js" => ("text/javascript; charset=utf-8", SIGN_IN_SCRIPT),
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

/// The sign-in form, for `/dashboard` without the admin token.
pub fn sign_in_page() -> Response<Body> {
    let mut response = asset("text/html; charset=utf-8", SIGN_IN_PAGE);
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

/// `POST /dashboard/login`: `{"token": "…"}` as `application/json`.
pub async fn sign_in(auth: &super::auth::AdminAuth, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::POST {
        let mut response = pages::json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed here; use POST",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let json_body = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    if !json_body {
        return pages::json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the token as Content-Type: application/json",
        );
    }
    #[derive(serde::Deserialize)]
    struct SignIn {
        token: String,
    }
    let body = Limited::new(req.into_body(), MAX_SIGN_IN_BODY)
        .collect()
        .await;
    let parsed = body
        .ok()
        .and_then(|b| serde_json::from_slice::<SignIn>(&b.to_bytes()).ok());
    match parsed {
        Some(SignIn { token }) => auth.sign_in(&token),
        None => pages::json_error(
            StatusCode::BAD_REQUEST,
            "expected JSON like {\"token\": \"…\"}",
        ),
    }
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
