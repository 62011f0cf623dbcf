//! What a plan is, and the plans file (`--plans-file`) that names them.
//!
//! One plan a line, its name first, then `key=value` items:
//!
//! ```text
//! # name   limits (all optional; 0 or absent = not limited)
//! free     bandwidth=1MiB/s transfer=1GiB/day requests=10000/day max-tunnels=2
//! team     bandwidth=10MiB/s transfer=100GiB/month max-tunnels=20 tunnel-idle-timeout=8h
//! ```
//!
//! Known items: `max-tunnels` (concurrent, per key), `bandwidth` (bytes per
//! second, both directions of every tunnel of the key together), `transfer`
//! (bytes per calendar `day`, `week` or `month`, UTC), `requests` (HTTP
//! requests and relayed connections per period), `tunnel-idle-timeout`,
//! `tunnel-max-lifetime`. A line with an unknown item, a negative or absurd
//! size, or a period that is not day/week/month rejects the whole file
//! with its line number.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use crate::config::{parse_duration, parse_size};

/// The plan every key and keyless client gets unless told otherwise.
pub const DEFAULT_PLAN: &str = "default";

/// Largest bandwidth a plan may name (anything above is a typo).
const MAX_BANDWIDTH: u64 = 100 << 30;
/// Largest transfer a plan may name per period (1 EiB).
const MAX_TRANSFER: u64 = 1 << 60;
/// Largest request count per period.
const MAX_REQUESTS: u64 = 1_000_000_000_000;
/// Longest plan name (it is a metrics label).
const MAX_NAME: usize = 32;

/// A calendar period in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    /// Monday 00:00 UTC to Monday.
    Week,
    Month,
}

impl Period {
    pub fn parse(text: &str) -> Result<Period> {
        match text.trim() {
            "day" | "d" => Ok(Period::Day),
            "week" | "w" => Ok(Period::Week),
            "month" | "mo" => Ok(Period::Month),
            other => bail!("period {other:?} is not day, week or month"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The period containing `unix` (seconds): its start and its end.
    pub fn bounds(self, unix: u64) -> (u64, u64) {
        let days = (unix / 86_400) as i64;
        let (start, end) = match self {
            Period::Day => (days, days + 1),
            Period::Week => {
                // 1970-01-01 was a Thursday: Monday is day 4 of that week.
                let weekday = (days + 3).rem_euclid(7);
                (days - weekday, days - weekday + 7)
            }
            Period::Month => {
                let (y, m, _) = civil_from_days(days);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (days_from_civil(y, m, 1), days_from_civil(ny, nm, 1))
            }
        };
        ((start.max(0) as u64) * 86_400, (end.max(0) as u64) * 86_400)
    }
}

/// `YYYY-MM-DD` of a unix time.
pub fn date(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `1.5 GiB`, `12 KiB`, `800 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else if (value - value.round()).abs() < 0.05 {
        format!("{} {}", value.round(), UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// When a period ending at `end` (unix seconds) resets: its date.
pub fn reset_time(end: u64) -> String {
    date(end)
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An amount per calendar period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub amount: u64,
    pub period: Period,
}

/// A named set of limits. Zero means not limited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub name: String,
    /// Concurrent tunnels per key (0 = not limited).
    pub max_tunnels: u32,
    /// Bytes per second, both directions of all the key's tunnels.
    pub bandwidth: u64,
    /// Bytes per period.
    pub transfer: Option<Quota>,
    /// HTTP requests and relayed connections per period.
    pub requests: Option<Quota>,
    pub tunnel_idle_timeout: Option<Duration>,
    pub tunnel_max_lifetime: Option<Duration>,
}

impl Plan {
    /// Whether the plan limits anything at all.
    pub fn limits_anything(&self) -> bool {
        self.max_tunnels > 0
            || self.bandwidth > 0
            || self.transfer.is_some()
            || self.requests.is_some()
            || self.tunnel_idle_timeout.is_some()
            || self.tunnel_max_lifetime.is_some()
    }

    /// Sets one `key=value` item (from the file, or a default-plan flag).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let value = value.trim();
        match key {
            "max-tunnels" => {
                self.max_tunnels = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= 100_000)
                    .ok_or_else(|| anyhow!("max-tunnels: {value:?} is not a count 0-100000"))?
            }
            "bandwidth" => {
                let size = value.strip_suffix("/s").unwrap_or(value);
                let bytes = size_of("bandwidth", size)?;
                if bytes > MAX_BANDWIDTH {
                    bail!("bandwidth: {value:?} is absurd (at most 100GiB/s)");
                }
                if bytes > 0 && bytes < 1024 {
                    bail!("bandwidth: {value:?} is below 1KiB/s");
                }
                self.bandwidth = bytes;
            }
            "transfer" => {
                self.transfer = per_period("transfer", value, |text| {
                    let bytes = size_of("transfer", text)?;
                    if bytes > MAX_TRANSFER {
                        bail!("transfer: {value:?} is absurd (at most 1EiB a period)");
                    }
                    Ok(bytes)
                })?
            }
            "requests" => {
                self.requests = per_period("requests", value, |text| {
                    let count: u64 = text
                        .parse()
                        .map_err(|_| anyhow!("requests: {text:?} is not a whole number"))?;
                    if count > MAX_REQUESTS {
                        bail!("requests: {value:?} is absurd");
                    }
                    Ok(count)
                })?
            }
            "tunnel-idle-timeout" => self.tunnel_idle_timeout = Some(duration_of(key, value)?),
            "tunnel-max-lifetime" => self.tunnel_max_lifetime = Some(duration_of(key, value)?),
            other => bail!(
                "unknown item {other:?} (known: max-tunnels, bandwidth, transfer, requests, \
                 tunnel-idle-timeout, tunnel-max-lifetime)"
            ),
        }
        Ok(())
    }
}

fn size_of(what: &str, text: &str) -> Result<u64> {
    if text.trim_start().starts_with('-') {
        bail!("{what}: {text:?} is negative");
    }
    parse_size(text).map_err(|e| anyhow!("{what}: {e}"))
}

fn duration_of(what: &str, text: &str) -> Result<Duration> {
    parse_duration(text).map_err(|e| anyhow!("{what}: {e}"))
}

/// `AMOUNT/PERIOD`; `0` alone is "not limited".
fn per_period(
    what: &str,
    value: &str,
    amount: impl Fn(&str) -> Result<u64>,
) -> Result<Option<Quota>> {
    if value == "0" {
        return Ok(None);
    }
    let (text, period) = value
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("{what}: {value:?} needs a period, e.g. /day, /week or /month"))?;
    let period = Period::parse(period).map_err(|e| anyhow!("{what}: {e}"))?;
    let amount = amount(text.trim())?;
    Ok((amount > 0).then_some(Quota { amount, period }))
}

/// Every plan by name; `default` is always there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSet {
    plans: BTreeMap<String, std::sync::Arc<Plan>>,
}

impl PlanSet {
    /// Only the default plan, as the flags made it.
    pub fn with_default(default: Plan) -> PlanSet {
        let mut plans = BTreeMap::new();
        plans.insert(
            DEFAULT_PLAN.to_string(),
            std::sync::Arc::new(Plan {
                name: DEFAULT_PLAN.into(),
                ..default
            }),
        );
        PlanSet { plans }
    }

    /// Parses a plans file on top of the flags' default plan (a `default`
    /// line in the file replaces it).
    pub fn parse(text: &str, default: Plan) -> Result<PlanSet> {
        let mut set = PlanSet::with_default(default);
        let mut seen = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let plan = parse_line(line).map_err(|e| anyhow!("line {}: {e}", index + 1))?;
            if !seen.insert(plan.name.clone()) {
                bail!("line {}: plan {:?} is defined twice", index + 1, plan.name);
            }
            set.plans
                .insert(plan.name.clone(), std::sync::Arc::new(plan));
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&std::sync::Arc<Plan>> {
        self.plans.get(name)
    }

    pub fn default_plan(&self) -> &std::sync::Arc<Plan> {
        self.plans.get(DEFAULT_PLAN).expect("the default plan")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.plans.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &std::sync::Arc<Plan>> {
        self.plans.values()
    }
}

fn parse_line(line: &str) -> Result<Plan> {
    let mut words = line.split_whitespace();
    let name = words.next().expect("a non-empty line");
    if name.contains('=') {
        bail!("a line starts with the plan's name, e.g. `team bandwidth=10MiB/s`");
    }
    valid_name(name)?;
    let mut plan = Plan {
        name: name.to_string(),
        ..Plan::default()
    };
    for item in words {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("{item:?} is not a key=value item"))?;
        plan.set(key, value)?;
    }
    Ok(plan)
}

/// Plan names: `a-z 0-9 - _`, at most 32 characters.
pub fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        bail!("plan name {name:?} must be a-z, 0-9, '-' or '_', at most {MAX_NAME} characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plans() {
        let text =
            "# plans\n\nfree bandwidth=1MiB/s transfer=1GiB/day requests=10000/day max-tunnels=2\n\
                    team transfer=100GiB/month tunnel-idle-timeout=8h\n";
        let set = PlanSet::parse(text, Plan::default()).unwrap();
        let free = set.get("free").unwrap();
        assert_eq!(free.bandwidth, 1 << 20);
        assert_eq!(
            free.transfer,
            Some(Quota {
                amount: 1 << 30,
                period: Period::Day
            })
        );
        assert_eq!(free.requests.unwrap().amount, 10_000);
        assert_eq!(free.max_tunnels, 2);
        let team = set.get("team").unwrap();
        assert_eq!(team.transfer.unwrap().period, Period::Month);
        assert_eq!(
            team.tunnel_idle_timeout,
            Some(Duration::from_secs(8 * 3600))
        );
        assert!(set.contains(DEFAULT_PLAN));
        assert!(!set.default_plan().limits_anything());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for (text, needle) in [
            ("free colour=red", "line 1: unknown item"),
            ("\nfree bandwidth=-5MiB/s", "line 2: bandwidth"),
            ("free transfer=1GiB/year", "not day, week or month"),
            ("free transfer=1GiB", "needs a period"),
            ("free transfer=2EiB/day", "absurd"),
            ("free bandwidth=500TiB/s", "absurd"),
            ("free requests=-1/day", "requests"),
            ("free max-tunnels=-1", "max-tunnels"),
            ("Free", "plan name"),
            ("bandwidth=1MiB", "starts with the plan's name"),
            ("a\na", "line 2: plan \"a\" is defined twice"),
            ("free max-tunnels", "not a key=value"),
        ] {
            let err = format!("{:#}", PlanSet::parse(text, Plan::default()).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn periods_are_calendar_utc() {
        // 2026-12-07 10:00 UTC, a Monday.
        let t = 1_796_637_600;
        assert_eq!(date(t), "2026-12-07");
        let (s, e) = Period::Day.bounds(t);
        assert_eq!(
            (date(s), date(e)),
            ("2026-12-07".into(), "2026-12-08".into())
        );
        let (s, e) = Period::Week.bounds(t);
        assert_eq!(
            (date(s), date(e)),
            ("2026-12-07".into(), "2026-12-14".into())
        );
        let (s, e) = Period::Month.bounds(t);
        assert_eq!(
            (date(s), date(e)),
            ("2026-12-01".into(), "2027-01-01".into())
        );
        let (s, e) = Period::Month.bounds(1_709_164_800); // 2024-02-29
        assert_eq!(
            (date(s), date(e)),
            ("2024-02-01".into(), "2024-03-01".into())
        );
        for t in [0, 86_399, 1_000_000_000, 4_102_444_800] {
            for p in [Period::Day, Period::Week, Period::Month] {
                let (s, e) = p.bounds(t);
                assert!(s <= t && t < e, "{p:?} {t}");
            }
        }
    }
}
