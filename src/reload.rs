//! Reloading without a restart: on SIGHUP, and whenever the files change on
//! disk (checked every second), the keys file and the TLS certificate are
//! loaded again and take effect for what comes next; nothing open is
//! dropped. A broken new file is rejected with a log line and the previous
//! one stays in force. systemd hears RELOADING/READY around a SIGHUP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::shutdown::Shutdown;
use crate::{keys, systemd, App};

/// How often the files are checked for changes on disk.
const POLL: Duration = Duration::from_secs(1);

/// Installs the SIGHUP handler (early, so a SIGHUP never kills the process).
pub fn hangup_signal() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")
}

/// Runs until shutdown.
pub async fn watch(app: Arc<App>, mut hangup: tokio::signal::unix::Signal, shutdown: Shutdown) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = shutdown.requested() => return,
            _ = hangup.recv() => true,
            _ = poll.tick() => false,
        };
        if forced {
            tracing::info!("SIGHUP: reloading the keys file and the TLS certificate");
            systemd::reloading();
        }
        if app.keys.path.is_some() && (forced || app.keys.changed_on_disk()) {
            reload_keys(&app);
        }
        if forced || app.certs.changed_on_disk() {
            reload_certs(&app);
        }
        if forced {
            systemd::reloaded();
        }
    }
}

fn reload_keys(app: &App) {
    match app.keys.reload() {
        Ok(file) => {
            tracing::info!(keys = file.len(), "keys file reloaded");
            keys::enforce(app, &file);
        }
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "keys file rejected; the previous one stays in force");
        }
    }
}

fn reload_certs(app: &App) {
    match app.certs.reload() {
        Ok(true) => tracing::info!("TLS certificate reloaded; new handshakes get it"),
        Ok(false) => {}
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "TLS certificate rejected; the previous one stays in use");
        }
    }
}
