//! `forwarded.rs`: the PROXY protocol header burrow reads from trusted
//! balancers (`header_length`, then `parse` of exactly that many bytes),
//! and the header it writes to apps (`proxy=v1|v2`). The input is the
//! bytes a balancer sent; the same bytes also give a source and a
//! destination address for the write → read round trip.
//!
//! Properties: never panics; `Complete(n)` never exceeds the input and
//! stays the same when more bytes follow; a v1 header is at most 107
//! bytes and ends in CRLF; no header is taken from bytes that are not one;
//! a malformed header is refused; every header burrow writes, v1 or v2, any
//! address pair, reads back as exactly its length and its (canonical)
//! source.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use burrow::forwarded::{proxy_header, ProxyHeader};
use burrow::fuzzing::{proxy_header_length, proxy_parse, ProxyLength};
use libfuzzer_sys::fuzz_target;

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    read(data);
    round_trip(&mut Unstructured::new(data));
});

fn read(data: &[u8]) {
    match proxy_header_length(data) {
        ProxyLength::Complete(n) => {
            assert!(n <= data.len(), "Complete({n}) of {} bytes", data.len());
            assert!(data.starts_with(b"PROXY ") || data.starts_with(V2_SIGNATURE));
            if data.starts_with(b"PROXY ") {
                assert!(n <= 107 && data[..n].ends_with(b"\r\n"), "v1 of {n} bytes");
            } else {
                assert!(n >= 16);
            }
            let mut more = data.to_vec();
            more.extend_from_slice(b"\x16\x03\x01 more bytes");
            assert_eq!(proxy_header_length(&more), ProxyLength::Complete(n));
            check_parsed(&data[..n]);
        }
        ProxyLength::NotAHeader => {
            assert!(!data.starts_with(b"PROXY ") && !data.starts_with(V2_SIGNATURE));
        }
        ProxyLength::NeedMore => {
            let prefix = |full: &[u8]| full.starts_with(data) || data.starts_with(full);
            assert!(
                prefix(b"PROXY ") || prefix(V2_SIGNATURE),
                "waits for more of {data:?}"
            );
        }
        ProxyLength::Invalid => {}
    }
}

/// A parsed header's client is what its text says.
fn check_parsed(header: &[u8]) {
    let Ok(Some(client)) = proxy_parse(header) else {
        return;
    };
    if let Some(v1) = header.strip_prefix(b"PROXY ") {
        let text = std::str::from_utf8(v1).expect("a v1 header that parsed is text");
        let words: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
        assert!(matches!(words[0], "TCP4" | "TCP6"), "{text:?}");
        assert_eq!(words.len(), 5, "{text:?}");
        let ip: IpAddr = words[1].parse().expect("the source parses");
        assert_eq!(client.ip(), ip, "{text:?}");
        assert_eq!(
            words[3].parse::<u16>().ok(),
            Some(client.port()),
            "{text:?}"
        );
        assert_eq!(words[0] == "TCP4", ip.is_ipv4(), "{text:?}");
    }
}

#[derive(Arbitrary, Debug)]
enum Address {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
    Mapped([u8; 4], u16),
}

impl Address {
    fn socket(&self) -> SocketAddr {
        match *self {
            Address::V4(ip, port) => SocketAddr::new(Ipv4Addr::from(ip).into(), port),
            Address::V6(ip, port) => SocketAddr::new(Ipv6Addr::from(ip).into(), port),
            Address::Mapped(ip, port) => {
                SocketAddr::new(Ipv4Addr::from(ip).to_ipv6_mapped().into(), port)
            }
        }
    }
}

fn round_trip(u: &mut Unstructured<'_>) {
    let (Ok(source), Ok(destination)) = (Address::arbitrary(u), Address::arbitrary(u)) else {
        return;
    };
    let (source, destination) = (source.socket(), destination.socket());
    for version in [ProxyHeader::V1, ProxyHeader::V2] {
        let bytes = proxy_header(version, source, destination);
        assert_eq!(
            proxy_header_length(&bytes),
            ProxyLength::Complete(bytes.len()),
            "{version:?} {source} → {destination}: {bytes:?}"
        );
        let read = proxy_parse(&bytes)
            .unwrap_or_else(|e| panic!("{version:?} {source} → {destination}: {e}"))
            .unwrap_or_else(|| panic!("{version:?} {source} → {destination}: no address"));
        assert_eq!(
            SocketAddr::new(read.ip().to_canonical(), read.port()),
            SocketAddr::new(source.ip().to_canonical(), source.port()),
            "{version:?} {source} → {destination}"
        );
    }
}
