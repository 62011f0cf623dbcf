//! Sign-in tests' harness: burrow started with a real OpenID provider
//! (tests/common/oidc.rs, `oidc-provider` on Node.js) registered for it,
//! and a visitor driven by reqwest that keeps cookies per host and follows
//! redirects across hosts by hand — tunnel, sign-in host, provider — so
//! every hop can be looked at (and replayed, or tampered with).
//!
//! Included by path (`#[path = "common/signin.rs"] mod signin;`) next to
//! `oidc.rs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, ACCEPT, COOKIE, LOCATION, SET_COOKIE};
use url::Url;

use crate::common::{base_client_builder, Burrow, TempDir};
use crate::oidc::{node_or_skip, random_token, OidcClient, OidcConfig, OidcProvider};

/// The client id burrow has at the test provider.
pub const CLIENT_ID: &str = "burrow";

/// burrow with sign-in through a running provider.
pub struct SignIn {
    pub op: OidcProvider,
    pub burrow: Burrow,
    pub client: OidcClient,
    pub dir: TempDir,
}

impl SignIn {
    /// Starts a provider (issuer on `localhost`, so Chromium reaches it),
    /// then burrow with `--oidc-*` and `extra` flags, then registers
    /// burrow's redirect URI (its HTTPS port is known only now). `None`
    /// when Node.js is missing and the test is skipped.
    pub async fn start(test: &str, extra: &[&str]) -> Option<SignIn> {
        let bins = node_or_skip(test)?;
        let op = OidcProvider::start_with(
            &bins,
            OidcConfig {
                host: Some("localhost".into()),
                ..Default::default()
            },
        )
        .await;
        Some(Self::start_with(op, extra).await)
    }

    /// [`SignIn::start`] with a provider already running.
    pub async fn start_with(op: OidcProvider, extra: &[&str]) -> SignIn {
        let dir = TempDir::new("burrow-signin");
        let secret = random_token(24);
        let secret_file = dir.path().join("client_secret");
        std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
        let secret_path = secret_file.display().to_string();
        let mut args = vec![
            "--oidc-issuer",
            op.issuer(),
            "--oidc-client-id",
            CLIENT_ID,
            "--oidc-client-secret-file",
            &secret_path,
            "--oidc-scopes",
            "openid,email,profile,groups",
        ];
        args.extend_from_slice(extra);
        let burrow = Burrow::start(&args).await;
        let mut client = OidcClient::for_burrow(CLIENT_ID, burrow.https_port());
        client.secret = secret;
        op.set_clients(std::slice::from_ref(&client)).await;
        SignIn {
            op,
            burrow,
            client,
            dir,
        }
    }

    /// `https://login.localhost:PORT`.
    pub fn login_origin(&self) -> String {
        format!("https://login.localhost:{}", self.burrow.https_port())
    }

    /// The tunnel `host`'s URL at `path`.
    pub fn url(&self, host: &str, path: &str) -> String {
        self.burrow.https_url(host, path)
    }

    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// One hop's answer, read whole.
#[derive(Debug, Clone)]
pub struct Hop {
    pub url: Url,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Hop {
    /// Where a redirect points (resolved against this hop's URL).
    pub fn location(&self) -> Option<Url> {
        let location = self.headers.get(LOCATION)?.to_str().ok()?;
        self.url.join(location).ok()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.url, self.body))
    }
}

/// A browser-like visitor: cookies per host (no ports), redirects
/// followed by hand.
pub struct Visitor {
    http: reqwest::Client,
    /// host → cookie name → value.
    jar: HashMap<String, HashMap<String, String>>,
    /// Sends `Accept: text/html` (a page navigation) when true.
    pub navigates: bool,
}

impl Default for Visitor {
    fn default() -> Self {
        Self::new()
    }
}

impl Visitor {
    pub fn new() -> Visitor {
        let http = base_client_builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Visitor {
            http,
            jar: HashMap::new(),
            navigates: true,
        }
    }

    /// From now on reaches every `*.localhost` name (tunnels, the sign-in
    /// host) at `ip` — one node of a cluster — and the provider, on
    /// `localhost` itself, at 127.0.0.1. Cookies are kept.
    pub fn through(&mut self, ip: IpAddr) {
        self.http = base_client_builder()
            .dns_resolver(Arc::new(NodeResolver(ip)))
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
    }

    /// The cookie `name` this visitor holds for `host`.
    pub fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.get(host)?.get(name).cloned()
    }

    /// Sets (or replaces) a cookie for `host`.
    pub fn set_cookie(&mut self, host: &str, name: &str, value: &str) {
        let cookies = self.jar.entry(host.to_string()).or_default();
        cookies.insert(name.to_string(), value.to_string());
    }

    /// Forgets every cookie of `host`.
    pub fn forget(&mut self, host: &str) {
        self.jar.remove(host);
    }

    /// One GET, with this visitor's cookies; stores what it sets.
    pub async fn get(&mut self, url: &str) -> Hop {
        let url = Url::parse(url).unwrap();
        let mut req = self.http.get(url.clone());
        if self.navigates {
            req = req.header(ACCEPT, "text/html,application/xhtml+xml");
        }
        self.send(req, url).await
    }

    /// One GET with extra request headers.
    pub async fn http_get_with(&mut self, url: &str, headers: &[(&str, &str)]) -> Hop {
        let url = Url::parse(url).unwrap();
        let mut req = self.http.get(url.clone());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        self.send(req, url).await
    }

    /// One form POST.
    pub async fn post_form(&mut self, url: &str, fields: &[(&str, &str)]) -> Hop {
        let url = Url::parse(url).unwrap();
        let origin = url.origin().ascii_serialization();
        let req = self
            .http
            .post(url.clone())
            .header("origin", origin)
            .form(fields);
        self.send(req, url).await
    }

    async fn send(&mut self, mut req: reqwest::RequestBuilder, url: Url) -> Hop {
        let host = url.host_str().unwrap_or_default().to_string();
        if let Some(cookies) = self.jar.get(&host).filter(|c| !c.is_empty()) {
            let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header(COOKIE, header.join("; "));
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {url}: {e:?}"));
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        self.store(&host, &headers);
        let body = resp.text().await.unwrap_or_default();
        Hop {
            url,
            status,
            headers,
            body,
        }
    }

    fn store(&mut self, host: &str, headers: &HeaderMap) {
        for value in headers.get_all(SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let mut parts = text.split(';').map(str::trim);
            let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
                continue;
            };
            let gone = parts.any(|a| a.eq_ignore_ascii_case("max-age=0"));
            let cookies = self.jar.entry(host.to_string()).or_default();
            if gone || value.is_empty() {
                cookies.remove(name);
            } else {
                cookies.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// Follows redirects from `url` (at most 15 hops) until a page, or
    /// until `stop` says so of a redirect's target (returned unvisited).
    pub async fn follow(&mut self, url: &str, stop: impl Fn(&Url) -> bool) -> (Hop, Option<Url>) {
        let mut hop = self.get(url).await;
        for _ in 0..15 {
            let Some(next) = hop.location().filter(|_| (300..400).contains(&hop.status)) else {
                return (hop, None);
            };
            if stop(&next) {
                return (hop, Some(next));
            }
            hop = self.get(next.as_str()).await;
        }
        panic!("more than 15 redirects from {url}");
    }

    /// Visits `url` (a tunnel page), signs in at the provider as `user`
    /// (password = user) when its login form shows, and follows every
    /// redirect back: the last hop (the tunnel's page, or a refusal).
    pub async fn sign_in(&mut self, url: &str, user: &str) -> Hop {
        let (hop, _) = self.follow(url, |_| false).await;
        if !hop.url.path().starts_with("/interaction/") {
            return hop;
        }
        self.submit_login(&hop, user).await
    }

    /// Submits the provider's login form on `form` as `user`, then follows
    /// the redirects.
    pub async fn submit_login(&mut self, form: &Hop, user: &str) -> Hop {
        let action = form_action(&form.body, "login-form");
        let target = form.url.join(&action).unwrap();
        let hop = self
            .post_form(target.as_str(), &[("username", user), ("password", user)])
            .await;
        let mut hop = match hop.location() {
            Some(next) => self.follow(next.as_str(), |_| false).await.0,
            None => hop,
        };
        // Signing in as someone else: oidc-provider first ends the old
        // session through a page that posts itself (a browser runs its
        // script; here the form is posted by hand).
        if hop.body.contains("document.forms[0].submit()") {
            let (action, fields) = hidden_form(&hop.body);
            let target = hop.url.join(&action).unwrap();
            let fields: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let posted = self.post_form(target.as_str(), &fields).await;
            hop = match posted.location() {
                Some(next) => self.follow(next.as_str(), |_| false).await.0,
                None => posted,
            };
        }
        hop
    }

    /// Like [`Visitor::sign_in`], but stops at the provider's redirect to
    /// burrow's callback (returned unvisited).
    pub async fn sign_in_until_callback(&mut self, url: &str, user: &str) -> Url {
        let is_callback = |u: &Url| u.path() == "/callback";
        let (hop, stopped) = self.follow(url, is_callback).await;
        if let Some(callback) = stopped {
            return callback;
        }
        assert!(
            hop.url.path().starts_with("/interaction/"),
            "expected the provider's login form, got {} {}: {}",
            hop.status,
            hop.url,
            hop.body
        );
        let action = form_action(&hop.body, "login-form");
        let target = hop.url.join(&action).unwrap();
        let posted = self
            .post_form(target.as_str(), &[("username", user), ("password", user)])
            .await;
        let next = posted.location().expect("the login form redirects");
        let (last, stopped) = self.follow(next.as_str(), is_callback).await;
        stopped.unwrap_or_else(|| panic!("never sent to the callback: {last:?}"))
    }
}

/// `*.localhost` at a node's address, `localhost` at 127.0.0.1.
struct NodeResolver(IpAddr);

impl reqwest::dns::Resolve for NodeResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let ip = match name.as_str().ends_with(".localhost") {
            true => self.0,
            false => IpAddr::from([127, 0, 0, 1]),
        };
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The action and the hidden fields of the first form in `html`.
pub fn hidden_form(html: &str) -> (String, Vec<(String, String)>) {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let key = format!("{name}=\"");
        let start = tag.find(&key)? + key.len();
        let rest = &tag[start..];
        Some(rest[..rest.find('"')?].replace("&amp;", "&"))
    };
    let form = html.find("<form").expect("a form");
    let tag = &html[form..form + html[form..].find('>').unwrap()];
    let action = attr(tag, "action").expect("form action");
    let fields = html[form..]
        .split("<input")
        .skip(1)
        .filter_map(|t| {
            let tag = &t[..t.find('>')?];
            Some((attr(tag, "name")?, attr(tag, "value").unwrap_or_default()))
        })
        .collect();
    (action, fields)
}

/// The `action` of `<form id="FORM_ID" ...>` in `html`.
pub fn form_action(html: &str, form_id: &str) -> String {
    let start = html
        .find(&format!("id=\"{form_id}\""))
        .unwrap_or_else(|| panic!("no form {form_id} in {html}"));
    let rest = &html[start..];
    let tag = &rest[..rest.find('>').unwrap()];
    let a = tag.find("action=\"").expect("form action") + "action=\"".len();
    let action = &tag[a..];
    action[..action.find('"').unwrap()].replace("&amp;", "&")
}
