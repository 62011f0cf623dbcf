//! One user's account under a plan: a key (by fingerprint), or a keyless
//! client's IP (IPv6 by /64). Its transfer and request counters for the
//! current calendar period, its bandwidth bucket, and the alerts its SSH
//! connections turn into `NOTICE:` lines.
//!
//! The counters are two atomics each: `base`, the total as last known (read
//! from the state file, or from Redis after a flush), and `pending`, what
//! this node added since. Neither wraps (saturating), a period ends only
//! when the clock passes its end (a clock that jumps back keeps counting
//! into the current period), and the hot path is one `fetch_update` and a
//! comparison with the cached end of the period.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

use super::model::{Period, Plan, Quota};
use crate::limits::Refusal;

/// Which per-period limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Transfer,
    Requests,
}

impl Limit {
    /// The limit's name, as refusals and metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Transfer => "transfer",
            Limit::Requests => "requests",
        }
    }
}

/// How far into its quotas an account is: 0, 80 or 100 (percent) each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alert {
    pub transfer: u8,
    pub requests: u8,
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One per-period counter.
#[derive(Default)]
pub struct Meter {
    /// Start of the period counted (unix seconds); 0 before the first use.
    start: AtomicU64,
    /// End of that period: past it, the next use starts a new one.
    end: AtomicU64,
    base: AtomicU64,
    pending: AtomicU64,
    /// The alert level reached (0, 80, 100).
    level: AtomicU8,
}

fn saturating_add(cell: &AtomicU64, n: u64) -> u64 {
    let before = cell
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_add(n))
        })
        .expect("always Some");
    before.saturating_add(n)
}

impl Meter {
    /// The total this period (as far as this node knows).
    pub fn used(&self) -> u64 {
        self.base
            .load(Ordering::Relaxed)
            .saturating_add(self.pending.load(Ordering::Relaxed))
    }

    /// (start, end) of the period counted.
    pub fn period(&self) -> (u64, u64) {
        (
            self.start.load(Ordering::Relaxed),
            self.end.load(Ordering::Relaxed),
        )
    }

    /// Starts the period containing `now` if it is past the current one's
    /// end (never goes back).
    fn roll(&self, period: Period, now: u64, lock: &Mutex<()>) {
        if now < self.end.load(Ordering::Relaxed) {
            return;
        }
        let _held = lock.lock().expect("roll lock");
        if now < self.end.load(Ordering::Relaxed) {
            return;
        }
        let (start, end) = period.bounds(now);
        if start < self.start.load(Ordering::Relaxed) {
            return;
        }
        self.base.store(0, Ordering::Relaxed);
        self.pending.store(0, Ordering::Relaxed);
        self.level.store(0, Ordering::Relaxed);
        self.start.store(start, Ordering::Relaxed);
        self.end.store(end, Ordering::Relaxed);
    }

    /// Restores a saved total for the period starting at `start`; ignored
    /// if that period is not the current one.
    pub fn restore(&self, start: u64, end: u64, used: u64) {
        let now = unix_now().max(self.start.load(Ordering::Relaxed));
        if start <= now && now < end {
            self.start.store(start, Ordering::Relaxed);
            self.end.store(end, Ordering::Relaxed);
            self.base.store(used, Ordering::Relaxed);
        }
    }

    /// Takes what this node added since the last flush (for the cluster):
    /// it moves into `base` until the shared total comes back.
    pub fn take_pending(&self) -> u64 {
        let taken = self.pending.swap(0, Ordering::Relaxed);
        saturating_add(&self.base, taken);
        taken
    }

    /// Gives back what [`Meter::take_pending`] took, when the flush failed.
    pub fn give_back(&self, taken: u64) {
        let _ = self
            .base
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(taken))
            });
        saturating_add(&self.pending, taken);
    }

    /// The shared total after a flush, for the period starting `start`.
    pub fn set_base(&self, start: u64, total: u64) {
        if self.start.load(Ordering::Relaxed) == start {
            self.base.store(total, Ordering::Relaxed);
        }
    }

    /// Forgets the period's usage (the admin API's reset).
    pub fn reset(&self) {
        self.base.store(0, Ordering::Relaxed);
        self.pending.store(0, Ordering::Relaxed);
        self.level.store(0, Ordering::Relaxed);
    }

    /// Adds `n`; returns the new alert level when it rose.
    fn add(&self, n: u64, amount: u64) -> Option<u8> {
        let used = self
            .base
            .load(Ordering::Relaxed)
            .saturating_add(saturating_add(&self.pending, n));
        let level = level_of(used, amount);
        if level > self.level.load(Ordering::Relaxed) {
            let before = self.level.fetch_max(level, Ordering::Relaxed);
            return (level > before).then_some(level);
        }
        None
    }
}

fn level_of(used: u64, amount: u64) -> u8 {
    if used >= amount {
        100
    } else if u128::from(used) * 5 >= u128::from(amount) * 4 {
        80
    } else {
        0
    }
}

/// A debt-allowing token bucket: a chunk of any size may be spent when the
/// bucket is not in debt, and the debt is waited off; so the average rate
/// is exact whatever the chunk sizes. Its tokens are the account's
/// `credit` (an atomic): moving bytes only subtracts from it, and the
/// bucket is locked and refilled only once the credit is spent, so the
/// data path reads no clock and takes no lock while there is credit.
/// Refilling late is generous by at most one burst after an idle spell.
struct Bucket {
    /// The plan's rate over the nodes moving the account's bytes.
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: f64) -> Bucket {
        // A tenth of a second's worth (at least 16 KiB): over 10 s that is
        // at most 1% above the rate (2% after an idle spell).
        let burst = (rate / 10.0).max(16_384.0);
        Bucket {
            rate,
            burst,
            last: Instant::now(),
        }
    }

    /// Adds the tokens earned since the last refill to `credit`, up to a
    /// burst.
    fn refill(&mut self, credit: &AtomicI64) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let earned = (elapsed * self.rate) as i64;
        let burst = self.burst as i64;
        let _ = credit.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
            Some(c.saturating_add(earned).min(burst))
        });
    }
}

/// One user's account.
pub struct Account {
    id: String,
    plan: RwLock<Arc<Plan>>,
    bucket: Mutex<Option<Bucket>>,
    /// The bucket's tokens, in bytes (negative: in debt).
    credit: AtomicI64,
    /// Whether the plan shapes bandwidth (the one load the hot path does
    /// when it does not).
    shaped: AtomicBool,
    transfer: Meter,
    requests: Meter,
    roll: Mutex<()>,
    alerts: watch::Sender<Alert>,
    /// Usage changed since the state file was written.
    dirty: AtomicBool,
    /// Nodes moving the account's bytes now (cluster; 1 alone): each gets
    /// this share of the plan's bandwidth.
    share: std::sync::atomic::AtomicU32,
    /// Bytes moved here since the last cluster flush looked.
    moved: AtomicBool,
}

impl Account {
    pub fn new(id: String, plan: Arc<Plan>) -> Account {
        let account = Account {
            id,
            plan: RwLock::new(Arc::new(Plan::default())),
            bucket: Mutex::new(None),
            credit: AtomicI64::new(0),
            shaped: Default::default(),
            transfer: Meter::default(),
            requests: Meter::default(),
            roll: Mutex::new(()),
            alerts: watch::Sender::new(Alert::default()),
            dirty: Default::default(),
            share: std::sync::atomic::AtomicU32::new(1),
            moved: AtomicBool::new(false),
        };
        account.set_plan(plan);
        account
    }

    /// The account's id: `SHA256:…` (a key) or `ip:ADDRESS` (keyless).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn plan(&self) -> Arc<Plan> {
        Arc::clone(&self.plan.read().expect("plan lock"))
    }

    /// Puts the account on `plan` (at login, or after a reload).
    pub fn set_plan(&self, plan: Arc<Plan>) {
        if **self.plan.read().expect("plan lock") == *plan {
            return;
        }
        let mut bucket = self.bucket.lock().expect("bucket lock");
        let share = f64::from(self.share.load(Ordering::Relaxed).max(1));
        *bucket = (plan.bandwidth > 0).then(|| Bucket::new(plan.bandwidth as f64 / share));
        let burst = bucket.as_ref().map_or(0, |b| b.burst as i64);
        self.credit.store(burst, Ordering::Relaxed);
        self.shaped.store(plan.bandwidth > 0, Ordering::Relaxed);
        *self.plan.write().expect("plan lock") = Arc::clone(&plan);
        drop(bucket);
        self.roll_now();
    }

    pub fn meter(&self, limit: Limit) -> &Meter {
        match limit {
            Limit::Transfer => &self.transfer,
            Limit::Requests => &self.requests,
        }
    }

    fn quota(&self, limit: Limit) -> Option<Quota> {
        let plan = self.plan.read().expect("plan lock");
        match limit {
            Limit::Transfer => plan.transfer,
            Limit::Requests => plan.requests,
        }
    }

    /// Counts `n` (bytes or requests) against `limit`, in the period
    /// current now.
    fn count(&self, limit: Limit, n: u64) {
        let quota = self.quota(limit);
        let meter = self.meter(limit);
        meter.roll(period_of(quota), unix_now(), &self.roll);
        self.add(limit, quota, n);
    }

    /// Counts `n` against `limit` in the period it was last rolled to (by
    /// a request, a flush or the periodic save, every few seconds).
    fn add(&self, limit: Limit, quota: Option<Quota>, n: u64) {
        let meter = self.meter(limit);
        set_once(&self.dirty);
        let Some(quota) = quota else {
            saturating_add(&meter.pending, n);
            return;
        };
        if let Some(level) = meter.add(n, quota.amount) {
            self.alerts.send_modify(|alert| match limit {
                Limit::Transfer => alert.transfer = level,
                Limit::Requests => alert.requests = level,
            });
        }
    }

    /// Bytes moved (either direction). On the data path: no clock, no
    /// lock, and shared cache lines written only where a count changes
    /// (the period rolls with each request and every few seconds).
    pub fn bytes(&self, n: u64) {
        self.add(Limit::Transfer, self.quota(Limit::Transfer), n);
        set_once(&self.moved);
        if self.shaped.load(Ordering::Relaxed) {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            self.credit.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// How long to wait before moving more bytes (`None`: go now).
    pub fn bandwidth_wait(&self) -> Option<Duration> {
        if !self.shaped.load(Ordering::Relaxed) || self.credit.load(Ordering::Relaxed) >= 0 {
            return None;
        }
        let mut bucket = self.bucket.lock().expect("bucket lock");
        let bucket = bucket.as_mut()?;
        bucket.refill(&self.credit);
        let credit = self.credit.load(Ordering::Relaxed);
        (credit < 0).then(|| Duration::from_secs_f64(-(credit as f64) / bucket.rate))
    }

    /// Whether `limit`'s quota is used up this period, and if so the
    /// refusal naming it and when it resets.
    pub fn exhausted(&self, limit: Limit) -> Option<Refusal> {
        let quota = self.quota(limit)?;
        let meter = self.meter(limit);
        meter.roll(quota.period, unix_now(), &self.roll);
        if meter.used() < quota.amount {
            return None;
        }
        let (_, end) = meter.period();
        let plan = self.plan();
        let what = match limit {
            Limit::Transfer => format!("transfer quota ({})", super::model::bytes(quota.amount)),
            Limit::Requests => format!("request quota ({} requests)", quota.amount),
        };
        let message = format!(
            "the {} plan's {what} for this {} is used up; it resets {} UTC",
            plan.name,
            quota.period.name(),
            super::model::reset_time(end),
        );
        let wait = Duration::from_secs(end.saturating_sub(unix_now()));
        Some(Refusal::new(limit.name(), message).retry_after(wait))
    }

    /// Admits one HTTP request or relayed connection: refused when the
    /// transfer or request quota is used up, counted otherwise.
    pub fn admit_request(&self) -> Result<(), Refusal> {
        for limit in [Limit::Transfer, Limit::Requests] {
            if let Some(refusal) = self.exhausted(limit) {
                return Err(refusal);
            }
        }
        self.count(Limit::Requests, 1);
        Ok(())
    }

    /// The alerts, for a connection to turn into notices.
    pub fn alerts(&self) -> watch::Receiver<Alert> {
        self.alerts.subscribe()
    }

    /// Resolves once the transfer quota is used up (open relays close).
    pub async fn transfer_used_up(&self) {
        let mut alerts = self.alerts.subscribe();
        let _ = alerts.wait_for(|a| a.transfer >= 100).await;
    }

    /// Sets the alert levels from the counts (after a restore), so no
    /// notice is repeated and a used-up quota stays used up.
    pub fn restore_alerts(&self) {
        let mut alert = Alert::default();
        for limit in [Limit::Transfer, Limit::Requests] {
            let Some(quota) = self.quota(limit) else {
                continue;
            };
            let meter = self.meter(limit);
            let level = level_of(meter.used(), quota.amount);
            meter.level.store(level, Ordering::Relaxed);
            match limit {
                Limit::Transfer => alert.transfer = level,
                Limit::Requests => alert.requests = level,
            }
        }
        self.alerts.send_replace(alert);
    }

    /// Whether bytes moved here since the last call (cluster flush).
    pub fn take_moved(&self) -> bool {
        self.moved.swap(false, Ordering::Relaxed)
    }

    /// Shares the plan's bandwidth with `nodes` nodes (cluster): this
    /// node's bucket refills at the plan's rate / `nodes`.
    pub fn set_share(&self, nodes: u32) {
        let nodes = nodes.max(1);
        if self.share.swap(nodes, Ordering::Relaxed) == nodes {
            return;
        }
        let bandwidth = self.plan().bandwidth;
        if let Some(bucket) = self.bucket.lock().expect("bucket lock").as_mut() {
            bucket.refill(&self.credit);
            bucket.rate = bandwidth as f64 / f64::from(nodes);
            bucket.burst = (bucket.rate / 10.0).max(16_384.0);
            let burst = bucket.burst as i64;
            let _ = self
                .credit
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.min(burst)));
        }
    }

    /// Raises the alert levels the counts reached (after the cluster's
    /// totals came in); never lowers them.
    pub fn recheck(&self) {
        for limit in [Limit::Transfer, Limit::Requests] {
            let Some(quota) = self.quota(limit) else {
                continue;
            };
            let meter = self.meter(limit);
            let level = level_of(meter.used(), quota.amount);
            if level > meter.level.fetch_max(level, Ordering::Relaxed) {
                self.alerts.send_modify(|alert| match limit {
                    Limit::Transfer => alert.transfer = level,
                    Limit::Requests => alert.requests = level,
                });
            }
        }
    }

    /// Forgets this period's usage.
    pub fn reset(&self) {
        self.transfer.reset();
        self.requests.reset();
        self.alerts.send_replace(Alert::default());
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether usage changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// Starts the current periods (so a restored or reported account has
    /// its period bounds).
    pub fn roll_now(&self) {
        let plan = self.plan();
        let now = unix_now();
        self.transfer
            .roll(period_of(plan.transfer), now, &self.roll);
        self.requests
            .roll(period_of(plan.requests), now, &self.roll);
    }
}

/// The period a counter runs over: its quota's, else a month (usage is
/// counted, and shown, even where nothing limits it).
fn period_of(quota: Option<Quota>) -> Period {
    quota.map_or(Period::Month, |q| q.period)
}

/// Sets `flag`, writing its cache line only when it was clear (the data
/// path sets it on every chunk; the flush or save clears it now and then).
fn set_once(flag: &AtomicBool) {
    if !flag.load(Ordering::Relaxed) {
        flag.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(transfer: u64, requests: u64) -> Arc<Plan> {
        Arc::new(Plan {
            name: "free".into(),
            transfer: Some(Quota {
                amount: transfer,
                period: Period::Day,
            }),
            requests: Some(Quota {
                amount: requests,
                period: Period::Month,
            }),
            ..Plan::default()
        })
    }

    #[test]
    fn quotas_alert_at_80_and_100_and_refuse() {
        let account = Account::new("ip:192.0.2.1".into(), plan(1000, 3));
        let alerts = account.alerts();
        account.bytes(799);
        assert_eq!(alerts.borrow().transfer, 0);
        account.bytes(1);
        assert_eq!(alerts.borrow().transfer, 80);
        assert!(account.admit_request().is_ok());
        account.bytes(200);
        assert_eq!(alerts.borrow().transfer, 100);
        let refusal = account.admit_request().unwrap_err();
        assert_eq!(refusal.limit, "transfer");
        assert!(refusal.message.contains("free plan"), "{}", refusal.message);
        assert!(refusal.retry_after.unwrap() <= Duration::from_secs(86_400));
        account.reset();
        for _ in 0..3 {
            account.admit_request().unwrap();
        }
        assert_eq!(account.admit_request().unwrap_err().limit, "requests");
        assert_eq!(account.alerts().borrow().requests, 100);
    }

    #[test]
    fn counters_saturate_and_restore_only_the_current_period() {
        let account = Account::new("k".into(), plan(u64::MAX, 10));
        account.bytes(u64::MAX - 1);
        account.bytes(10);
        assert_eq!(account.meter(Limit::Transfer).used(), u64::MAX);
        let meter = Meter::default();
        let (start, end) = Period::Day.bounds(unix_now());
        meter.restore(start - 86_400, start, 500);
        assert_eq!(meter.used(), 0, "yesterday's usage is not today's");
        meter.restore(start, end, 500);
        assert_eq!(meter.used(), 500);
    }

    #[test]
    fn a_clock_that_jumps_back_does_not_reset_the_period() {
        let meter = Meter::default();
        let lock = Mutex::new(());
        let quota = Period::Day;
        let now = unix_now();
        meter.roll(quota, now, &lock);
        meter.add(5, 10);
        meter.roll(quota, now - 3 * 86_400, &lock);
        assert_eq!(meter.used(), 5);
        meter.roll(quota, now + 86_400, &lock);
        assert_eq!(meter.used(), 0, "a new day starts afresh");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_paces_to_the_rate() {
        let plan = Arc::new(Plan {
            bandwidth: 100_000,
            ..Plan::default()
        });
        let account = Account::new("k".into(), plan);
        let start = Instant::now();
        let mut moved = 0u64;
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(wait) = account.bandwidth_wait() {
                tokio::time::sleep(wait).await;
                continue;
            }
            account.bytes(16_384);
            moved += 16_384;
        }
        let rate = moved as f64 / 10.0;
        assert!((rate - 100_000.0).abs() < 5_000.0, "{rate}");
    }
}
