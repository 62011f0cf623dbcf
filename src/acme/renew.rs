//! The renewal schedule of one managed certificate: order when there is
//! none (or it names too little), else when a third of its lifetime is
//! left; after a failure wait `--acme-retry-min`, doubling up to
//! `--acme-retry-max`, each wait jittered by ±25% so that many servers (or
//! many names) do not retry in step. The current certificate is served
//! until the new one is in hand.
//!
//! A single name (a custom domain) is renewed only while a tunnel binds it
//! ([`Acme::renew_only_while`]); when none does at renewal time it is
//! retired, and a tunnel that binds it later gets a new one on demand.
//!
//! In a cluster every node runs the schedule, but an attempt may find the
//! certificate renewed by another node (adopted) or being ordered there
//! (busy: look again a little later); see [`super::shared`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Acme, Managed, Obtained};

/// Starts the renewal task of `managed` unless one runs already.
pub fn spawn(acme: &Arc<Acme>, managed: Managed) {
    let fresh = acme
        .renewing
        .lock()
        .expect("renewing lock")
        .insert(managed.label().to_string());
    if fresh {
        let shutdown = acme.shutdown.clone();
        acme.shutdown
            .spawn(run(Arc::clone(acme), managed, shutdown));
    }
}

async fn run(acme: Arc<Acme>, managed: Managed, shutdown: crate::shutdown::Shutdown) {
    let mut failures = 0u32;
    let mut retry = None;
    loop {
        let wait = match retry.take() {
            Some(wait) => wait,
            None => until_due(&acme, &managed),
        };
        if !wait.is_zero() {
            tracing::debug!(cert = managed.label(), wait = %crate::limits::human(wait), "next issuance attempt");
        }
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if !acme.still_wanted(&managed).await {
            acme.retire(&managed).await;
            return;
        }
        let renewal = acme.current(&managed).is_some();
        let attempt = tokio::select! {
            _ = shutdown.requested() => return,
            attempt = acme.obtain(&managed) => attempt,
        };
        match attempt {
            Ok(Obtained::Issued(_)) => {
                if renewal {
                    tracing::info!(
                        cert = managed.label(),
                        "certificate renewed; new handshakes get it"
                    );
                }
                failures = 0;
            }
            Ok(Obtained::Adopted(_)) => failures = 0,
            Ok(Obtained::Busy) => retry = Some(acme.busy_wait()),
            Err(err) => {
                failures = failures.saturating_add(1);
                let wait = backoff(&acme, failures);
                retry = Some(wait);
                acme.hold_after_failure(&managed, wait).await;
                tracing::warn!(
                    cert = managed.label(),
                    failures,
                    retry_in = %crate::limits::human(wait),
                    error = %format!("{err:#}"),
                    "certificate issuance failed; the current certificate stays in use"
                );
            }
        }
    }
}

/// Time until the certificate in hand is due (zero: now).
fn until_due(acme: &Acme, managed: &Managed) -> Duration {
    match acme.current(managed) {
        Some(issued) => issued
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
        None => Duration::ZERO,
    }
}

/// The jittered wait after `failures` failures in a row.
fn backoff(acme: &Acme, failures: u32) -> Duration {
    let (min, max) = (acme.args.acme_retry_min, acme.args.acme_retry_max);
    let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    jitter(doubled.min(max))
}

/// ±25%.
pub(super) fn jitter(wait: Duration) -> Duration {
    wait.mul_f64(0.75 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(100));
            assert!(j >= Duration::from_secs(75) && j <= Duration::from_secs(125));
        }
    }
}
