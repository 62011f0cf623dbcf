//! Who may publish, decided by the operator's own system (`--auth-url`):
//! at every SSH login burrow POSTs
//!
//! ```json
//! {"user": "alice", "key_type": "ssh-ed25519", "fingerprint": "SHA256:…",
//!  "public_key": "ssh-ed25519 AAAA…", "password": "…", "remote_addr": "203.0.113.9:51000"}
//! ```
//!
//! (the key fields for a key login, `password` for a password login,
//! neither for a keyless one) and follows the answer: `200` with
//! `{"allow": true, "names": [...], "ports": [...], "connect": [...],
//! "login": "...", "plan": "team"}` grants exactly what a keys-file line can grant, checked
//! by the same code ([`crate::keys::RawGrant`]) and applied by the same
//! grant rule ([`crate::tunnel::names::Grants`]); `403`, or
//! `{"allow": false, "message": "..."}`, refuses with that message. A
//! timeout, a 5xx or an answer that is no such JSON refuses too — "the
//! server's authorisation service is unavailable", never an open door —
//! counted and logged once per minute.
//!
//! Answers are reused per key (or user and password) for `--auth-url-ttl`.
//! What an answer granted stays the key's until it is asked again, so a
//! live tunnel never loses its name to the cache's expiry.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use dashmap::DashMap;
use serde::Deserialize;

use crate::config::LoginArgs;
use crate::keys::{Grant, KeysFile, RawGrant};
use crate::limits::{Refusal, Refusals};

/// What the service is told about a login.
pub struct Ask<'a> {
    pub user: &'a str,
    /// The key's type, fingerprint and OpenSSH text, for a key login.
    pub key: Option<(&'a str, &'a str, String)>,
    pub password: Option<&'a str>,
    pub remote: SocketAddr,
}

/// The service's verdict.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// In, with what it grants.
    Allow(Grant),
    /// Out, with the message for the user.
    Deny(String),
}

/// The answer's JSON.
#[derive(Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    ports: Vec<u16>,
    #[serde(default)]
    connect: Vec<String>,
    #[serde(default)]
    login: Option<String>,
    /// The key's plan (`--plans-file`); unknown or absent: `default`.
    #[serde(default)]
    plan: Option<String>,
}

/// The refusal when the service cannot be asked.
pub const UNAVAILABLE: &str = "the server's authorisation service is unavailable";
/// Most logins remembered (beyond, the oldest half is forgotten).
const CACHE_MAX: usize = 100_000;
/// Grants are forgotten this long after the key was last asked about.
const GRANT_KEPT: Duration = Duration::from_secs(24 * 3600);

/// The client of `--auth-url`.
pub struct AuthUrl {
    url: String,
    http: reqwest::Client,
    /// How long an answer is reused.
    ttl: Duration,
    /// The sign-in providers `login` may name.
    providers: Vec<String>,
    /// Answers by key fingerprint (or user and password digest).
    answers: DashMap<String, (Verdict, Instant)>,
    /// What the allowed keys are granted, as a keys file the grant rule
    /// reads: rebuilt when an answer changes it.
    granted: RwLock<Arc<KeysFile>>,
    /// Grants by fingerprint, the source of `granted`.
    grants: DashMap<String, (Grant, Instant)>,
    refusals: Arc<Refusals>,
}

impl AuthUrl {
    /// The client `args` asks for; `None` without `--auth-url`.
    pub fn new(
        args: &LoginArgs,
        providers: Vec<String>,
        refusals: Arc<Refusals>,
    ) -> Result<Option<Arc<AuthUrl>>> {
        let Some(url) = &args.auth_url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(args.auth_url_timeout)
            .connect_timeout(args.auth_url_timeout)
            .user_agent(concat!("burrow/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("--auth-url: the HTTP client")?;
        Ok(Some(Arc::new(AuthUrl {
            url: url.clone(),
            http,
            ttl: args.auth_url_ttl,
            providers,
            answers: DashMap::new(),
            granted: RwLock::new(Arc::new(KeysFile::default())),
            grants: DashMap::new(),
            refusals,
        })))
    }

    /// Asks about a login (or reuses a fresh answer). `Err` is the
    /// refusal when the service cannot be asked.
    pub async fn ask(&self, ask: &Ask<'_>) -> Result<Verdict, Refusal> {
        let cache_key = cache_key(ask);
        if let Some(key) = &cache_key {
            if let Some(entry) = self.answers.get(key) {
                if entry.1.elapsed() < self.ttl {
                    return Ok(entry.0.clone());
                }
            }
        }
        let verdict = match self.post(ask).await {
            Ok(verdict) => verdict,
            Err(err) => {
                let refusal = Refusal::new("auth-url", UNAVAILABLE);
                tracing::debug!(error = %format!("{err:#}"), "--auth-url did not answer usably");
                self.refusals.refuse_unattributed(&refusal, "ssh login");
                return Err(refusal);
            }
        };
        if let Some(key) = cache_key {
            if self.answers.len() >= CACHE_MAX {
                self.answers.clear();
            }
            self.answers.insert(key, (verdict.clone(), Instant::now()));
        }
        if let Some((_, fp, _)) = &ask.key {
            self.record(fp, &verdict);
        }
        Ok(verdict)
    }

    /// What the service granted key `fp`, when it allowed it.
    pub fn grant(&self, fp: &str) -> Option<Grant> {
        self.grants.get(fp).map(|g| g.0.clone())
    }

    /// Every key's grant, as the grant rule reads it.
    pub fn granted(&self) -> Arc<KeysFile> {
        Arc::clone(&self.granted.read().expect("granted lock"))
    }

    /// Forgets grants of keys nobody asked about for a day.
    pub fn prune(&self) {
        let before = self.grants.len();
        self.grants.retain(|_, (_, at)| at.elapsed() < GRANT_KEPT);
        self.answers.retain(|_, (_, at)| at.elapsed() < self.ttl);
        if self.grants.len() != before {
            self.rebuild();
        }
    }

    async fn post(&self, ask: &Ask<'_>) -> Result<Verdict> {
        let mut body = serde_json::json!({
            "user": ask.user,
            "remote_addr": ask.remote.to_string(),
        });
        if let Some((key_type, fp, public)) = &ask.key {
            body["key_type"] = (*key_type).into();
            body["fingerprint"] = (*fp).into();
            body["public_key"] = public.clone().into();
        }
        if let Some(password) = ask.password {
            body["password"] = password.into();
        }
        let response = self.http.post(&self.url).json(&body).send().await?;
        let status = response.status();
        if status.is_server_error() {
            anyhow::bail!("it answered {status}");
        }
        let text = response.text().await?;
        let answer: Option<Answer> = serde_json::from_str(&text).ok();
        match (status.as_u16(), answer) {
            (200, Some(answer)) if answer.allow => Ok(Verdict::Allow(self.grant_of(answer)?)),
            (200 | 403, Some(answer)) => Ok(Verdict::Deny(deny_message(answer.message))),
            (403, None) => Ok(Verdict::Deny(deny_message(None))),
            (status, _) => anyhow::bail!("it answered {status} without a usable JSON verdict"),
        }
    }

    /// The grant an allowing answer carries, checked like a keys-file line.
    fn grant_of(&self, answer: Answer) -> Result<Grant> {
        let raw = RawGrant {
            names: answer.names,
            ports: answer.ports.iter().map(|p| p.to_string()).collect(),
            connect: answer.connect,
            login: answer.login.into_iter().collect(),
            plan: answer.plan.into_iter().collect(),
        };
        raw.grant(&self.providers)
            .map_err(|e| anyhow!("its grant is not valid: {e:#}"))
    }

    /// Keeps (or drops) what key `fp` is granted.
    fn record(&self, fp: &str, verdict: &Verdict) {
        match verdict {
            Verdict::Allow(grant) => {
                self.grants
                    .insert(fp.to_string(), (grant.clone(), Instant::now()));
            }
            Verdict::Deny(_) => {
                self.grants.remove(fp);
            }
        }
        self.rebuild();
    }

    fn rebuild(&self) {
        let snapshot: Vec<(String, Grant)> = self
            .grants
            .iter()
            .map(|e| (e.key().clone(), e.value().0.clone()))
            .collect();
        let file = KeysFile::from_grants(snapshot.iter().map(|(fp, g)| (fp, g)));
        *self.granted.write().expect("granted lock") = Arc::new(file);
    }
}

/// The sign-in policy the operator gives key `fp`: its keys-file line's
/// `login=`, else `--auth-url`'s answer's. The one place this is decided,
/// for the gate and the banner alike.
pub fn operator_policy(
    keys: &crate::keys::Keys,
    auth_url: Option<&AuthUrl>,
    fp: &str,
) -> Option<crate::identity::LoginPolicy> {
    if let Some(grant) = keys.current().grant(fp) {
        return grant.login.clone();
    }
    auth_url?.grant(fp)?.login
}

/// The plan the operator gives key `fp` (`None`: the default plan): its
/// keys-file line's `plan=`, else `--auth-url`'s answer's.
pub fn operator_plan(
    keys: &crate::keys::Keys,
    auth_url: Option<&AuthUrl>,
    fp: &str,
) -> Option<String> {
    if let Some(grant) = keys.current().grant(fp) {
        return grant.plan.clone();
    }
    auth_url?.grant(fp)?.plan
}

/// What an answer is remembered by: the key, or the user and password
/// (digested); keyless logins are asked every time.
fn cache_key(ask: &Ask<'_>) -> Option<String> {
    use sha2::Digest;
    if let Some((_, fp, _)) = &ask.key {
        return Some(format!("key {fp}"));
    }
    let password = ask.password?;
    let digest = sha2::Sha256::digest(format!("{}\0{password}", ask.user).as_bytes());
    Some(format!(
        "password {}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

fn deny_message(message: Option<String>) -> String {
    let message = message.unwrap_or_else(|| "this server does not let you publish".into());
    // One line, printable: it goes to the user's terminal.
    let clean: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    clean
}
