//! Usage in the state directory (`STATE_DIR/usage.json`), for a single
//! node: written atomically (temporary file, fsync, rename) every
//! `--usage-save-interval` (5 s) when something changed, and at shutdown;
//! read back at start. A crash (`kill -9`, power loss) loses at most the
//! usage of the last interval; a clean shutdown loses nothing. Only the
//! current period's counts are restored: a saved period that has ended is
//! ignored.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::account::{unix_now, Limit};
use super::Plans;
use crate::shutdown::Shutdown;

/// The file's name in the state directory.
pub const FILE: &str = "usage.json";

#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    saved: u64,
    accounts: Vec<Saved>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    account: String,
    plan: String,
    transfer: Counted,
    requests: Counted,
}

#[derive(Serialize, Deserialize, Default)]
struct Counted {
    start: u64,
    end: u64,
    used: u64,
}

impl Plans {
    /// Writes every account's usage (atomically).
    pub fn save(&self) -> std::io::Result<()> {
        let accounts = self
            .accounts()
            .iter()
            .map(|account| {
                let counted = |limit| {
                    let meter = account.meter(limit);
                    let (start, end) = meter.period();
                    Counted {
                        start,
                        end,
                        used: meter.used(),
                    }
                };
                Saved {
                    account: account.id().to_string(),
                    plan: account.plan().name.clone(),
                    transfer: counted(Limit::Transfer),
                    requests: counted(Limit::Requests),
                }
            })
            .collect();
        let file = File {
            version: 1,
            saved: unix_now(),
            accounts,
        };
        let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::state::write_private_file(&self.saved, &text)
    }

    /// Reads the saved usage back (a missing or unreadable file: nothing,
    /// logged).
    pub(super) fn restore(&self) {
        let text = match std::fs::read(&self.saved) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %self.saved.display(), error = %e, "usage not restored");
                return;
            }
        };
        let file: File = match serde_json::from_slice(&text) {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(path = %self.saved.display(), error = %e, "usage file unreadable; starting from zero");
                return;
            }
        };
        let count = file.accounts.len();
        for saved in file.accounts {
            let account = self.account(&saved.account, Some(&saved.plan));
            for (limit, counted) in [
                (Limit::Transfer, &saved.transfer),
                (Limit::Requests, &saved.requests),
            ] {
                account
                    .meter(limit)
                    .restore(counted.start, counted.end, counted.used);
            }
            account.restore_alerts();
        }
        tracing::info!(accounts = count, "usage restored");
    }

    /// Saves every `interval` while usage changes, until shutdown (the
    /// last save is the composition root's, once the connections closed,
    /// so their last bytes count).
    pub async fn keep_saved(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let mut ticker = shutdown.ticker(interval);
        while ticker.tick().await {
            let mut dirty = false;
            for account in self.accounts() {
                // Every flag taken, not just the first set one.
                dirty |= account.take_dirty();
            }
            if dirty {
                self.save_logged();
            }
            self.prune();
        }
    }

    pub fn save_logged(&self) {
        if let Err(e) = self.save() {
            tracing::warn!(path = %self.saved.display(), error = %e, "usage not saved");
        }
    }
}
