//! Sign-in at the edge and who may publish: the operator's OpenID Connect
//! provider(s), the sign-in host, sessions, the server-wide `login=`
//! default, and the authorisation service asked at SSH login
//! (`--auth-url`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::parse::parse_duration;

/// `--oidc-*`, `--login-*`, `--auth-url*`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Sign-in (OpenID Connect) and publishing")]
pub struct LoginArgs {
    /// The OpenID Connect issuer visitors sign in with (discovery at
    /// ISSUER/.well-known/openid-configuration). Must be https://, except
    /// on a loopback address. Register https://login.DOMAIN/callback (or
    /// --login-host) as its redirect URI.
    #[arg(long, env = "OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// The client id burrow has at that provider.
    #[arg(long, env = "OIDC_CLIENT_ID")]
    pub oidc_client_id: Option<String>,
    /// A file holding the client's secret (one line).
    #[arg(long, env = "OIDC_CLIENT_SECRET_FILE")]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// Scopes asked of the --oidc-issuer provider (openid is always
    /// asked); add the one that makes it send groups, if it has one.
    #[arg(
        long,
        env = "OIDC_SCOPES",
        value_delimiter = ',',
        default_value = "openid,email,profile"
    )]
    pub oidc_scopes: Vec<String>,
    /// The ID token claim whose values `login=group:NAME` matches, for the
    /// --oidc-issuer provider.
    #[arg(long, env = "OIDC_GROUPS_CLAIM", default_value = "groups")]
    pub oidc_groups_claim: String,
    /// Several providers: a file with one per line — NAME ISSUER CLIENT_ID
    /// SECRET_FILE [scopes=a,b] [groups=CLAIM] — whose names tunnel owners
    /// use as `login=NAME:…`.
    #[arg(long, env = "LOGIN_PROVIDERS")]
    pub login_providers: Option<PathBuf>,
    /// A private CA (PEM) to trust for the providers' HTTPS, besides the
    /// system's (a Keycloak or Dex inside a company network).
    #[arg(long, env = "OIDC_CA_FILE")]
    pub oidc_ca_file: Option<PathBuf>,
    /// The host of the sign-in endpoints (its /callback is the one redirect
    /// URI registered at the providers). Default: login.DOMAIN; the name is
    /// reserved for it while sign-in is configured.
    #[arg(long, env = "LOGIN_HOST")]
    pub login_host: Option<String>,
    /// How long a visitor stays signed in to a tunnel before signing in
    /// again.
    #[arg(long, env = "LOGIN_SESSION", default_value = "12h", value_parser = parse_duration)]
    pub login_session: Duration,
    /// A `login=` policy every tunnel gets, on top of its owner's (e.g.
    /// `*@example.com`): nobody reaches any tunnel without signing in.
    #[arg(long, env = "LOGIN_REQUIRED")]
    pub login_required: Option<String>,
    /// How long the provider may take to answer (discovery, keys, the code
    /// exchange) before the visitor gets a 502 page.
    #[arg(long, env = "OIDC_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub oidc_timeout: Duration,
    /// Sign-in requests (the login host's /start and /callback, a tunnel's
    /// /.burrow/ endpoints) per visitor and minute.
    #[arg(long, env = "LOGIN_RATE", default_value_t = 60)]
    pub login_rate: u32,
    /// Who may publish: at every SSH login with a key (or a password) burrow
    /// POSTs {"user","key_type","fingerprint","public_key","password"?,
    /// "remote_addr"} to this URL and follows the answer (see README).
    #[arg(long, env = "AUTH_URL")]
    pub auth_url: Option<String>,
    /// How long an answer of --auth-url is reused for the same key.
    #[arg(long, env = "AUTH_URL_TTL", default_value = "60s", value_parser = parse_duration)]
    pub auth_url_ttl: Duration,
    /// How long --auth-url may take to answer before the login is refused
    /// ("the server's authorisation service is unavailable").
    #[arg(long, env = "AUTH_URL_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub auth_url_timeout: Duration,
}

impl LoginArgs {
    /// Whether visitors can sign in at all.
    pub fn signin_enabled(&self) -> bool {
        self.oidc_issuer.is_some() || self.login_providers.is_some()
    }

    /// The sign-in host under `domain`.
    pub fn host(&self, domain: &str) -> String {
        self.login_host
            .clone()
            .unwrap_or_else(|| format!("login.{domain}"))
    }

    /// Checks the combination of flags (not the files, read at start).
    pub fn validate(&mut self, domain: &str) -> Result<()> {
        let single = [
            self.oidc_issuer.is_some(),
            self.oidc_client_id.is_some(),
            self.oidc_client_secret_file.is_some(),
        ];
        if single.iter().any(|s| *s) && !single.iter().all(|s| *s) {
            bail!("--oidc-issuer, --oidc-client-id and --oidc-client-secret-file go together: give all three");
        }
        if self.login_required.is_some() && !self.signin_enabled() {
            bail!("--login-required needs a sign-in provider (--oidc-issuer or --login-providers)");
        }
        if let Some(host) = &self.login_host {
            let host = crate::subdomain::dns_name(host.trim());
            let under = host
                .strip_suffix(domain)
                .and_then(|l| l.strip_suffix('.'))
                .is_some_and(crate::subdomain::is_valid_label);
            if !under {
                bail!("--login-host {host:?} must be a name directly under --domain {domain} (its certificate covers it)");
            }
            self.login_host = Some(host);
        }
        if self.login_session < Duration::from_secs(60) {
            bail!("--login-session must be at least 1 minute");
        }
        if self.login_rate == 0 {
            bail!("--login-rate must be at least 1 (sign-in requests per visitor and minute)");
        }
        if let Some(url) = &self.auth_url {
            let ok = url.starts_with("https://") || url.starts_with("http://");
            if !ok {
                bail!("--auth-url {url:?} must be an http:// or https:// URL");
            }
        }
        Ok(())
    }

    /// The label of the sign-in host (`login`), reserved while sign-in is
    /// on.
    pub fn host_label(&self, domain: &str) -> Option<String> {
        if !self.signin_enabled() {
            return None;
        }
        let host = self.host(domain);
        host.strip_suffix(domain)
            .and_then(|l| l.strip_suffix('.'))
            .map(str::to_string)
    }
}

/// Reads a secret file: its first line, trimmed.
pub fn read_secret(flag: &str, path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{flag} {}: cannot read", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_string();
    if secret.is_empty() {
        bail!("{flag} {}: the file is empty", path.display());
    }
    Ok(secret)
}
