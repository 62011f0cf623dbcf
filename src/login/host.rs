//! The sign-in host (`https://login.DOMAIN`, or `--login-host`): the one
//! redirect URI every provider knows, serving
//!
//! - `GET /start?return=URL[&provider=NAME][&prompt=login]`: `URL` must be
//!   a page of one of this server's tunnels (nothing else is ever a
//!   redirect target); sends the visitor to the provider with a sealed
//!   `state` (PKCE verifier, nonce, where to return) bound to a cookie of
//!   this host, or lets them choose a provider;
//! - `GET /callback?code=…&state=…`: checks that binding, exchanges the
//!   code, validates the ID token and hands the tunnel's host a one-time
//!   code (60 s, single use, for that host only);
//! - `GET /.well-known/jwks.json`: the keys `X-Burrow-Identity` verifies
//!   with.
//!
//! Every request counts against the visitor's `--login-rate`.

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use super::oidc::Failure;
use super::tokens::{self, Code, State, CODE_LIFETIME, STATE_LIFETIME};
use super::{pages, Login};
use crate::http::cookies::cookie;
use crate::http::{pages as http_pages, Body};

/// The cookie that binds a sign-in's `state` to the browser that started
/// it (a `state` replayed from another browser does not match).
const BINDING_COOKIE: &str = "__Host-burrow_signin";

impl Login {
    /// A request for the sign-in host, from `visitor`.
    pub async fn serve_host(&self, req: Request<Incoming>, visitor: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if req.method() == Method::GET && path == "/.well-known/jwks.json" {
            return self.jwks_answer();
        }
        if !matches!(path, "/start" | "/callback") || req.method() != Method::GET {
            return http_pages::not_found(&self.host).render(req.headers());
        }
        if let Err(refusal) = self.admit(visitor.ip()) {
            let page = http_pages::limited(StatusCode::TOO_MANY_REQUESTS, &refusal);
            return page.render(req.headers());
        }
        match path {
            "/start" => self.start(&req).await,
            _ => self.callback(&req).await,
        }
    }

    fn jwks_answer(&self) -> Response<Body> {
        let mut response = Response::new(http_pages::full(self.signer.jwks().to_string()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        response
    }

    /// Sends the visitor to the provider (or lets them choose one).
    async fn start(&self, req: &Request<Incoming>) -> Response<Body> {
        let headers = req.headers();
        let query = Query::of(req);
        let back_to = query.get("return").unwrap_or_default();
        if self.tunnel_host(&back_to).await.is_none() {
            let why = "The address to return to is not a tunnel on this server.";
            return pages::refused(StatusCode::BAD_REQUEST, why, headers);
        }
        let fresh = query.get("prompt").as_deref() == Some("login");
        let provider = match query.get("provider") {
            Some(name) => self.provider(&name),
            None if self.providers.len() == 1 => self.providers.first(),
            None => return self.choose(&back_to, fresh, headers),
        };
        let Some(provider) = provider else {
            let why = "There is no sign-in provider of that name here.";
            return pages::refused(StatusCode::BAD_REQUEST, why, headers);
        };
        let binding = cookie(headers, BINDING_COOKIE)
            .filter(|b| b.len() == 32 && b.bytes().all(|c| c.is_ascii_hexdigit()))
            .map_or_else(tokens::random_id, str::to_string);
        let sealer = &self.sealer;
        let state = |verifier: &str, nonce: &str| {
            sealer.seal_state(&State {
                binding: binding.clone(),
                verifier: verifier.to_string(),
                nonce: nonce.to_string(),
                back_to: back_to.clone(),
                provider: provider.name().to_string(),
                expires: tokens::now() + STATE_LIFETIME,
            })
        };
        let pending = match provider.authorize(state, fresh).await {
            Ok(pending) => pending,
            Err(failure) => return self.failed(&failure, headers),
        };
        let mut response = pages::redirect(&pending.url);
        let bind = format!(
            "{BINDING_COOKIE}={binding}; Path=/; Max-Age={STATE_LIFETIME}; Secure; HttpOnly; SameSite=Lax"
        );
        if let Ok(value) = HeaderValue::from_str(&bind) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
        response
    }

    /// A page to choose a provider, each link starting over with it.
    fn choose(&self, back_to: &str, fresh: bool, headers: &HeaderMap) -> Response<Body> {
        let links: Vec<(String, String)> = self
            .providers
            .iter()
            .map(|p| {
                let url = format!("{}&provider={}", self.start_url(back_to, fresh), p.name());
                (p.name().to_string(), url)
            })
            .collect();
        pages::choose(&links, headers)
    }

    /// The provider sent the visitor back: validate, then hand the tunnel's
    /// host a one-time code.
    async fn callback(&self, req: &Request<Incoming>) -> Response<Body> {
        let headers = req.headers();
        let refuse = |status, why: &str| pages::refused(status, why, headers);
        let query = Query::of(req);
        if let Some(error) = query.get("error") {
            let why = format!("The identity provider said: {error}.");
            return refuse(StatusCode::FORBIDDEN, &why);
        }
        let Some(state) = query.get("state").and_then(|s| self.sealer.open_state(&s)) else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "The sign-in expired or was not started here.",
            );
        };
        let bound = cookie(headers, BINDING_COOKIE)
            .is_some_and(|b| bool::from(b.as_bytes().ct_eq(state.binding.as_bytes())));
        if !bound {
            let why = "This sign-in was started in another browser (its state does not match).";
            return refuse(StatusCode::FORBIDDEN, why);
        }
        let (Some(code), Some(provider)) = (query.get("code"), self.provider(&state.provider))
        else {
            return refuse(StatusCode::BAD_REQUEST, "The provider sent no code.");
        };
        let identity = match provider
            .exchange(&code, &state.verifier, &state.nonce)
            .await
        {
            Ok(identity) => identity,
            Err(failure) => return self.failed(&failure, headers),
        };
        let Some((host, path)) = self.tunnel_host(&state.back_to).await else {
            return refuse(
                StatusCode::BAD_REQUEST,
                "The address to return to is not a tunnel on this server.",
            );
        };
        let code = Code {
            identity,
            path,
            id: tokens::random_id(),
            expires: tokens::now() + CODE_LIFETIME,
        };
        let token = self.sealer.seal_code(&host, &code);
        let url = format!(
            "https://{host}{}/.burrow/login?code={token}",
            self.port_suffix
        );
        pages::redirect(&url)
    }

    /// The page for a sign-in that failed at the provider.
    fn failed(&self, failure: &Failure, headers: &HeaderMap) -> Response<Body> {
        match failure {
            Failure::Unreachable(why) => pages::provider_down(why, headers),
            Failure::Rejected(why) => {
                tracing::info!(reason = %why, "sign-in refused");
                pages::refused(StatusCode::FORBIDDEN, why, headers)
            }
        }
    }
}

/// A request's query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(req: &Request<Incoming>) -> Query {
        let query = req.uri().query().unwrap_or_default();
        Query(
            form_urlencoded::parse(query.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}
