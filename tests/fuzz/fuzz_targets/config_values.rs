//! `config/parse.rs`: flag values — port ranges, rates, durations, sizes,
//! CIDRs, resolver addresses. The input's first byte picks the parser;
//! the rest is the flag's text.
//!
//! Properties: never panics; accepted values are in range (ports 1–65535,
//! ranges that do not end before they start, rates finite and not
//! negative); what is written back (`Display`) reads back the same
//! (port ranges, CIDRs, rates); `count`/`nth` of port ranges agree with
//! `contains`; malformed values are refused (an empty part of a range, a
//! port 0, a prefix longer than the address).
#![no_main]

use burrow::config::{
    parse_cidr, parse_duration, parse_port_ranges, parse_rate, parse_resolver, parse_size,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 6 {
        0 => ports(text),
        1 => rate(text),
        2 => {
            let _ = parse_duration(text);
        }
        3 => {
            let _ = parse_size(text);
        }
        4 => cidr(text),
        _ => {
            if let Ok(addr) = parse_resolver(text) {
                assert!(text.trim().parse::<std::net::IpAddr>().is_err() || addr.port() == 53);
            }
        }
    }
});

fn ports(text: &str) {
    let Ok(ranges) = parse_port_ranges(text) else {
        return;
    };
    for range in &ranges.0 {
        assert!(
            *range.start() > 0 && range.start() <= range.end(),
            "{text:?}"
        );
    }
    let written = ranges.to_string();
    assert_eq!(
        parse_port_ranges(&written).as_ref(),
        Ok(&ranges),
        "{text:?} → {written:?}"
    );
    let count = ranges.count();
    assert_eq!(count, ranges.0.iter().map(|r| r.len()).sum::<usize>());
    for n in [0, 1, count / 2, count.saturating_sub(1)] {
        if let Some(port) = ranges.nth(n) {
            assert!(ranges.contains(port), "{text:?}: nth({n}) = {port}");
        }
    }
    assert_eq!(ranges.nth(count), None);
    assert!(!ranges.contains(0));
}

fn rate(text: &str) {
    let Ok(rate) = parse_rate(text) else {
        return;
    };
    assert!(
        rate.per_second.is_finite() && rate.per_second >= 0.0,
        "{text:?} → {rate:?}"
    );
    let written = rate.to_string();
    let again = parse_rate(&written).unwrap_or_else(|e| panic!("{text:?} → {written:?}: {e}"));
    let close = (again.per_second - rate.per_second).abs() <= 1e-3 * rate.per_second.max(1e-3);
    assert!(close, "{text:?} → {written:?} → {again:?}");
}

fn cidr(text: &str) {
    let Ok(net) = parse_cidr(text) else {
        return;
    };
    let written = net.to_string();
    assert_eq!(parse_cidr(&written), Ok(net), "{text:?} → {written:?}");
    assert!(net.prefix_len() <= net.max_prefix_len());
}
