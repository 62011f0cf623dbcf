//! The per-tunnel options that decide who gets in, applied before anything
//! else reaches the app: the IP allow-list (403), CORS preflights answered
//! by burrow (before auth, as browsers send them without credentials), and
//! HTTP Basic auth with a per-visitor limit on failed attempts (401 / 429).

use std::net::SocketAddr;

use base64::Engine;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::pages::{self, Page};
use super::Body;
use crate::limits::Refusal;
use crate::tunnel::options::TunnelOptions;
use crate::tunnel::Tunnel;

/// Methods a preflight is told are allowed when the app's own list is not
/// known.
const CORS_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
const CORS_MAX_AGE: &str = "600";

/// What the access checks decided.
pub enum Access {
    Answer(Response<Body>),
    /// Over a limit: the proxy's limits phase answers (and counts) it.
    Refused(Refusal, Request<Incoming>),
    Pass(Request<Incoming>),
}

/// Applies allow-list, CORS preflight and Basic auth.
pub fn check(
    tunnel: &Tunnel,
    options: &TunnelOptions,
    mut req: Request<Incoming>,
    visitor: SocketAddr,
) -> Access {
    if !options.allows(visitor.ip()) {
        let page = Page::new(StatusCode::FORBIDDEN, "Not allowed from your network")
            .text("The owner of this tunnel only lets in visitors from certain networks (allow=).")
            .why("this visitor's IP is not on your allow= list");
        return Access::Answer(page.render(req.headers()));
    }
    if let Some(response) = preflight(options, &req) {
        return Access::Answer(response);
    }
    if let Some(auth) = &options.auth {
        let Some((user, password)) = credentials(req.headers()) else {
            return Access::Answer(unauthorized(tunnel.key(), req.headers()));
        };
        // While locked out, no password is checked: a right one is refused
        // like a wrong one, so guessing goes no faster than the limit.
        let gate = tunnel.gate();
        let checked = gate
            .auth_allowed(visitor.ip())
            .map(|()| auth.verify(&user, &password));
        match checked {
            Ok(true) => {
                req.headers_mut().remove(header::AUTHORIZATION);
            }
            Ok(false) => {
                if let Err(refusal) = gate.auth_failure(visitor.ip()) {
                    return Access::Refused(refusal, req);
                }
                return Access::Answer(unauthorized(tunnel.key(), req.headers()));
            }
            Err(refusal) => return Access::Refused(refusal, req),
        }
    }
    Access::Pass(req)
}

fn unauthorized(name: &str, request_headers: &HeaderMap) -> Response<Body> {
    let mut response = Page::new(StatusCode::UNAUTHORIZED, "Password required")
        .text("The owner of this tunnel protected it with a user name and password.")
        .why("password required (auth=): the visitor gave none, or a wrong one")
        .render(request_headers);
    if let Ok(challenge) = HeaderValue::from_str(&format!(
        "Basic realm=\"burrow tunnel {name}\", charset=\"UTF-8\""
    )) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, challenge);
    }
    response
}

/// `Authorization: Basic …` decoded into user and password (`pub(crate)`
/// for `crate::fuzzing`).
pub(crate) fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Answers a CORS preflight when `cors=` is set.
fn preflight(options: &TunnelOptions, req: &Request<Incoming>) -> Option<Response<Body>> {
    let cors = options.cors.as_ref()?;
    let headers = req.headers();
    if req.method() != Method::OPTIONS
        || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    let Some((allow_origin, credentials)) = cors.allow(origin) else {
        let page = Page::new(StatusCode::FORBIDDEN, "Origin not allowed")
            .text(format!(
                "This tunnel does not accept cross-origin requests from {origin}."
            ))
            .why(format!(
                "cross-origin request from {origin} refused (cors=)"
            ));
        let mut response = page.render(headers);
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        return Some(response);
    };
    let mut response = Response::new(pages::full(""));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .extensions_mut()
        .insert(crate::request_log::Answered(None));
    let out = response.headers_mut();
    set_allow_origin(out, &allow_origin, credentials);
    out.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    if let Some(requested) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
    }
    out.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(CORS_MAX_AGE),
    );
    Some(response)
}

/// Adds the CORS headers to a proxied response for an allowed `Origin`.
pub fn decorate(options: &TunnelOptions, origin: Option<&HeaderValue>, out: &mut HeaderMap) {
    let (Some(cors), Some(origin)) = (&options.cors, origin.and_then(|o| o.to_str().ok())) else {
        return;
    };
    if let Some((allow_origin, credentials)) = cors.allow(origin) {
        set_allow_origin(out, &allow_origin, credentials);
    } else {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn set_allow_origin(out: &mut HeaderMap, origin: &str, credentials: bool) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    // Never `*` with credentials: browsers reject it, and it would be wrong.
    if credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    } else {
        out.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    }
    out.insert(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_decoded() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YW5uOnMzY3I6ZXQ="),
        );
        assert_eq!(credentials(&h), Some(("ann".into(), "s3cr:et".into())));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer xyz"),
        );
        assert_eq!(credentials(&h), None);
    }

    #[test]
    fn star_never_comes_with_credentials() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        set_allow_origin(&mut h, "*", false);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!h.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
        assert_eq!(h[header::VARY], "Origin");
    }
}
