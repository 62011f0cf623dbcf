//! Sessions already opened. A signed-in visitor's every request carries the
//! same cookie; opening it (base64, AES-GCM, JSON) and making the headers
//! the app gets costs microseconds, a lookup here a fraction of one. What a
//! cookie says cannot change (it is sealed and bound to its host), so an
//! entry is exactly what opening the cookie again would give, for at most
//! [`KEEP`] and never past the session's expiry. Who may visit is not
//! cached: the gate judges the policies on every request.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hyper::header::{HeaderName, HeaderValue};

use super::assertion::Signer;
use super::tokens::{Sealer, Session};

/// How long an opened cookie is reused. Well under the assertion's
/// renewal margin (a cached `X-Burrow-Identity` keeps over a minute).
pub const KEEP: Duration = Duration::from_secs(5);
/// Most entries; beyond, the cache starts over (only cookies that opened
/// get in, so filling it takes that many valid sessions).
const MAX: usize = 50_000;

/// A session cookie, opened, with what the app gets for it.
#[derive(Debug)]
pub struct Visit {
    pub session: Session,
    /// Who the visitor is, for people (`Identity::label`).
    pub user: String,
    /// `X-Burrow-User`, `X-Burrow-User-Name`, `X-Burrow-Identity`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Visit {
    /// Opens `token` for `host`: `None` unless it is a live session of
    /// that very host.
    pub fn open(sealer: &Sealer, signer: &Signer, host: &str, token: &str) -> Option<Visit> {
        let session = sealer.open_session(host, token)?;
        let user = session.identity.label();
        let mut headers = Vec::with_capacity(3);
        let mut add = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.push((HeaderName::from_static(name), value));
            }
        };
        add("x-burrow-user", &user);
        if let Some(name) = &session.identity.name {
            add("x-burrow-user-name", name);
        }
        add("x-burrow-identity", &signer.assertion(host, &session));
        Some(Visit {
            session,
            user,
            headers,
        })
    }
}

struct Entry {
    host: Box<str>,
    visit: Arc<Visit>,
    /// Unix seconds after which it is opened again.
    until: u64,
}

/// Opened cookies by their text.
#[derive(Default)]
pub struct Opened {
    entries: DashMap<Box<str>, Entry>,
}

impl Opened {
    /// The visit `token` stands for on `host` at `now` (unix seconds):
    /// from the cache, or `open`ed and kept.
    pub fn get(
        &self,
        host: &str,
        token: &str,
        now: u64,
        open: impl FnOnce() -> Option<Visit>,
    ) -> Option<Arc<Visit>> {
        if let Some(entry) = self.entries.get(token) {
            if *entry.host == *host && entry.until > now {
                return Some(Arc::clone(&entry.visit));
            }
        }
        let visit = Arc::new(open()?);
        let until = (now + KEEP.as_secs()).min(visit.session.expires);
        if until > now {
            if self.entries.len() >= MAX {
                self.entries.clear();
            }
            let entry = Entry {
                host: host.into(),
                visit: Arc::clone(&visit),
                until,
            };
            self.entries.insert(token.into(), entry);
        }
        Some(visit)
    }

    /// Forgets entries past their time (called periodically).
    pub fn prune(&self, now: u64) {
        self.entries.retain(|_, entry| entry.until > now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::login::tokens;
    use crate::store::secret::Secret;

    fn rig() -> (Sealer, Signer, Session) {
        let root = Secret::from_bytes([3; 32]);
        let session = Session {
            identity: Identity {
                provider: "default".into(),
                subject: "42".into(),
                email: Some("alice@example.com".into()),
                email_verified: true,
                name: Some("Alice".into()),
                groups: vec![],
            },
            id: tokens::random_id(),
            expires: tokens::now() + 3600,
        };
        let signer = Signer::new(&root, "login.example").unwrap();
        (Sealer::new(&root), signer, session)
    }

    #[test]
    fn a_cookie_is_opened_once_within_keep_and_again_after() {
        let (sealer, signer, session) = rig();
        let token = sealer.seal_session("app.example", &session);
        let opened = Opened::default();
        let now = tokens::now();
        let mut opens = 0;
        let mut get = |at: u64| {
            opened.get("app.example", &token, at, || {
                opens += 1;
                Visit::open(&sealer, &signer, "app.example", &token)
            })
        };
        let first = get(now).expect("a valid session");
        assert_eq!(first.user, "alice@example.com");
        assert_eq!(first.headers.len(), 3);
        let again = get(now + 1).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let later = get(now + KEEP.as_secs()).unwrap();
        assert!(!Arc::ptr_eq(&first, &later));
        assert_eq!(opens, 2);
    }

    #[test]
    fn a_cached_cookie_is_not_taken_on_another_host() {
        let (sealer, signer, session) = rig();
        let token = sealer.seal_session("app.example", &session);
        let opened = Opened::default();
        let now = tokens::now();
        let open = |host: &str| {
            opened.get(host, &token, now, || {
                Visit::open(&sealer, &signer, host, &token)
            })
        };
        assert!(open("app.example").is_some());
        assert!(open("other.example").is_none(), "bound to its host");
    }

    #[test]
    fn nothing_is_kept_past_the_sessions_expiry() {
        let (sealer, signer, mut session) = rig();
        let now = tokens::now();
        session.expires = now + 1;
        let token = sealer.seal_session("app.example", &session);
        let opened = Opened::default();
        let open = || Visit::open(&sealer, &signer, "app.example", &token);
        assert!(opened.get("app.example", &token, now, open).is_some());
        // Kept until the expiry, not for KEEP.
        assert!(opened
            .get("app.example", &token, now + 1, || None)
            .is_none());
        opened.prune(now + 1);
        assert!(opened.is_empty());
        // A cookie that does not open is never kept.
        assert!(opened.get("app.example", "garbage", now, || None).is_none());
        assert_eq!(opened.len(), 0);
    }
}
