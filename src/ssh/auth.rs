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

use std::net::IpAddr;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::Auth;
use russh::{MethodKind, MethodSet};

use super::banner::{self, NameKind};
use crate::config::AuthMode;
use crate::keys::{self, Keys};
use crate::tunnel::names::ClientKey;

/// The login of one connection.
pub struct Login {
    keys: Arc<Keys>,
    auth_mode: AuthMode,
    ip: IpAddr,
    /// Over a limit: authentication fails while the disconnect is on its way.
    refused: bool,
    /// The user asked for a throwaway name (`random@host`).
    throwaway: bool,
    /// A key was verified.
    keyed: bool,
}

impl Login {
    pub fn new(keys: Arc<Keys>, auth_mode: AuthMode, ip: IpAddr, refused: bool) -> Login {
        Login {
            keys,
            auth_mode,
            ip,
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
        let methods: &[MethodKind] = if self.keys_only() {
            &[MethodKind::PublicKey]
        } else {
            &[MethodKind::PublicKey, MethodKind::KeyboardInteractive]
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
        if self.refused || self.throwaway || (self.keys_only() && !listed()) {
            return Auth::reject();
        }
        Auth::Accept
    }

    /// A key the client proved it holds: in, with its stable name (the key
    /// is returned for that).
    pub fn key_verified(&mut self, key: &PublicKey) -> (Auth, Option<ClientKey>) {
        if self.refused || self.throwaway {
            return (Auth::reject(), None);
        }
        let fingerprint = keys::fingerprint(key);
        if self.keys_only() && !self.listed(&fingerprint) {
            tracing::info!(ip = %self.ip, %fingerprint, reason = "key not in the keys file", "authentication refused");
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
    pub fn keyboard_interactive(&self) -> Auth {
        if self.refused || (self.keys_only() && !self.keyed) {
            return Auth::reject();
        }
        Auth::Accept
    }

    fn listed(&self, fingerprint: &str) -> bool {
        self.keys.current().grant(fingerprint).is_some()
    }
}
