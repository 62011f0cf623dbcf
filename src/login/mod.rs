//! Sign-in at the edge: only the people a tunnel's owner (or the operator)
//! names reach the tunnel, after signing in with the operator's OpenID
//! Connect provider; the app learns who they are from headers burrow
//! vouches for and signs.
//!
//! - [`providers`]: the providers as configured (flags, providers file);
//! - [`oidc`]: one provider as burrow talks to it (discovery, PKCE, the ID
//!   token validated);
//! - [`tokens`]: what the browser carries, sealed (state, one-time codes,
//!   sessions), valid on every node of a cluster;
//! - [`assertion`]: `X-Burrow-Identity`, signed, and its JWKS;
//! - [`gate`]: the proxy's guard (cookie, policy, 401/403/redirect, the
//!   `/.burrow/` endpoints on a tunnel's host);
//! - [`host`]: the sign-in host (`/start`, `/callback`, the JWKS);
//! - [`pages`]: what visitors read;
//! - [`return_to`]: where a sign-in may send a visitor back to.
//!
//! The flow: a visitor without a session is sent to
//! `https://LOGIN_HOST/start?return=URL`, which sends them to the provider
//! with a sealed `state` (PKCE verifier, nonce, return URL) bound to a
//! cookie of the sign-in host; the provider sends them back to
//! `/callback`, which checks the binding, exchanges the code, validates
//! the ID token and hands the tunnel's host a one-time code by redirect to
//! `https://NAME/.burrow/login?code=…`; the tunnel's host spends the code
//! (once, cluster-wide) and sets its own host-only session cookie.

pub mod assertion;
pub mod gate;
pub mod host;
pub mod oidc;
pub mod opened;
mod pages;
pub mod providers;
pub mod return_to;
pub mod tokens;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota};

pub use self::providers::Providers;
use self::tokens::Sealer;
use crate::authz::AuthUrl;
use crate::config::Config;
use crate::custom::CustomDomains;
use crate::identity::{LoginPolicy, Policies};
use crate::keys::Keys;
use crate::limits::{ip_key, Refusal};
use crate::store::secret::Secret;
use crate::store::Store;
use crate::tunnel::options::TunnelOptions;
use crate::tunnel::{Registry, Tunnel};

/// What sign-in works with.
pub struct Login {
    /// The server's domain (tunnels are its labels).
    domain: String,
    /// The sign-in host (`login.DOMAIN`).
    host: String,
    /// `:PORT` when visitors reach HTTPS on another port than 443.
    port_suffix: String,
    providers: Vec<Arc<oidc::Oidc>>,
    /// How long a session lasts.
    session: Duration,
    /// `--login-required`: every tunnel's first policy.
    required: Option<LoginPolicy>,
    /// The keys file (`login=` per key).
    keys: Arc<Keys>,
    /// `--auth-url`'s answers (`login` per key), when it is on.
    auth_url: Option<Arc<AuthUrl>>,
    sealer: Sealer,
    signer: assertion::Signer,
    /// Session cookies opened in the last few seconds.
    opened: opened::Opened,
    spent: Spent,
    /// Sign-in requests per visitor (`--login-rate` a minute).
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    rate: u32,
    /// To tell a custom domain bound now from any other host (a return
    /// target).
    custom: Arc<CustomDomains>,
}

/// What sign-in is built from.
pub struct Parts {
    pub providers: Providers,
    /// `--login-required`, parsed.
    pub operator: crate::identity::Operator,
    /// The stable-name secret (shared by every node of a cluster): every
    /// sign-in key is derived from it.
    pub root: [u8; 32],
    pub keys: Arc<Keys>,
    pub auth_url: Option<Arc<AuthUrl>>,
    /// In a cluster, where one-time codes are spent (once, everywhere).
    pub store: Option<Store>,
    pub registry: Arc<Registry>,
    pub custom: Arc<CustomDomains>,
}

impl Login {
    /// Sign-in as `config` describes it; `None` when no provider is
    /// configured.
    pub fn new(config: &Config, parts: Parts) -> Result<Option<Arc<Login>>> {
        if parts.providers.is_empty() {
            return Ok(None);
        }
        let args = &config.login;
        let host = args.host(&config.domain);
        let port_suffix = parts.registry.public().port_suffix();
        let redirect = format!("https://{host}{port_suffix}/callback");
        let http = oidc::http_client(args.oidc_ca_file.as_deref(), args.oidc_timeout)?;
        let providers = parts
            .providers
            .all()
            .iter()
            .map(|p| oidc::Oidc::new(p.clone(), &redirect, http.clone(), args.oidc_timeout))
            .map(|o| o.map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let required = parts.operator.required.clone();
        let root = Secret::from_bytes(parts.root);
        let per_minute = NonZeroU32::new(args.login_rate).unwrap_or(NonZeroU32::MIN);
        Ok(Some(Arc::new(Login {
            domain: config.domain.clone(),
            signer: assertion::Signer::new(&root, &format!("{host}{port_suffix}"))?,
            opened: opened::Opened::default(),
            sealer: Sealer::new(&root),
            host,
            port_suffix,
            providers,
            session: args.login_session,
            required,
            keys: parts.keys,
            auth_url: parts.auth_url,
            spent: match parts.store {
                Some(store) => Spent::Shared(Box::new(store)),
                None => Spent::Local(DashMap::new()),
            },
            limiter: DefaultKeyedRateLimiter::keyed(Quota::per_minute(per_minute)),
            rate: args.login_rate,
            custom: parts.custom,
        })))
    }

    /// The sign-in host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether `host` (a Host header, port and case as sent) is the sign-in
    /// host.
    pub fn is_host(&self, host: &str) -> bool {
        let bare = crate::subdomain::strip_port(host).trim_end_matches('.');
        bare.eq_ignore_ascii_case(&self.host)
    }

    /// Who may visit `tunnel`: the server's default, the policy the
    /// operator gave its owner's key, its owner's own — all must pass.
    pub fn policies(&self, tunnel: &Tunnel, options: &TunnelOptions) -> Policies {
        let key = tunnel.owner().and_then(|fp| self.key_policy(fp));
        let all = [self.required.clone(), key, options.login.clone()];
        Policies::new(all.into_iter().flatten())
    }

    /// The `login=` the operator gave key `fp`.
    fn key_policy(&self, fp: &str) -> Option<LoginPolicy> {
        crate::authz::operator_policy(&self.keys, self.auth_url.as_deref(), fp)
    }

    /// Counts a sign-in request of `ip`: the refusal when it is over
    /// `--login-rate`.
    fn admit(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.limiter.check_key(&ip_key(ip)).map_err(|_| {
            Refusal::new(
                "login-rate",
                format!(
                    "more than {} sign-in requests a minute from your address; try again in a minute",
                    self.rate
                ),
            )
            .retry_after(Duration::from_secs(60))
        })
    }

    /// Forgets old per-visitor counts and expired assertions and codes
    /// (called periodically).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.signer.prune();
        let now = tokens::now();
        self.opened.prune(now);
        if let Spent::Local(spent) = &self.spent {
            spent.retain(|_, expires| *expires > now);
        }
    }

    /// The provider called `name`.
    fn provider(&self, name: &str) -> Option<&Arc<oidc::Oidc>> {
        self.providers.iter().find(|p| p.name() == name)
    }

    /// The sign-in start URL that comes back to `url`; `fresh`: sign in
    /// again at the provider (as someone else).
    fn start_url(&self, url: &str, fresh: bool) -> String {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("return", url)
            .extend_pairs(fresh.then_some(("prompt", "login")))
            .finish();
        format!("https://{}{}/start?{query}", self.host, self.port_suffix)
    }

    /// The tunnel host a return URL names, if it names one of this
    /// server's tunnels (a label under the domain, or a bound custom
    /// domain): nothing else is ever a redirect target.
    async fn tunnel_host(&self, url: &str) -> Option<(String, String)> {
        let server = return_to::Server {
            domain: &self.domain,
            port_suffix: &self.port_suffix,
            login_host: &self.host,
        };
        let to = return_to::read(url, server)?;
        let ours = to.under_domain || self.custom.bound_anywhere(&to.host).await.is_some();
        ours.then(|| (to.host, to.path.to_string()))
    }
}

/// Single use of one-time codes: in memory on one node, in Redis in a
/// cluster (a code may come back to any node).
enum Spent {
    /// Code id → when it expires (unix s).
    Local(DashMap<String, u64>),
    Shared(Box<Store>),
}

impl Spent {
    /// Spends code `id` (good until `expires`): `Ok(true)` the first time
    /// only; `Err` when a cluster's store cannot tell (then the code is
    /// refused: never used twice).
    async fn spend(&self, id: &str, expires: u64) -> Result<bool, ()> {
        match self {
            Spent::Local(spent) => Ok(spent.insert(id.to_string(), expires).is_none()),
            Spent::Shared(store) => {
                let ttl = Duration::from_secs(expires.saturating_sub(tokens::now()).max(1));
                store.take_once(&format!("login:code:{id}"), ttl).await.map_err(|e| {
                    tracing::warn!(error = %e, "sign-in code not checked: the cluster's store is down");
                })
            }
        }
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}
