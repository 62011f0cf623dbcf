//! HTTP-01 challenge responses: the tokens of the orders in progress and
//! their key authorizations, answered by the plain-HTTP listener at
//! `/.well-known/acme-challenge/TOKEN` before anything else it does.

use dashmap::DashMap;

/// Where HTTP-01 responses are looked up.
pub const PATH_PREFIX: &str = "/.well-known/acme-challenge/";

/// Tokens of pending HTTP-01 challenges, in memory only: a challenge never
/// outlives the order that asked for it.
#[derive(Default, Debug)]
pub struct Challenges {
    tokens: DashMap<String, String>,
}

impl Challenges {
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.tokens
            .insert(token.to_string(), key_authorization.to_string());
    }

    pub fn remove(&self, token: &str) {
        self.tokens.remove(token);
    }

    /// The response body for a request path, if it is a challenge path.
    /// `Some(None)`: a challenge path whose token is unknown (404).
    pub fn respond(&self, path: &str) -> Option<Option<String>> {
        let token = path.strip_prefix(PATH_PREFIX)?;
        Some(self.tokens.get(token).map(|k| k.value().clone()))
    }
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
}
