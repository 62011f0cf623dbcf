//! What visitors read during sign-in, as burrow's pages (HTML for
//! browsers, text for the rest), and the JSON answer API clients get
//! instead of a redirect.

use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{HeaderMap, Response, StatusCode};

use crate::http::pages::{self, Page};
use crate::http::Body;

/// 302 to `url` (a navigation sent to sign in, or back to the tunnel).
pub fn redirect(url: &str) -> Response<Body> {
    match HeaderValue::from_str(url) {
        Ok(location) => pages::redirect(StatusCode::FOUND, location),
        // Every URL here is one burrow serialised (no controls in it);
        // should one not be, say so rather than send a 302 to nowhere.
        Err(_) => Page::new(StatusCode::INTERNAL_SERVER_ERROR, "Sign-in failed")
            .text("The sign-in's next address could not be sent.")
            .why(format!(
                "sign-in: a redirect to {url:?} is not a header value"
            ))
            .render(&HeaderMap::new()),
    }
}

/// 401 for a request that is no page navigation (fetch, XHR, a WebSocket,
/// an API client): where to sign in, never a redirect to follow.
pub fn required_json(sign_in: &str, policy: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": "sign-in required",
        "who": policy,
        "sign_in": sign_in,
    });
    let mut response = pages::json(StatusCode::UNAUTHORIZED, &body);
    response
        .extensions_mut()
        .insert(crate::request_log::Answered(Some(
            "sign-in required (login=): no session".into(),
        )));
    response
}

/// 403: signed in, but not as someone the tunnel lets in.
pub fn not_allowed(
    who: &str,
    policy: &str,
    (again, sign_out): (&str, &str),
    headers: &HeaderMap,
) -> Response<Body> {
    Page::new(StatusCode::FORBIDDEN, "Not for you")
        .text(format!("You are signed in as {who}."))
        .text(format!("This tunnel lets in only: {policy}."))
        .link("Sign in as someone else", again)
        .link("Sign out", sign_out)
        .why(format!("signed in as {who}, not on the login= list"))
        .render(headers)
}

/// 502: the identity provider did not answer (in time).
pub fn provider_down(why: &str, headers: &HeaderMap) -> Response<Body> {
    let mut response = Page::new(StatusCode::BAD_GATEWAY, "Sign-in is unavailable")
        .text("The identity provider this server uses for sign-in did not answer.")
        .text(why)
        .text("Try again in a moment.")
        .why(format!("sign-in failed at the provider: {why}"))
        .render(headers);
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// 400 or 403 with the reason: a sign-in that cannot go on.
pub fn refused(status: StatusCode, why: &str, headers: &HeaderMap) -> Response<Body> {
    Page::new(status, "Sign-in failed")
        .text(why)
        .text("Go back to the tunnel's address and sign in again.")
        .why(format!("sign-in refused: {why}"))
        .render(headers)
}

/// The sign-out page (GET): a button, with the session's CSRF token.
pub fn sign_out_form(csrf: &str, who: &str, headers: &HeaderMap) -> Response<Body> {
    Page::new(StatusCode::OK, "Sign out")
        .text(format!("You are signed in as {who}."))
        .form(
            "/.burrow/logout",
            vec![("csrf".into(), csrf.into())],
            "Sign out",
        )
        .render(headers)
}

/// Signed out.
pub fn signed_out(again: &str, headers: &HeaderMap) -> Response<Body> {
    Page::new(StatusCode::OK, "Signed out")
        .text("You are signed out of this tunnel.")
        .link("Sign in again", again)
        .render(headers)
}

/// Several providers may let the visitor in: which one?
pub fn choose(links: &[(String, String)], headers: &HeaderMap) -> Response<Body> {
    let mut page = Page::new(StatusCode::OK, "Sign in").text("Sign in with:");
    for (name, url) in links {
        page = page.link(name.clone(), url.clone());
    }
    page.render(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{CONTENT_TYPE, LOCATION};

    #[test]
    fn a_redirect_is_a_302_with_its_location_and_says_so_in_plain_text() {
        let url = "https://id.example.com/auth?state=abc";
        let response = redirect(url);
        assert_eq!(response.status(), StatusCode::FOUND);
        let headers = response.headers();
        assert_eq!(headers[LOCATION], url);
        assert_eq!(headers[CONTENT_TYPE], "text/plain; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-store");
    }

    #[test]
    fn a_url_that_is_no_header_value_is_an_error_page_not_a_302_to_nowhere() {
        let response = redirect("https://a.example/\nSet-Cookie: x=1");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(LOCATION).is_none());
    }
}
