//! Plans and usage for the operator (loopback stats listener, beside the
//! admin API, following its conventions):
//!
//! ```text
//! GET  /usage?page=1&per_page=100   every account's usage, most transfer first
//! GET  /usage/{account}             one account (`SHA256:…` URL-encoded, or ip:ADDRESS)
//! POST /usage/{account}/reset       forget its usage this period (Content-Type: application/json)
//! ```
//!
//! plus the per-plan summary the JSON stats and the metrics carry (per
//! plan, never per key: the cardinality is the plans file's).

use std::collections::BTreeMap;

use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::admin::{decode, error, json, not_allowed};
use super::Ops;
use crate::http::Body;
use crate::plans::Limit;

/// Most accounts on one page.
const MAX_PER_PAGE: usize = 1000;

/// Serves one `/usage` request; `None` for other paths.
pub async fn handle(ops: &Ops, req: &Request<Incoming>) -> Option<Response<Body>> {
    let path = req.uri().path();
    let method = req.method();
    if path != "/usage" && !path.starts_with("/usage/") {
        return None;
    }
    let Some(plans) = &ops.plans else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "no plans are configured (--plans-file, --default-plan-*)",
        ));
    };
    if path == "/usage" {
        return Some(match *method {
            Method::GET => list(plans, req.uri().query()),
            _ => not_allowed("GET"),
        });
    }
    let rest = path.trim_start_matches("/usage/");
    if let Some(account) = rest.strip_suffix("/reset") {
        if *method != Method::POST {
            return Some(not_allowed("POST"));
        }
        let json_body = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json_body {
            return Some(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the reset as Content-Type: application/json",
            ));
        }
        let account = decode(account);
        let reset = plans.reset(&account);
        if reset {
            if let Some(cluster) = &ops.cluster {
                cluster.reset_usage(plans, &account).await;
            }
            tracing::info!(%account, "usage reset by the operator");
        }
        return Some(match reset {
            true => json(StatusCode::OK, &serde_json::json!({"reset": account})),
            false => error(StatusCode::NOT_FOUND, "no such account"),
        });
    }
    Some(match *method {
        Method::GET => match plans.get(&decode(rest)) {
            Some(account) => json(StatusCode::OK, &crate::plans::Usage::of(&account)),
            None => error(StatusCode::NOT_FOUND, "no such account"),
        },
        _ => not_allowed("GET"),
    })
}

fn list(plans: &crate::plans::Plans, query: Option<&str>) -> Response<Body> {
    let mut page = 1usize;
    let mut per_page = 100usize;
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let number = value.parse::<usize>().ok().filter(|n| *n > 0);
        match (key.as_ref(), number) {
            ("page", Some(n)) => page = n,
            ("per_page", Some(n)) => per_page = n.min(MAX_PER_PAGE),
            ("page" | "per_page", None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "page and per_page are numbers from 1",
                )
            }
            _ => {}
        }
    }
    let all = plans.usages();
    let total = all.len();
    let accounts: Vec<_> = all
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "accounts": accounts,
            "page": page,
            "per_page": per_page,
            "total": total,
        }),
    )
}

/// One plan's numbers (this node's accounts).
#[derive(Serialize, Default)]
pub struct PlanStats {
    /// Accounts known this period.
    pub accounts: u64,
    /// Bytes moved this period, all accounts together.
    pub transfer_bytes: u64,
    pub requests: u64,
    /// Accounts whose transfer or request quota is used up.
    pub at_quota: u64,
}

/// Per plan, for the JSON stats (`plans`); `None` without plans.
pub fn stats(ops: &Ops) -> Option<BTreeMap<String, PlanStats>> {
    let plans = ops.plans.as_ref()?;
    let mut by_plan: BTreeMap<String, PlanStats> = plans
        .current()
        .names()
        .into_iter()
        .map(|n| (n, PlanStats::default()))
        .collect();
    for account in plans.accounts() {
        let entry = by_plan.entry(account.plan().name.clone()).or_default();
        entry.accounts += 1;
        entry.transfer_bytes = entry
            .transfer_bytes
            .saturating_add(account.meter(Limit::Transfer).used());
        entry.requests = entry
            .requests
            .saturating_add(account.meter(Limit::Requests).used());
        let used_up = [Limit::Transfer, Limit::Requests]
            .iter()
            .any(|l| account.exhausted(*l).is_some());
        entry.at_quota += u64::from(used_up);
    }
    Some(by_plan)
}

/// The per-plan gauges, at scrape time.
pub fn register_metrics(registry: &mut Registry, ops: &Ops) {
    let Some(by_plan) = stats(ops) else { return };
    let family = || Family::<Vec<(&'static str, String)>, Gauge>::default();
    let (accounts, transfer, requests, at_quota) = (family(), family(), family(), family());
    let as_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    for (plan, s) in by_plan {
        let labels = vec![("plan", plan)];
        accounts.get_or_create(&labels).set(as_i64(s.accounts));
        transfer
            .get_or_create(&labels)
            .set(as_i64(s.transfer_bytes));
        requests.get_or_create(&labels).set(as_i64(s.requests));
        at_quota.get_or_create(&labels).set(as_i64(s.at_quota));
    }
    registry.register(
        "plan_accounts",
        "Accounts known this period, by plan",
        accounts,
    );
    registry.register(
        "plan_transfer_bytes",
        "Bytes moved this period by the accounts of each plan",
        transfer,
    );
    registry.register(
        "plan_requests",
        "Requests and relayed connections this period, by plan",
        requests,
    );
    registry.register(
        "plan_accounts_at_quota",
        "Accounts whose transfer or request quota is used up, by plan",
        at_quota,
    );
}

/// The dashboard's top users by transfer this period.
pub fn top(ops: &Ops, count: usize) -> Vec<crate::plans::Usage> {
    ops.plans
        .as_ref()
        .map(|p| p.usages().into_iter().take(count).collect())
        .unwrap_or_default()
}
