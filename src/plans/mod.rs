//! Plans: limits that follow a user (an SSH key, or a keyless client's IP,
//! IPv6 by /64) across all their tunnels and connections — concurrent
//! tunnels, bandwidth, transfer and requests per calendar period — and the
//! usage account each user can read.
//!
//! - [`model`]: plans and the plans file;
//! - [`account`]: one user's counters, bandwidth bucket and alerts;
//! - [`report`]: usage as the user and the admin API read it;
//! - [`saved`]: usage in the state directory (single node).
//!
//! [`Plans`] is the handle: the plans in force (reloadable), the accounts,
//! and their persistence. Without `--plans-file` or a default-plan flag
//! there is no `Plans` at all, and nothing on the data path looks further
//! than an `Option` that is `None`.

pub mod account;
pub mod model;
pub mod report;
pub mod saved;

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context, Result};
use dashmap::DashMap;

pub use account::{Account, Alert, Limit};
pub use model::{Plan, PlanSet, DEFAULT_PLAN};
pub use report::Usage;

use crate::config::PlanArgs;

/// Where usage is shared with other nodes (a cluster implements it).
pub trait Shared: Send + Sync {
    /// Reads the cluster-wide totals of `account` (adding what this node
    /// counted), so a user who just logged in here sees them.
    fn refresh<'a>(
        &'a self,
        account: &'a Arc<Account>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// How long a login waits for the cluster-wide totals at most.
const REFRESH_WAIT: Duration = Duration::from_millis(500);

/// The plans in force and every user's account.
pub struct Plans {
    path: Option<PathBuf>,
    /// The default plan as the flags make it.
    default: Plan,
    current: RwLock<Arc<PlanSet>>,
    stamp: Mutex<Option<(SystemTime, u64)>>,
    accounts: DashMap<String, Arc<Account>>,
    /// Where usage is saved (single node).
    saved: PathBuf,
    /// The cluster, when there is one.
    shared: OnceLock<Arc<dyn Shared>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The account id of a key.
pub fn key_account(fingerprint: &str) -> String {
    fingerprint.to_string()
}

/// The account id of a keyless client: its IP (IPv6: its /64).
pub fn ip_account(ip: IpAddr) -> String {
    match crate::limits::ip_key(ip) {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => format!("ip:{v6}/64"),
    }
}

impl Plans {
    /// The plans `args` configure (`None`: no plans, nothing accounted),
    /// with the usage saved in `state_dir` restored.
    pub fn load(args: &PlanArgs, state_dir: &Path) -> Result<Option<Arc<Plans>>> {
        if !args.any() {
            return Ok(None);
        }
        let mut default = Plan {
            name: DEFAULT_PLAN.into(),
            ..Plan::default()
        };
        for (key, flag, value) in args.default_items() {
            default
                .set(key, &value)
                .map_err(|e| anyhow!("{flag}: {e:#}"))?;
        }
        let set = match &args.plans_file {
            Some(path) => read(path, &default)?,
            None => PlanSet::with_default(default.clone()),
        };
        let plans = Plans {
            path: args.plans_file.clone(),
            stamp: Mutex::new(args.plans_file.as_deref().and_then(stamp)),
            default,
            current: RwLock::new(Arc::new(set)),
            accounts: DashMap::new(),
            saved: state_dir.join(saved::FILE),
            shared: OnceLock::new(),
        };
        plans.restore();
        Ok(Some(Arc::new(plans)))
    }

    /// Shares usage through `shared` (the cluster).
    pub fn share(&self, shared: Arc<dyn Shared>) {
        let _ = self.shared.set(shared);
    }

    /// Brings `account` up to date with the other nodes (bounded wait; a
    /// single node has nothing to do).
    pub async fn refresh(&self, account: &Arc<Account>) {
        if let Some(shared) = self.shared.get() {
            let _ = tokio::time::timeout(REFRESH_WAIT, shared.refresh(account)).await;
        }
    }

    /// The plans in force.
    pub fn current(&self) -> Arc<PlanSet> {
        Arc::clone(&self.current.read().expect("plans lock"))
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether the plans file changed on disk since it was last read.
    pub fn changed_on_disk(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        *self.stamp.lock().expect("plans stamp lock") != stamp(path)
    }

    /// Re-reads the plans file; `check` may still reject it (a key in the
    /// keys file on a plan it no longer has). On error the old plans stay.
    /// Accounts move to their plan's new limits at once.
    pub fn reload(&self, check: impl Fn(&PlanSet) -> Result<()>) -> Result<Arc<PlanSet>> {
        let Some(path) = &self.path else {
            return Ok(self.current());
        };
        *self.stamp.lock().expect("plans stamp lock") = stamp(path);
        let set = read(path, &self.default)?;
        check(&set)?;
        let set = Arc::new(set);
        *self.current.write().expect("plans lock") = Arc::clone(&set);
        for account in self.accounts.iter() {
            let name = account.plan().name.clone();
            let plan = set.get(&name).unwrap_or(set.default_plan());
            account.set_plan(Arc::clone(plan));
        }
        Ok(set)
    }

    /// The account `id` (see [`key_account`], [`ip_account`]), on plan
    /// `plan` (`None` or unknown: the default plan).
    pub fn account(&self, id: &str, plan: Option<&str>) -> Arc<Account> {
        let set = self.current();
        let plan = plan
            .and_then(|name| set.get(name))
            .unwrap_or(set.default_plan());
        let account = self
            .accounts
            .entry(id.to_string())
            .or_insert_with(|| Arc::new(Account::new(id.to_string(), Arc::clone(plan))))
            .clone();
        account.set_plan(Arc::clone(plan));
        account
    }

    /// The account `id`, if it is known.
    pub fn get(&self, id: &str) -> Option<Arc<Account>> {
        self.accounts.get(id).map(|a| Arc::clone(&a))
    }

    /// Every account, as a snapshot.
    pub fn accounts(&self) -> Vec<Arc<Account>> {
        self.accounts.iter().map(|a| Arc::clone(&a)).collect()
    }

    /// Every account's usage, the most transfer first.
    pub fn usages(&self) -> Vec<Usage> {
        let mut all: Vec<Usage> = self.accounts().iter().map(|a| Usage::of(a)).collect();
        all.sort_by(|a, b| {
            b.transfer_used
                .cmp(&a.transfer_used)
                .then_with(|| a.account.cmp(&b.account))
        });
        all
    }

    /// Forgets account `id`'s usage this period; false if unknown.
    pub fn reset(&self, id: &str) -> bool {
        match self.get(id) {
            Some(account) => {
                account.reset();
                true
            }
            None => false,
        }
    }

    /// Drops accounts nobody holds that have nothing counted this period.
    pub fn prune(&self) {
        self.accounts.retain(|_, account| {
            account.roll_now();
            Arc::strong_count(account) > 1
                || account.meter(Limit::Transfer).used() > 0
                || account.meter(Limit::Requests).used() > 0
        });
    }
}

fn read(path: &Path, default: &Plan) -> Result<PlanSet> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--plans-file {}: cannot read", path.display()))?;
    PlanSet::parse(&text, default.clone())
        .with_context(|| format!("--plans-file {}", path.display()))
}
