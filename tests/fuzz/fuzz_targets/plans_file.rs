//! `plans/model.rs`: the plans file (`--plans-file`), parsed whole, and
//! the calendar periods its quotas count in. The input is a file's text;
//! its first eight bytes are also a moment whose day, week and month are
//! checked.
//!
//! Properties: never panics; parsing is deterministic; a refused file says
//! which line (1 to the number of lines); in an accepted file the default
//! plan is always there, every other plan is a line of the file with a
//! valid name, and every limit is within its bounds (bandwidth 0 or
//! 1 KiB/s–100 GiB/s, transfer 1 B–1 EiB a period, requests at most 10^12,
//! max-tunnels at most 100,000); a period contains its moment, starts at
//! midnight UTC, has the length of a day, a week (from a Monday) or a
//! calendar month, and the period of its own start is itself.
#![no_main]

use burrow::plans::model::{date, Period};
use burrow::plans::{Plan, PlanSet, DEFAULT_PLAN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 8 {
        let moment = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        // From 1970-01-05, the first Monday (a week before it is cut at
        // the epoch: unsigned time starts there), up to the year 9999.
        const FIRST_MONDAY: u64 = 4 * 86_400;
        check_periods(FIRST_MONDAY + moment % (253_402_300_800 - FIRST_MONDAY));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_file(text);
    }
});

fn check_file(text: &str) {
    let first = PlanSet::parse(text, Plan::default());
    let again = PlanSet::parse(text, Plan::default());
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "parse is deterministic"),
        (Err(a), Err(b)) => assert_eq!(format!("{a:#}"), format!("{b:#}")),
        _ => panic!("parse is deterministic"),
    }
    match first {
        Err(error) => check_refusal(text, &format!("{error:#}")),
        Ok(set) => check_accepted(text, &set),
    }
}

fn check_refusal(text: &str, message: &str) {
    let number = message
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(':'))
        .and_then(|(n, _)| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("{message:?} names no line"));
    assert!(
        (1..=text.lines().count()).contains(&number),
        "{message:?}: the file has {} lines",
        text.lines().count()
    );
}

fn check_accepted(text: &str, set: &PlanSet) {
    assert!(set.contains(DEFAULT_PLAN));
    let named: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let mut expected: Vec<String> = named.iter().map(|n| n.to_string()).collect();
    if !expected.iter().any(|n| n == DEFAULT_PLAN) {
        expected.push(DEFAULT_PLAN.to_string());
    }
    expected.sort();
    assert_eq!(set.names(), expected, "one plan per line, and default");
    for plan in set.iter() {
        check_plan(plan);
    }
}

fn check_plan(plan: &Plan) {
    let name = &plan.name;
    assert!(!name.is_empty() && name.len() <= 32, "{name:?}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'),
        "{name:?}"
    );
    assert!(plan.max_tunnels <= 100_000, "{plan:?}");
    assert!(
        plan.bandwidth == 0 || (1024..=100 << 30).contains(&plan.bandwidth),
        "{plan:?}"
    );
    if let Some(quota) = plan.transfer {
        assert!((1..=1 << 60).contains(&quota.amount), "{plan:?}");
    }
    if let Some(quota) = plan.requests {
        assert!((1..=1_000_000_000_000).contains(&quota.amount), "{plan:?}");
    }
}

fn check_periods(moment: u64) {
    for period in [Period::Day, Period::Week, Period::Month] {
        let (start, end) = period.bounds(moment);
        assert!(start <= moment && moment < end, "{period:?} of {moment}");
        assert_eq!(start % 86_400, 0, "{period:?} starts at midnight");
        assert_eq!(end % 86_400, 0, "{period:?} ends at midnight");
        assert_eq!(period.bounds(start), (start, end), "{period:?} of its start");
        let days = (end - start) / 86_400;
        match period {
            Period::Day => assert_eq!(days, 1),
            Period::Week => {
                assert_eq!(days, 7);
                // 1970-01-05 was a Monday.
                assert_eq!((start / 86_400 + 3) % 7, 0, "a week starts on a Monday");
            }
            Period::Month => {
                assert!((28..=31).contains(&days), "{days} days");
                assert!(date(start).ends_with("-01"), "{}", date(start));
                assert!(date(end).ends_with("-01"), "{}", date(end));
            }
        }
        assert_eq!(Period::parse(period.name()).ok(), Some(period));
    }
}
