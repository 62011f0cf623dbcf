//! One OpenID provider, as burrow talks to it (through `openidconnect`):
//! discovery (lazy, cached, retried on the next visitor after a failure),
//! the authorization URL (code flow, PKCE S256, nonce, state), and the code
//! exchange with the ID token validated — signature against the provider's
//! JWKS (fetched again once on a key id it does not know: keys rotate),
//! `iss`, `aud`, `exp` and `iat` with a small skew, the nonce; `alg=none`
//! and symmetric algorithms are refused. Every call to the provider is
//! bounded by `--oidc-timeout`, so a slow or unreachable provider costs the
//! visitor a clear 502, never a hang.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use openidconnect::core::{
    CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
    CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, SignatureVerificationError,
    TokenResponse,
};
use tokio::sync::Mutex;

use super::providers::Provider;
use crate::identity::Identity;

/// How long after a failed discovery the next visitor may try again (so a
/// provider that is down is not hammered).
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Clock skew allowed on `exp` and `iat`.
const SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// The only algorithms accepted: asymmetric ones (`none` and HMAC with
/// the client secret are refused).
const ALGS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// What an authorization request needs remembered until its callback.
pub struct Pending {
    /// Where the provider is sent.
    pub url: String,
    /// The PKCE verifier (its S256 challenge went in the URL).
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
}

/// Why a sign-in failed at the provider.
#[derive(Debug)]
pub enum Failure {
    /// The provider did not answer in time, or at all: a 502.
    Unreachable(String),
    /// It answered, but the answer is not to be trusted (a bad token, a
    /// refused code): a 403 with the reason.
    Rejected(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(why) | Failure::Rejected(why) => f.write_str(why),
        }
    }
}

/// One provider's client.
pub struct Oidc {
    provider: Provider,
    /// The one redirect URI (`https://LOGIN_HOST/callback`).
    redirect: RedirectUrl,
    http: reqwest::Client,
    timeout: Duration,
    /// The discovery document with its keys, once fetched.
    metadata: Mutex<Discovery>,
}

#[derive(Default)]
struct Discovery {
    metadata: Option<CoreProviderMetadata>,
    /// When the last attempt failed (the next waits [`RETRY_AFTER`]).
    failed_at: Option<Instant>,
    /// When the keys were last fetched again for an unknown key id.
    refreshed_at: Option<Instant>,
}

impl Oidc {
    pub fn new(
        provider: Provider,
        redirect: &str,
        http: reqwest::Client,
        timeout: Duration,
    ) -> Result<Oidc> {
        Ok(Oidc {
            redirect: RedirectUrl::new(redirect.to_string()).context("the sign-in redirect URI")?,
            provider,
            http,
            timeout,
            metadata: Mutex::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.provider.name
    }

    /// The authorization URL for a visitor, with a fresh PKCE pair and
    /// nonce, which `state` (given both) seals into the `state` parameter:
    /// it comes back with the code. `fresh`: ask the provider to sign in
    /// again (`prompt=login`).
    pub async fn authorize(
        &self,
        state: impl FnOnce(&str, &str) -> String,
        fresh: bool,
    ) -> Result<Pending, Failure> {
        let metadata = self.metadata().await?;
        let client = self.client(metadata);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = Nonce::new_random();
        let state = state(verifier.secret(), nonce.secret());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                || CsrfToken::new(state),
                || nonce,
            )
            .set_pkce_challenge(challenge);
        for scope in self.provider.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        if fresh {
            request = request.add_prompt(CoreAuthPrompt::Login);
        }
        let (url, _, nonce) = request.url();
        Ok(Pending {
            url: url.to_string(),
            verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Exchanges `code` (with its PKCE `verifier`) and validates the ID
    /// token, which must carry `nonce`: who the visitor is.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<Identity, Failure> {
        let metadata = self.metadata().await?;
        let client = self.client(metadata.clone());
        let request = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| Failure::Rejected(format!("the provider has no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()));
        let response = tokio::time::timeout(self.timeout, request.request_async(&self.http))
            .await
            .map_err(|_| self.slow("the code exchange"))?
            .map_err(|e| exchange_failure(&e))?;
        let token = response
            .id_token()
            .ok_or_else(|| Failure::Rejected("the provider returned no ID token".into()))?
            .clone();
        let nonce = Nonce::new(nonce.to_string());
        match self.identity(&client, &token, &nonce) {
            Err(Failure::Rejected(why)) if why == NO_KEY => {
                // Its keys rotated since they were fetched: fetch them once
                // more, then judge again.
                let client = self.client(self.refresh_keys().await?);
                self.identity(&client, &token, &nonce)
            }
            other => other,
        }
    }

    fn client(&self, metadata: CoreProviderMetadata) -> ProviderClient {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.provider.client_id.clone()),
            Some(ClientSecret::new(self.provider.client_secret.clone())),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// The validated token's identity.
    fn identity(
        &self,
        client: &ProviderClient,
        token: &openidconnect::core::CoreIdToken,
        nonce: &Nonce,
    ) -> Result<Identity, Failure> {
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(ALGS)
            .set_time_fn(|| chrono::Utc::now() - SKEW)
            .set_issue_time_verifier_fn(|iat| match iat > chrono::Utc::now() + SKEW {
                true => Err("issued in the future".into()),
                false => Ok(()),
            });
        let claims = token.claims(&verifier, nonce).map_err(|e| match e {
            ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            ) => Failure::Rejected(NO_KEY.into()),
            other => Failure::Rejected(format!("the ID token was refused: {other}")),
        })?;
        Ok(Identity {
            provider: self.provider.name.clone(),
            subject: claims.subject().as_str().to_string(),
            email: claims.email().map(|e| e.as_str().to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
            groups: groups(&token.to_string(), &self.provider.groups_claim),
        })
    }

    /// The discovery document, fetched on first use (and after a failure,
    /// once [`RETRY_AFTER`] has passed).
    async fn metadata(&self) -> Result<CoreProviderMetadata, Failure> {
        let mut discovery = self.metadata.lock().await;
        if let Some(metadata) = &discovery.metadata {
            return Ok(metadata.clone());
        }
        if discovery
            .failed_at
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return Err(Failure::Unreachable(format!(
                "the identity provider {} did not answer a moment ago",
                self.provider.issuer
            )));
        }
        match self.discover().await {
            Ok(metadata) => {
                discovery.metadata = Some(metadata.clone());
                discovery.failed_at = None;
                Ok(metadata)
            }
            Err(failure) => {
                discovery.failed_at = Some(Instant::now());
                Err(failure)
            }
        }
    }

    async fn discover(&self) -> Result<CoreProviderMetadata, Failure> {
        let issuer = IssuerUrl::new(self.provider.issuer.clone())
            .map_err(|e| Failure::Rejected(format!("bad issuer URL: {e}")))?;
        let discovered = CoreProviderMetadata::discover_async(issuer, &self.http);
        tokio::time::timeout(self.timeout, discovered)
            .await
            .map_err(|_| self.slow("discovery"))?
            .map_err(|e| {
                let why = format!("{:#}", anyhow!(e));
                tracing::warn!(provider = %self.provider.name, error = %why, "OpenID discovery failed");
                Failure::Unreachable(format!(
                    "the identity provider {} could not be reached: {why}",
                    self.provider.issuer
                ))
            })
    }

    /// Fetches the provider's keys again (at most once per [`RETRY_AFTER`]).
    async fn refresh_keys(&self) -> Result<CoreProviderMetadata, Failure> {
        let mut discovery = self.metadata.lock().await;
        let metadata = discovery
            .metadata
            .clone()
            .ok_or_else(|| Failure::Unreachable("no discovery yet".into()))?;
        if discovery
            .refreshed_at
            .is_some_and(|at| at.elapsed() < RETRY_AFTER)
        {
            return Ok(metadata);
        }
        discovery.refreshed_at = Some(Instant::now());
        let fetch = CoreJsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http);
        let keys = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| self.slow("fetching its keys"))?
            .map_err(|e| Failure::Unreachable(format!("its keys could not be fetched: {e}")))?;
        tracing::info!(provider = %self.provider.name, "identity provider keys fetched again (unknown key id)");
        let metadata = metadata.set_jwks(keys);
        discovery.metadata = Some(metadata.clone());
        Ok(metadata)
    }

    fn slow(&self, what: &str) -> Failure {
        Failure::Unreachable(format!(
            "the identity provider {} did not answer {what} within {}",
            self.provider.issuer,
            crate::limits::human(self.timeout)
        ))
    }
}

/// The client type discovery and a redirect URI make.
type ProviderClient = openidconnect::core::CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// The marker of a token signed with a key the provider no longer (or not
/// yet) publishes.
const NO_KEY: &str = "no key of the provider matches the token's key id";

fn exchange_failure<RE: std::error::Error + 'static>(
    error: &openidconnect::RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> Failure {
    match error {
        openidconnect::RequestTokenError::ServerResponse(answer) => {
            Failure::Rejected(format!("the provider refused the code: {answer}"))
        }
        openidconnect::RequestTokenError::Request(e) => {
            Failure::Unreachable(format!("the provider could not be reached: {e}"))
        }
        other => Failure::Rejected(format!("the provider's answer is unusable: {other}")),
    }
}

/// The values of `claim` in a token whose signature was verified already
/// (openidconnect's standard claims have no room for a configurable
/// groups claim): a list of strings, or one string.
fn groups(jwt: &str, claim: &str) -> Vec<String> {
    let payload = jwt.split('.').nth(1).unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return Vec::new();
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    match &claims[claim] {
        serde_json::Value::Array(values) => values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(one) => vec![one.clone()],
        _ => Vec::new(),
    }
}

/// The HTTP client for the providers: no redirects (they would open the
/// door to server-side request forgery), the system's roots plus
/// `ca_file`, bounded by `timeout`.
pub fn http_client(
    ca_file: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("burrow/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("--oidc-ca-file {}: cannot read", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--oidc-ca-file {}: not PEM certificates", path.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().context("the OpenID HTTP client")
}

/// Shared by every provider.
pub type Shared = Arc<Oidc>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_come_from_the_configured_claim() {
        let enc = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let jwt = |claims: serde_json::Value| format!("h.{}.s", enc(&claims));
        let token = jwt(serde_json::json!({"groups": ["eng", 7, "ops"], "roles": "admin"}));
        assert_eq!(groups(&token, "groups"), ["eng", "ops"]);
        assert_eq!(groups(&token, "roles"), ["admin"]);
        assert!(groups(&token, "missing").is_empty());
        assert!(groups("garbage", "groups").is_empty());
    }
}
