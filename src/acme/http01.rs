//! HTTP-01 challenge responses: the tokens of the orders in progress and
//! their key authorizations, answered by the plain-HTTP listener at
//! `/.well-known/acme-challenge/TOKEN` before anything else it does.
//!
//! In a cluster the CA may reach any node, not the one that ordered: the
//! answers are published in Redis too (expiring with the order), and a
//! node that does not know a token asks there.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use dashmap::DashMap;

use crate::store::shared::SharedCerts;

/// Where HTTP-01 responses are looked up.
pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens of pending HTTP-01 challenges, in memory (and, in a cluster, in
/// Redis): a challenge never outlives the order that asked for it.
#[derive(Default)]
pub struct Challenges {
    tokens: DashMap<String, String>,
    /// In a cluster: where every node's answers are.
    shared: OnceLock<SharedCerts>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("tokens", &self.tokens.len())
            .field("shared", &self.shared.get().is_some())
            .finish()
    }
}

impl Challenges {
    /// Answers from every node of the cluster too, from now on.
    pub fn share(&self, shared: SharedCerts) {
        let _ = self.shared.set(shared);
    }

    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.tokens.remove(token);
    }

    /// Makes `token` answerable (here, and in a cluster on every node for
    /// `ttl`).
    pub async fn publish(&self, token: &str, key_authorization: &str, ttl: Duration) -> Result<()> {
        self.insert(token, key_authorization);
        if let Some(shared) = self.shared.get() {
            shared.set_challenge(token, key_authorization, ttl).await?;
        }
        Ok(())
    }

    /// Withdraws `token` everywhere; a failure in Redis is logged only (the
    /// answer expires there by itself).
    pub async fn withdraw(&self, token: &str) {
        self.remove(token);
        if let Some(shared) = self.shared.get() {
            if let Err(err) = shared.remove_challenge(token).await {
                tracing::debug!(error = %err, "HTTP-01 answer left in Redis until it expires");
            }
        }
    }

    /// The response body for a request path, if it is a challenge path,
    /// from this node's challenges. `Some(None)`: a challenge path whose
    /// token is unknown (404).
    pub fn respond(&self, path: &str) -> Option<Option<String>> {
        let token = path.strip_prefix(PATH_PREFIX)?;
        Some(self.tokens.get(token).map(|k| k.value().clone()))
    }

    /// [`Challenges::respond`], and in a cluster what another node
    /// published for a token unknown here. Other paths cost nothing more.
    pub async fn answer(&self, path: &str) -> Option<Option<String>> {
        let local = self.respond(path)?;
        let (Some(shared), None) = (self.shared.get(), &local) else {
            return Some(local);
        };
        let token = path.strip_prefix(PATH_PREFIX)?;
        if !is_token(token) {
            return Some(None);
        }
        match shared.challenge(token).await {
            Ok(found) => Some(found),
            Err(err) => {
                tracing::warn!(error = %err, "HTTP-01 answer not found: Redis did not answer");
                Some(None)
            }
        }
    }
}

/// Whether `token` can be an ACME token (base64url, RFC 8555 §8.3), so
/// anything else is not looked up in Redis.
fn is_token(token: &str) -> bool {
    (1..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_known_tokens_only() {
        let c = Challenges::default();
        c.insert("tok", "tok.thumb");
        assert_eq!(
            c.respond("/.well-known/acme-challenge/tok"),
            Some(Some("tok.thumb".into()))
        );
        assert_eq!(c.respond("/.well-known/acme-challenge/other"), Some(None));
        assert_eq!(c.respond("/index.html"), None);
        c.remove("tok");
        assert_eq!(c.respond("/.well-known/acme-challenge/tok"), Some(None));
    }

    #[test]
    fn only_token_shaped_paths_are_looked_up() {
        assert!(is_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!is_token(""));
        assert!(!is_token("../x"));
        assert!(!is_token("a b"));
        assert!(!is_token(&"a".repeat(129)));
    }
}
