//! Certificates for custom domains, on demand: issued when a verified name
//! is bound (never at the first handshake with an unknown SNI, which would
//! let anyone make the server issue certificates for any name), cached per
//! name in [`crate::tls::Certs`], and rate-limited with one token bucket for
//! all names (`--custom-cert-rate`, `--custom-cert-burst`).
//!
//! In a cluster a name bound on one node is served by every node: the
//! node holding the tunnel issues the certificate (the issuer stores it in
//! Redis), and a node without it fetches it at the first handshake,
//! waiting for it if it is still on its way.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::DefaultDirectRateLimiter;
use rustls::sign::CertifiedKey;

use super::issuer::Issuer;
use crate::config::CustomDomainArgs;
use crate::limits::{human, Refusal};
use crate::store::shared::{CertChange, SharedCerts};
use crate::tls::Certs;

/// Counters for the stats endpoint.
#[derive(Default)]
pub struct CertCounters {
    /// Certificates the issuer handed over.
    pub issued: AtomicU64,
    /// Issuer calls that failed.
    pub failed: AtomicU64,
    /// Binds refused by the issuance rate limit.
    pub refused: AtomicU64,
    /// Bound names that got none: they pass TLS through (`tls=passthrough`).
    pub passthrough: AtomicU64,
}

/// How long a visitor's handshake for a bound custom name waits for the
/// name's certificate to be issued, before it gets the server's own.
pub const CERT_WAIT: Duration = Duration::from_secs(5);

pub struct OnDemand {
    issuer: RwLock<Arc<dyn Issuer>>,
    certs: Arc<Certs>,
    limiter: Option<DefaultDirectRateLimiter>,
    /// The limit in words, for refusals and logs.
    limit: String,
    /// `--custom-cert-cache`.
    cache_cap: usize,
    /// Names this cache holds a certificate for (served through `certs`).
    held: Mutex<HashSet<String>>,
    /// Names whose certificate is being issued now.
    pending: Mutex<HashSet<String>>,
    /// Names whose last issuance failed: handshakes do not wait for them.
    failed: Mutex<HashSet<String>>,
    /// Woken whenever an issuance ends, either way.
    finished: tokio::sync::Notify,
    /// In a cluster: where other nodes' certificates are announced (a
    /// handshake for a name bound elsewhere waits for its certificate).
    shared: OnceLock<SharedCerts>,
    pub counters: CertCounters,
}

impl OnDemand {
    pub fn new(args: &CustomDomainArgs, certs: Arc<Certs>, issuer: Arc<dyn Issuer>) -> Self {
        let limiter =
            crate::limits::http::bucket_quota(args.custom_cert_rate, args.custom_cert_burst)
                .map(DefaultDirectRateLimiter::direct);
        OnDemand {
            issuer: RwLock::new(issuer),
            certs,
            limiter,
            limit: format!(
                "{} certificates, burst {}",
                args.custom_cert_rate, args.custom_cert_burst
            ),
            cache_cap: args.custom_cert_cache,
            held: Mutex::new(HashSet::new()),
            pending: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashSet::new()),
            finished: tokio::sync::Notify::new(),
            shared: OnceLock::new(),
            counters: CertCounters::default(),
        }
    }

    /// In a cluster: names bound on other nodes get their certificates
    /// from there.
    pub fn share(&self, shared: SharedCerts) {
        let _ = self.shared.set(shared);
    }

    /// Replaces the issuer (ACME once its account is ready); names issued
    /// so far keep their certificates.
    pub fn set_issuer(&self, issuer: Arc<dyn Issuer>) {
        *self.issuer.write().expect("issuer lock") = issuer;
    }

    /// How many custom domains have a certificate now.
    pub fn cached(&self) -> usize {
        self.held.lock().expect("held lock").len()
    }

    /// Which issuer is in use.
    pub fn issuer_kind(&self) -> &'static str {
        self.issuer.read().expect("issuer lock").kind()
    }

    /// Checked before `name` is bound: a name with a certificate (or one on
    /// its way) passes; otherwise one issuance token is taken, and without
    /// one the bind is refused with the limit and the wait.
    pub fn admit(&self, name: &str) -> Result<(), Refusal> {
        if self.has_or_pending(name) {
            return Ok(());
        }
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let wait = Duration::from_secs(wait.as_secs() + 1);
            tracing::warn!(name, limit = %self.limit, retry_in = %human(wait), "custom domain certificate refused: issuance rate limit");
            let mut refusal = Refusal::new(
                "custom-cert-rate",
                format!(
                    "no certificate for {name}: this server issues at most {} for custom domains (--custom-cert-rate/--custom-cert-burst); try again in {}",
                    self.limit,
                    human(wait)
                ),
            );
            refusal.retry_after = Some(wait);
            refusal
        })
    }

    /// Keeps at most `--custom-cert-cache` certificates, dropping those of
    /// names `bound` says are not bound now. Bound names always keep
    /// theirs (there are at most `--max-tunnels` of them).
    pub fn evict(&self, bound: impl Fn(&str) -> bool) {
        let names: Vec<String> = self
            .held
            .lock()
            .expect("held lock")
            .iter()
            .cloned()
            .collect();
        let mut over = names.len().saturating_sub(self.cache_cap);
        for name in names {
            if over == 0 {
                break;
            }
            if !bound(&name) {
                self.certs.remove_named(&name);
                self.held.lock().expect("held lock").remove(&name);
                over -= 1;
                tracing::info!(
                    name,
                    cap = self.cache_cap,
                    "custom domain certificate dropped (--custom-cert-cache)"
                );
            }
        }
    }

    fn has_or_pending(&self, name: &str) -> bool {
        self.certs.named(name).is_some()
            || self.pending.lock().expect("pending lock").contains(name)
    }

    /// Issues `name`'s certificate unless it has one or one is on its way.
    /// `Ok(true)`: a new certificate is served from now on.
    pub async fn obtain(&self, name: &str) -> anyhow::Result<bool> {
        if !self.start(name) {
            return Ok(false);
        }
        let issuer = Arc::clone(&self.issuer.read().expect("issuer lock"));
        let result = issuer.issue(name).await;
        self.finish(name, result.as_ref().ok());
        match result {
            Ok(_) => {
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    name,
                    issuer = issuer.kind(),
                    "custom domain certificate issued"
                );
                Ok(true)
            }
            Err(err) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                Err(err.context(format!("{} issuer", issuer.kind())))
            }
        }
    }

    /// Marks `name` pending; `false` when it has a certificate or one is
    /// on its way already.
    fn start(&self, name: &str) -> bool {
        self.certs.named(name).is_none()
            && self
                .pending
                .lock()
                .expect("pending lock")
                .insert(name.to_string())
    }

    /// Serves `cert` (or remembers the failure) and wakes waiting
    /// handshakes.
    fn finish(&self, name: &str, cert: Option<&Arc<CertifiedKey>>) {
        let mut failed = self.failed.lock().expect("failed lock");
        match cert {
            Some(cert) => {
                self.certs.set_named(name, Arc::clone(cert));
                self.held
                    .lock()
                    .expect("held lock")
                    .insert(name.to_string());
                failed.remove(name);
            }
            None => {
                failed.insert(name.to_string());
            }
        }
        drop(failed);
        self.pending.lock().expect("pending lock").remove(name);
        self.finished.notify_waiters();
    }

    /// Waits (at most `limit`) until bound name `name` has its certificate:
    /// the first visitors right after a bind would otherwise get the
    /// server's own. Returns at once when the certificate is there or the
    /// last issuance failed. In a cluster the name may be bound on another
    /// node, which issues it: it is looked for in Redis, and again each
    /// time a certificate is stored.
    pub async fn wait_ready(&self, name: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut changes = self.shared.get().map(SharedCerts::changes);
        let mut look = changes.is_some();
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let failed = self.failed.lock().expect("failed lock").contains(name);
            if failed || self.certs.named(name).is_some() {
                return;
            }
            let pending = self.pending.lock().expect("pending lock").contains(name);
            if look && !pending && self.adopt_elsewhere(name).await {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(name, "custom domain certificate not ready in time");
                    return;
                }
                _ = finished => look = false,
                stored = next_change(&mut changes) => look = stored,
            }
        }
    }

    /// Serves the certificate another node issued for `name`, if it is
    /// stored: `true` when it did.
    async fn adopt_elsewhere(&self, name: &str) -> bool {
        let issuer = Arc::clone(&self.issuer.read().expect("issuer lock"));
        let Some(cert) = issuer.issued_elsewhere(name).await else {
            return false;
        };
        tracing::debug!(name, "custom domain certificate from the cluster");
        self.finish(name, Some(&cert));
        true
    }
}

/// Resolves at the next certificate change (`true`: one was stored, or
/// some may have been missed); never without a cluster.
async fn next_change(changes: &mut Option<tokio::sync::broadcast::Receiver<CertChange>>) -> bool {
    use tokio::sync::broadcast::error::RecvError;
    let Some(receiver) = changes else {
        return std::future::pending().await;
    };
    match receiver.recv().await {
        Ok(_) | Err(RecvError::Lagged(_)) => true,
        Err(RecvError::Closed) => {
            *changes = None;
            false
        }
    }
}
