//! What one node reads of what others wrote: `store/names.rs` member ids
//! and `Stored` values (as read from Redis), the `Event`s of the event
//! channel (JSON, written by Rust or by the Lua scripts' `cjson`), and the
//! link's stream headers (`cluster/link.rs`, as read from another node).
//! The input's first byte picks the reader; the rest is its text. The
//! same bytes also build values for the write → read round trips.
//!
//! Properties: never panics; a decoded value encodes to one that decodes
//! the same; a value built from parts decodes to those parts; member ids
//! round-trip; an event read re-encodes to the same event; a stream's
//! headers written by one node read back as the key and addresses sent,
//! and headers that read back name a known carry and two addresses.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use burrow::store::{member_id, parse_member_id, Event, Stored};
use burrow::tunnel::directory::{Carry, Forwarded};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&which, rest)) = data.split_first() {
        if let Ok(text) = std::str::from_utf8(rest) {
            match which % 4 {
                0 => decoded(text),
                1 => member(text),
                2 => event(text),
                _ => link_headers(text),
            }
        }
    }
    let mut u = Unstructured::new(data);
    built(&mut u);
    link_round_trip(&mut u);
});

fn decoded(text: &str) {
    let Some(stored) = Stored::decode(text) else {
        return;
    };
    let again = Stored::decode(&stored.encode());
    assert_eq!(
        again.as_ref(),
        Some(&stored),
        "{text:?} → {:?}",
        stored.encode()
    );
}

fn member(text: &str) {
    if let Some((node, incarnation, conn)) = parse_member_id(text) {
        let id = member_id(node, incarnation, conn);
        assert_eq!(
            parse_member_id(&id),
            Some((node, incarnation, conn)),
            "{text:?}"
        );
    }
}

fn event(text: &str) {
    let Ok(event) = serde_json::from_str::<Event>(text) else {
        return;
    };
    let json = serde_json::to_string(&event).expect("an event encodes");
    let again: Event = serde_json::from_str(&json).expect("an event written reads back");
    assert_eq!(again, event, "{text:?} → {json}");
}

/// Header lines `name: value`, one a line, as another node sent them.
fn link_headers(text: &str) {
    let mut headers = HeaderMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value))
        else {
            continue;
        };
        headers.append(name, value);
    }
    let Some((key, forwarded)) = burrow::fuzzing::link_read(headers.clone()) else {
        return;
    };
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(get("burrow-key"), Some(key.as_str()));
    let carry = get("burrow-carry");
    assert!(matches!(carry, Some("http" | "https" | "raw")), "{carry:?}");
    assert_eq!(
        get("burrow-visitor").and_then(|v| v.parse().ok()),
        Some(forwarded.visitor)
    );
    assert_eq!(
        get("burrow-local").and_then(|v| v.parse().ok()),
        Some(forwarded.local)
    );
}

/// A fingerprint-like word: no space, no comma (as `Stored` requires).
fn word(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    const CHARS: &[u8] = b"SHA256:abcXYZ019+/=-_.";
    let len = u.int_in_range(1..=12)?;
    (0..len)
        .map(|_| Ok(char::from(*u.choose(CHARS)?)))
        .collect()
}

fn built(u: &mut Unstructured<'_>) {
    let Ok(stored) = (|| -> arbitrary::Result<Stored> {
        let owner = match bool::arbitrary(u)? {
            true => Some(word(u)?).filter(|w| w != "-"),
            false => None,
        };
        let count = u.int_in_range(0..=3)?;
        Ok(Stored {
            claimed_ms: u64::arbitrary(u)?,
            owner,
            granted: bool::arbitrary(u)?,
            raw: Option::<bool>::arbitrary(u)?,
            allow_keys: (0..count)
                .map(|_| word(u))
                .collect::<arbitrary::Result<_>>()?,
        })
    })() else {
        return;
    };
    assert_eq!(
        Stored::decode(&stored.encode()),
        Some(stored.clone()),
        "{:?}",
        stored.encode()
    );
    let (Ok(node), Ok(incarnation), Ok(conn)) =
        (String::arbitrary(u), u64::arbitrary(u), u64::arbitrary(u))
    else {
        return;
    };
    let id = member_id(&node, incarnation, conn);
    assert_eq!(
        parse_member_id(&id),
        Some((node.as_str(), incarnation, conn)),
        "{id:?}"
    );
}

fn address(u: &mut Unstructured<'_>) -> arbitrary::Result<SocketAddr> {
    let ip = match bool::arbitrary(u)? {
        true => IpAddr::from(<[u8; 4]>::arbitrary(u)?),
        false => IpAddr::from(<[u8; 16]>::arbitrary(u)?),
    };
    Ok(SocketAddr::new(ip, u16::arbitrary(u)?))
}

fn link_round_trip(u: &mut Unstructured<'_>) {
    let Ok((carry, visitor, local, key)) = (|| -> arbitrary::Result<_> {
        let carry = match u.int_in_range(0..=2)? {
            0 => Carry::Raw,
            n => Carry::Http { https: n == 1 },
        };
        Ok((carry, address(u)?, address(u)?, String::arbitrary(u)?))
    })() else {
        return;
    };
    // Registry keys: labels, custom domains, `tcp:PORT`, `private:NAME:PORT`.
    let key: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'))
        .collect();
    let sent = Forwarded {
        carry,
        visitor,
        local,
    };
    let read = burrow::fuzzing::link_round_trip("node-1", &key, sent);
    assert_eq!(read, Some((key, sent)));
}
