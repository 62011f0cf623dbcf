//! What a user on a plan reads about it: the banner's usage line, `ssh
//! HOST -- usage` (text, or with `output=json` a `usage` event), and the
//! `NOTICE:` lines at 80% and 100% of a quota.

use std::sync::Arc;

use super::banner::{line, Line};
use crate::plans::{Account, Alert, Limit, Usage};

/// The banner's line: `  team plan: 12.4 of 100 GiB this month, resets …`.
pub fn banner_line(account: &Account) -> String {
    line(&format!("  {}", Usage::of(account).line()))
}

/// What `-- usage` prints: the line, or the `usage` event (JSON).
pub fn command(account: Option<&Arc<Account>>, json: bool) -> String {
    let Some(account) = account else {
        let text = "no plans on this server: nothing is counted per user";
        return match json {
            true => format!(
                "{}\r\n",
                serde_json::json!({"event": "usage", "plan": null, "message": text})
            ),
            false => line(text),
        };
    };
    let usage = Usage::of(account);
    if json {
        let mut value = serde_json::to_value(&usage).unwrap_or_default();
        value["event"] = "usage".into();
        value["message"] = usage.line().into();
        return format!("{value}\r\n");
    }
    line(&usage.line())
}

/// The notices for quotas whose level rose from `told` to `now`.
pub fn quota_notices(told: Alert, now: Alert, account: Option<&Arc<Account>>) -> Vec<Line> {
    let Some(account) = account else {
        return Vec::new();
    };
    let usage = Usage::of(account);
    let mut lines = Vec::new();
    for (limit, before, after) in [
        (Limit::Transfer, told.transfer, now.transfer),
        (Limit::Requests, told.requests, now.requests),
    ] {
        if after <= before {
            continue;
        }
        let quota = match limit {
            Limit::Transfer => usage.transfer.as_ref(),
            Limit::Requests => usage.requests.as_ref(),
        };
        let Some(quota) = quota else { continue };
        if before < 80 && after >= 80 {
            lines.push(Line::notice(format!(
                "{} plan: 80% of the {} quota for this {} is used. {}",
                usage.plan,
                limit.name(),
                quota.period,
                usage.line()
            )));
        }
        if before < 100 && after >= 100 {
            let refused = match limit {
                Limit::Transfer => {
                    "new requests get 429 and open WebSocket and TCP connections are closed"
                }
                Limit::Requests => "new requests get 429",
            };
            lines.push(Line::notice(format!(
                "{} plan: the {} quota for this {} is used up ({refused}; new tunnels are refused) until {} UTC. {}",
                usage.plan,
                limit.name(),
                quota.period,
                quota.resets_date,
                usage.line()
            )));
        }
    }
    lines
}
