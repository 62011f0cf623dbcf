//! Sign-in as the proxy's guard: for a tunnel whose policies require it,
//! a request passes only with a session cookie of that very host whose
//! identity every policy lets in — then the app gets `X-Burrow-User`,
//! `X-Burrow-User-Name` and the signed `X-Burrow-Identity`, and never the
//! cookie. Without a session, a page navigation is sent to sign in, and
//! anything else (fetch, XHR, a WebSocket, an API client) gets 401 with
//! JSON; signed in as someone not on the list: 403, with a way to sign in
//! as someone else. The policies are judged on every request, so a
//! narrower `login=` locks people out at once.
//!
//! The tunnel's own host answers two paths itself: `/.burrow/login`
//! (spends a one-time code from the sign-in host and sets the session
//! cookie) and `/.burrow/logout` (a button on GET, signs out on a POST
//! that carries the session's CSRF token).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::opened::Visit;
use super::tokens::{self, Session};
use super::{pages, Login};
use crate::http::cookies::{cookie, SESSION_COOKIE};
use crate::http::form;
use crate::http::guard::{Checkpoint, Guard, Guarded, Vouched};
use crate::http::{Body, Scheme};
use crate::identity::Policies;
use crate::tunnel::BoxFuture;

/// The paths a tunnel's host answers itself while sign-in guards it.
const LOGIN_PATH: &str = "/.burrow/login";
const LOGOUT_PATH: &str = "/.burrow/logout";
const OWN_PATHS: &str = "/.burrow/";

/// The guard.
pub struct Gate(pub Arc<Login>);

impl Guard for Gate {
    fn guard<'a>(&'a self, at: Checkpoint<'a>, req: Request<Incoming>) -> BoxFuture<'a, Guarded> {
        Box::pin(self.0.check(at, req))
    }
}

impl Login {
    async fn check(&self, at: Checkpoint<'_>, req: Request<Incoming>) -> Guarded {
        let policies = self.policies(at.tunnel, at.options);
        if !policies.required() {
            return Guarded::Pass(req);
        }
        if at.scheme == Scheme::Http {
            // Sessions are Secure cookies: sign-in happens over HTTPS.
            let url = format!("https://{}{}", at.host, path_and_query(&req));
            return Guarded::Answer(pages::redirect(&url));
        }
        let host = crate::subdomain::bare_host(at.host);
        if req.uri().path().starts_with(OWN_PATHS) {
            if let Some(answer) = self.own_path(&at, &host, req).await {
                return Guarded::Answer(answer);
            }
            return Guarded::Answer(
                crate::http::pages::not_found(at.host).render(&Default::default()),
            );
        }
        let visit = cookie(req.headers(), SESSION_COOKIE).and_then(|token| {
            let open = || Visit::open(&self.sealer, &self.signer, &host, token);
            self.opened.get(&host, token, tokens::now(), open)
        });
        let Some(visit) = visit else {
            return Guarded::Answer(self.to_sign_in(&at, &policies, &req));
        };
        at.seen.set_user(visit.user.clone());
        if !policies.allow(&visit.session.identity) {
            let again = self.start_url(&url_of(&at, &req), true);
            let sign_out = LOGOUT_PATH;
            let page = pages::not_allowed(
                &visit.user,
                &policies.describe(),
                (&again, sign_out),
                req.headers(),
            );
            return Guarded::Answer(page);
        }
        at.tunnel.traffic().signed_in.saw(&visit.user);
        // The request as the app gets it: who the visitor is, vouched for.
        let mut req = req;
        req.extensions_mut().insert(Vouched(visit.headers.clone()));
        Guarded::Pass(req)
    }

    /// A visitor without a session: a navigation goes to sign in, anything
    /// else gets 401 with where to.
    fn to_sign_in(
        &self,
        at: &Checkpoint<'_>,
        policies: &Policies,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let url = url_of(at, req);
        let mut start = self.start_url(&url, false);
        if let Some(provider) = policies.only_provider() {
            start.push_str(&format!("&provider={provider}"));
        }
        if form::is_navigation(req) {
            pages::redirect(&start)
        } else {
            pages::required_json(&start, &policies.describe())
        }
    }

    /// `/.burrow/login` and `/.burrow/logout`; `None` for other paths.
    async fn own_path(
        &self,
        at: &Checkpoint<'_>,
        host: &str,
        req: Request<Incoming>,
    ) -> Option<Response<Body>> {
        let path = req.uri().path().to_string();
        if path != LOGIN_PATH && path != LOGOUT_PATH {
            return None;
        }
        if let Err(refusal) = self.admit(at.visitor.ip()) {
            let page = crate::http::pages::limited(StatusCode::TOO_MANY_REQUESTS, &refusal);
            return Some(page.render(req.headers()));
        }
        Some(match path.as_str() {
            LOGIN_PATH => self.redeem(at, host, &req).await,
            _ => self.sign_out(at, host, req).await,
        })
    }

    /// Spends the one-time code and sets this host's session cookie.
    async fn redeem(
        &self,
        at: &Checkpoint<'_>,
        host: &str,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let headers = req.headers();
        let refuse = |why: &str| pages::refused(StatusCode::FORBIDDEN, why, headers);
        let code = query_param(req, "code").unwrap_or_default();
        let Some(code) = self.sealer.open_code(host, &code) else {
            return refuse("The sign-in code is not valid for this tunnel, or it expired.");
        };
        match self.spent.spend(&code.id, code.expires).await {
            Ok(true) => {}
            Ok(false) => return refuse("This sign-in code was used already."),
            Err(()) => {
                let why = "Sign-in cannot be completed while the cluster's store is down.";
                return pages::refused(StatusCode::SERVICE_UNAVAILABLE, why, headers);
            }
        }
        at.seen.set_user(code.identity.label());
        let session = Session {
            identity: code.identity,
            id: tokens::random_id(),
            expires: tokens::now() + self.session.as_secs(),
        };
        tracing::info!(host, user = %session.identity.label(), provider = %session.identity.provider, "signed in");
        let token = self.sealer.seal_session(host, &session);
        let max_age = self.session.as_secs();
        let cookie = format!(
            "{SESSION_COOKIE}={token}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax"
        );
        let mut response = form::see_other(form::safe_path(&code.path, &[OWN_PATHS]));
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    }

    /// GET: the sign-out button; POST (from this host's page, with the
    /// session's CSRF token): the session cookie cleared.
    async fn sign_out(
        &self,
        at: &Checkpoint<'_>,
        host: &str,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let again = self.start_url(&format!("https://{}/", at.host), false);
        let session = cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|token| self.sealer.open_session(host, token));
        let Some(session) = session else {
            return pages::signed_out(&again, &parts.headers);
        };
        if parts.method != Method::POST {
            let who = session.identity.label();
            return pages::sign_out_form(&session.id, &who, &parts.headers);
        }
        let refuse = |why: &str| pages::refused(StatusCode::FORBIDDEN, why, &parts.headers);
        if !form::same_origin(&parts.headers, at.host, Scheme::Https) {
            return refuse("Sign out with the button on this tunnel's sign-out page.");
        }
        let Some(fields) = form::read_form(body).await else {
            return refuse("The form could not be read.");
        };
        let given = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str());
        let valid =
            given.is_some_and(|csrf| bool::from(csrf.as_bytes().ct_eq(session.id.as_bytes())));
        if !valid {
            return refuse("The sign-out page expired: load it again.");
        }
        tracing::info!(host, user = %session.identity.label(), "signed out");
        let mut response = pages::signed_out(&again, &parts.headers);
        let clear = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax");
        if let Ok(value) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    }
}

/// The URL the visitor asked for (over HTTPS).
fn url_of(at: &Checkpoint<'_>, req: &Request<Incoming>) -> String {
    format!("https://{}{}", at.host, path_and_query(req))
}

fn path_and_query(req: &Request<Incoming>) -> &str {
    req.uri().path_and_query().map_or("/", |pq| pq.as_str())
}

/// The value of query parameter `name`.
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
