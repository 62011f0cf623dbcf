//! Tests of the OpenID Provider fixture itself (tests/oidc/provider.mjs run
//! through tests/common/oidc.rs), through real HTTP: discovery and JWKS, the
//! authorization code flow with PKCE driven by reqwest (a small cookie jar,
//! redirects followed by hand), the test users' claims, real sessions
//! (silent sign-in, `prompt=login`), every fault mode of the control API,
//! key rotation, https with a private CA, clean exits, and the login form in
//! headless Chromium.
//!
//! ID tokens are decoded with base64 only; signatures are checked against
//! the provider's JWKS with aws-lc-rs (already burrow's crypto library), so
//! `bad-signature`, `unknown-kid` and rotation are checked for real.
//!
//! Needs Node.js and npm (`apt-get install nodejs npm`, as .ci/run does);
//! without them the tests fail unless `BURROW_SKIP_OIDC_TESTS=1`. The browser
//! test also needs Chromium and chromedriver (or `BURROW_SKIP_BROWSER_TESTS=1`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/oidc.rs"]
mod oidc;
#[path = "common/signin.rs"]
mod signin;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use oidc::*;
use serde_json::Value;

/// The redirect URI of the reqwest-driven flows: burrow's form. Nothing
/// listens there; the flow stops at the redirect and reads the code.
const REDIRECT: &str = "https://login.localhost:8443/callback";
const SCOPE: &str = "openid email profile groups";

// ---------------------------------------------------------------------------
// A relying party driven by reqwest
// ---------------------------------------------------------------------------

/// The cookies of one host (the provider's), with their paths: enough of
/// RFC 6265 for oidc-provider's session and interaction cookies.
#[derive(Default)]
struct Jar {
    /// (name, path) -> value
    cookies: HashMap<(String, String), String>,
}

impl Jar {
    fn store(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let v = v.to_str().expect("Set-Cookie is ASCII");
            let mut parts = v.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let mut path = "/".to_string();
            let mut gone = false;
            for attr in parts {
                let (k, val) = attr.split_once('=').unwrap_or((attr, ""));
                match k.to_ascii_lowercase().as_str() {
                    "path" => path = val.to_string(),
                    "max-age" => gone |= val.parse::<i64>().is_ok_and(|n| n <= 0),
                    "expires" => gone |= val.contains("1970"),
                    _ => {}
                }
            }
            let key = (name.to_string(), path);
            if gone || value.is_empty() {
                self.cookies.remove(&key);
            } else {
                self.cookies.insert(key, value.to_string());
            }
        }
    }

    fn header(&self, request_path: &str) -> Option<String> {
        let matches = |p: &str| {
            request_path == p
                || (request_path.starts_with(p)
                    && (p.ends_with('/') || request_path[p.len()..].starts_with('/')))
        };
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .filter(|((_, path), _)| matches(path))
            .map(|((name, _), value)| format!("{name}={value}"))
            .collect();
        (!pairs.is_empty()).then(|| pairs.join("; "))
    }
}

/// Where following the provider's redirects ended.
#[derive(Debug)]
enum Landing {
    /// A page of the provider (e.g. the login form).
    Page { url: url::Url, html: String },
    /// A redirect away from the provider (to the redirect URI).
    Away(url::Url),
}

/// One authorization request in flight.
struct Authz {
    verifier: String,
    nonce: String,
    state: String,
    landing: Landing,
}

struct Rp<'a> {
    op: &'a OidcProvider,
    client: OidcClient,
    http: reqwest::Client,
    jar: Jar,
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        // Port 0: the URL's port. Only loopback, whatever the name.
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], 0)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

impl<'a> Rp<'a> {
    fn new(op: &'a OidcProvider, client: &OidcClient) -> Rp<'a> {
        Rp {
            op,
            client: client.clone(),
            http: http_client(),
            jar: Jar::default(),
        }
    }

    async fn send(&mut self, req: reqwest::RequestBuilder, url: &url::Url) -> reqwest::Response {
        let req = match self.jar.header(url.path()) {
            Some(c) => req.header(reqwest::header::COOKIE, c),
            None => req,
        };
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url}: {e}"));
        self.jar.store(&resp);
        resp
    }

    /// Follows redirects while they stay on the provider.
    async fn follow(&mut self, mut resp: reqwest::Response) -> Landing {
        for _ in 0..10 {
            let url = resp.url().clone();
            if !resp.status().is_redirection() {
                let html = resp.text().await.unwrap();
                return Landing::Page { url, html };
            }
            let location = resp.headers()["location"].to_str().unwrap().to_string();
            let next = url.join(&location).unwrap();
            if next.origin() != url.origin() {
                return Landing::Away(next);
            }
            resp = self.send(self.http.get(next.clone()), &next).await;
        }
        panic!("more than 10 redirects at the provider");
    }

    /// `GET /auth` for this client with PKCE, a nonce and a state, plus
    /// `extra` parameters; follows the provider's redirects.
    async fn authorize(&mut self, extra: &[(&str, &str)]) -> Authz {
        let (verifier, challenge) = pkce_pair();
        let (nonce, state) = (random_token(12), random_token(12));
        let mut url = url::Url::parse(&self.op.url("/auth")).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", &self.client.id)
            .append_pair("response_type", "code")
            .append_pair("scope", SCOPE)
            .append_pair("redirect_uri", &self.client.redirect_uris[0])
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("nonce", &nonce)
            .append_pair("state", &state)
            .extend_pairs(extra);
        let resp = self.send(self.http.get(url.clone()), &url).await;
        let landing = self.follow(resp).await;
        Authz {
            verifier,
            nonce,
            state,
            landing,
        }
    }

    /// Submits the login form on `page` with these credentials.
    async fn submit_login(&mut self, page: &Landing, username: &str, password: &str) -> Landing {
        let Landing::Page { url, html } = page else {
            panic!("expected the login form, got {page:?}");
        };
        let action = form_action(html, "login-form");
        let target = url.join(&action).unwrap();
        let req = self
            .http
            .post(target.clone())
            .form(&[("username", username), ("password", password)]);
        let resp = self.send(req, &target).await;
        self.follow(resp).await
    }

    /// A sign-in as `username` (password = username): the code at the
    /// redirect URI, checked against the request's state.
    /// (When this jar's session is already signed in, the provider answers
    /// with a code at once: that must be `username`'s session.)
    async fn sign_in(&mut self, username: &str) -> (Authz, String) {
        let authz = self.authorize(&[]).await;
        let landing = match &authz.landing {
            Landing::Page { .. } => {
                assert_login_form(&authz.landing);
                self.submit_login(&authz.landing, username, username).await
            }
            Landing::Away(url) => Landing::Away(url.clone()),
        };
        let code = code_from(&landing, &self.client, &authz.state);
        (authz, code)
    }

    /// Redeems `code` at the token endpoint, authenticating with
    /// client_secret_basic (or client_secret_post), sending `verifier`
    /// unless `None`. Returns the status and the JSON body.
    async fn redeem(&self, code: &str, verifier: Option<&str>, post_auth: bool) -> (u16, Value) {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.client.redirect_uris[0]),
        ];
        if let Some(v) = verifier {
            form.push(("code_verifier", v));
        }
        let mut req = self.http.post(self.op.url("/token"));
        if post_auth {
            form.push(("client_id", &self.client.id));
            form.push(("client_secret", &self.client.secret));
        } else {
            req = req.basic_auth(&self.client.id, Some(&self.client.secret));
        }
        let resp = req.form(&form).send().await.expect("token request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("token response is not JSON ({e}): {text}"));
        (status, body)
    }

    /// Signs in as `username` and redeems the code: the ID token, with the
    /// request it answers.
    async fn id_token(&mut self, username: &str) -> (Authz, String) {
        let (authz, code) = self.sign_in(username).await;
        let (status, body) = self.redeem(&code, Some(&authz.verifier), false).await;
        assert_eq!(status, 200, "token response: {body}");
        let token = body["id_token"].as_str().expect("id_token").to_string();
        assert_eq!(
            decode_jwt(&token).1["sub"],
            username,
            "signed in as someone else"
        );
        (authz, token)
    }
}

/// The `action` of `<form id="FORM_ID" ...>` in `html`.
fn form_action(html: &str, form_id: &str) -> String {
    let start = html
        .find(&format!("id=\"{form_id}\""))
        .unwrap_or_else(|| panic!("no form {form_id} in {html}"));
    let rest = &html[start..];
    let end = rest.find('>').unwrap();
    let tag = &rest[..end];
    let a = tag.find("action=\"").expect("form action") + "action=\"".len();
    let action = &tag[a..];
    action[..action.find('"').unwrap()].replace("&amp;", "&")
}

fn assert_login_form(landing: &Landing) {
    match landing {
        Landing::Page { url, html } => {
            assert!(
                url.path().starts_with("/interaction/"),
                "login form at {url}"
            );
            for marker in [
                "id=\"login-form\"",
                "name=\"username\"",
                "id=\"username\"",
                "name=\"password\"",
                "id=\"password\"",
                "id=\"sign-in\"",
            ] {
                assert!(html.contains(marker), "{marker} missing from {html}");
            }
        }
        other => panic!("expected the login form, got {other:?}"),
    }
}

/// The `code` of a redirect to the client's redirect URI.
fn code_from(landing: &Landing, client: &OidcClient, state: &str) -> String {
    let Landing::Away(url) = landing else {
        panic!("expected a redirect to the client, got {landing:?}");
    };
    let base = format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap(),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path();
    assert!(
        client.redirect_uris.contains(&base),
        "redirected to {url}, not a redirect URI of {client:?}"
    );
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q.get("state").map(String::as_str), Some(state), "{url}");
    assert!(!q.contains_key("error"), "error at the redirect URI: {url}");
    q.get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code in {url}"))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Value {
    let resp = http
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "GET {url}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {text}"))
}

async fn jwks(op: &OidcProvider) -> Value {
    get_json(&http_client(), &op.url("/jwks")).await
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// Checks an RS256 token's signature against the key with its kid in
/// `jwks`.
fn verify_rs256(token: &str, jwks: &Value) -> Result<(), String> {
    let (header, _, _) = decode_jwt(token);
    if header["alg"] != "RS256" {
        return Err(format!("alg is {}", header["alg"]));
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} is not in the JWKS"))?;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let (input, sig) = token.rsplit_once('.').unwrap();
    let public = aws_lc_rs::signature::RsaPublicKeyComponents {
        n: b64(&key["n"]),
        e: b64(&key["e"]),
    };
    public
        .verify(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &b64(&Value::String(sig.to_string())),
        )
        .map_err(|_| format!("signature does not verify with key {kid}"))
}

fn client() -> OidcClient {
    OidcClient::new("burrow", &random_token(18), &[REDIRECT])
}

async fn provider(test: &str, clients: &[OidcClient]) -> Option<OidcProvider> {
    let bins = node_or_skip(test)?;
    Some(OidcProvider::start(&bins, clients).await)
}

// ---------------------------------------------------------------------------
// Discovery, JWKS, the code flow
// ---------------------------------------------------------------------------

#[tokio::test]
async fn discovery_and_jwks() {
    let c = client();
    let Some(op) = provider("discovery_and_jwks", &[c]).await else {
        return;
    };
    let http = http_client();
    let d = get_json(&http, &op.url("/.well-known/openid-configuration")).await;
    assert_eq!(d["issuer"], op.issuer());
    assert!(
        op.issuer().starts_with("http://127.0.0.1:"),
        "{}",
        op.issuer()
    );
    assert_eq!(
        d["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    assert_eq!(d["response_types_supported"], serde_json::json!(["code"]));
    for (field, want) in [
        ("scopes_supported", "openid"),
        ("scopes_supported", "email"),
        ("scopes_supported", "profile"),
        ("scopes_supported", "groups"),
        ("claims_supported", "groups"),
        ("claims_supported", "email_verified"),
        (
            "token_endpoint_auth_methods_supported",
            "client_secret_basic",
        ),
        (
            "token_endpoint_auth_methods_supported",
            "client_secret_post",
        ),
        ("id_token_signing_alg_values_supported", "RS256"),
    ] {
        assert!(
            d[field].as_array().unwrap().iter().any(|v| v == want),
            "{field} lacks {want}: {}",
            d[field]
        );
    }
    for (field, path) in [
        ("authorization_endpoint", "/auth"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
        ("userinfo_endpoint", "/me"),
    ] {
        assert_eq!(d[field], op.url(path), "{field}");
    }

    let keys = get_json(&http, d["jwks_uri"].as_str().unwrap()).await;
    let key = &keys["keys"][0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert!(key["n"].is_string() && key["d"].is_null(), "{key}");
    let state = op.state().await;
    assert_eq!(kids(&keys), vec![state["signing_kid"].as_str().unwrap()]);

    let log = op.log().await;
    let kinds: Vec<&str> = log.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["discovery", "jwks"], "{log:?}");
    assert!(log.iter().all(|e| e["status"] == 200), "{log:?}");
}

#[tokio::test]
async fn code_flow_with_pkce() {
    let c = client();
    let Some(op) = provider("code_flow_with_pkce", std::slice::from_ref(&c)).await else {
        return;
    };
    let mut rp = Rp::new(&op, &c);

    // A code needs its own verifier, and a verifier at all.
    let (_, code) = rp.sign_in("alice").await;
    let wrong = "wrong-verifier-wrong-verifier-wrong-verifier";
    let (status, body) = rp.redeem(&code, Some(wrong), false).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    // Signed in now: the next authorization request is silent.
    let again = rp.authorize(&[]).await;
    let code = code_from(&again.landing, &c, &again.state);
    let (status, body) = rp.redeem(&code, None, false).await;
    assert_eq!(status, 400, "a token request without code_verifier: {body}");

    let authz = rp.authorize(&[]).await;
    let code = code_from(&authz.landing, &c, &authz.state);
    let (status, body) = rp.redeem(&code, Some(&authz.verifier), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let token = body["id_token"].as_str().unwrap();
    let (header, claims, signed) = decode_jwt(token);
    assert!(signed);
    assert_eq!(header["alg"], "RS256");
    verify_rs256(token, &jwks(&op).await).unwrap();
    assert_eq!(claims["iss"], op.issuer());
    assert_eq!(claims["aud"], c.id.as_str());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], authz.nonce.as_str());
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["email_verified"], true);
    assert_eq!(claims["name"], "Alice Example");
    assert_eq!(claims["groups"], serde_json::json!(["eng"]));
    let now = unix_now();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(
        (iat - now).abs() < 60 && exp > now,
        "iat {iat} exp {exp} now {now}"
    );
    // The code is single-use.
    let (status, _) = rp.redeem(&code, Some(&authz.verifier), false).await;
    assert_eq!(status, 400);

    // client_secret_post works as well as client_secret_basic.
    let authz = rp.authorize(&[]).await;
    let code = code_from(&authz.landing, &c, &authz.state);
    let (status, body) = rp.redeem(&code, Some(&authz.verifier), true).await;
    assert_eq!(status, 200, "{body}");

    // What the log says: PKCE on every authorization request, the verifier
    // present or not on each token request, and how the client authenticated.
    let authorizations = op.events("authorization").await;
    let first = authorizations
        .iter()
        .find(|e| e["path"] == "/auth")
        .unwrap();
    assert_eq!(first["code_challenge_method"], "S256");
    assert_eq!(first["code_challenge"], true);
    assert_eq!(first["nonce"], true);
    let tokens = op.events("token").await;
    let seen: Vec<(bool, &str, u64)> = tokens
        .iter()
        .map(|e| {
            (
                e["code_verifier"].as_bool().unwrap(),
                e["client_auth"].as_str().unwrap(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (true, "client_secret_basic", 400),
            (false, "client_secret_basic", 400),
            (true, "client_secret_basic", 200),
            (true, "client_secret_basic", 400),
            (true, "client_secret_post", 200),
        ],
        "{tokens:?}"
    );
    let logins = op.events("login").await;
    assert_eq!(
        logins.len(),
        1,
        "one login, then silent sign-ins: {logins:?}"
    );
    assert_eq!(logins[0]["username"], "alice");
}

#[tokio::test]
async fn clients_registered_later() {
    let Some(op) = provider("clients_registered_later", &[]).await else {
        return;
    };
    let c = client();
    let mut rp = Rp::new(&op, &c);
    // Unknown client: an error page at the provider, no redirect.
    let authz = rp.authorize(&[]).await;
    let Landing::Page { html, .. } = &authz.landing else {
        panic!("{:?}", authz.landing)
    };
    assert!(html.contains("invalid_client"), "{html}");

    assert_eq!(
        op.set_clients(std::slice::from_ref(&c)).await,
        std::slice::from_ref(&c.id)
    );
    rp.id_token("alice").await;

    // A client oidc-provider refuses changes nothing.
    let bad = OidcClient::new(
        "bad",
        "secret",
        &["https://login.localhost:1/callback#frag"],
    );
    let resp = http_client()
        .post(op.url("/__control/clients"))
        .body(
            serde_json::json!({ "clients": [{
            "client_id": bad.id, "client_secret": bad.secret, "redirect_uris": bad.redirect_uris,
        }] })
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("fragment"), "{text}");
    // Still registered, still signed in.
    let silent = rp.authorize(&[]).await;
    code_from(&silent.landing, &c, &silent.state);
}

#[tokio::test]
async fn pkce_is_required() {
    let c = client();
    let Some(op) = provider("pkce_is_required", std::slice::from_ref(&c)).await else {
        return;
    };
    let http = http_client();
    for (what, extra) in [
        ("no code_challenge", vec![]),
        (
            "plain",
            vec![
                ("code_challenge", "a".repeat(43)),
                ("code_challenge_method", "plain".to_string()),
            ],
        ),
    ] {
        let mut url = url::Url::parse(&op.url("/auth")).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", &c.id)
            .append_pair("response_type", "code")
            .append_pair("scope", "openid")
            .append_pair("redirect_uri", REDIRECT)
            .append_pair("state", "s")
            .extend_pairs(extra.iter().map(|(k, v)| (*k, v.as_str())));
        let resp = http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 303, "{what}");
        let location = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        assert!(
            location.as_str().starts_with(REDIRECT),
            "{what}: {location}"
        );
        assert_eq!(
            q.get("error").map(String::as_str),
            Some("invalid_request"),
            "{what}: {location}"
        );
    }
}

#[tokio::test]
async fn test_users_claims() {
    let c = client();
    let Some(op) = provider("test_users_claims", std::slice::from_ref(&c)).await else {
        return;
    };
    for (user, email, verified, groups) in [
        ("bob", "bob@example.org", true, serde_json::json!(["ops"])),
        (
            "carol",
            "carol@example.com",
            false,
            serde_json::json!(["eng"]),
        ),
        ("dave", "dave@other.test", true, serde_json::json!([])),
    ] {
        let mut rp = Rp::new(&op, &c);
        let (_, token) = rp.id_token(user).await;
        let (_, claims, _) = decode_jwt(&token);
        assert_eq!(claims["sub"], user);
        assert_eq!(claims["email"], email, "{user}");
        assert_eq!(claims["email_verified"], verified, "{user}");
        assert_eq!(claims["groups"], groups, "{user}");
        assert!(claims["name"].is_string(), "{user}: {claims}");
    }

    // A wrong password shows the form again with an error; nothing signed in.
    let mut rp = Rp::new(&op, &c);
    let authz = rp.authorize(&[]).await;
    let landing = rp.submit_login(&authz.landing, "alice", "bob").await;
    assert_login_form(&landing);
    let Landing::Page { html, .. } = &landing else {
        unreachable!()
    };
    assert!(html.contains("id=\"login-error\""), "{html}");
    let landing = rp.submit_login(&landing, "mallory", "mallory").await;
    assert_login_form(&landing);
    let landing = rp.submit_login(&landing, "alice", "alice").await;
    code_from(&landing, &c, &authz.state);
    let logins: Vec<(String, bool)> = op
        .events("login")
        .await
        .iter()
        .map(|e| {
            (
                e["username"].as_str().unwrap().to_string(),
                e["ok"].as_bool().unwrap(),
            )
        })
        .collect();
    let tail = &logins[logins.len() - 3..];
    assert_eq!(
        tail,
        [
            ("alice".to_string(), false),
            ("mallory".to_string(), false),
            ("alice".to_string(), true)
        ]
    );

    // The cancel button ends the request with access_denied.
    let mut rp = Rp::new(&op, &c);
    let authz = rp.authorize(&[]).await;
    let Landing::Page { url, html } = &authz.landing else {
        panic!("{:?}", authz.landing)
    };
    let target = url.join(&form_action(html, "cancel-form")).unwrap();
    let resp = rp.send(rp.http.post(target.clone()), &target).await;
    let Landing::Away(back) = rp.follow(resp).await else {
        panic!("cancel did not redirect to the client")
    };
    assert!(back.as_str().contains("error=access_denied"), "{back}");
}

#[tokio::test]
async fn sessions_are_real() {
    let c = client();
    let Some(op) = provider("sessions_are_real", std::slice::from_ref(&c)).await else {
        return;
    };
    let mut rp = Rp::new(&op, &c);
    let (_, token) = rp.id_token("alice").await;
    assert_eq!(decode_jwt(&token).1["sub"], "alice");

    // Signed in: the next request goes straight back with a code.
    let silent = rp.authorize(&[]).await;
    code_from(&silent.landing, &c, &silent.state);

    // prompt=login shows the form again, even though the session is alive.
    let forced = rp.authorize(&[("prompt", "login")]).await;
    assert_login_form(&forced.landing);
    let landing = rp.submit_login(&forced.landing, "alice", "alice").await;
    let code = code_from(&landing, &c, &forced.state);
    let (status, body) = rp.redeem(&code, Some(&forced.verifier), false).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims, _) = decode_jwt(body["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], forced.nonce.as_str());
    let logins = op.events("login").await;
    assert_eq!(logins.len(), 2, "{logins:?}");

    // Signing in as someone else: oidc-provider ends alice's session first
    // through a page that posts itself (a browser runs its script; here the
    // form is posted by hand).
    let switch = rp.authorize(&[("prompt", "login")]).await;
    let landing = rp.submit_login(&switch.landing, "bob", "bob").await;
    let Landing::Page { url, html } = &landing else {
        panic!("expected the self-posting logout page, got {landing:?}")
    };
    let (action, fields) = signin::hidden_form(html);
    let target = url.join(&action).unwrap();
    assert_eq!(target.path(), "/session/end/confirm", "{html}");
    let req = rp.http.post(target.clone()).form(&fields);
    let resp = rp.send(req, &target).await;
    let landing = rp.follow(resp).await;
    let code = code_from(&landing, &c, &switch.state);
    let (status, body) = rp.redeem(&code, Some(&switch.verifier), false).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decode_jwt(body["id_token"].as_str().unwrap()).1["sub"],
        "bob"
    );
    // bob's session now: silent, as bob.
    let (_, token) = rp.id_token("bob").await;
    assert_eq!(decode_jwt(&token).1["email"], "bob@example.org");

    // prompt=none without a session: login_required, no form.
    let mut stranger = Rp::new(&op, &c);
    let none = stranger.authorize(&[("prompt", "none")]).await;
    let Landing::Away(url) = &none.landing else {
        panic!("{:?}", none.landing)
    };
    assert!(url.as_str().contains("error=login_required"), "{url}");
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

#[tokio::test]
async fn id_token_faults() {
    let c = client();
    let Some(op) = provider("id_token_faults", std::slice::from_ref(&c)).await else {
        return;
    };
    let mut rp = Rp::new(&op, &c);
    for fault in Fault::ID_TOKEN {
        let before = jwks(&op).await;
        let state = op.set_fault(fault, Times::Next(1)).await;
        assert_eq!(state["mode"], fault.name());
        let (authz, token) = rp.id_token("alice").await;
        let after = jwks(&op).await;
        let (header, claims, signed) = decode_jwt(&token);
        let now = unix_now();
        let what = format!("{}: {header} {claims}", fault.name());
        // Everything but the fault is as usual.
        assert_eq!(claims["sub"], "alice", "{what}");
        assert_eq!(claims["email"], "alice@example.com", "{what}");
        if fault != Fault::WrongAud {
            assert_eq!(claims["aud"], c.id.as_str(), "{what}");
        }
        if fault != Fault::WrongIss {
            assert_eq!(claims["iss"], op.issuer(), "{what}");
        }
        if fault != Fault::WrongNonce {
            assert_eq!(claims["nonce"], authz.nonce.as_str(), "{what}");
        }
        match fault {
            Fault::WrongAud => assert_ne!(claims["aud"], c.id.as_str(), "{what}"),
            Fault::WrongIss => assert_ne!(claims["iss"], op.issuer(), "{what}"),
            Fault::WrongNonce => assert_ne!(claims["nonce"], authz.nonce.as_str(), "{what}"),
            Fault::Expired => assert!(claims["exp"].as_i64().unwrap() < now - 600, "{what}"),
            Fault::FutureIat => assert!(claims["iat"].as_i64().unwrap() > now + 600, "{what}"),
            _ => {}
        }
        match fault {
            Fault::AlgNone => {
                assert_eq!(header["alg"], "none", "{what}");
                assert!(!signed, "{what}");
            }
            Fault::BadSignature => {
                assert!(kids(&before).contains(&header["kid"].as_str().unwrap().to_string()));
                let err = verify_rs256(&token, &after).unwrap_err();
                assert!(err.contains("does not verify"), "{what}: {err}");
            }
            Fault::UnknownKid => {
                let kid = header["kid"].as_str().unwrap().to_string();
                assert!(!kids(&before).contains(&kid), "{what}: {before}");
                assert!(kids(&after).contains(&kid), "{what}: {after}");
                verify_rs256(&token, &after).unwrap();
                // The provider itself still signs with its old key.
                assert_eq!(kids(&after)[0], kids(&before)[0]);
            }
            _ => {
                verify_rs256(&token, &after).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(kids(&after), kids(&before), "{what}");
            }
        }
        // Next(1): used up, back to normal.
        assert_eq!(op.state().await["mode"], "normal", "{what}");
        let (authz, token) = rp.id_token("alice").await;
        let (_, claims, _) = decode_jwt(&token);
        assert_eq!(claims["nonce"], authz.nonce.as_str());
        assert_eq!(claims["aud"], c.id.as_str());
        verify_rs256(&token, &jwks(&op).await).unwrap();
    }
    let faults: Vec<Value> = op
        .events("token")
        .await
        .iter()
        .map(|e| e["fault"].clone())
        .collect();
    let want: Vec<Value> = Fault::ID_TOKEN
        .iter()
        .flat_map(|f| [Value::from(f.name()), Value::Null])
        .collect();
    assert_eq!(faults, want);

    // Until reset: every token, then none.
    op.set_fault(Fault::WrongAud, Times::UntilReset).await;
    for _ in 0..2 {
        let (_, token) = rp.id_token("alice").await;
        assert_ne!(decode_jwt(&token).1["aud"], c.id.as_str());
    }
    op.reset().await;
    let (_, token) = rp.id_token("alice").await;
    assert_eq!(decode_jwt(&token).1["aud"], c.id.as_str());
}

#[tokio::test]
async fn key_rotation() {
    let c = client();
    let Some(op) = provider("key_rotation", std::slice::from_ref(&c)).await else {
        return;
    };
    let mut rp = Rp::new(&op, &c);
    let (_, old_token) = rp.id_token("alice").await;
    let old_kid = kids(&jwks(&op).await)[0].clone();
    assert_eq!(decode_jwt(&old_token).0["kid"], old_kid.as_str());

    let new_kid = op.rotate_keys().await;
    assert_ne!(new_kid, old_kid);
    let keys = jwks(&op).await;
    assert_eq!(kids(&keys), [new_kid.clone(), old_kid.clone()]);
    // The session survives the rotation: a silent sign-in, signed with the
    // new key; the old token still verifies with the old key.
    let authz = rp.authorize(&[]).await;
    let code = code_from(&authz.landing, &c, &authz.state);
    let (status, body) = rp.redeem(&code, Some(&authz.verifier), false).await;
    assert_eq!(status, 200, "{body}");
    let token = body["id_token"].as_str().unwrap();
    assert_eq!(decode_jwt(token).0["kid"], new_kid.as_str());
    verify_rs256(token, &keys).unwrap();
    verify_rs256(&old_token, &keys).unwrap();

    // Dropping the old key: only the newest is published.
    let newest = op.rotate_keys_dropping_old().await;
    let keys = jwks(&op).await;
    assert_eq!(kids(&keys), std::slice::from_ref(&newest));
    assert!(verify_rs256(&old_token, &keys).is_err());
    let (_, token) = rp.id_token("alice").await;
    assert_eq!(decode_jwt(&token).0["kid"], newest.as_str());
    verify_rs256(&token, &keys).unwrap();

    // Also through the mode API.
    let state = op
        .set_mode_json(serde_json::json!({ "mode": "rotate" }))
        .await;
    assert_eq!(state["mode"], "normal");
    assert_eq!(state["signing_kid"], state["kid"]);
    assert_eq!(kids(&jwks(&op).await)[0], state["kid"].as_str().unwrap());
}

#[tokio::test]
async fn slow_and_down() {
    let c = client();
    let Some(op) = provider("slow_and_down", std::slice::from_ref(&c)).await else {
        return;
    };
    let http = http_client();
    let discovery = op.url("/.well-known/openid-configuration");
    let status = |url: String| {
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };

    // Down for the next two requests to those endpoints, then up.
    op.set_fault(Fault::Down, Times::Next(2)).await;
    assert_eq!(status(discovery.clone()).await, 503);
    assert_eq!(status(op.url("/jwks")).await, 503);
    assert_eq!(status(op.url("/jwks")).await, 200);

    // Down until reset, the token endpoint too.
    let mut rp = Rp::new(&op, &c);
    let (authz, code) = rp.sign_in("alice").await;
    op.set_fault(Fault::Down, Times::UntilReset).await;
    let (st, body) = rp.redeem(&code, Some(&authz.verifier), false).await;
    assert_eq!(st, 503, "{body}");
    assert_eq!(status(discovery.clone()).await, 503);
    op.reset().await;
    let (st, body) = rp.redeem(&code, Some(&authz.verifier), false).await;
    assert_eq!(st, 200, "the code survives the outage: {body}");

    // Slow: the response comes, late.
    let delay = Duration::from_millis(700);
    op.set_fault(Fault::Slow(delay), Times::Next(1)).await;
    let t = Instant::now();
    assert_eq!(status(discovery.clone()).await, 200);
    assert!(
        t.elapsed() >= delay,
        "slow discovery took {:?}",
        t.elapsed()
    );

    // Slow on the JWKS only.
    op.set_mode_json(serde_json::json!({
        "mode": "slow", "delay_ms": 700, "endpoints": ["jwks"], "count": 1
    }))
    .await;
    assert_eq!(status(discovery.clone()).await, 200);
    assert_eq!(
        op.state().await["mode"],
        "slow",
        "discovery did not use it up"
    );
    let t = Instant::now();
    assert_eq!(status(op.url("/jwks")).await, 200);
    assert!(t.elapsed() >= delay, "slow JWKS took {:?}", t.elapsed());
    assert_eq!(op.state().await["mode"], "normal");

    let seen: Vec<(String, u64, Value)> = op
        .log()
        .await
        .iter()
        .filter(|e| ["discovery", "jwks", "token"].contains(&e["kind"].as_str().unwrap()))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
                e["fault"].clone(),
            )
        })
        .collect();
    let s =
        |k: &str, st: u64, f: Option<&str>| (k.to_string(), st, f.map_or(Value::Null, Value::from));
    assert_eq!(
        seen,
        [
            s("discovery", 503, Some("down")),
            s("jwks", 503, Some("down")),
            s("jwks", 200, None),
            s("token", 503, Some("down")),
            s("discovery", 503, Some("down")),
            s("token", 200, None),
            s("discovery", 200, Some("slow")),
            s("discovery", 200, None),
            s("jwks", 200, Some("slow")),
        ]
    );

    // Bad control requests are refused.
    let resp = http
        .post(op.url("/__control/mode"))
        .body(r#"{"mode":"no-such-mode"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

// ---------------------------------------------------------------------------
// https with a private CA
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tls_provider() {
    let Some(bins) = node_or_skip("tls_provider") else {
        return;
    };
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "burrow test OIDC CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca_cert, &ca_key)
        .unwrap();
    let c = client();
    let op = OidcProvider::start_tls(
        &bins,
        std::slice::from_ref(&c),
        OidcTls {
            cert_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
        },
    )
    .await;
    assert_eq!(op.issuer(), format!("https://localhost:{}", op.port()));

    let trusting = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_cert.pem().as_bytes()).unwrap())
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], op.port())))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let d = get_json(&trusting, &op.url("/.well-known/openid-configuration")).await;
    assert_eq!(d["issuer"], op.issuer());
    assert_eq!(d["token_endpoint"], op.url("/token"));
    let keys = get_json(&trusting, d["jwks_uri"].as_str().unwrap()).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 1);

    // Without the CA the certificate is refused: the test above did check it.
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], op.port())))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let err = untrusting
        .get(op.url("/.well-known/openid-configuration"))
        .send()
        .await
        .expect_err("a client without the private CA must refuse the certificate");
    assert!(err.is_connect(), "{err:?}");

    // The control API works over https too.
    op.set_fault(Fault::Down, Times::Next(1)).await;
    let resp = trusting.get(op.url("/jwks")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
}

// ---------------------------------------------------------------------------
// Exits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn exits_on_sigterm_and_closed_stdin() {
    let Some(bins) = node_or_skip("exits_on_sigterm_and_closed_stdin") else {
        return;
    };
    let clients = [client()];
    let (mut a, mut b) = tokio::join!(
        OidcProvider::start(&bins, &clients),
        OidcProvider::start(&bins, &clients)
    );
    let st = a
        .terminate(Duration::from_secs(10))
        .await
        .expect("exit after SIGTERM");
    assert!(st.success(), "SIGTERM: {st}");
    assert!(
        b.close_stdin_and_wait(Duration::from_secs(10)).await,
        "still running 10 s after its stdin closed"
    );
    b.stderr
        .wait_contains("stdin closed", Duration::from_secs(5))
        .await
        .unwrap();
    let refused = http_client().get(b.url("/jwks")).send().await;
    assert!(refused.is_err(), "still answering: {refused:?}");
}

// ---------------------------------------------------------------------------
// The login form in a real browser
// ---------------------------------------------------------------------------

/// A tiny redirect target: answers `/callback` with a page (marker
/// `#callback-done`) and records each query string.
struct Callback {
    port: u16,
    queries: Arc<Mutex<Vec<HashMap<String, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Callback {
    async fn start() -> Callback {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let queries: Arc<Mutex<Vec<HashMap<String, String>>>> = Arc::default();
        let q2 = queries.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let q = q2.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let q = q.clone();
                        async move {
                            let mut status = 404;
                            if req.uri().path() == "/callback" {
                                let query = req.uri().query().unwrap_or("");
                                let pairs = url::form_urlencoded::parse(query.as_bytes())
                                    .into_owned()
                                    .collect();
                                q.lock().unwrap().push(pairs);
                                status = 200;
                            }
                            let html = "<!doctype html><title>callback</title>\
                                        <h1 id=\"callback-done\">back at the client</h1>";
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "text/html")
                                    .body(Full::new(Bytes::from_static(html.as_bytes())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Callback {
            port,
            queries,
            task,
        }
    }

    fn uri(&self) -> String {
        format!("http://localhost:{}/callback", self.port)
    }

    fn last(&self) -> HashMap<String, String> {
        self.queries
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a callback")
    }

    fn count(&self) -> usize {
        self.queries.lock().unwrap().len()
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn login_form_in_chromium() {
    use browser::*;
    use fantoccini::Locator;

    let Some(bins) = node_or_skip("login_form_in_chromium") else {
        return;
    };
    let Some(browser_bins) = browser_or_skip("login_form_in_chromium") else {
        return;
    };
    let cb = Callback::start().await;
    let c = OidcClient::new("browser-rp", &random_token(18), &[&cb.uri()]);
    // The browser resolves localhost names only (see OidcConfig::host).
    let op = OidcProvider::start_with(
        &bins,
        OidcConfig {
            clients: vec![c.clone()],
            host: Some("localhost".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(op.issuer().starts_with("http://localhost:"));
    let b = Browser::start(&browser_bins).await;
    let rp = Rp::new(&op, &c);

    let auth_url = |extra: &[(&str, &str)]| {
        let (verifier, challenge) = pkce_pair();
        let (nonce, state) = (random_token(12), random_token(12));
        let mut url = url::Url::parse(&op.url("/auth")).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", &c.id)
            .append_pair("response_type", "code")
            .append_pair("scope", SCOPE)
            .append_pair("redirect_uri", &cb.uri())
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("nonce", &nonce)
            .append_pair("state", &state)
            .extend_pairs(extra);
        (url.to_string(), verifier, nonce, state)
    };
    let fill_and_submit = |user: &'static str| {
        let client = b.client().clone();
        async move {
            let form = step(
                "find the login form",
                client.wait().for_element(Locator::Id("login-form")),
            )
            .await;
            let _ = form;
            let name = step("find username", client.find(Locator::Id("username"))).await;
            step("clear username", name.clear()).await;
            step("type username", name.send_keys(user)).await;
            let pw = step("find password", client.find(Locator::Id("password"))).await;
            step("type password", pw.send_keys(user)).await;
            let button = step("find sign-in", client.find(Locator::Id("sign-in"))).await;
            step("click sign-in", button.click()).await;
            step(
                "back at the client",
                client.wait().for_element(Locator::Id("callback-done")),
            )
            .await;
        }
    };
    let redeem = |code: String, verifier: String| {
        let rp = &rp;
        async move {
            let (status, body) = rp.redeem(&code, Some(&verifier), false).await;
            assert_eq!(status, 200, "{body}");
            decode_jwt(body["id_token"].as_str().unwrap()).1
        }
    };

    // Sign in as alice through the form.
    let (url, verifier, nonce, state) = auth_url(&[]);
    step("open the authorization URL", b.client().goto(&url)).await;
    step(
        "login form",
        b.client().wait().for_element(Locator::Id("sign-in")),
    )
    .await;
    let png = step("screenshot", b.client().screenshot()).await;
    let shot = screenshot_path("oidc-login.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, &png).unwrap();
    check_screenshot(&png);
    fill_and_submit("alice").await;
    let q = cb.last();
    assert_eq!(q.get("state"), Some(&state));
    let claims = redeem(q["code"].clone(), verifier).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["nonce"], nonce.as_str());
    assert_eq!(claims["groups"], serde_json::json!(["eng"]));

    // The provider's session signs the browser in again without the form.
    let (url, verifier, _, state) = auth_url(&[]);
    let before = cb.count();
    step("open the authorization URL again", b.client().goto(&url)).await;
    step(
        "silently back at the client",
        b.client().wait().for_element(Locator::Id("callback-done")),
    )
    .await;
    assert_eq!(cb.count(), before + 1);
    let q = cb.last();
    assert_eq!(q.get("state"), Some(&state));
    assert_eq!(redeem(q["code"].clone(), verifier).await["sub"], "alice");

    // prompt=login: the form again, and signing in as someone else works
    // (oidc-provider ends alice's session on the way).
    let (url, verifier, nonce, state) = auth_url(&[("prompt", "login")]);
    step("open with prompt=login", b.client().goto(&url)).await;
    fill_and_submit("bob").await;
    let q = cb.last();
    assert_eq!(q.get("state"), Some(&state));
    let claims = redeem(q["code"].clone(), verifier).await;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["nonce"], nonce.as_str());
    assert_eq!(claims["email"], "bob@example.org");

    let logins: Vec<String> = op
        .events("login")
        .await
        .iter()
        .map(|e| e["username"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logins, ["alice", "bob"]);
    b.close().await;
}
