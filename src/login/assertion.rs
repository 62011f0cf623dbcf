//! `X-Burrow-Identity`: who the visitor is, signed by burrow, so the app
//! can verify it instead of trusting a header (the pattern of Cloudflare
//! Access's `Cf-Access-Jwt-Assertion`). A short-lived JWT (EdDSA, Ed25519)
//! with `iss` = `https://LOGIN_HOST`, `aud` = the tunnel's host, `sub` =
//! `PROVIDER:SUBJECT`, the e-mail, whether it was verified, the name, the
//! groups and the provider; the key is published at
//! `https://LOGIN_HOST/.well-known/jwks.json`. Built with openidconnect's
//! ID-token writer, so nothing here encodes JWTs by hand.
//!
//! The key is derived from the stable-name secret (the same on every node
//! of a cluster, so any node's assertions verify with the one JWKS). An
//! Ed25519 signature costs tens of microseconds: one assertion is made per
//! session and host and reused until shortly before it expires.

use std::time::Duration;

use anyhow::{anyhow, Result};
use base64::Engine;
use dashmap::DashMap;
use openidconnect::core::{
    CoreEdDsaPrivateSigningKey, CoreGenderClaim, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AdditionalClaims, Audience, EndUserEmail, EndUserName, IdToken, IdTokenClaims, IssuerUrl,
    JsonWebKeyId, PrivateSigningKey, StandardClaims, SubjectIdentifier,
};
use serde::{Deserialize, Serialize};

use super::tokens::Session;
use crate::store::secret::Secret;

/// How long an assertion is good for.
pub const LIFETIME: Duration = Duration::from_secs(300);
/// A cached assertion is made anew once less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// Most cached assertions; beyond, the cache starts over.
const CACHE_MAX: usize = 50_000;

/// burrow's claims beyond the standard ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Extra {
    /// The provider the visitor signed in with.
    provider: String,
    /// Its groups claim's values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<String>,
}

impl AdditionalClaims for Extra {}

/// The assertion token type.
type Assertion =
    IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Signs assertions and publishes their key.
pub struct Signer {
    key: CoreEdDsaPrivateSigningKey,
    /// The JWKS document, made once.
    jwks: String,
    issuer: IssuerUrl,
    /// (host, session id) → (token, unix seconds it expires).
    cache: DashMap<(String, String), (String, u64)>,
}

impl Signer {
    /// The signer whose key comes from `root`, issuing as `https://login_host`
    /// (`HOST[:PORT]`, as visitors reach it).
    pub fn new(root: &Secret, login_host: &str) -> Result<Signer> {
        let seed = root.child("sign-in assertion key").derive("ed25519 seed");
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|e| anyhow!("assertion key: {e}"))?;
        let der = pair
            .to_pkcs8v1()
            .map_err(|e| anyhow!("assertion key: {e}"))?;
        let pem = pem("PRIVATE KEY", der.as_ref());
        let kid = key_id(aws_lc_rs::signature::KeyPair::public_key(&pair).as_ref());
        let key = CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, Some(JsonWebKeyId::new(kid)))
            .map_err(|e| anyhow!("assertion key: {e}"))?;
        let jwks = CoreJsonWebKeySet::new(vec![key.as_verification_key()]);
        Ok(Signer {
            jwks: serde_json::to_string(&jwks)?,
            key,
            issuer: IssuerUrl::new(format!("https://{login_host}"))?,
            cache: DashMap::new(),
        })
    }

    /// The JWKS document apps verify assertions with.
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// The assertion for `session` on `host` (cached per session and host).
    pub fn assertion(&self, host: &str, session: &Session) -> String {
        let now = super::tokens::now();
        let key = (host.to_string(), session.id.clone());
        if let Some(cached) = self.cache.get(&key) {
            if cached.1 > now + RENEW_BEFORE.as_secs() {
                return cached.0.clone();
            }
        }
        let expires = now + LIFETIME.as_secs();
        let token = self.sign(host, session, expires);
        if self.cache.len() >= CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(key, (token.clone(), expires));
        token
    }

    /// Drops the assertions that have expired (called periodically).
    pub fn prune(&self) {
        let now = super::tokens::now();
        self.cache.retain(|_, (_, expires)| *expires > now);
    }

    fn sign(&self, host: &str, session: &Session, expires: u64) -> String {
        let who = &session.identity;
        let subject = SubjectIdentifier::new(format!("{}:{}", who.provider, who.subject));
        let mut standard = StandardClaims::new(subject)
            .set_email(who.email.clone().map(EndUserEmail::new))
            .set_email_verified(Some(who.email_verified));
        if let Some(name) = &who.name {
            standard = standard.set_name(Some(EndUserName::new(name.clone()).into()));
        }
        let at = |secs: u64| {
            chrono::DateTime::from_timestamp(i64::try_from(secs).unwrap_or(i64::MAX), 0)
                .unwrap_or_default()
        };
        let claims = IdTokenClaims::new(
            self.issuer.clone(),
            vec![Audience::new(host.to_string())],
            at(expires),
            at(super::tokens::now()),
            standard,
            Extra {
                provider: who.provider.clone(),
                groups: who.groups.clone(),
            },
        );
        let token = Assertion::new(
            claims,
            &self.key,
            CoreJwsSigningAlgorithm::EdDsa,
            None,
            None,
        )
        .expect("an Ed25519 key signs an EdDSA token");
        token.to_string()
    }
}

/// A key id: the first 8 bytes of the public key's SHA-256, hex.
fn key_id(public: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(public);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// PEM armour around `der`.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn assertions_verify_against_the_published_keys() {
        let signer = Signer::new(&Secret::from_bytes([3; 32]), "login.example").unwrap();
        let session = Session {
            identity: Identity {
                provider: "default".into(),
                subject: "alice".into(),
                email: Some("alice@example.com".into()),
                email_verified: true,
                name: Some("Alice".into()),
                groups: vec!["eng".into()],
            },
            id: "s1".into(),
            expires: super::super::tokens::now() + 600,
        };
        let token = signer.assertion("app.example", &session);
        assert_eq!(signer.assertion("app.example", &session), token, "cached");
        let jwks: CoreJsonWebKeySet = serde_json::from_str(signer.jwks()).unwrap();
        let verifier = openidconnect::IdTokenVerifier::new_public_client(
            openidconnect::ClientId::new("app.example".into()),
            IssuerUrl::new("https://login.example".into()).unwrap(),
            jwks,
        )
        .set_allowed_algs([CoreJwsSigningAlgorithm::EdDsa]);
        let parsed: Assertion = token.parse().unwrap();
        let claims = parsed
            .claims(&verifier, |_: Option<&openidconnect::Nonce>| Ok(()))
            .unwrap();
        assert_eq!(claims.subject().as_str(), "default:alice");
        assert_eq!(claims.email().unwrap().as_str(), "alice@example.com");
        assert_eq!(claims.additional_claims().groups, ["eng"]);
        // Another host's audience does not verify.
        let other = signer.assertion("other.example", &session);
        let parsed: Assertion = other.parse().unwrap();
        assert!(parsed
            .claims(&verifier, |_: Option<&openidconnect::Nonce>| Ok(()))
            .is_err());
    }
}
