//! The request the local app gets, and the response headers the visitor
//! gets: hop-by-hop headers removed, forwarding headers stated by burrow
//! (never believed from the visitor), burrow's own cookies stripped, and
//! safety headers added where the app chose none.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Uri, Version};

use super::cookies::is_burrow_cookie;
use super::Scheme;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_ROBOTS_TAG: HeaderName = HeaderName::from_static("x-robots-tag");

/// Proxied responses: `nosniff` and a Referrer-Policy unless the app chose
/// its own; never indexed by search engines. Framing is left to the app.
pub fn add_safety_headers(headers: &mut HeaderMap) {
    headers
        .entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("strict-origin-when-cross-origin"));
    headers.insert(X_ROBOTS_TAG, HeaderValue::from_static("noindex, nofollow"));
}

/// Whether the visitor asks for an HTTP/1.1 protocol upgrade (WebSocket).
pub fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and those the `Connection` header names. For
/// an upgrade, `Connection: upgrade` and `Upgrade` are put back.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_to = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    // `keep-alive`, `close` and `upgrade` (the usual tokens) are handled
    // below without making a header name of them.
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| {
            !["keep-alive", "close", "upgrade"]
                .iter()
                .any(|k| t.eq_ignore_ascii_case(k))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
    if let Some(protocol) = upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Turns the visitor's request into the HTTP/1.1 request the local app gets.
pub fn to_origin_request<B>(
    mut req: Request<B>,
    visitor: SocketAddr,
    host: &str,
    rewrite_host: Option<&str>,
    upgrade: bool,
    scheme: Scheme,
) -> Request<B> {
    // HTTP/1.1 visitors send origin-form already; HTTP/2's carries the
    // scheme and authority, which the app must not see.
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    }
    *req.version_mut() = Version::HTTP_11;

    let headers = req.headers_mut();
    strip_hop_by_hop(headers, upgrade);
    // Forwarding headers from the visitor are lies until proven otherwise:
    // drop them all and state what we saw ourselves.
    let spoofable: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            name == "forwarded" || name == "x-real-ip" || name.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in spoofable {
        headers.remove(name);
    }
    let ip = visitor.ip().to_canonical().to_string();
    if let Ok(ip) = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip)) {
        headers.insert(X_FORWARDED_FOR, ip);
    }
    if let Ok(public_host) = HeaderValue::from_str(host) {
        // HTTP/2 carries the host in :authority; HTTP/1.1 needs Host.
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, public_host.clone());
        }
        headers.insert(X_FORWARDED_HOST, public_host);
    }
    // host=: for dev servers that only answer to their own name.
    if let Some(value) = rewrite_host.and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(header::HOST, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme.as_str()));
    strip_burrow_cookies(headers);
    vouch(&mut req);
    req
}

/// Headers burrow vouches for: a visitor's own copies never reach the app,
/// whatever the tunnel; a guard's (sign-in) do.
const VOUCHED_PREFIX: &str = "x-burrow-";

/// Removes the visitor's `X-Burrow-*` headers and adds what a guard
/// vouched for ([`super::guard::Vouched`]).
fn vouch<B>(req: &mut Request<B>) {
    let forged: Vec<HeaderName> = req
        .headers()
        .keys()
        .filter(|name| name.as_str().starts_with(VOUCHED_PREFIX))
        .cloned()
        .collect();
    for name in forged {
        req.headers_mut().remove(name);
    }
    if let Some(vouched) = req.extensions_mut().remove::<super::guard::Vouched>() {
        for (name, value) in vouched.0 {
            req.headers_mut().insert(name, value);
        }
    }
}

/// Removes burrow's own cookies (warning page, sign-in) from what the app sees
/// (`pub(crate)` for `crate::fuzzing`).
///
/// Works on the bytes: a cookie value that is not ASCII (obs-text, UTF-8)
/// is the app's all the same and goes through untouched.
pub(crate) fn strip_burrow_cookies(headers: &mut HeaderMap) {
    let ours = |pair: &[u8]| {
        let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
        is_burrow_cookie(&String::from_utf8_lossy(name))
    };
    let pairs = |v: &HeaderValue| -> Vec<Vec<u8>> {
        v.as_bytes()
            .split(|b| *b == b';')
            .map(|pair| pair.trim_ascii().to_vec())
            .filter(|pair| !pair.is_empty())
            .collect()
    };
    let all: Vec<Vec<u8>> = headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(pairs)
        .collect();
    if !all.iter().any(|pair| ours(pair)) {
        return;
    }
    let kept: Vec<&[u8]> = all.iter().map(Vec::as_slice).filter(|p| !ours(p)).collect();
    headers.remove(header::COOKIE);
    if let Ok(value) = HeaderValue::from_bytes(&kept.join(&b"; "[..])) {
        if !kept.is_empty() {
            headers.insert(header::COOKIE, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_keeps_upgrade_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn stripping_burrow_cookies_keeps_the_apps_non_ascii_cookies() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("burrow_warned_api=1; a=1"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_bytes(b"name=caf\xc3\xa9").unwrap(),
        );
        strip_burrow_cookies(&mut h);
        let cookies: Vec<&[u8]> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(cookies, [&b"a=1; name=caf\xc3\xa9"[..]]);
    }
}
