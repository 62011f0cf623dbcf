//! Who may log in, and what their login means for their names.
//!
//! Authentication is arranged so that keys are seen when a client has
//! them:
//!   none → refused, offering publickey and keyboard-interactive
//!          (accepted at once for `random@`, a throwaway name);
//!   publickey (verified) → accepted: a stable name;
//!   keyboard-interactive (keyless clients) → accepted, no prompt: the
//!          random name from the login banner.
//! OpenSSH's BatchMode disables keyboard-interactive, so keyless BatchMode
//! clients use `random@`; keyed clients are accepted straight from
//! publickey, never routed through keyboard-interactive, so that BatchMode
//! scripts (the ones that want stable names) keep working.
//!
//! In `--auth-mode keys` only keys listed in the keys file get in.
//!
//! With `--auth-url`, the operator's service decides about every login
//! the keys file does not answer (a key it does not list, a keyless login,
//! a password): allowed, it gets what the answer grants; refused — or the
//! service unavailable — the login goes through only to be disconnected at
//! once with the reason, which OpenSSH prints ("Received disconnect …").

use std::net::SocketAddr;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::Auth;
use russh::{MethodKind, MethodSet};

use super::banner::{self, NameKind};
use crate::authz::{Ask, AuthUrl, Verdict};
use crate::config::AuthMode;
use crate::keys::{self, Keys};
use crate::tunnel::names::ClientKey;

/// The login of one connection.
pub struct Login {
    keys: Arc<Keys>,
    auth_mode: AuthMode,
    /// The client's address (`remote_addr` for `--auth-url`).
    peer: SocketAddr,
    /// `--auth-url`, when set.
    auth_url: Option<Arc<AuthUrl>>,
    /// `--auth-url` refused this login (or could not be asked): the
    /// connection is ended with this reason as soon as it is in.
    denied: Option<String>,
    /// Over a limit: authentication fails while the disconnect is on its way.
    refused: bool,
    /// The user asked for a throwaway name (`random@host`).
    throwaway: bool,
    /// A key was verified.
    keyed: bool,
}

impl Login {
    pub fn new(
        (keys, auth_url): (Arc<Keys>, Option<Arc<AuthUrl>>),
        auth_mode: AuthMode,
        peer: SocketAddr,
        refused: bool,
    ) -> Login {
        Login {
            keys,
            auth_mode,
            peer,
            auth_url,
            denied: None,
            refused,
            throwaway: false,
            keyed: false,
        }
    }

    pub fn keys_only(&self) -> bool {
        self.auth_mode == AuthMode::Keys
    }

    /// What kind of names the connection gets.
    pub fn name_kind(&self) -> NameKind {
        match (self.keyed, self.throwaway) {
            (true, _) => NameKind::Stable,
            (false, true) => NameKind::Throwaway,
            (false, false) => NameKind::Random,
        }
    }

    /// The login banner, sent before any user name or key is known, and
    /// printed by OpenSSH on stderr even with -N: the random URL this
    /// connection gets unless it shows a key (`announce` reserves it and
    /// returns it; a verified key replaces it with its stable name).
    pub fn banner(&self, announce: impl FnOnce() -> String) -> Option<String> {
        if self.refused {
            return None;
        }
        if self.keys_only() {
            return Some(banner::keys_only());
        }
        Some(banner::auth_banner(&announce()))
    }

    /// `none`: refused (offering the methods that show a key), except for
    /// `random@`, which asks for a throwaway name.
    pub fn none(&mut self, user: &str) -> Auth {
        if self.refused {
            return Auth::reject();
        }
        self.throwaway = user.eq_ignore_ascii_case("random") && !self.keys_only();
        if self.throwaway {
            return Auth::Accept;
        }
        let methods: &[MethodKind] = match (self.keys_only(), self.auth_url.is_some()) {
            (true, false) => &[MethodKind::PublicKey],
            (true, true) => &[MethodKind::PublicKey, MethodKind::Password],
            (false, false) => &[MethodKind::PublicKey, MethodKind::KeyboardInteractive],
            (false, true) => &[
                MethodKind::PublicKey,
                MethodKind::KeyboardInteractive,
                MethodKind::Password,
            ],
        };
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(methods)),
            partial_success: false,
        }
    }

    /// A key offered (not yet proven): worth a signature unless it could
    /// not get in anyway.
    pub fn key_offered(&self, key: &PublicKey) -> Auth {
        let listed = || self.listed(&keys::fingerprint(key));
        let askable = self.auth_url.is_some();
        if self.refused || self.throwaway || (self.keys_only() && !askable && !listed()) {
            return Auth::reject();
        }
        Auth::Accept
    }

    /// A key the client proved it holds: in, with its stable name (the key
    /// is returned for that).
    pub async fn key_verified(&mut self, user: &str, key: &PublicKey) -> (Auth, Option<ClientKey>) {
        if self.refused || self.throwaway {
            return (Auth::reject(), None);
        }
        let fingerprint = keys::fingerprint(key);
        let listed = self.listed(&fingerprint);
        if !listed && self.auth_url.is_some() {
            let text = key.to_openssh().unwrap_or_default();
            let key_type = key.algorithm().as_str().to_string();
            let ask = Ask {
                user,
                key: Some((&key_type, &fingerprint, text)),
                password: None,
                remote: self.peer,
            };
            self.ask(&ask).await;
        } else if self.keys_only() && !listed {
            tracing::info!(ip = %self.peer.ip(), %fingerprint, reason = "key not in the keys file", "authentication refused");
            return (Auth::reject(), None);
        }
        let digest = key
            .fingerprint(russh::keys::HashAlg::Sha256)
            .as_bytes()
            .to_vec();
        self.keyed = true;
        let key = ClientKey {
            fingerprint,
            digest,
        };
        (Auth::Accept, Some(key))
    }

    /// Keyless clients: in at once, no prompt (this step only exists
    /// because OpenSSH offers nothing else without a key; the URL was in
    /// the banner already).
    pub async fn keyboard_interactive(&mut self, user: &str) -> Auth {
        if self.refused || (self.keys_only() && !self.keyed) {
            return Auth::reject();
        }
        if self.auth_url.is_some() && !self.keyed {
            let ask = Ask {
                user,
                key: None,
                password: None,
                remote: self.peer,
            };
            self.ask(&ask).await;
        }
        Auth::Accept
    }

    /// A password (offered only with `--auth-url`, which judges it).
    pub async fn password(&mut self, user: &str, password: &str) -> Auth {
        if self.refused || self.auth_url.is_none() {
            return Auth::reject();
        }
        let ask = Ask {
            user,
            key: None,
            password: Some(password),
            remote: self.peer,
        };
        self.ask(&ask).await;
        Auth::Accept
    }

    /// Why `--auth-url` refused this login, when it did: the connection is
    /// ended with it as soon as the login completes.
    pub fn denied(&self) -> Option<&str> {
        self.denied.as_deref()
    }

    /// Asks `--auth-url` about this login; a refusal is remembered.
    async fn ask(&mut self, ask: &Ask<'_>) {
        let Some(auth_url) = &self.auth_url else {
            return;
        };
        let reason = match auth_url.ask(ask).await {
            Ok(Verdict::Allow(_)) => return,
            Ok(Verdict::Deny(message)) => message,
            Err(refusal) => refusal.message,
        };
        tracing::info!(ip = %self.peer.ip(), user = ask.user, %reason, "login refused by --auth-url");
        self.denied = Some(reason);
    }

    fn listed(&self, fingerprint: &str) -> bool {
        self.keys.current().grant(fingerprint).is_some()
    }
}
