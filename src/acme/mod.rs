//! Certificates from an ACME CA (RFC 8555, Let's Encrypt by default): the
//! account, orders and their challenges, and where each certificate goes.
//!
//! What is managed:
//! - the **main** certificate: `DOMAIN` + `*.DOMAIN` through DNS-01 when a
//!   DNS provider is configured ([`dns`]), served as the default
//!   certificate; without one, `DOMAIN` alone through HTTP-01 ([`http01`],
//!   answered by the redirector on :80), served for SNI `DOMAIN` only —
//!   tunnel names keep the self-signed wildcard (a wildcard needs DNS-01);
//! - **single-name** certificates on demand ([`Acme::issue_single`], for
//!   custom domains) through HTTP-01, rate-limited.
//!
//! Everything is stored under `STATE_DIR/acme/` ([`store`]) and served from
//! there at start while still valid; [`renew`] keeps each one fresh. A
//! failing CA never stops the server: issuance runs in background tasks
//! that log and retry.
//!
//! In a cluster ([`shared`]) the account and the certificates live in
//! Redis instead, their keys sealed with the cluster secret; one node at a
//! time orders each certificate (a lock) and the others install it.

mod account;
pub mod dns;
pub mod http01;
mod order;
pub mod renew;
pub mod shared;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use anyhow::{anyhow, bail, Context, Result};
use governor::{DefaultDirectRateLimiter, Quota};
use instant_acme::Account;
use rustls::sign::CertifiedKey;

use crate::config::{AcmeArgs, Config};
use crate::limits::{Refusal, Refusals};
use crate::shutdown::Shutdown;
use crate::store::shared::SharedCerts;
use crate::tls::Certs;
use store::Issued;

/// File stem of the main certificate in the certificate directory.
const MAIN_FILE: &str = "main";

/// One certificate burrow keeps issued.
#[derive(Clone, Debug)]
pub struct Managed {
    /// File stem in the certificate directory.
    pub file: String,
    /// The identifiers ordered (the first one names it in logs/metrics).
    pub names: Vec<String>,
    /// DNS-01 (the only way to a wildcard) or HTTP-01.
    pub dns01: bool,
    /// Where it is served: `None` as the default certificate, else for
    /// this exact SNI name.
    pub sni: Option<String>,
}

impl Managed {
    pub fn label(&self) -> &str {
        &self.names[0]
    }
}

/// Whether the single name given is still wanted (a tunnel binds it, here
/// or on another node); see [`Acme::renew_only_while`].
pub type Wanted = Arc<dyn Fn(String) -> crate::tunnel::BoxFuture<'static, bool> + Send + Sync>;

/// The ACME handle, shared by the renewal tasks and the proxy.
pub struct Acme {
    args: AcmeArgs,
    domain: String,
    state_dir: PathBuf,
    certs: Arc<Certs>,
    /// HTTP-01 tokens, answered by the redirector.
    challenges: Arc<http01::Challenges>,
    dns: Option<dns::Provider>,
    /// Created (or loaded) on first use, so a CA that is down at start is
    /// retried like any other failure.
    account: tokio::sync::Mutex<Option<Account>>,
    /// `--acme-issue-rate` / `--acme-issue-burst` for on-demand names.
    limiter: DefaultDirectRateLimiter,
    /// The certificate in hand per label (metrics, schedule).
    issued: Mutex<BTreeMap<String, Issued>>,
    /// Labels that have a renewal task.
    renewing: Mutex<HashSet<String>>,
    /// Asked before a single name is renewed: does a tunnel still bind it?
    /// Unset: always.
    wanted: OnceLock<Wanted>,
    /// In a cluster: where the account, the certificates and the HTTP-01
    /// answers are kept, and the lock on ordering each certificate.
    shared: OnceLock<SharedCerts>,
    /// Certificates this node got from the CA (in a cluster, the others'
    /// are adopted, not counted): the stats and the metrics show it.
    ordered: AtomicU64,
    /// Where `--acme-issue-rate` refusals are recorded, like every other.
    refusals: Arc<Refusals>,
    shutdown: Shutdown,
}

/// What one attempt at getting a certificate came to.
pub enum Obtained {
    /// Ordered from the CA by this node.
    Issued(Issued),
    /// In a cluster: another node's, not due yet, now served here too.
    Adopted(Issued),
    /// In a cluster: another node is ordering it now.
    Busy,
}

impl Acme {
    /// The handle `config` asks for; `None` when ACME is off or static
    /// certificates win.
    pub fn new(
        config: &Config,
        certs: Arc<Certs>,
        challenges: Arc<http01::Challenges>,
        (refusals, shutdown): (Arc<Refusals>, Shutdown),
    ) -> Result<Option<Arc<Acme>>> {
        if !config.acme.enabled() {
            return Ok(None);
        }
        if config.tls_cert.is_some() {
            tracing::info!(
                "--tls-cert/--tls-key given: they are served and the ACME flags are ignored"
            );
            return Ok(None);
        }
        let dns = dns::Provider::from_args(&config.acme, &config.domain)?;
        if dns.is_none() {
            tracing::warn!(domain = %config.domain, "no DNS-01 provider (--acme-dns-hook, --acme-rfc2136): ACME certifies the apex only (HTTP-01 on :80); tunnel names keep the self-signed certificate");
        }
        Ok(Some(Arc::new(Acme {
            limiter: rate_limiter(&config.acme),
            args: config.acme.clone(),
            domain: config.domain.clone(),
            state_dir: config.state_dir.clone(),
            certs,
            challenges,
            dns,
            account: tokio::sync::Mutex::new(None),
            issued: Mutex::default(),
            renewing: Mutex::default(),
            wanted: OnceLock::new(),
            shared: OnceLock::new(),
            ordered: AtomicU64::new(0),
            refusals,
            shutdown,
        })))
    }

    /// Keeps the account and the certificates in the cluster's Redis from
    /// now on (call before [`Acme::start`]).
    pub fn share(&self, shared: SharedCerts) {
        let _ = self.shared.set(shared);
    }

    /// From now on a single name's certificate is renewed only while
    /// `wanted` says a tunnel binds the name; else it is retired: no longer
    /// served, stored or renewed (call before [`Acme::start`]).
    pub fn renew_only_while(&self, wanted: Wanted) {
        let _ = self.wanted.set(wanted);
    }

    /// Whether `managed` is worth renewing now: the main certificate always,
    /// a single name while it is wanted.
    pub(crate) async fn still_wanted(&self, managed: &Managed) -> bool {
        match self.wanted.get() {
            Some(wanted) if managed.file != MAIN_FILE => wanted(managed.label().to_string()).await,
            _ => true,
        }
    }

    /// Stops serving, storing and renewing a single name no tunnel binds:
    /// a tunnel that binds it again later gets a new certificate on demand.
    pub(crate) async fn retire(&self, managed: &Managed) {
        if let Some(name) = &managed.sni {
            self.certs.remove_named(name);
        }
        self.issued
            .lock()
            .expect("issued lock")
            .remove(managed.label());
        let forgotten = match self.shared.get() {
            Some(shared) => shared.forget(shared::KIND, &managed.file).await,
            None => store::remove(&store::dir(&self.state_dir), &managed.file),
        };
        if let Err(err) = forgotten {
            tracing::warn!(cert = managed.label(), error = %format!("{err:#}"), "retired certificate not removed from the store");
        }
        self.renewing
            .lock()
            .expect("renewing lock")
            .remove(managed.label());
        tracing::info!(
            cert = managed.label(),
            "certificate retired, not renewed: no tunnel binds the name any more"
        );
    }

    /// How many certificates this node got from the CA since it started.
    pub fn ordered(&self) -> u64 {
        self.ordered.load(Ordering::Relaxed)
    }

    /// The main certificate: wildcard with DNS-01, else the apex alone.
    pub fn main_cert(&self) -> Managed {
        let apex = self.domain.clone();
        match self.dns {
            Some(_) => Managed {
                file: MAIN_FILE.into(),
                names: vec![apex.clone(), format!("*.{apex}")],
                dns01: true,
                sni: None,
            },
            None => Managed {
                file: MAIN_FILE.into(),
                names: vec![apex.clone()],
                dns01: false,
                sni: Some(apex),
            },
        }
    }

    /// The certificate stored under `file`, as managed here: the main one,
    /// or a single name.
    fn managed(&self, file: &str) -> Option<Managed> {
        match file {
            MAIN_FILE => Some(self.main_cert()),
            name if crate::subdomain::is_valid_domain(name) => Some(Acme::single(name)),
            _ => None,
        }
    }

    fn single(name: &str) -> Managed {
        Managed {
            file: name.to_string(),
            names: vec![name.to_string()],
            dns01: false,
            sni: Some(name.to_string()),
        }
    }

    /// Serves what the state directory (in a cluster: Redis) holds and
    /// starts a renewal task for the main certificate and every stored
    /// single name.
    pub async fn start(self: &Arc<Self>) {
        if let Some(shared) = self.shared.get() {
            shared::start(self, shared).await;
            return;
        }
        let main = self.main_cert();
        self.load_stored(&main);
        renew::spawn(self, main);
        let dir = store::dir(&self.state_dir);
        for file in store::stored(&dir) {
            if file == MAIN_FILE || !crate::subdomain::is_valid_domain(&file) {
                continue;
            }
            let single = Acme::single(&file);
            self.load_stored(&single);
            renew::spawn(self, single);
        }
    }

    /// Installs the stored certificate of `managed` if it is still valid
    /// and names what it should.
    fn load_stored(&self, managed: &Managed) {
        let dir = store::dir(&self.state_dir);
        match store::load(&dir, &managed.file) {
            Ok(Some(issued)) if !issued.covers(&managed.names) => {
                tracing::info!(
                    cert = managed.label(),
                    "stored certificate does not name what is needed now; a new one is ordered"
                );
            }
            Ok(Some(issued)) if issued.not_after <= std::time::SystemTime::now() => {
                tracing::info!(
                    cert = managed.label(),
                    "stored certificate has expired; a new one is ordered"
                );
            }
            Ok(Some(issued)) => {
                tracing::info!(cert = managed.label(), expires = %humantime::format_rfc3339_seconds(issued.not_after), "serving the stored certificate");
                self.install(managed, issued);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(cert = managed.label(), error = %format!("{err:#}"), "stored certificate ignored");
            }
        }
    }

    /// The certificate in hand for `managed`, if any.
    pub fn current(&self, managed: &Managed) -> Option<Issued> {
        self.issued
            .lock()
            .expect("issued lock")
            .get(managed.label())
            .cloned()
    }

    /// `(name, expiry as unix seconds)` of every certificate in hand.
    pub fn expiries(&self) -> Vec<(String, u64)> {
        let issued = self.issued.lock().expect("issued lock");
        issued
            .iter()
            .map(|(name, i)| (name.clone(), i.expiry_unix()))
            .collect()
    }

    /// Gets a certificate for the single name `name` over HTTP-01 (through
    /// the redirector on :80), stores it, serves it for SNI `name` and
    /// keeps it renewed. For custom domains: call only for names whose
    /// ownership is verified. Refused beyond `--acme-issue-rate`.
    pub async fn issue_single(self: &Arc<Self>, name: &str) -> Result<Arc<CertifiedKey>> {
        let name = crate::subdomain::dns_name(name.trim());
        if !crate::subdomain::is_valid_domain(&name) || !name.contains('.') {
            bail!("{name:?} is not a DNS name a certificate can be issued for");
        }
        let managed = Acme::single(&name);
        // A certificate in hand that is not due yet is simply handed out:
        // asking again must not cost an issuance.
        if let Some(issued) = self.current(&managed) {
            if issued.renew_at() > SystemTime::now() {
                return Ok(issued.certified);
            }
        }
        // Nor one another node of the cluster got.
        if let Some(shared) = self.shared.get() {
            if let Some(issued) = self.adopt_fresh(shared, &managed).await? {
                renew::spawn(self, managed);
                return Ok(issued.certified);
            }
        }
        if let Err(not_until) = self.limiter.check() {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            let refusal = Refusal::new(
                "acme-issue-rate",
                format!(
                    "certificate for {name} refused: --acme-issue-rate {} (burst {}) reached; next possible in {}",
                    self.args.acme_issue_rate,
                    self.args.acme_issue_burst,
                    crate::limits::human(wait)
                ),
            )
            .retry_after(wait);
            self.refusals
                .refuse_unattributed(&refusal, "certificate order");
            bail!(refusal.message);
        }
        let issued = self.obtain_now(&managed).await?;
        renew::spawn(self, managed);
        Ok(issued.certified)
    }

    /// Gets a certificate for `managed`: orders it; in a cluster, adopts
    /// the stored one if it is not due, else orders it if this node gets
    /// the lock on it.
    pub async fn obtain(&self, managed: &Managed) -> Result<Obtained> {
        match self.shared.get() {
            None => self.issue(managed).await.map(Obtained::Issued),
            Some(shared) => self.obtain_shared(shared, managed).await,
        }
    }

    /// Orders, validates, stores and installs one certificate.
    async fn issue(&self, managed: &Managed) -> Result<Issued> {
        let label = managed.label().to_string();
        let (chain, key) = tokio::time::timeout(self.args.acme_order_timeout, self.order(managed))
            .await
            .map_err(|_| {
                anyhow!(
                    "no certificate within --acme-order-timeout {}",
                    crate::limits::human(self.args.acme_order_timeout)
                )
            })??;
        let issued = Issued::from_pem(&chain, &key).context("the CA's certificate")?;
        self.ordered.fetch_add(1, Ordering::Relaxed);
        match self.shared.get() {
            None => store::save(&store::dir(&self.state_dir), &managed.file, &chain, &key)
                .with_context(|| format!("--state-dir {}", self.state_dir.display()))?,
            Some(shared) => shared
                .save(shared::KIND, &managed.file, &chain, &key)
                .await
                .context("storing the certificate in Redis")?,
        }
        tracing::info!(cert = %label, names = ?issued.names, expires = %humantime::format_rfc3339_seconds(issued.not_after), "certificate issued");
        self.install(managed, issued.clone());
        Ok(issued)
    }

    /// Serves `issued` from the next handshake on.
    fn install(&self, managed: &Managed, issued: Issued) {
        match &managed.sni {
            None => self.certs.swap(Arc::clone(&issued.certified)),
            Some(name) => self.certs.set_named(name, Arc::clone(&issued.certified)),
        }
        self.issued
            .lock()
            .expect("issued lock")
            .insert(managed.label().to_string(), issued);
    }
}

fn rate_limiter(args: &AcmeArgs) -> DefaultDirectRateLimiter {
    // `AcmeArgs::validate` refuses a zero rate or burst.
    let quota = crate::limits::http::bucket_quota(args.acme_issue_rate, args.acme_issue_burst)
        .unwrap_or_else(|| Quota::per_hour(NonZeroU32::MIN));
    governor::RateLimiter::direct(quota)
}

/// Custom domains' certificates from this CA: the [`crate::custom::issuer::Issuer`]
/// behind `OnDemand` when ACME is on (which admits and caches per name;
/// `issue_single` stores, serves and renews).
pub struct OnDemandIssuer(pub Arc<Acme>);

impl crate::custom::issuer::Issuer for OnDemandIssuer {
    fn issue<'a>(&'a self, name: &'a str) -> crate::custom::issuer::IssueFuture<'a> {
        Box::pin(self.0.issue_single(name))
    }

    fn issued_elsewhere<'a>(&'a self, name: &'a str) -> crate::custom::issuer::ElsewhereFuture<'a> {
        Box::pin(self.0.issued_elsewhere(name))
    }

    fn kind(&self) -> &'static str {
        "acme"
    }
}
