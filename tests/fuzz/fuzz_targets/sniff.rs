//! `edge/https.rs` `sniff`: with `--ssh-on-https`, the first byte on :443
//! decides SSH or TLS.
//!
//! Properties: an SSH identification line (`SSH-…`, RFC 4253 §4.2) always
//! goes to SSH; a TLS record (0x16, any ClientHello) never does; nothing
//! at all is a closed connection; only the first byte counts.
#![no_main]

use burrow::edge::https::{sniff, Sniffed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decision = sniff(data);
    match data.first() {
        None => assert_eq!(decision, Sniffed::Closed),
        Some(0x16) => assert_eq!(decision, Sniffed::Tls, "a TLS record went to SSH"),
        Some(_) if data.starts_with(b"SSH-") => assert_eq!(decision, Sniffed::Ssh),
        Some(first) => assert_eq!(decision, sniff(&[*first]), "only the first byte counts"),
    }
    if decision == Sniffed::Ssh {
        assert_eq!(data[0], b'S');
    }
});
