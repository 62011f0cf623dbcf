//! What burrow's own pages on a tunnel's host share (the warning page's
//! Continue, sign-in's `/.burrow/` endpoints): telling a
//! page navigation from an API call, checking that a POST came from a page
//! of the same host, reading a small form, and redirecting only to a path
//! on the same host.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::{pages, Body, Scheme};

/// Largest form body read.
const FORM_LIMIT: usize = 8 * 1024;

/// A page navigation (a browser loading a page), not a `fetch()`, an XHR,
/// a WebSocket or an API client: `GET`/`HEAD`, `Sec-Fetch-Mode: navigate`
/// when the browser says, else an `Accept` with HTML.
pub fn is_navigation(req: &Request<Incoming>) -> bool {
    if !matches!(*req.method(), Method::GET | Method::HEAD) || super::rewrite::wants_upgrade(req) {
        return false;
    }
    if req.headers().contains_key("x-requested-with") {
        return false;
    }
    match req.headers().get("sec-fetch-mode") {
        Some(mode) => mode == "navigate",
        None => header_str(req.headers(), header::ACCEPT).contains("text/html"),
    }
}

/// Whether a POST came from a page of `host` itself (its `Origin` and
/// `Sec-Fetch-Site`, when the browser sends them).
pub fn same_origin(headers: &HeaderMap, host: &str, scheme: Scheme) -> bool {
    let origin_ok = headers.get(header::ORIGIN).is_none_or(|o| {
        o.to_str()
            .is_ok_and(|o| o.eq_ignore_ascii_case(&format!("{}://{host}", scheme.as_str())))
    });
    let site_ok = headers
        .get("sec-fetch-site")
        .is_none_or(|s| s == "same-origin");
    origin_ok && site_ok
}

/// The fields of a small `application/x-www-form-urlencoded` body; `None`
/// when it is larger than 8 KiB or breaks off.
pub async fn read_form(body: Incoming) -> Option<Vec<(String, String)>> {
    let form: Bytes = Limited::new(body, FORM_LIMIT)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(
        form_urlencoded::parse(&form)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    )
}

/// `next` if it is a path on this host (none of `avoid`), else `/`: a
/// redirect never leaves the host.
pub fn safe_path<'a>(next: &'a str, avoid: &[&str]) -> &'a str {
    let on_this_host = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && !avoid.iter().any(|a| next.starts_with(a))
        && !next.chars().any(|c| c.is_control());
    if on_this_host {
        next
    } else {
        "/"
    }
}

/// 303 to `location` (a path on this host), with the page headers.
pub fn see_other(location: &str) -> Response<Body> {
    let mut response = Response::new(pages::full(""));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .extensions_mut()
        .insert(crate::request_log::Answered(None));
    let headers = response.headers_mut();
    pages::set_page_headers(headers);
    if let Ok(location) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, location);
    }
    response
}

fn header_str(headers: &HeaderMap, name: impl header::AsHeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTINUE_PATH: &str = "/__burrow/continue";

    fn continue_safe(next: &str) -> &str {
        safe_path(next, &[CONTINUE_PATH])
    }

    #[test]
    fn only_same_host_paths_are_redirect_targets() {
        assert_eq!(continue_safe("/a?b=1"), "/a?b=1");
        assert_eq!(continue_safe("//evil.example/"), "/");
        assert_eq!(continue_safe("/\\evil.example"), "/");
        assert_eq!(continue_safe("https://evil.example/"), "/");
        assert_eq!(continue_safe("/a\r\nSet-Cookie: x"), "/");
        assert_eq!(continue_safe("/__burrow/continue"), "/");
        assert_eq!(continue_safe("/a#frag"), "/a#frag");
    }
}
