//! Parsing flag values: rates, durations, sizes, CIDRs, port ranges and
//! resolver addresses. Errors are one sentence naming what was expected.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

/// Inclusive port ranges (`--tcp-ports`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRanges(pub Vec<std::ops::RangeInclusive<u16>>);

impl PortRanges {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    /// Number of ports in all ranges.
    pub fn count(&self) -> usize {
        self.0.iter().map(|r| r.clone().count()).sum()
    }

    /// The `n`-th port of the ranges, counting from the first.
    pub fn nth(&self, mut n: usize) -> Option<u16> {
        for range in &self.0 {
            let len = range.clone().count();
            if n < len {
                return Some(range.start() + n as u16);
            }
            n -= len;
        }
        None
    }
}

impl std::fmt::Display for PortRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r.start() == r.end() {
                true => r.start().to_string(),
                false => format!("{}-{}", r.start(), r.end()),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `20000-29999`, `5432`, or a comma-separated list of them; empty = none.
pub fn parse_port_ranges(text: &str) -> Result<PortRanges, String> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(part)?, port(part)?),
        };
        if start > end {
            return Err(format!("{part:?}: the range ends before it starts"));
        }
        ranges.push(start..=end);
    }
    Ok(PortRanges(ranges))
}

/// A refill rate for a token bucket: `per_second == 0.0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// `10/h`, `1/m`, `2/s`: the coarsest unit that gives a whole number, as
/// the flags are written.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, seconds) in [("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
            let count = self.per_second * seconds;
            if (count - count.round()).abs() < 1e-6 && count >= 1.0 {
                return write!(f, "{}/{unit}", count.round());
            }
        }
        write!(f, "{:.3}/h", self.per_second * 3600.0)
    }
}

/// `25/s`, `600/m`, `1000/h`, or a bare number per second.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let count: f64 = count
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 25/s or 600/m"))?;
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("unknown rate unit {other:?}: use /s, /m or /h")),
    };
    if !count.is_finite() || count < 0.0 {
        return Err(format!("{text:?} must be zero or positive"));
    }
    Ok(Rate {
        per_second: count / seconds,
    })
}

/// `90s`, `2m`, `1h30m`; a bare number is seconds.
///
/// humantime 2.4 panics instead of failing when its running total carries
/// into a second past `u64::MAX` (chronotope/humantime#66, found by the
/// `config_values` fuzz target), so each part (`1h`, `30m`, …) is parsed
/// on its own first, where no carry can happen, and the parts are summed
/// with a checked add; their sum is the duration, exact wherever it fits
/// in a `Duration` (humantime, reading the whole text, refuses some of
/// those: its nanoseconds overflow first).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    for part in duration_parts(text) {
        let part = duration_part(part, text)
            .map_err(|e| format!("{text:?} is not a duration like 90s or 2h: {e}"))?;
        total = total.checked_add(part).ok_or_else(|| {
            format!("{text:?} is too long a duration: it must stay under 2^64 seconds")
        })?;
    }
    // The parts, added, are what humantime reads whole, or more: it sums
    // nanoseconds in a u64 and gives up past 2^64 of them
    // (`5ns18446744073709551614ns`), where the parts still hold the exact
    // sum. Checked where debug assertions are on (tests, the fuzz builds).
    debug_assert!(
        match humantime::parse_duration(text) {
            Ok(whole) => whole == total,
            Err(e) => e == humantime::DurationError::NumberOverflow,
        },
        "{text:?} is {total:?}, humantime reads {:?}",
        humantime::parse_duration(text)
    );
    Ok(total)
}

/// One part of a duration (`1h`, `30m`) as humantime reads it; the error
/// names the part when it is not the whole text. humantime reads a bare
/// `0` as zero only when it is the whole text: after another part (`1h0`)
/// it needs a unit like any other number.
fn duration_part(part: &str, text: &str) -> Result<Duration, String> {
    if part == text {
        return humantime::parse_duration(part).map_err(|e| e.to_string());
    }
    let read = match part.trim() {
        // humantime's own "time unit needed" (its error for `1h0`).
        "0" => Err(humantime::DurationError::UnknownUnit {
            start: 0,
            end: 0,
            unit: String::new(),
            value: 0,
        }),
        _ => humantime::parse_duration(part),
    };
    read.map_err(|e| format!("in {part:?}: {e}"))
}

/// Splits a duration where humantime starts a new part: at a digit whose
/// previous non-space character is a unit's letter (`1h30m`, `1h 30m`).
fn duration_parts(text: &str) -> impl Iterator<Item = &str> {
    let mut after_unit = false;
    let mut starts = vec![0];
    for (at, c) in text.char_indices() {
        if c.is_ascii_digit() && after_unit {
            starts.push(at);
        }
        if !c.is_whitespace() {
            after_unit = c.is_alphabetic();
        }
    }
    let ends = starts.clone().into_iter().skip(1).chain([text.len()]);
    starts
        .into_iter()
        .zip(ends)
        .map(|(start, end)| &text[start..end])
}

/// `64KiB`, `128MiB`, `1GiB`, `500kB`; a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size like 64KiB or 128MiB: {e}"))
}

/// `203.0.113.0/24`, `2001:db8::/32`, or a single address.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

/// `IP:PORT`, or a bare IP for port 53.
pub fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not a resolver address like 127.0.0.1:53"))
}
