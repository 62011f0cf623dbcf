//! burrow's own cookies on a tunnel's host: their names (the warning page's
//! and a sign-in session), reading one from a request, and telling them
//! apart from the app's so the app never sees them.

use hyper::header::{self, HeaderMap};

/// The cookie that holds a visitor's sign-in session on a tunnel's host
/// (host-only: the `__Host-` prefix makes browsers enforce it).
pub const SESSION_COOKIE: &str = "__Host-burrow_session";

/// Prefix of the warning page's "already warned" cookie, one per name.
pub const WARNED_PREFIX: &str = "burrow_warned_";

/// Prefix of the warning page's CSRF cookie, one per name.
pub const CSRF_PREFIX: &str = "burrow_csrf_";

/// Whether `name` is one of burrow's own cookies: kept from the app.
pub fn is_burrow_cookie(name: &str) -> bool {
    name.starts_with(WARNED_PREFIX) || name.starts_with(CSRF_PREFIX) || name == SESSION_COOKIE
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; burrow_warned_x-y=1; burrow_warned_x=2"),
        );
        assert_eq!(cookie(&h, "burrow_warned_x"), Some("2"));
        assert_eq!(cookie(&h, "burrow_warned_x-y"), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn burrow_cookies_are_known_by_name() {
        assert!(is_burrow_cookie("burrow_csrf_x"));
        assert!(is_burrow_cookie("burrow_warned_x"));
        assert!(is_burrow_cookie(SESSION_COOKIE));
        assert!(!is_burrow_cookie("session"));
    }
}
