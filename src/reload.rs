//! Reloading without a restart: on SIGHUP, and whenever the files change on
//! disk (checked every second), the keys file, the plans file and the TLS
//! certificate are
//! loaded again and take effect for what comes next; nothing open is
//! dropped. A broken new file is rejected with a log line and the previous
//! one stays in force. systemd hears RELOADING/READY around a SIGHUP.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::PortRanges;
use crate::keys::Keys;
use crate::shutdown::Shutdown;
use crate::systemd;
use crate::tls::Certs;
use crate::tunnel::names::Grants;
use crate::tunnel::Registry;

/// What a reload reads and whom it tells.
pub struct Reload {
    pub keys: Arc<Keys>,
    pub certs: Arc<Certs>,
    /// Live tunnels the new keys file no longer allows are closed.
    pub registry: Arc<Registry>,
    /// The rest of the grant rule: `--reserved-names`, `--tcp-ports`,
    /// `--auth-mode keys`.
    pub reserved: Vec<String>,
    pub tcp_ports: PortRanges,
    pub keys_only: bool,
    /// `--auth-url`'s grants count in the grant rule too.
    pub auth_url: Option<Arc<crate::authz::AuthUrl>>,
    /// `--plans-file`, when plans are configured.
    pub plans: Option<Arc<crate::plans::Plans>>,
}

/// How often the files are checked for changes on disk.
const POLL: Duration = Duration::from_secs(1);

/// Installs the SIGHUP handler (early, so a SIGHUP never kills the process).
pub fn hangup_signal() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")
}

/// Runs until shutdown.
pub async fn watch(reload: Reload, mut hangup: tokio::signal::unix::Signal, shutdown: Shutdown) {
    let mut poll = shutdown.ticker(POLL);
    loop {
        let forced = tokio::select! {
            polled = poll.tick() => match polled {
                true => false,
                false => return,
            },
            _ = hangup.recv() => true,
        };
        if forced {
            tracing::info!("SIGHUP: reloading the keys file and the TLS certificate");
            systemd::reloading();
        }
        let plans_changed = reload
            .plans
            .as_ref()
            .is_some_and(|p| p.path().is_some() && (forced || p.changed_on_disk()));
        if plans_changed {
            reload.reload_plans();
        }
        if reload.keys.path.is_some() && (forced || reload.keys.changed_on_disk()) {
            reload.reload_keys();
        }
        if forced || reload.certs.changed_on_disk() {
            reload.reload_certs();
        }
        if forced {
            systemd::reloaded();
        }
    }
}

impl Reload {
    /// What `--auth-url` granted (empty without it).
    fn granted(&self) -> Arc<crate::keys::KeysFile> {
        self.auth_url
            .as_ref()
            .map_or_else(Default::default, |a| a.granted())
    }

    fn reload_keys(&self) {
        match self.keys.reload() {
            Ok(file) => {
                tracing::info!(keys = file.len(), "keys file reloaded");
                let granted = self.granted();
                self.registry.enforce(&Grants {
                    keys: &file,
                    granted: &granted,
                    reserved: &self.reserved,
                    tcp_ports: &self.tcp_ports,
                    keys_only: self.keys_only,
                });
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "keys file rejected; the previous one stays in force");
            }
        }
    }

    /// The plans file again: rejected (the old plans kept) when it is
    /// broken or drops a plan the keys file names.
    fn reload_plans(&self) {
        let Some(plans) = &self.plans else { return };
        let keys = self.keys.current();
        let checked = plans.reload(|set| {
            keys.check_plans(|name| set.contains(name))
                .map_err(|e| anyhow::anyhow!("the keys file: {e:#}"))
        });
        match checked {
            Ok(set) => {
                let names = set.names();
                tracing::info!(plans = names.len(), "plans file reloaded");
                if let Err(err) = self.keys.set_plans(names) {
                    tracing::warn!(error = %format!("{err:#}"), "plans and keys file disagree");
                }
            }
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "plans file rejected; the previous one stays in force");
            }
        }
    }

    fn reload_certs(&self) {
        match self.certs.reload() {
            Ok(true) => tracing::info!("TLS certificate reloaded; new handshakes get it"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "TLS certificate rejected; the previous one stays in use");
            }
        }
    }
}
