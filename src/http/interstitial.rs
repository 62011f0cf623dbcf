//! The browser warning page (anti-phishing interstitial).
//!
//! A browser's first navigation to a tunnel gets burrow's own page saying
//! that this is a tunnel to someone's computer, with a Continue button.
//! Continue posts to [`CONTINUE_PATH`], which sets
//! `burrow_warned_<subdomain>=1` for that host (HttpOnly, Secure over HTTPS,
//! SameSite=Lax, 24 h) and redirects back to the original path.
//!
//! The Continue form is protected by a double-submit token: the warning page
//! sets a random `burrow_csrf_<subdomain>` cookie (SameSite=Strict) and puts
//! the same value in the form; the POST must carry both, and its `Origin`
//! and `Sec-Fetch-Site` (when sent) must be this tunnel. So another site
//! cannot click Continue on a visitor's behalf, and a link cannot skip it.
//! The redirect target is only ever a path on the same host.
//!
//! Only browser navigations are warned: non-browser clients (curl, SDKs,
//! webhooks), `fetch()` calls and requests with a `burrow-skip-warning`
//! header pass straight through.

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::cookies::{cookie, CSRF_PREFIX, WARNED_PREFIX};
use super::form::{self, see_other};
use super::pages::{self, escape, Page};
use super::{Body, Scheme};

/// Where the Continue button posts. Unlikely to collide with an app route.
pub const CONTINUE_PATH: &str = "/__burrow/continue";
const SKIP_HEADER: &str = "burrow-skip-warning";
/// How long a Continue lasts.
const WARNED_MAX_AGE: u64 = 24 * 3600;

/// Cookies set over HTTPS are `Secure`; over plain HTTP (`--http-mode
/// proxy`) a browser would refuse to store them.
fn secure(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Https => "; Secure",
        Scheme::Http => "",
    }
}

fn warned_cookie(name: &str) -> String {
    format!("{WARNED_PREFIX}{name}")
}

fn csrf_cookie(name: &str) -> String {
    format!("{CSRF_PREFIX}{name}")
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A browser asking for a page (not an API call, not a script).
fn is_browser_navigation(req: &Request<Incoming>) -> bool {
    let agent = header_str(req.headers(), header::USER_AGENT);
    let browser = [
        "Mozilla", "Chrome", "Safari", "Firefox", "Edg", "Opera", "OPR",
    ]
    .iter()
    .any(|marker| agent.contains(marker));
    browser && form::is_navigation(req)
}

/// What to do with a request before it is proxied.
pub enum Gate {
    /// Show this response instead of the app (warning page or Continue).
    Answer(Response<Body>),
    /// Let the request through.
    Pass(Request<Incoming>),
}

/// Applies the interstitial to a request for tunnel `name` at `host`.
pub async fn gate(req: Request<Incoming>, name: &str, host: &str, scheme: Scheme) -> Gate {
    if req.uri().path() == CONTINUE_PATH {
        return Gate::Answer(if req.method() == Method::POST {
            continue_(req, name, host, scheme).await
        } else {
            // Someone typed or reloaded the form's address: start over.
            see_other("/")
        });
    }
    let warned = cookie(req.headers(), &warned_cookie(name)) == Some("1");
    if warned || req.headers().contains_key(SKIP_HEADER) || !is_browser_navigation(&req) {
        return Gate::Pass(req);
    }
    Gate::Answer(warning(&req, name, host, scheme))
}

fn warning(req: &Request<Incoming>, name: &str, host: &str, scheme: Scheme) -> Response<Body> {
    // Reuse a token this browser already holds, so two warning tabs of the
    // same tunnel do not invalidate each other.
    let token = cookie(req.headers(), &csrf_cookie(name))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(random_token, str::to_string);
    let next = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Tunnel warning: {host}</title><style>{STYLE}</style></head>\n<body><main>\
<h1>You are about to visit a tunnel</h1>\
<p class=\"name\">{name}</p>\
<p><strong>{host}</strong> is a tunnel to someone's own computer, opened with burrow. \
Anyone can open one, and this server does not know who is behind it.</p>\
<p class=\"warn\">Do not enter passwords, payment details or other personal information \
unless you know and trust the person who sent you this link.</p>\
<form method=\"post\" action=\"{CONTINUE_PATH}\">\
<input type=\"hidden\" id=\"next\" name=\"next\" value=\"{next}\">\
<input type=\"hidden\" name=\"token\" value=\"{token}\">\
<button id=\"continue\" type=\"submit\">Continue to {name}</button></form>\
<script>{KEEP_FRAGMENT}</script>\
<footer>burrow</footer></main></body></html>\n",
        host = escape(host),
        name = escape(name),
        next = escape(next),
    );
    let mut response = Response::new(pages::full(html));
    response
        .extensions_mut()
        .insert(crate::request_log::Answered(Some(
            "browser warning page shown: the visitor has not clicked through yet".into(),
        )));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    pages::set_page_headers(headers);
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src '{}'; \
         form-action 'self'; frame-ancestors 'none'",
        keep_fragment_hash()
    );
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{}={token}; Path=/; Max-Age=3600; HttpOnly{}; SameSite=Strict",
        csrf_cookie(name),
        secure(scheme)
    )) {
        headers.append(header::SET_COOKIE, cookie);
    }
    response
}

async fn continue_(
    req: Request<Incoming>,
    name: &str,
    host: &str,
    scheme: Scheme,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let refuse = |why: &str| {
        Page::new(StatusCode::FORBIDDEN, "Not continued")
            .text(why.to_string())
            .text("Go back to the tunnel's address and load the warning page again.")
            .render(&parts.headers)
    };
    if !form::same_origin(&parts.headers, host, scheme) {
        return refuse("The Continue button must be clicked on the warning page of this tunnel.");
    }
    let Some(fields) = form::read_form(body).await else {
        return refuse("The form could not be read.");
    };
    let mut next = String::from("/");
    let mut token = String::new();
    for (key, value) in fields {
        match key.as_str() {
            "next" => next = value,
            "token" => token = value,
            _ => {}
        }
    }
    let expected = cookie(&parts.headers, &csrf_cookie(name)).unwrap_or("");
    if token.is_empty() || !bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
        return refuse("The warning page expired or was not shown by this tunnel.");
    }

    let mut response = see_other(form::safe_path(&next, &[CONTINUE_PATH]));
    let headers = response.headers_mut();
    for cookie in [
        format!(
            "{}=1; Path=/; Max-Age={WARNED_MAX_AGE}; HttpOnly{}; SameSite=Lax",
            warned_cookie(name),
            secure(scheme)
        ),
        format!(
            "{}=; Path=/; Max-Age=0; HttpOnly{}; SameSite=Strict",
            csrf_cookie(name),
            secure(scheme)
        ),
    ] {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Appends the page's `#fragment` (which browsers never send) to the form's
/// `next`, so Continue lands exactly where the link pointed.
const KEEP_FRAGMENT: &str = "document.getElementById('next').value += location.hash;";

/// The CSP source allowing exactly [`KEEP_FRAGMENT`].
fn keep_fragment_hash() -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(KEEP_FRAGMENT.as_bytes());
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn random_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#fdf6e9;color:#1d2330}\
main{max-width:36rem;margin:10vh auto;padding:2rem;background:#fff;border-radius:8px;\
border-top:6px solid #d98b00;box-shadow:0 1px 4px #0002}h1{font-size:1.4rem;margin-top:0}\
.name{font:600 1.1rem ui-monospace,monospace;background:#f3f4f6;padding:.4rem .6rem;border-radius:4px}\
.warn{font-weight:600}button{font-size:1rem;padding:.6rem 1.2rem;border:0;border-radius:6px;\
background:#1d2330;color:#fff;cursor:pointer}footer{margin-top:2rem;color:#8a90a0;font-size:.85rem}";
