//! Entry points for the fuzz targets in `tests/fuzz/` (cargo-fuzz), and
//! nothing else: thin `pub fn`s over parsers that are private to their
//! modules (`pub(crate)` there), so the targets reach them without
//! widening any module's API. Hidden from the docs; nothing in burrow
//! imports this module (it may import from anything).
//!
//! Parsers that are public already (`tunnel::options::parse`,
//! `keys::KeysFile::parse`, `edge::router::route`, …) are called by the
//! targets directly.

use std::net::SocketAddr;

use hyper::HeaderMap;

use crate::request_log::{Event, Style};
use crate::tunnel::directory::Forwarded;

/// How much of a PROXY header the reader saw (`forwarded.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyLength {
    /// The bytes do not start a PROXY header.
    NotAHeader,
    /// A header may be starting: wait for more bytes.
    NeedMore,
    /// A header of this many bytes is complete.
    Complete(usize),
    /// A broken header: the connection is dropped.
    Invalid,
}

/// `forwarded::header_length` on `seen`.
pub fn proxy_header_length(seen: &[u8]) -> ProxyLength {
    use crate::forwarded::Length;
    match crate::forwarded::header_length(seen) {
        Ok(Length::NotAHeader) => ProxyLength::NotAHeader,
        Ok(Length::NeedMore) => ProxyLength::NeedMore,
        Ok(Length::Complete(n)) => ProxyLength::Complete(n),
        Err(_) => ProxyLength::Invalid,
    }
}

/// `forwarded::parse` of a complete header: the client it names (`None`
/// for `UNKNOWN`/`LOCAL`), `Err` for a malformed one.
pub fn proxy_parse(header: &[u8]) -> Result<Option<SocketAddr>, String> {
    crate::forwarded::parse(header).map_err(|e| e.to_string())
}

/// The request log's rendering of `event` (text, or JSON lines).
pub fn render_log(event: &Event, json: bool, colour: bool) -> String {
    let mut out = String::new();
    crate::request_log::render(event, Style { json, colour }, &mut out);
    out
}

/// The link's CONNECT request for `key` written by one node
/// (`cluster::link::connect_request`) and read by another
/// (`cluster::link::forwarded_of`).
pub fn link_round_trip(me: &str, key: &str, forwarded: Forwarded) -> Option<(String, Forwarded)> {
    let request = crate::cluster::link::connect_request(me, key, forwarded);
    crate::cluster::link::forwarded_of(&request)
}

/// `cluster::link::forwarded_of` on a request carrying `headers`.
pub fn link_read(headers: HeaderMap) -> Option<(String, Forwarded)> {
    let mut request = hyper::Request::new(());
    *request.headers_mut() = headers;
    crate::cluster::link::forwarded_of(&request)
}

/// The value of cookie `name` (the warning page's cookies).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    crate::http::cookies::cookie(headers, name)
}

/// The Continue button's redirect target: `next` or `/`
/// (`http::form::safe_path`, as the warning page calls it).
pub fn safe_path(next: &str) -> &str {
    crate::http::form::safe_path(next, &[crate::http::interstitial::CONTINUE_PATH])
}

/// burrow's cookies removed from what the app sees.
pub fn strip_burrow_cookies(headers: &mut HeaderMap) {
    crate::http::rewrite::strip_burrow_cookies(headers)
}

/// `Authorization: Basic …` as user and password.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    crate::http::access::credentials(headers)
}

/// The inspector's `Host` check (DNS rebinding).
pub fn inspector_host_ok(headers: &HeaderMap) -> bool {
    crate::inspect::serve::loopback_host(headers)
}

/// The ops listener's `Host` check (DNS rebinding).
pub fn ops_host_ok(headers: &HeaderMap) -> bool {
    crate::ops::loopback_host(headers)
}

/// A `--login-providers` file's providers (`login::providers`), every
/// SECRET_FILE read as `secret`.
pub fn login_providers(text: &str) -> Result<Vec<crate::login::providers::Provider>, String> {
    crate::login::providers::parse_text(text, |_| Ok("secret".into())).map_err(|e| e.to_string())
}
