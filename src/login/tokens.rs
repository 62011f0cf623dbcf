//! What sign-in hands the browser, sealed: every token is JSON encrypted
//! and authenticated (AES-256-GCM, [`Secret::seal`]) with a key derived
//! from the stable-name secret — which every node of a cluster shares, so
//! any node opens what another sealed — and bound to what it is for:
//!
//! - **state** (`state` parameter through the provider): the PKCE verifier,
//!   the nonce, where to go back, and the id of the browser's binding
//!   cookie on the sign-in host; 10 minutes;
//! - **code** (one-time, by redirect to the tunnel's host): the identity,
//!   for exactly one host, single use, 60 seconds;
//! - **session** (the tunnel host's own `__Host-` cookie): the identity and
//!   its expiry, for exactly one host.
//!
//! A token sealed for one host does not open for another (the host is in
//! the authenticated data), nor a code as a session or the other way
//! round; tampering fails the tag.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::identity::Identity;
use crate::store::secret::{Sealing, Secret};

/// How long a sign-in may take at the provider.
pub const STATE_LIFETIME: u64 = 600;
/// How long a one-time code is good for (a redirect away).
pub const CODE_LIFETIME: u64 = 60;
/// Longest token opened: a visitor's cookie is bounded by the header
/// limits anyway; this bounds the work.
const MAX_TOKEN: usize = 8 * 1024;

/// An authorization request on its way through the provider.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// The browser's binding cookie on the sign-in host must hold this.
    #[serde(rename = "b")]
    pub binding: String,
    #[serde(rename = "v")]
    pub verifier: String,
    #[serde(rename = "n")]
    pub nonce: String,
    /// The tunnel URL to go back to.
    #[serde(rename = "r")]
    pub back_to: String,
    #[serde(rename = "p")]
    pub provider: String,
    /// Unix seconds.
    #[serde(rename = "x")]
    pub expires: u64,
}

/// A one-time code for one tunnel host.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Code {
    #[serde(rename = "i")]
    pub identity: Identity,
    /// The path (and query) on that host to go back to.
    #[serde(rename = "r")]
    pub path: String,
    /// Single use: spent once, by id.
    #[serde(rename = "j")]
    pub id: String,
    #[serde(rename = "x")]
    pub expires: u64,
}

/// A signed-in session on one tunnel host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    #[serde(rename = "i")]
    pub identity: Identity,
    /// Random: the CSRF token of its sign-out form, the key of its cached
    /// assertion.
    #[serde(rename = "d")]
    pub id: String,
    #[serde(rename = "x")]
    pub expires: u64,
}

/// Seals and opens the tokens.
#[derive(Clone)]
pub struct Sealer(Arc<Sealing>);

impl Sealer {
    /// Tokens from `root` (the stable-name secret).
    pub fn new(root: &Secret) -> Sealer {
        Sealer(Arc::new(root.child("sign-in tokens").sealing()))
    }

    pub fn seal_state(&self, state: &State) -> String {
        self.seal("state", state)
    }

    pub fn open_state(&self, token: &str) -> Option<State> {
        self.open::<State>("state", token)
            .filter(|s| s.expires >= now())
    }

    pub fn seal_code(&self, host: &str, code: &Code) -> String {
        self.seal(&format!("code {host}"), code)
    }

    /// The code for `host`, if it opens and has not expired (whether it
    /// was used already is the caller's check).
    pub fn open_code(&self, host: &str, token: &str) -> Option<Code> {
        self.open::<Code>(&format!("code {host}"), token)
            .filter(|c| c.expires >= now())
    }

    pub fn seal_session(&self, host: &str, session: &Session) -> String {
        self.seal(&format!("session {host}"), session)
    }

    /// The session of `host`'s cookie, if it opens and has not expired.
    pub fn open_session(&self, host: &str, token: &str) -> Option<Session> {
        self.open::<Session>(&format!("session {host}"), token)
            .filter(|s| s.expires >= now())
    }

    fn seal<T: Serialize>(&self, context: &str, value: &T) -> String {
        let json = serde_json::to_vec(value).expect("tokens serialize");
        let sealed = self.0.seal(context, &json);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed)
    }

    fn open<T: DeserializeOwned>(&self, context: &str, token: &str) -> Option<T> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        let json = self.0.open(context, &sealed)?;
        serde_json::from_slice(&json).ok()
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh random id (128 bits, hex).
pub fn random_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&Secret::from_bytes([byte; 32]))
    }

    fn alice() -> Identity {
        Identity {
            provider: "default".into(),
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
            groups: vec!["eng".into()],
        }
    }

    #[test]
    fn a_session_opens_only_for_its_host_and_key() {
        let session = Session {
            identity: alice(),
            id: random_id(),
            expires: now() + 60,
        };
        let token = sealer(1).seal_session("a.example", &session);
        assert_eq!(sealer(1).open_session("a.example", &token), Some(session));
        assert_eq!(sealer(1).open_session("b.example", &token), None);
        assert_eq!(sealer(2).open_session("a.example", &token), None);
        assert_eq!(sealer(1).open_code("a.example", &token), None, "not a code");
    }

    #[test]
    fn tampered_or_expired_tokens_do_not_open() {
        let session = Session {
            identity: alice(),
            id: random_id(),
            expires: now() + 60,
        };
        let token = sealer(1).seal_session("a", &session);
        let mut bytes = token.into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(sealer(1).open_session("a", &tampered), None);
        let old = Session {
            expires: now() - 1,
            ..session
        };
        let token = sealer(1).seal_session("a", &old);
        assert_eq!(sealer(1).open_session("a", &token), None);
        assert_eq!(sealer(1).open_session("a", "not base64 !"), None);
    }

    #[test]
    fn an_expired_code_or_state_does_not_open() {
        let code = |expires| Code {
            identity: alice(),
            path: "/".into(),
            id: random_id(),
            expires,
        };
        let fresh = sealer(1).seal_code("a", &code(now() + CODE_LIFETIME));
        assert!(sealer(1).open_code("a", &fresh).is_some());
        let stale = sealer(1).seal_code("a", &code(now() - 1));
        assert_eq!(sealer(1).open_code("a", &stale), None);
        let state = |expires| State {
            binding: random_id(),
            verifier: random_id(),
            nonce: random_id(),
            back_to: "https://a/".into(),
            provider: "default".into(),
            expires,
        };
        let stale = sealer(1).seal_state(&state(now() - 1));
        assert_eq!(sealer(1).open_state(&stale), None);
        let fresh = sealer(1).seal_state(&state(now() + STATE_LIFETIME));
        assert!(sealer(1).open_state(&fresh).is_some());
    }
}
