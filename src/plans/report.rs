//! An account's usage as the user reads it (the banner line, `-- usage`)
//! and as the admin API returns it (JSON).

use serde::Serialize;

use super::account::{Account, Limit};
use super::model::{bytes, reset_time};

/// `used` of `amount` in the unit of `amount`: `12.4 of 100 GiB`.
fn of(used: u64, amount: u64) -> String {
    let whole = bytes(amount);
    let (_, unit) = whole.rsplit_once(' ').unwrap_or(("", "B"));
    let scale = match unit {
        "KiB" => 1024f64,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        "PiB" => 1024f64.powi(5),
        _ => 1.0,
    };
    let used = used as f64 / scale;
    let used = if scale == 1.0 || used >= 100.0 {
        format!("{}", used.round())
    } else {
        format!("{used:.1}")
    };
    format!("{used} of {whole}")
}

/// One quota's state.
#[derive(Debug, Serialize, Clone)]
pub struct QuotaUsage {
    pub used: u64,
    pub limit: u64,
    pub period: &'static str,
    /// Start and end of the period, unix seconds.
    pub period_start: u64,
    pub resets: u64,
    /// `resets` as a date (UTC).
    pub resets_date: String,
}

/// An account's usage.
#[derive(Debug, Serialize, Clone)]
pub struct Usage {
    /// `SHA256:…` or `ip:ADDRESS`.
    pub account: String,
    pub plan: String,
    /// Bytes per second, 0 = not shaped.
    pub bandwidth: u64,
    pub max_tunnels: u32,
    /// Bytes moved this period (counted even without a transfer quota).
    pub transfer_used: u64,
    pub requests_used: u64,
    pub transfer: Option<QuotaUsage>,
    pub requests: Option<QuotaUsage>,
}

impl Usage {
    pub fn of(account: &Account) -> Usage {
        account.roll_now();
        let plan = account.plan();
        let quota = |limit: Limit| {
            let q = match limit {
                Limit::Transfer => plan.transfer,
                Limit::Requests => plan.requests,
            }?;
            let meter = account.meter(limit);
            let (start, end) = meter.period();
            Some(QuotaUsage {
                used: meter.used(),
                limit: q.amount,
                period: q.period.name(),
                period_start: start,
                resets: end,
                resets_date: reset_time(end),
            })
        };
        Usage {
            account: account.id().to_string(),
            plan: plan.name.clone(),
            bandwidth: plan.bandwidth,
            max_tunnels: plan.max_tunnels,
            transfer_used: account.meter(Limit::Transfer).used(),
            requests_used: account.meter(Limit::Requests).used(),
            transfer: quota(Limit::Transfer),
            requests: quota(Limit::Requests),
        }
    }

    /// The line the banner and `-- usage` show:
    /// `team plan: 12.4 of 100 GiB this month, resets 2027-01-01`.
    pub fn line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.transfer {
            parts.push(format!(
                "{} this {}, resets {}",
                of(t.used, t.limit),
                t.period,
                t.resets_date
            ));
        }
        if let Some(r) = &self.requests {
            parts.push(format!(
                "{} of {} requests this {}, resets {}",
                r.used, r.limit, r.period, r.resets_date
            ));
        }
        if self.bandwidth > 0 {
            parts.push(format!("{}/s", bytes(self.bandwidth)));
        }
        if self.max_tunnels > 0 {
            parts.push(format!("at most {} tunnels", self.max_tunnels));
        }
        if parts.is_empty() {
            parts.push(format!("{} moved, no quota", bytes(self.transfer_used)));
        }
        format!("{} plan: {}", self.plan, parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plans::model::{Period, Plan, Quota};
    use std::sync::Arc;

    #[test]
    fn human_sizes() {
        assert_eq!(bytes(800), "800 B");
        assert_eq!(bytes(100 << 30), "100 GiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(of(12_400 << 20, 100 << 30), "12.1 of 100 GiB");
    }

    #[test]
    fn the_banner_line() {
        let plan = Arc::new(Plan {
            name: "team".into(),
            transfer: Some(Quota {
                amount: 100 << 30,
                period: Period::Month,
            }),
            ..Plan::default()
        });
        let account = Account::new("SHA256:x".into(), plan);
        account.bytes(12 << 30);
        let usage = Usage::of(&account);
        let line = usage.line();
        assert!(
            line.starts_with("team plan: 12.0 of 100 GiB this month, resets "),
            "{line}"
        );
        assert_eq!(usage.transfer.unwrap().used, 12 << 30);
    }
}
