//! Sign-in at the edge, end to end: the real binary, stock OpenSSH, a real
//! OpenID provider (`oidc-provider` on Node.js, tests/oidc/), a visitor
//! driven hop by hop (tests/common/signin.rs) — and Chromium for the whole
//! flow as a person sees it.
//!
//! Needs `node` and `npm` (and `chromium`/`chromedriver` for the browser
//! test); `.ci/run` installs them. Without them the tests fail unless
//! `BURROW_SKIP_OIDC_TESTS=1` (and `BURROW_SKIP_BROWSER_TESTS=1`).

#[path = "common/browser.rs"]
mod browser;
#[path = "common/cluster.rs"]
mod cluster_harness;
mod common;
#[path = "common/dns.rs"]
mod dns;
#[path = "common/oidc.rs"]
mod oidc;
#[path = "common/signin.rs"]
mod signin;

use std::time::{Duration, Instant};

use common::*;
use oidc::{Fault, Times};
use openidconnect::core::{CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use serde_json::Value;
use signin::{SignIn, Visitor};

/// The session cookie's name.
const SESSION: &str = "__Host-burrow_session";

/// A stock `ssh -R` tunnel to `origin` with `options` as its command.
async fn tunnel(si: &SignIn, origin: &Origin, options: &[&str]) -> (Ssh, String) {
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let mut command = vec!["--"];
    command.extend_from_slice(options);
    let ssh = Ssh::spawn_cmd(&si.burrow, &["-R", &forward], &command);
    let host = ssh.url().await.host();
    (ssh, host)
}

/// The headers the app received, as its `/headers` page shows them.
fn app_headers(hop: &signin::Hop) -> Value {
    assert_eq!(hop.status, 200, "{} {}: {}", hop.status, hop.url, hop.body);
    hop.json()
}

/// Verifies an `X-Burrow-Identity` assertion the way an app would: the
/// JWKS from the sign-in host, EdDSA, audience = the tunnel's host.
async fn verify_assertion(si: &SignIn, token: &str, audience: &str) -> Value {
    let jwks_url = format!("{}/.well-known/jwks.json", si.login_origin());
    let mut visitor = Visitor::new();
    visitor.navigates = false;
    let jwks: CoreJsonWebKeySet = serde_json::from_str(&visitor.get(&jwks_url).await.body).unwrap();
    let issuer = openidconnect::IssuerUrl::new(si.login_origin()).unwrap();
    let verifier = openidconnect::IdTokenVerifier::new_public_client(
        openidconnect::ClientId::new(audience.to_string()),
        issuer,
        jwks,
    )
    .set_allowed_algs([CoreJwsSigningAlgorithm::EdDsa]);
    let parsed: openidconnect::IdToken<
        Extra,
        openidconnect::core::CoreGenderClaim,
        openidconnect::core::CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    > = token.parse().expect("the assertion is a JWT");
    let claims = parsed
        .claims(&verifier, |_: Option<&openidconnect::Nonce>| Ok(()))
        .unwrap_or_else(|e| panic!("the assertion does not verify: {e}"));
    serde_json::to_value(claims).unwrap()
}

/// burrow's extra assertion claims, for the test's verifier.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Extra {
    provider: String,
    #[serde(default)]
    groups: Vec<String>,
}
impl openidconnect::AdditionalClaims for Extra {}

// ---------------------------------------------------------------------------
// The flow
// ---------------------------------------------------------------------------

/// A visitor on the list signs in at the provider and reaches the app,
/// which gets who they are — `X-Burrow-User`, `X-Burrow-User-Name`, and an
/// `X-Burrow-Identity` it verifies against the published keys — and never
/// the session cookie; forged copies of those headers never get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_visitor_reaches_the_app_which_verifies_who_they_are() {
    let Some(si) = SignIn::start("signed_in_visitor", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-app").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=*@example.com"]).await;
    let mut alice = Visitor::new();
    let hop = alice.sign_in(&si.url(&host, "/headers"), "alice").await;
    let seen = app_headers(&hop);
    assert_eq!(seen["x-burrow-user"], "alice@example.com");
    assert_eq!(seen["x-burrow-user-name"], "Alice Example");
    let cookies = seen["cookie"].as_str().unwrap_or_default();
    assert!(
        !cookies.contains(SESSION),
        "the app got the session cookie: {cookies}"
    );
    let token = seen["x-burrow-identity"].as_str().expect("an assertion");
    let claims = verify_assertion(&si, token, &host).await;
    assert_eq!(claims["sub"], "default:alice");
    assert_eq!(claims["email"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["eng"]));

    // Forged headers of a visitor are replaced, never passed on.
    let forged = alice
        .http_get_with(
            &si.url(&host, "/headers"),
            &[("x-burrow-user", "eve@example.com")],
        )
        .await;
    assert_eq!(app_headers(&forged)["x-burrow-user"], "alice@example.com");

    // The operator's tunnel list shows who reached the app.
    let tunnels = si.burrow.admin_tunnels().await;
    let listed = tunnels
        .as_array()
        .unwrap()
        .iter()
        .find(|t| host.starts_with(&format!("{}.", t["name"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{host} not in {tunnels}"));
    assert_eq!(listed["signed_in"][0]["user"], "alice@example.com");
    assert_eq!(listed["signed_in"][0]["requests"], 2);
    assert!(listed["signed_in"][0]["last_seen"].is_string());
}

/// The owner sees who each request came from: the request log line and
/// the inspector entry (`ssh -L …:localhost:4040`, `inspect=on`) name the
/// signed-in visitor; a request without a session names nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_and_inspector_name_the_signed_in_visitor() {
    let Some(si) = SignIn::start("log_and_inspector", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-inspected").await;
    let inspector = dead_port();
    let ssh = Ssh::spawn_cmd(
        &si.burrow,
        &[
            "-R",
            &format!("80:127.0.0.1:{}", origin.port),
            "-L",
            &format!("127.0.0.1:{inspector}:localhost:4040"),
        ],
        &["--", "login=*@example.com", "inspect=on"],
    );
    let host = ssh.url().await.host();
    let mut alice = Visitor::new();
    let hop = alice.sign_in(&si.url(&host, "/whoami"), "alice").await;
    assert_eq!(hop.status, 200, "{}", hop.body);
    let line = ssh
        .stdout
        .wait_for(Duration::from_secs(10), |text| {
            text.lines()
                .find(|l| l.contains("GET") && l.contains("/whoami") && l.contains("200"))
                .map(str::to_string)
        })
        .await
        .unwrap_or_else(|e| panic!("no log line: {e}: {}", ssh.all_output()));
    assert!(line.contains("alice@example.com"), "{line}");

    let url = format!("http://127.0.0.1:{inspector}/api/entries");
    let deadline = Instant::now() + Duration::from_secs(15);
    let entries = loop {
        let got = reqwest::get(&url).await;
        if let Ok(resp) = got {
            let seen: Value = resp.json().await.unwrap();
            let entries = seen["entries"].as_array().cloned().unwrap_or_default();
            if entries
                .iter()
                .any(|e| e["path"] == "/whoami" && e["status"] == 200)
            {
                break entries;
            }
        }
        assert!(Instant::now() < deadline, "no inspector entry for /whoami");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let served = entries
        .iter()
        .find(|e| e["path"] == "/whoami" && e["status"] == 200)
        .unwrap();
    assert_eq!(served["user"], "alice@example.com");
    assert_eq!(served["by_burrow"], false);
    let anonymous = entries
        .iter()
        .find(|e| e["path"] == "/whoami" && e["status"] != 200)
        .expect("the first, anonymous request is captured too");
    assert!(anonymous["user"].is_null(), "{anonymous}");
    assert_eq!(anonymous["by_burrow"], true);
}

/// A custom domain signs in like a tunnel name: the sign-in host accepts
/// it as a return target (it is bound here), the one-time code lands on
/// the custom name, whose own host-only cookie then lets alice in; a
/// session of the custom name is no session on another tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_domain_signs_in_like_a_tunnel_name() {
    let dns = dns::Dns::start().await;
    let resolver = dns.addr.to_string();
    let extra = ["--dns-resolver", resolver.as_str(), "--dns-timeout", "5s"];
    let Some(si) = SignIn::start("custom_domain", &extra).await else {
        return;
    };
    let origin = Origin::start("signin-custom").await;
    let key = SshKeyPair::generate();
    let name = "app.example.org";
    dns.prove(name, &key).await;
    let spec = format!("{name}:80:127.0.0.1:{}", origin.port);
    let ssh = SshSpec {
        port: si.burrow.ssh_port(),
        args: &["-R", &spec],
        remote_cmd: &["--", "login=*@example.com"],
        ..SshSpec::default()
    }
    .spawn_with_key(&key);
    let url = si.burrow.https_url(name, "");
    ssh.stdout
        .wait_contains(&url, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("no custom tunnel: {e}: {}", ssh.all_output()));
    let (_other, other_host) = tunnel(&si, &origin, &["login=*@example.com"]).await;

    let mut alice = Visitor::new();
    alice.through(std::net::IpAddr::from([127, 0, 0, 1]));
    let hop = alice.sign_in(&si.url(name, "/whoami"), "alice").await;
    assert_eq!(hop.status, 200, "{}: {}", hop.url, hop.body);
    assert_eq!(hop.body, "signin-custom");
    assert_eq!(hop.url.host_str(), Some(name));
    let session = alice
        .cookie(name, SESSION)
        .expect("the custom name's cookie");
    let mut replay = Visitor::new();
    replay.navigates = false;
    let cookie = format!("{SESSION}={session}");
    let elsewhere = replay
        .http_get_with(&si.url(&other_host, "/whoami"), &[("cookie", &cookie)])
        .await;
    assert_eq!(elsewhere.status, 401, "{}", elsewhere.body);
}

/// Someone who can sign in but is not on the list gets a 403 page saying
/// who they are signed in as, with a way to sign in as someone else; the
/// app never sees the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_not_on_the_list_gets_403_and_can_sign_in_as_someone_else() {
    let Some(si) = SignIn::start("not_on_the_list", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-403").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=group:eng"]).await;
    let mut bob = Visitor::new();
    let hop = bob.sign_in(&si.url(&host, "/whoami"), "bob").await;
    assert_eq!(hop.status, 403, "{}", hop.body);
    assert!(
        hop.body.contains("signed in as bob@example.org"),
        "{}",
        hop.body
    );
    assert!(hop.body.contains("Sign in as someone else"), "{}", hop.body);
    assert!(hop.body.contains("prompt=login"), "{}", hop.body);
    assert_eq!(origin.hits("/whoami"), 0, "the app was reached");
    // Sign in as alice (in group eng) through the offered link.
    let again = hop
        .body
        .split("href=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .replace("&amp;", "&");
    let hop = bob.sign_in(&again, "alice").await;
    assert_eq!(hop.status, 200, "{}", hop.body);
    assert_eq!(hop.body, "signin-403");
}

/// API clients are never sent to a login page: a `fetch` (no HTML in
/// `Accept`), an XHR and a WebSocket upgrade without a session get 401
/// with JSON saying where to sign in; a CORS preflight of a `cors=` tunnel
/// is still answered before the gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_clients_get_401_json_and_preflights_still_pass() {
    let Some(si) = SignIn::start("api_clients_401", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-api").await;
    let options = ["login=any", "cors=https://app.example"];
    let (_ssh, host) = tunnel(&si, &origin, &options).await;
    let mut api = Visitor::new();
    api.navigates = false;
    let hop = api.get(&si.url(&host, "/whoami")).await;
    assert_eq!(hop.status, 401, "{}", hop.body);
    let body = hop.json();
    assert_eq!(body["error"], "sign-in required");
    assert!(
        body["sign_in"].as_str().unwrap().contains("/start?return="),
        "{body}"
    );
    let xhr = api
        .http_get_with(
            &si.url(&host, "/whoami"),
            &[
                ("accept", "text/html"),
                ("x-requested-with", "XMLHttpRequest"),
            ],
        )
        .await;
    assert_eq!(xhr.status, 401);
    let ws = si.burrow.ws_try_connect(&host, "/ws", &[]).await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => {
            assert_eq!(answer.status(), 401, "a WebSocket without a session")
        }
        other => panic!(
            "a WebSocket got through without signing in: {:?}",
            other.map(|_| ())
        ),
    }
    let preflight = reqwest_client()
        .request(reqwest::Method::OPTIONS, si.url(&host, "/whoami"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204, "the preflight met the gate");
    assert_eq!(origin.hits("/whoami"), 0);
}

fn reqwest_client() -> reqwest::Client {
    base_client_builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// Sign-out is a POST carrying the session's CSRF token (a GET only shows
/// the button); afterwards the visitor must sign in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_needs_the_button_and_then_signing_in_again() {
    let Some(si) = SignIn::start("sign_out", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-out").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=any"]).await;
    let mut alice = Visitor::new();
    assert_eq!(
        alice
            .sign_in(&si.url(&host, "/whoami"), "alice")
            .await
            .status,
        200
    );
    let logout = si.url(&host, "/.burrow/logout");
    let page = alice.get(&logout).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"csrf\""), "{}", page.body);
    let csrf = page.body.split("name=\"csrf\" value=\"").nth(1).unwrap();
    let csrf = csrf[..csrf.find('"').unwrap()].to_string();
    // A forged POST (another page's, or without the token) changes nothing.
    let forged = alice.post_form(&logout, &[("csrf", "0123")]).await;
    assert_eq!(forged.status, 403);
    assert_eq!(alice.get(&si.url(&host, "/whoami")).await.status, 200);
    let out = alice.post_form(&logout, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(
        alice.cookie(&host, SESSION).is_none(),
        "the cookie is cleared"
    );
    let after = alice.get(&si.url(&host, "/whoami")).await;
    assert_eq!(
        after.status, 302,
        "signed out, sent to sign in: {}",
        after.body
    );
}

/// A session is its host's alone: tunnel A's cookie on tunnel B is no
/// session; a tampered cookie or one made up is none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_of_another_tunnel_forged_or_tampered_are_no_session() {
    let Some(si) = SignIn::start("cookie_a_on_b", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-ab").await;
    let (_a, host_a) = tunnel(&si, &origin, &["login=any"]).await;
    let (_b, host_b) = tunnel(&si, &origin, &["login=any"]).await;
    let mut alice = Visitor::new();
    assert_eq!(
        alice
            .sign_in(&si.url(&host_a, "/whoami"), "alice")
            .await
            .status,
        200
    );
    let cookie = alice.cookie(&host_a, SESSION).expect("a session cookie");
    let mut thief = Visitor::new();
    thief.navigates = false;
    thief.set_cookie(&host_b, SESSION, &cookie);
    assert_eq!(
        thief.get(&si.url(&host_b, "/whoami")).await.status,
        401,
        "A's session on B"
    );
    let mut tampered = cookie.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    thief.set_cookie(&host_a, SESSION, &tampered);
    assert_eq!(
        thief.get(&si.url(&host_a, "/whoami")).await.status,
        401,
        "tampered"
    );
    thief.set_cookie(&host_a, SESSION, "forged-by-hand");
    assert_eq!(
        thief.get(&si.url(&host_a, "/whoami")).await.status,
        401,
        "forged"
    );
    // The genuine one still works where it belongs.
    thief.set_cookie(&host_a, SESSION, &cookie);
    assert_eq!(thief.get(&si.url(&host_a, "/whoami")).await.status, 200);
}

/// The one-time code from the sign-in host works once: replayed, it is
/// refused; it does not open on another tunnel's host either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_time_code_works_once_and_for_its_tunnel_only() {
    let Some(si) = SignIn::start("one_time_code", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-code").await;
    let (_a, host_a) = tunnel(&si, &origin, &["login=any"]).await;
    let (_b, host_b) = tunnel(&si, &origin, &["login=any"]).await;
    let mut alice = Visitor::new();
    let callback = alice
        .sign_in_until_callback(&si.url(&host_a, "/whoami"), "alice")
        .await;
    let hop = alice.get(callback.as_str()).await;
    let code_url = hop.location().expect("the callback hands over a code");
    assert_eq!(code_url.path(), "/.burrow/login");
    // On another tunnel's host the code is nothing.
    let on_b = code_url.as_str().replace(&host_a, &host_b);
    let mut other = Visitor::new();
    assert_eq!(other.get(&on_b).await.status, 403);
    // Once: a session.
    let first = alice.get(code_url.as_str()).await;
    assert_eq!(first.status, 303, "{}", first.body);
    assert!(alice.cookie(&host_a, SESSION).is_some());
    // Twice: refused.
    let mut replay = Visitor::new();
    let second = replay.get(code_url.as_str()).await;
    assert_eq!(second.status, 403);
    assert!(second.body.contains("used already"), "{}", second.body);
}

/// A callback whose `state` was not started in this browser (no binding
/// cookie: a login CSRF, a state replayed elsewhere) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_from_another_browser_is_refused() {
    let Some(si) = SignIn::start("state_mismatch", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-state").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=any"]).await;
    let mut alice = Visitor::new();
    let callback = alice
        .sign_in_until_callback(&si.url(&host, "/whoami"), "alice")
        .await;
    let mut victim = Visitor::new();
    let hop = victim.get(callback.as_str()).await;
    assert_eq!(hop.status, 403, "{}", hop.body);
    assert!(hop.body.contains("another browser"), "{}", hop.body);
    // A state that is not burrow's at all.
    let mut forged = callback.clone();
    let code = callback
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code)
        .append_pair("state", "x");
    assert_eq!(alice.get(forged.as_str()).await.status, 400);
}

/// Every way an ID token can be wrong is refused with a 403 page: wrong
/// audience, issuer or nonce, a signature by a key that is not the
/// provider's, `alg=none`, expired, issued in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_audience_is_refused() {
    refused_token(Fault::WrongAud, "wrong_aud").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_issuer_is_refused() {
    refused_token(Fault::WrongIss, "wrong_iss").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_nonce_is_refused() {
    refused_token(Fault::WrongNonce, "wrong_nonce").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_signature_is_refused() {
    refused_token(Fault::BadSignature, "bad_signature").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_alg_none_token_is_refused() {
    refused_token(Fault::AlgNone, "alg_none").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    refused_token(Fault::Expired, "expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_future_is_refused() {
    refused_token(Fault::FutureIat, "future_iat").await;
}

/// Signs in through a provider that spoils its next ID token with `fault`:
/// refused, and the app never reached.
async fn refused_token(fault: Fault, test: &str) {
    let Some(si) = SignIn::start(test, &[]).await else {
        return;
    };
    let label = format!("signin-fault-{test}");
    let origin = Origin::start(&label).await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=any"]).await;
    si.op.set_fault(fault, Times::Next(1)).await;
    let mut alice = Visitor::new();
    let hop = alice.sign_in(&si.url(&host, "/whoami"), "alice").await;
    assert_eq!(hop.status, 403, "{fault:?} was accepted: {}", hop.body);
    assert!(hop.body.contains("ID token"), "{fault:?}: {}", hop.body);
    assert!(alice.cookie(&host, SESSION).is_none());
    assert_eq!(origin.hits("/whoami"), 0);
}

/// The provider rotates its signing key mid-session: a token signed with
/// the new key (whose id burrow has never seen) is accepted after burrow
/// fetches the keys again, and sessions made before keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_rotates_its_keys_mid_session_is_followed() {
    let Some(si) = SignIn::start("rotation", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-rotate").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=any"]).await;
    let mut alice = Visitor::new();
    assert_eq!(
        alice
            .sign_in(&si.url(&host, "/whoami"), "alice")
            .await
            .status,
        200
    );
    si.op.rotate_keys_dropping_old().await;
    let mut bob = Visitor::new();
    let hop = bob.sign_in(&si.url(&host, "/whoami"), "bob").await;
    assert_eq!(hop.status, 200, "a token with the new key: {}", hop.body);
    assert_eq!(alice.get(&si.url(&host, "/whoami")).await.status, 200);
    let jwks_fetches = si.op.events("jwks").await.len();
    assert!(
        jwks_fetches >= 2,
        "the keys were fetched again ({jwks_fetches})"
    );
}

/// The sign-in host sends visitors back only to this server's tunnels:
/// anything else as `return` is a 400, never a redirect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn return_targets_are_only_tunnels_of_this_server() {
    let Some(si) = SignIn::start("open_redirect", &[]).await else {
        return;
    };
    let port = si.burrow.https_port();
    let mut visitor = Visitor::new();
    for target in [
        "https://evil.example/".to_string(),
        format!("https://localhost:{port}/"),
        format!("https://login.localhost:{port}/"),
        format!("https://a.b.localhost:{port}/"),
        format!("http://app.localhost:{port}/"),
        "https://app.localhost:1/".to_string(),
        format!("https://app.localhost:{port}//evil.example/"),
        "javascript:alert(1)".to_string(),
    ] {
        let url = format!(
            "{}/start?return={}",
            si.login_origin(),
            form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
        );
        let hop = visitor.get(&url).await;
        assert_eq!(hop.status, 400, "{target}: {} {}", hop.status, hop.body);
        assert!(hop.location().is_none(), "{target} redirected");
    }
}

/// A provider that is down, or too slow, costs the visitor a clear 502
/// page within a few seconds, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_slow_provider_gives_a_quick_502() {
    let Some(si) = SignIn::start("provider_down", &["--oidc-timeout", "2s"]).await else {
        return;
    };
    let origin = Origin::start("signin-down").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=any"]).await;
    si.op
        .set_fault(Fault::Slow(Duration::from_secs(20)), Times::UntilReset)
        .await;
    let mut alice = Visitor::new();
    let started = Instant::now();
    let hop = alice.sign_in(&si.url(&host, "/whoami"), "alice").await;
    assert_eq!(hop.status, 502, "{}", hop.body);
    assert!(hop.body.contains("did not answer"), "{}", hop.body);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    si.op.set_fault(Fault::Down, Times::UntilReset).await;
    // Past the retry pause, asked again: 503s are a 502 too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hop = alice.sign_in(&si.url(&host, "/whoami"), "alice").await;
    assert_eq!(hop.status, 502, "{}", hop.body);
    si.op.reset().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        alice
            .sign_in(&si.url(&host, "/whoami"), "alice")
            .await
            .status,
        200
    );
}

/// Sign-in requests are rate-limited per visitor, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_requests_are_rate_limited_per_visitor() {
    let Some(si) = SignIn::start("login_rate", &["--login-rate", "3"]).await else {
        return;
    };
    let origin = Origin::start("signin-rate").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=any"]).await;
    let target = form_urlencoded::byte_serialize(si.url(&host, "/").as_bytes()).collect::<String>();
    let url = format!("{}/start?return={target}", si.login_origin());
    let mut visitor = Visitor::new();
    for _ in 0..3 {
        assert_eq!(visitor.get(&url).await.status, 302);
    }
    let limited = visitor.get(&url).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.body.contains("login-rate"), "{}", limited.body);
}

/// After signing in, HTTP/2 requests and a WebSocket carry the session
/// like HTTP/1.1 pages do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_websockets_work_after_signing_in() {
    let Some(si) = SignIn::start("h2_ws", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-h2").await;
    let (_ssh, host) = tunnel(&si, &origin, &["login=*@example.com"]).await;
    let mut alice = Visitor::new();
    assert_eq!(
        alice
            .sign_in(&si.url(&host, "/whoami"), "alice")
            .await
            .status,
        200
    );
    let cookie = format!("{SESSION}={}", alice.cookie(&host, SESSION).unwrap());
    let h2 = si
        .burrow
        .https_client_h2()
        .get(si.url(&host, "/headers"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(h2.version(), reqwest::Version::HTTP_2);
    let seen: Value = h2.json().await.unwrap();
    assert_eq!(seen["x-burrow-user"], "alice@example.com");
    let ws = si
        .burrow
        .ws_try_connect(&host, "/ws", &[("cookie", &cookie)])
        .await;
    let (mut ws, answer) = ws.expect("a WebSocket with the session");
    assert_eq!(answer.status(), 101);
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::Text("ping".into()))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo")
        .expect("a message")
        .unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "ping");
}

/// The operator's policies cannot be lifted by a tunnel's owner: the
/// server default (`--login-required`) applies to a tunnel without any
/// `login=`, and a narrower `login=` of the owner applies on top.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_default_applies_to_every_tunnel() {
    let Some(si) = SignIn::start(
        "login_required",
        &["--login-required", "*@example.com,*@example.org"],
    )
    .await
    else {
        return;
    };
    let origin = Origin::start("signin-required").await;
    let (ssh, host) = tunnel(&si, &origin, &[]).await;
    ssh.stdout
        .wait_contains("Sign-in required", Duration::from_secs(10))
        .await
        .expect("the banner says sign-in is required");
    let mut dave = Visitor::new();
    assert_eq!(
        dave.sign_in(&si.url(&host, "/whoami"), "dave").await.status,
        403
    );
    let mut bob = Visitor::new();
    assert_eq!(
        bob.sign_in(&si.url(&host, "/whoami"), "bob").await.status,
        200
    );
    // The owner narrows it further: bob (example.org) is out.
    let (_ssh2, host2) = tunnel(&si, &origin, &["login=*@example.com"]).await;
    let mut bob2 = Visitor::new();
    assert_eq!(
        bob2.sign_in(&si.url(&host2, "/whoami"), "bob").await.status,
        403
    );
}

/// The keys file's `login=` for a key goes with every tunnel of that key,
/// whatever the owner asks for; `output=json` and the banner say who may
/// visit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_file_login_goes_with_every_tunnel_of_the_key() {
    let key = SshKeyPair::generate();
    let dir = TempDir::new("burrow-signin-keys");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("login=group:ops {}\n", key.public)).unwrap();
    let keys = keys.display().to_string();
    let Some(si) = SignIn::start("keys_file_login", &["--keys-file", &keys]).await else {
        return;
    };
    let origin = Origin::start("signin-keyfile").await;
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let ssh = SshSpec {
        port: si.burrow.ssh_port(),
        args: &["-R", &forward],
        remote_cmd: &["--", "output=json", "login=any"],
        ..SshSpec::default()
    }
    .spawn_with_key(&key);
    let event = ssh
        .stdout
        .wait_for(Duration::from_secs(15), |text| {
            text.lines()
                .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
                .find(|e| e["event"] == "tunnel")
        })
        .await
        .expect("a tunnel event");
    let login = event["login"]
        .as_str()
        .expect("the event says who may visit");
    assert!(
        login.contains("group:ops") && login.contains("any"),
        "{login}"
    );
    let host = format!("{}.localhost", event["subdomain"].as_str().unwrap());
    let mut alice = Visitor::new();
    assert_eq!(
        alice
            .sign_in(&si.url(&host, "/whoami"), "alice")
            .await
            .status,
        403,
        "login=any did not lift the key's policy"
    );
    let mut bob = Visitor::new();
    assert_eq!(
        bob.sign_in(&si.url(&host, "/whoami"), "bob").await.status,
        200
    );
}

/// A narrower `login=` on reconnect locks people out at once: the policy
/// is judged on every request against the session's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_login_on_reconnect_locks_people_out_at_once() {
    let Some(si) = SignIn::start("narrowing", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-narrow").await;
    let key = SshKeyPair::generate();
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let spec = |cmd: &'static [&'static str]| SshSpec {
        port: si.burrow.ssh_port(),
        args: &[],
        remote_cmd: cmd,
        ..SshSpec::default()
    };
    let first = SshSpec {
        args: &["-R", &forward],
        ..spec(&["--", "login=any"])
    }
    .spawn_with_key(&key);
    let host = first.url().await.host();
    let mut alice = Visitor::new();
    assert_eq!(
        alice
            .sign_in(&si.url(&host, "/whoami"), "alice")
            .await
            .status,
        200
    );
    drop(first);
    let second = SshSpec {
        args: &["-R", &forward],
        ..spec(&["--", "login=bob@example.org"])
    }
    .spawn_with_key(&key);
    assert_eq!(second.url().await.host(), host, "the same stable name");
    let hop = alice.get(&si.url(&host, "/whoami")).await;
    assert_eq!(
        hop.status, 403,
        "alice's session outlived the narrower list: {}",
        hop.body
    );
}

/// `login=` needs sign-in configured: without a provider it is refused
/// with an ERROR line naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_without_a_provider_is_refused() {
    let burrow = Burrow::start(&[]).await;
    let origin = Origin::start("signin-none").await;
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let ssh = Ssh::spawn_cmd(&burrow, &["-R", &forward], &["--", "login=any"]);
    ssh.stderr
        .wait_contains("no sign-in provider configured", Duration::from_secs(15))
        .await
        .unwrap_or_else(|seen| panic!("no refusal: {seen}"));
}

/// The whole flow in Chromium: the tunnel sends the browser to the
/// provider's login form, alice signs in, the app's page shows who she is;
/// the request log line carries her address; the page came over HTTP/2
/// and a WebSocket from it works; she signs out with the button; on a
/// tunnel only for bob she gets the 403 page naming her, and signs in as
/// bob from its "sign in as someone else" link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_in_chromium() {
    use browser::*;
    use fantoccini::Locator;
    let Some(browser_bins) = browser_or_skip("the_whole_flow_in_chromium") else {
        return;
    };
    let Some(si) = SignIn::start("the_whole_flow_in_chromium", &[]).await else {
        return;
    };
    let origin = Origin::start("signin-chromium").await;
    let (ssh, host) = tunnel(&si, &origin, &["login=*@example.com"]).await;
    let (_ssh_b, only_bob) = tunnel(&si, &origin, &["login=bob@example.org"]).await;
    let b = Browser::start(&browser_bins).await;
    let c = b.client();
    step("open the tunnel", c.goto(&si.url(&host, "/headers"))).await;
    let fill = |user: &'static str| async move {
        step(
            "the login form",
            c.wait().for_element(Locator::Id("login-form")),
        )
        .await;
        let name = step("username", c.find(Locator::Id("username"))).await;
        step("clear", name.clear()).await;
        step("type username", name.send_keys(user)).await;
        let pw = step("password", c.find(Locator::Id("password"))).await;
        step("type password", pw.send_keys(user)).await;
        step(
            "sign in",
            step("button", c.find(Locator::Id("sign-in"))).await.click(),
        )
        .await;
    };
    fill("alice").await;
    let found = tokio::time::timeout(
        Duration::from_secs(20),
        c.wait()
            .for_element(Locator::XPath("//*[contains(., 'x-burrow-user')]")),
    )
    .await;
    let page = match found {
        Ok(Ok(page)) => page,
        _ => {
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            let source = c.source().await.unwrap_or_default();
            panic!("not back at the tunnel: at {url}: {source}");
        }
    };
    let text = step("the app's page", page.text()).await;
    assert!(text.contains("alice@example.com"), "{text}");
    let current = step("url", c.current_url()).await;
    assert_eq!(current.host_str(), Some(host.as_str()));
    ssh.stdout
        .wait_contains("alice@example.com", Duration::from_secs(10))
        .await
        .expect("the request log names the signed-in visitor");
    // The page came over HTTP/2, and a WebSocket from it carries the
    // session too.
    let protocol = step(
        "protocol",
        c.execute(
            "return performance.getEntriesByType('navigation')[0].nextHopProtocol",
            vec![],
        ),
    )
    .await;
    assert_eq!(protocol, "h2");
    let echoed = step(
        "a WebSocket",
        c.execute_async(
            "const done = arguments[arguments.length - 1];
             const ws = new WebSocket(location.origin.replace('https:', 'wss:') + '/ws');
             ws.onopen = () => ws.send('ping');
             ws.onmessage = (e) => done(e.data);
             ws.onclose = (e) => done('closed ' + e.code);",
            vec![],
        ),
    )
    .await;
    assert_eq!(echoed, "ping");
    // Sign out with the button.
    step(
        "the sign-out page",
        c.goto(&si.url(&host, "/.burrow/logout")),
    )
    .await;
    step(
        "click sign out",
        step("button", c.find(Locator::Id("submit"))).await.click(),
    )
    .await;
    step(
        "signed out",
        c.wait()
            .for_element(Locator::XPath("//h1[contains(., 'Signed out')]")),
    )
    .await;
    // dave signs in (the provider asks again: prompt=login after signing out? a fresh
    // provider session is forced through the 403 page's link instead).
    step("back to the tunnel", c.goto(&si.url(&host, "/headers"))).await;
    // The provider still knows alice: she is let in again without the form.
    step(
        "silently signed in",
        c.wait()
            .for_element(Locator::XPath("//*[contains(., 'x-burrow-user')]")),
    )
    .await;
    // Tunnel B lets in only bob: alice, signed in at the provider, gets
    // the 403 page naming her, and signs in as bob from it.
    step("tunnel B", c.goto(&si.url(&only_bob, "/headers"))).await;
    step(
        "the 403 page",
        c.wait()
            .for_element(Locator::XPath("//h1[contains(., 'Not for you')]")),
    )
    .await;
    let text = step("the 403 page's text", c.find(Locator::Css("body"))).await;
    let text = step("text", text.text()).await;
    assert!(
        text.contains("You are signed in as alice@example.com"),
        "{text}"
    );
    step(
        "sign in as someone else",
        step(
            "the link",
            c.find(Locator::LinkText("Sign in as someone else")),
        )
        .await
        .click(),
    )
    .await;
    fill("bob").await;
    let page = step(
        "tunnel B as bob",
        c.wait()
            .for_element(Locator::XPath("//*[contains(., 'x-burrow-user')]")),
    )
    .await;
    let text = step("tunnel B's page", page.text()).await;
    assert!(text.contains("bob@example.org"), "{text}");
    let current = step("url", c.current_url()).await;
    assert_eq!(current.host_str(), Some(only_bob.as_str()));
    b.close().await;
}

// ---------------------------------------------------------------------------
// In a cluster
// ---------------------------------------------------------------------------

/// Two nodes with one provider: a visitor who signed in through node 1 is
/// served through node 2 without signing in again (sessions are sealed
/// with keys from the cluster secret); a sign-in started on node 1 can
/// finish with its callback on node 2; a one-time code redeemed on node 1
/// is refused on node 2 (single use through Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_codes_hold_across_the_cluster() {
    use cluster_harness::{node_ip, Cluster};
    let Some(bins) = oidc::node_or_skip("signin_cluster") else {
        return;
    };
    let op = oidc::OidcProvider::start_with(
        &bins,
        oidc::OidcConfig {
            host: Some("localhost".into()),
            ..Default::default()
        },
    )
    .await;
    let dir = TempDir::new("burrow-signin-cluster");
    let secret_file = dir.path().join("client_secret");
    let mut client = oidc::OidcClient::for_burrow(signin::CLIENT_ID, 0);
    std::fs::write(&secret_file, &client.secret).unwrap();
    let secret_path = secret_file.display().to_string();
    let flags = [
        "--oidc-issuer",
        op.issuer(),
        "--oidc-client-id",
        signin::CLIENT_ID,
        "--oidc-client-secret-file",
        &secret_path,
        "--oidc-scopes",
        "openid,email,profile,groups",
    ];
    let cluster = Cluster::start(2, &flags).await;
    let https = cluster.shared.ports.https;
    client.redirect_uris = vec![format!("https://login.localhost:{https}/callback")];
    op.set_clients(std::slice::from_ref(&client)).await;

    let origin = Origin::start("signin-cluster").await;
    let forward = format!("80:127.0.0.1:{}", origin.port);
    let node_1 = node_ip(1).to_string();
    let args = ["-R", forward.as_str()];
    let ssh = SshSpec {
        port: cluster.shared.ports.ssh,
        args: &args,
        remote_cmd: &["--", "login=*@example.com,bob@example.org"],
        host: &node_1,
        ..SshSpec::default()
    }
    .spawn();
    let host = ssh.url().await.host();
    let url = |path: &str| cluster.https_url(&host, path);
    // The name is known cluster-wide once node 2 routes it.
    let mut probe = Visitor::new();
    probe.through(node_ip(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.get(&url("/whoami")).await.status != 302 {
        assert!(Instant::now() < deadline, "node 2 never routed {host}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Signed in through node 1, served through node 2.
    let mut alice = Visitor::new();
    alice.through(node_ip(1));
    let hop = alice.sign_in(&url("/headers"), "alice").await;
    assert_eq!(app_headers(&hop)["x-burrow-user"], "alice@example.com");
    alice.through(node_ip(2));
    let hop = alice.get(&url("/headers")).await;
    assert_eq!(app_headers(&hop)["x-burrow-user"], "alice@example.com");

    // Started on node 1, the callback lands on node 2, the code is
    // redeemed on node 2.
    let mut bob = Visitor::new();
    bob.through(node_ip(1));
    let callback = bob.sign_in_until_callback(&url("/whoami"), "bob").await;
    bob.through(node_ip(2));
    let hop = bob.get(callback.as_str()).await;
    let code_url = hop.location().unwrap_or_else(|| panic!("no code: {hop:?}"));
    assert_eq!(code_url.path(), "/.burrow/login");
    let redeemed = bob.get(code_url.as_str()).await;
    assert_eq!(redeemed.status, 303, "{}", redeemed.body);
    let hop = bob.get(&url("/headers")).await;
    assert_eq!(app_headers(&hop)["x-burrow-user"], "bob@example.org");

    // The same code replayed on node 1 is refused: used already.
    let mut replay = Visitor::new();
    replay.through(node_ip(1));
    let second = replay.get(code_url.as_str()).await;
    assert_eq!(second.status, 403, "{}", second.body);
    assert!(second.body.contains("used already"), "{}", second.body);
    drop(ssh);
}
