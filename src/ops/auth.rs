//! Who may use the stats listener: the admin token, the dashboard's
//! cookie, the optional metrics token, and the brake on wrong tokens.
//!
//! - The admin API, the lists that reveal users (`/tunnels`, `/bans`,
//!   `GET /?subdomains=true`), the dashboard page and every path not named
//!   below need the admin token: `Authorization: Bearer TOKEN`, or (GET and
//!   HEAD only) the dashboard's cookie. The token is the first line of
//!   `--admin-token-file`, by default `STATE_DIR/admin_token`, written with
//!   a random token (mode 0600) at first start.
//! - The counts (`GET /`, `/metrics`, `/history`) are open to loopback
//!   unless `--metrics-token-file` is set; then they need that token or
//!   the admin's.
//! - The dashboard's script, style and sign-in (`POST /dashboard/login`)
//!   are open: they reveal nothing.
//!
//! Tokens are compared as SHA-256 digests with `subtle` (constant time,
//! and the digest hides the length of an operator-chosen token). The
//! cookie holds a digest of the token, never the token: browsers send a
//! `localhost` cookie to every port of localhost, and what another local
//! service might see that way opens only reading (GET) here, never a
//! change. Wrong tokens (or cookies) spend `--admin-token-failures`; when
//! it is spent, every request that presents a token is answered 429
//! without being compared, and wrong tokens are logged at most once a
//! minute.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE, WWW_AUTHENTICATE};
use hyper::{Method, Response, StatusCode};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{read_secret, AdminArgs, Rate};
use crate::http::{pages, Body};

/// The admin token's file in the state directory.
pub const TOKEN_FILE: &str = "admin_token";
/// The dashboard's cookie.
pub const COOKIE_NAME: &str = "burrow_admin";
/// The cookie's lifetime: the dashboard asks again after that long.
const COOKIE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shorter tokens are refused at start (the generated one has 64 hex
/// characters).
const MIN_TOKEN_LEN: usize = 16;
/// Wrong tokens are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing beyond the loopback and Host checks.
    Open,
    /// Counts only: open unless `--metrics-token-file` is set.
    Metrics,
    /// The admin token (or the dashboard's cookie, for reading).
    Admin,
}

/// What `method path?query` needs. Anything not named is the admin's, so
/// a new endpoint is closed until someone decides otherwise.
pub fn need(method: &Method, path: &str, query: Option<&str>) -> Need {
    match path {
        "/" if query.is_some_and(|q| q.split('&').any(|kv| kv == "subdomains=true")) => Need::Admin,
        "/" | "/metrics" | "/history" => Need::Metrics,
        "/dashboard/app.js" | "/dashboard/style.css" | "/dashboard/login.js" => Need::Open,
        "/dashboard/login" if method == Method::POST => Need::Open,
        _ => Need::Admin,
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No token (nor cookie) came with it.
    Missing,
    /// One came, and it was wrong.
    Wrong,
    /// Too many wrong ones lately: not even compared.
    Locked(Duration),
}

/// The token files, read before anything is written (a bad flag leaves
/// nothing behind).
pub struct Secrets {
    /// `--admin-token-file`, and its token when the file exists.
    admin_file: Option<(PathBuf, Option<String>)>,
    metrics: Option<String>,
    failures: Rate,
}

impl Secrets {
    pub fn read(args: &AdminArgs) -> Result<Secrets> {
        let metrics = match (&args.metrics_token_file, &args.metrics_token) {
            (Some(path), _) => Some(checked("--metrics-token-file", path)?),
            (None, Some(token)) if token.trim().len() < MIN_TOKEN_LEN => {
                bail!("--metrics-token: the token is shorter than {MIN_TOKEN_LEN} characters")
            }
            (None, Some(token)) => Some(token.trim().to_string()),
            (None, None) => None,
        };
        let admin_file = match &args.admin_token_file {
            Some(path) if path.exists() => {
                Some((path.clone(), Some(checked("--admin-token-file", path)?)))
            }
            Some(path) => Some((path.clone(), None)),
            None => None,
        };
        Ok(Secrets {
            admin_file,
            metrics,
            failures: args.admin_token_failures,
        })
    }

    /// The admin token from `--admin-token-file` or `state_dir`, generated
    /// and written (0600) if there is none yet.
    pub fn into_auth(self, state_dir: &Path) -> Result<AdminAuth> {
        let (flag, path, known) = match self.admin_file {
            Some((path, known)) => ("--admin-token-file", path, known),
            None => ("--state-dir", state_dir.join(TOKEN_FILE), None),
        };
        let token = match known {
            Some(token) => token,
            None if path.exists() => checked(flag, &path)?,
            None => {
                let token: String = rand::random::<[u8; 32]>()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                crate::state::write_private_file(&path, format!("{token}\n").as_bytes())
                    .with_context(|| format!("{flag}: cannot write {}", path.display()))?;
                tracing::info!(path = %path.display(), "generated the admin token");
                token
            }
        };
        warn_if_readable(&path);
        Ok(AdminAuth::new(
            &token,
            self.metrics.as_deref(),
            path,
            self.failures,
        ))
    }
}

/// A token file's first line, long enough.
fn checked(flag: &str, path: &Path) -> Result<String> {
    let token = read_secret(flag, path)?;
    if token.len() < MIN_TOKEN_LEN {
        bail!(
            "{flag} {}: the token is shorter than {MIN_TOKEN_LEN} characters",
            path.display()
        );
    }
    Ok(token)
}

fn warn_if_readable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the admin token file is readable by others: chmod 600 it");
        }
    }
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

/// The checks, shared by every connection of the stats listener.
pub struct AdminAuth {
    admin: [u8; 32],
    /// The dashboard cookie's value (hex).
    cookie: String,
    metrics: Option<[u8; 32]>,
    /// Where the admin token is, for the refusals.
    path: PathBuf,
    failures: Option<DefaultDirectRateLimiter>,
    locked_until: Mutex<Option<Instant>>,
    wrong: AtomicU64,
    /// When wrong tokens were last logged, and how many there were then.
    logged: Mutex<Option<(Instant, u64)>>,
}

impl AdminAuth {
    pub fn new(token: &str, metrics: Option<&str>, path: PathBuf, failures: Rate) -> AdminAuth {
        let mut cookie = b"burrow dashboard cookie\0".to_vec();
        cookie.extend_from_slice(token.as_bytes());
        let cookie = digest(&cookie).iter().map(|b| format!("{b:02x}")).collect();
        AdminAuth {
            admin: digest(token.as_bytes()),
            cookie,
            metrics: metrics.map(|m| digest(m.as_bytes())),
            path,
            failures: quota(failures).map(DefaultDirectRateLimiter::direct),
            locked_until: Mutex::new(None),
            wrong: AtomicU64::new(0),
            logged: Mutex::new(None),
        }
    }

    /// Whether a request with `headers` may have what `need` protects.
    pub fn check(&self, need: Need, method: &Method, headers: &HeaderMap) -> Result<(), Refused> {
        if need == Need::Open || (need == Need::Metrics && self.metrics.is_none()) {
            return Ok(());
        }
        let bearer = bearer(headers);
        // A cookie is sent by the browser on its own: it may read, never
        // change anything.
        let cookie = (method == Method::GET || method == Method::HEAD)
            .then(|| cookie(headers))
            .flatten();
        if bearer.is_none() && cookie.is_none() {
            return Err(Refused::Missing);
        }
        self.not_locked()?;
        let admin = bearer.is_some_and(|b| self.is_admin(b))
            || cookie.is_some_and(|c| bool::from(c.as_bytes().ct_eq(self.cookie.as_bytes())));
        let metrics = need == Need::Metrics
            && bearer.is_some_and(|b| {
                self.metrics
                    .is_some_and(|m| bool::from(digest(b.as_bytes())[..].ct_eq(&m[..])))
            });
        if admin || metrics {
            Ok(())
        } else {
            Err(self.failed())
        }
    }

    fn is_admin(&self, token: &str) -> bool {
        digest(token.as_bytes())[..].ct_eq(&self.admin[..]).into()
    }

    fn not_locked(&self) -> Result<(), Refused> {
        let locked = self.locked_until.lock().unwrap_or_else(|e| e.into_inner());
        match *locked {
            Some(until) if until > Instant::now() => Err(Refused::Locked(
                until.saturating_duration_since(Instant::now()),
            )),
            _ => Ok(()),
        }
    }

    /// A wrong token: counted, logged at most once a minute, and braked.
    fn failed(&self) -> Refused {
        let total = self.wrong.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let since = match *logged {
                Some((at, _)) if now.duration_since(at) < LOG_EVERY => None,
                Some((_, then)) => Some(total - then),
                None => Some(total),
            };
            if let Some(count) = since {
                *logged = Some((now, total));
                tracing::warn!(
                    wrong_tokens = count,
                    "the stats listener refused a wrong admin or metrics token (logged at most once a minute)"
                );
            }
        }
        let Some(limiter) = &self.failures else {
            return Refused::Wrong;
        };
        match limiter.check() {
            Ok(()) => Refused::Wrong,
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                let wait = wait.max(Duration::from_millis(1));
                *self.locked_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + wait);
                crate::counters::COUNTERS.refused("admin-token-failures");
                Refused::Locked(wait)
            }
        }
    }

    /// The answer to a refused request for something `need` protects.
    pub fn refusal(&self, need: Need, refused: Refused) -> Response<Body> {
        let file = self.path.display();
        let (status, message) = match (refused, need) {
            (Refused::Locked(wait), _) => {
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let message = format!(
                    "admin-token-failures: too many wrong tokens; try again in {secs} s"
                );
                let mut response = pages::json_error(StatusCode::TOO_MANY_REQUESTS, &message);
                if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    response.headers_mut().insert("retry-after", value);
                }
                return response;
            }
            (Refused::Missing, Need::Metrics) => (
                "missing_token",
                "this needs the metrics token (--metrics-token-file) or the admin token: send Authorization: Bearer TOKEN".to_string(),
            ),
            (Refused::Missing, _) => (
                "missing_token",
                format!("this needs the admin token: send Authorization: Bearer TOKEN, TOKEN being the first line of {file}"),
            ),
            (Refused::Wrong, _) => (
                "invalid_token",
                format!("the token is wrong: the admin token is the first line of {file}"),
            ),
        };
        let mut response = pages::json_error(StatusCode::UNAUTHORIZED, &message);
        let challenge = match status {
            "invalid_token" => r#"Bearer realm="burrow", error="invalid_token""#,
            _ => r#"Bearer realm="burrow""#,
        };
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    }

    /// `POST /dashboard/login` with `{"token": "…"}`: the cookie, or why not.
    pub fn sign_in(&self, token: &str) -> Response<Body> {
        if let Err(refused) = self.not_locked() {
            return self.refusal(Need::Admin, refused);
        }
        if !self.is_admin(token.trim()) {
            let refused = self.failed();
            return self.refusal(Need::Admin, refused);
        }
        let cookie = format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            self.cookie,
            COOKIE_MAX_AGE.as_secs()
        );
        let mut response = pages::json(StatusCode::OK, &serde_json::json!({ "signed_in": true }));
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().insert("set-cookie", value);
        }
        response
    }
}

/// `10/m` → a minute's worth at once, then one every 6 s; `0` → no brake.
fn quota(rate: Rate) -> Option<Quota> {
    if rate.is_unlimited() {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate.per_second);
    let burst = (rate.per_second * 60.0).round().clamp(1.0, 1e6) as u32;
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?))
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The dashboard cookie's value, if sent.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE_NAME).then_some(value.trim())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(metrics: Option<&str>, failures: &str) -> AdminAuth {
        let rate = crate::config::parse_rate(failures).unwrap();
        AdminAuth::new("s3cret-admin-token", metrics, "admin_token".into(), rate)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn paths_are_classified_closed_by_default() {
        let get = Method::GET;
        assert_eq!(need(&get, "/", None), Need::Metrics);
        assert_eq!(need(&get, "/", Some("subdomains=true")), Need::Admin);
        assert_eq!(need(&get, "/metrics", None), Need::Metrics);
        assert_eq!(need(&get, "/tunnels", None), Need::Admin);
        assert_eq!(need(&get, "/usage", None), Need::Admin);
        assert_eq!(need(&get, "/dashboard", None), Need::Admin);
        assert_eq!(need(&get, "/dashboard/app.js", None), Need::Open);
        assert_eq!(need(&Method::POST, "/dashboard/login", None), Need::Open);
        assert_eq!(need(&get, "/dashboard/login", None), Need::Admin);
    }

    #[test]
    fn tokens_and_cookies() {
        let auth = auth(Some("metrics-token-1234"), "0");
        let get = Method::GET;
        let check = |need, method: &Method, pairs: &[(&'static str, &str)]| {
            auth.check(need, method, &headers(pairs))
        };
        assert_eq!(check(Need::Admin, &get, &[]), Err(Refused::Missing));
        let good = [("authorization", "Bearer s3cret-admin-token")];
        assert_eq!(check(Need::Admin, &Method::DELETE, &good), Ok(()));
        let lower = [("authorization", "bearer s3cret-admin-token")];
        assert_eq!(check(Need::Admin, &get, &lower), Ok(()));
        let wrong = [("authorization", "Bearer s3cret-admin-tokeN")];
        assert_eq!(check(Need::Admin, &get, &wrong), Err(Refused::Wrong));
        let metrics = [("authorization", "Bearer metrics-token-1234")];
        assert_eq!(check(Need::Metrics, &get, &metrics), Ok(()));
        assert_eq!(check(Need::Admin, &get, &metrics), Err(Refused::Wrong));
        assert_eq!(check(Need::Metrics, &get, &good), Ok(()));
        let cookie = format!("other=1; {COOKIE_NAME}={}", auth.cookie);
        let with_cookie = [("cookie", cookie.as_str())];
        assert_eq!(check(Need::Admin, &get, &with_cookie), Ok(()));
        // The cookie never changes anything.
        assert_eq!(
            check(Need::Admin, &Method::POST, &with_cookie),
            Err(Refused::Missing)
        );
        assert!(!auth.cookie.contains("s3cret"));
    }

    #[test]
    fn wrong_tokens_are_braked() {
        let auth = auth(None, "120/h");
        let wrong = headers(&[("authorization", "Bearer nope")]);
        let good = headers(&[("authorization", "Bearer s3cret-admin-token")]);
        // Counts stay open without a metrics token, whatever is sent.
        assert_eq!(auth.check(Need::Metrics, &Method::GET, &wrong), Ok(()));
        assert_eq!(
            auth.check(Need::Admin, &Method::GET, &wrong),
            Err(Refused::Wrong)
        );
        assert_eq!(
            auth.check(Need::Admin, &Method::GET, &wrong),
            Err(Refused::Wrong)
        );
        assert!(matches!(
            auth.check(Need::Admin, &Method::GET, &wrong),
            Err(Refused::Locked(_))
        ));
        // Not even the right token is compared while locked.
        assert!(matches!(
            auth.check(Need::Admin, &Method::GET, &good),
            Err(Refused::Locked(_))
        ));
    }
}
