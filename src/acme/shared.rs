//! ACME in a cluster: one account and one set of certificates for every
//! node, kept in Redis ([`SharedCerts`], keys sealed with the cluster
//! secret) instead of the state directory.
//!
//! - **Once per cluster.** Every node runs the same renewal schedule, but
//!   a certificate is ordered only by the node holding its lock
//!   (`LOCK_TTL`, renewed while the order runs, so a node that dies
//!   mid-order frees it soon). The lock is taken only when the stored
//!   certificate is due, and the stored one is read again once it is held,
//!   so a renewal another node just finished is adopted, not repeated.
//!   After a failure the node keeps the lock for its back-off: the
//!   cluster retries as one node would.
//! - **Served everywhere.** A stored certificate is announced on the event
//!   channel; every node installs it through the same `tls::Certs` swap or
//!   per-name entry as its own ([`follow`]), and reads them all again when
//!   events may have been missed. At start a node serves what Redis holds.
//! - **HTTP-01** answers are published in Redis too
//!   ([`super::http01::Challenges`]), so whichever node the CA reaches
//!   answers.
//! - **Joining with a history.** The first node whose Redis has no
//!   account or certificate yet brings those of its state directory, so a
//!   single node that becomes a cluster does not order again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use rustls::sign::CertifiedKey;
use tokio::sync::broadcast::error::RecvError;

use super::{renew, store, Acme, Issued, Managed, Obtained, MAIN_FILE};
use crate::shutdown::Ticker;
use crate::store::shared::{CertChange, SharedCerts};
use crate::store::CertKind;

/// The kind ACME's certificates are stored as.
pub const KIND: CertKind = CertKind::Acme;

/// How long a lock on ordering a certificate lasts unless renewed (every
/// third of it while the order runs).
const LOCK_TTL: Duration = Duration::from_secs(30);

/// While another node orders a certificate this node needs now (a custom
/// domain), how often it looks whether it is stored (a stored event wakes
/// it sooner).
const BUSY_POLL: Duration = Duration::from_secs(1);

/// Serves what Redis holds, starts the renewal tasks and follows what
/// other nodes store.
pub(super) async fn start(acme: &Arc<Acme>, shared: &SharedCerts) {
    // Subscribed first: nothing stored from here on is missed.
    let changes = shared.changes();
    seed(acme, shared).await;
    adopt_all(acme, shared).await;
    let acme = Arc::clone(acme);
    let shutdown = acme.shutdown.clone();
    shutdown.spawn(follow(acme, changes));
}

/// Stores this node's own certificates (state directory) that Redis does
/// not hold yet.
async fn seed(acme: &Acme, shared: &SharedCerts) {
    let dir = store::dir(&acme.state_dir);
    for file in store::stored(&dir) {
        let Ok(Some((chain, key))) = store::load_pem(&dir, &file) else {
            continue;
        };
        match shared.save_first(KIND, &file, &chain, &key).await {
            Ok(in_force) if in_force == (chain, key) => {
                tracing::info!(cert = %file, "certificate of the state directory stored for the cluster")
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(cert = %file, error = %format!("{err:#}"), "certificate of the state directory not stored for the cluster")
            }
        }
    }
}

/// Installs every certificate Redis holds that is newer than the one in
/// hand, and makes sure each has its renewal task.
async fn adopt_all(acme: &Arc<Acme>, shared: &SharedCerts) {
    let main = acme.main_cert();
    adopt_logged(acme, shared, &main).await;
    renew::spawn(acme, main);
    let names = match shared.names(KIND).await {
        Ok(names) => names,
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "cannot list the cluster's certificates; each is renewed when due");
            return;
        }
    };
    for file in names.iter().filter(|f| *f != MAIN_FILE) {
        adopt_file(acme, shared, file).await;
    }
}

/// Installs the certificate stored under `file` if it is newer; a single
/// name gets its renewal task here too.
async fn adopt_file(acme: &Arc<Acme>, shared: &SharedCerts, file: &str) {
    let Some(managed) = acme.managed(file) else {
        return;
    };
    adopt_logged(acme, shared, &managed).await;
    // The main certificate's task runs from the start.
    if file != MAIN_FILE {
        renew::spawn(acme, managed);
    }
}

async fn adopt_logged(acme: &Acme, shared: &SharedCerts, managed: &Managed) {
    if let Err(err) = acme.adopt(shared, managed).await {
        tracing::warn!(cert = managed.label(), error = %format!("{err:#}"), "the cluster's certificate is not usable here");
    }
}

/// Installs what other nodes store, as they store it.
async fn follow(acme: Arc<Acme>, mut changes: tokio::sync::broadcast::Receiver<CertChange>) {
    let Some(shared) = acme.shared.get().cloned() else {
        return;
    };
    loop {
        let change = tokio::select! {
            _ = acme.shutdown.requested() => return,
            change = changes.recv() => change,
        };
        match change {
            Ok(CertChange::Stored { kind: KIND, name }) => adopt_file(&acme, &shared, &name).await,
            Ok(CertChange::Stored { .. }) => {}
            Ok(CertChange::Resync) | Err(RecvError::Lagged(_)) => adopt_all(&acme, &shared).await,
            Err(RecvError::Closed) => return,
        }
    }
}

impl Acme {
    /// Installs the certificate stored for `managed` if it names what is
    /// needed, has not expired and is newer than the one in hand: `true`
    /// when it did.
    async fn adopt(&self, shared: &SharedCerts, managed: &Managed) -> Result<bool> {
        let Some((chain, key)) = shared.load(KIND, &managed.file).await? else {
            return Ok(false);
        };
        let issued = Issued::from_pem(&chain, &key).context("the stored certificate")?;
        if !issued.covers(&managed.names) {
            tracing::debug!(
                cert = managed.label(),
                "stored certificate names other things (nodes configured differently?)"
            );
            return Ok(false);
        }
        let newer = match self.current(managed) {
            Some(current) => issued.not_after > current.not_after,
            None => true,
        };
        if !newer || issued.not_after <= SystemTime::now() {
            return Ok(false);
        }
        tracing::info!(cert = managed.label(), expires = %humantime::format_rfc3339_seconds(issued.not_after), "serving the cluster's certificate");
        self.install(managed, issued);
        Ok(true)
    }

    /// The certificate for `managed` if one not due yet is in hand or
    /// stored (then installed).
    pub(super) async fn adopt_fresh(
        &self,
        shared: &SharedCerts,
        managed: &Managed,
    ) -> Result<Option<Issued>> {
        self.adopt(shared, managed).await?;
        Ok(self
            .current(managed)
            .filter(|issued| issued.renew_at() > SystemTime::now()))
    }

    /// In a cluster: the certificate of single name `name` another node
    /// stored, installed here (and renewed from here too, under the lock).
    pub async fn issued_elsewhere(self: &Arc<Self>, name: &str) -> Option<Arc<CertifiedKey>> {
        let shared = self.shared.get()?;
        let managed = Acme::single(&crate::subdomain::dns_name(name));
        if let Err(err) = self.adopt(shared, &managed).await {
            tracing::debug!(name, error = %format!("{err:#}"), "no certificate from the cluster");
        }
        let issued = self.current(&managed)?;
        renew::spawn(self, managed);
        Some(issued.certified)
    }

    /// [`Acme::obtain`] in a cluster: adopt, or order under the lock.
    pub(super) async fn obtain_shared(
        &self,
        shared: &SharedCerts,
        managed: &Managed,
    ) -> Result<Obtained> {
        if let Some(issued) = self.adopt_fresh(shared, managed).await? {
            return Ok(Obtained::Adopted(issued));
        }
        if !shared.lock(&managed.file, LOCK_TTL).await? {
            return Ok(Obtained::Busy);
        }
        let obtained = self.obtain_locked(shared, managed).await;
        if let Err(err) = shared.release_lock(&managed.file).await {
            tracing::debug!(cert = managed.label(), error = %err, "lock left to expire");
        }
        obtained
    }

    /// Holding the lock: adopts what another node stored meanwhile, else
    /// orders (keeping the lock while the order runs).
    async fn obtain_locked(&self, shared: &SharedCerts, managed: &Managed) -> Result<Obtained> {
        if let Some(issued) = self.adopt_fresh(shared, managed).await? {
            return Ok(Obtained::Adopted(issued));
        }
        tracing::debug!(
            cert = managed.label(),
            "this node orders the certificate for the cluster"
        );
        tokio::select! {
            issued = self.issue(managed) => issued.map(Obtained::Issued),
            never = keep_lock(shared, managed) => match never {},
        }
    }

    /// After a failed attempt: holds the lock on `managed` for the
    /// back-off `wait`, so no other node retries sooner (it is taken only
    /// if free; it expires by itself).
    pub(super) async fn hold_after_failure(&self, managed: &Managed, wait: Duration) {
        if let Some(shared) = self.shared.get() {
            let _ = shared.lock(&managed.file, wait).await;
        }
    }

    /// How long a renewal waits while another node holds the lock.
    pub(super) fn busy_wait(&self) -> Duration {
        renew::jitter(self.args.acme_retry_min.min(LOCK_TTL))
    }

    /// [`Acme::obtain`] for a certificate needed now (a custom domain's):
    /// while another node orders it, waits for that one (bounded by
    /// `--acme-order-timeout`).
    pub(super) async fn obtain_now(&self, managed: &Managed) -> Result<Issued> {
        let deadline = tokio::time::Instant::now() + self.args.acme_order_timeout;
        let mut changes = self.shared.get().map(SharedCerts::changes);
        loop {
            match self.obtain(managed).await? {
                Obtained::Issued(issued) | Obtained::Adopted(issued) => return Ok(issued),
                Obtained::Busy => {}
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "another node of the cluster has been ordering it for longer than --acme-order-timeout"
                );
            }
            match &mut changes {
                Some(changes) => {
                    let _ = tokio::time::timeout(BUSY_POLL, changes.recv()).await;
                }
                None => tokio::time::sleep(BUSY_POLL).await,
            }
        }
    }
}

/// Renews this node's lock on `managed` every third of `LOCK_TTL`, for as
/// long as it is polled (the order runs); never returns.
async fn keep_lock(shared: &SharedCerts, managed: &Managed) -> std::convert::Infallible {
    let mut ticker = Ticker::every(LOCK_TTL / 3);
    let mut lost = false;
    loop {
        ticker.tick().await;
        match shared.renew_lock(&managed.file, LOCK_TTL).await {
            Ok(true) => lost = false,
            Ok(false) if !lost => {
                lost = true;
                tracing::warn!(
                    cert = managed.label(),
                    "lost the lock on ordering this certificate; another node may order it too"
                );
            }
            Ok(false) => {}
            Err(err) => tracing::debug!(cert = managed.label(), error = %err, "lock not renewed"),
        }
    }
}
