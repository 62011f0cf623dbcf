//! Host headers and subdomains: `edge/router.rs` `route(host, domain)`,
//! `subdomain::strip_port`, and the two loopback `Host` checks against DNS
//! rebinding (the inspector's and the ops listener's). The input is
//! `HOST\0DOMAIN` (an invalid or missing domain is `tunnel.example`).
//!
//! Properties: never panics; a tunnel's label is a valid label; routing is
//! case-insensitive and ignores a port and a trailing dot; a host outside
//! the domain is never a tunnel; the apex is the domain itself; a Host
//! the loopback checks accept names a loopback address or `localhost`.
#![no_main]

use burrow::edge::router::{route, Route};
use burrow::subdomain::{is_valid_domain, is_valid_label, strip_port};
use hyper::header::{HeaderMap, HeaderValue, HOST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (host, domain) = text.split_once('\0').unwrap_or((text, "tunnel.example"));
    let domain = if is_valid_domain(domain) {
        domain
    } else {
        "tunnel.example"
    };
    check_route(host, domain);
    check_loopback(host);
});

fn check_route(host: &str, domain: &str) {
    let stripped = strip_port(host);
    assert!(
        host.starts_with(stripped),
        "strip_port({host:?}) = {stripped:?}"
    );
    let routed = route(host, domain);
    let name = stripped.trim_end_matches('.').to_ascii_lowercase();
    match &routed {
        Route::Apex => assert_eq!(name, domain, "{host:?}"),
        Route::Tunnel(label) => {
            assert!(is_valid_label(label), "{host:?} → {label:?}");
            assert_eq!(name, format!("{label}.{domain}"), "{host:?}");
        }
        Route::Malformed => assert!(name.ends_with(&format!(".{domain}")), "{host:?}"),
        Route::Foreign => assert!(name != domain && !name.ends_with(&format!(".{domain}"))),
    }
    assert_eq!(
        route(&host.to_ascii_uppercase(), domain),
        routed,
        "case of {host:?}"
    );
    assert_eq!(
        route(&host.to_ascii_lowercase(), domain),
        routed,
        "case of {host:?}"
    );
    if !host.contains(':') {
        assert_eq!(
            route(&format!("{host}:8443"), domain),
            routed,
            "port after {host:?}"
        );
    }
}

fn check_loopback(host: &str) {
    let Ok(value) = HeaderValue::from_str(host) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(HOST, value);
    let lower = host.to_ascii_lowercase();
    let name = match lower.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or(v6, |(name, _)| name),
        None => lower
            .rsplit_once(':')
            .map_or(lower.as_str(), |(name, _)| name),
    };
    let loopback = |name: &str| {
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    };
    if burrow::fuzzing::inspector_host_ok(&headers) {
        assert!(loopback(name), "inspector took Host {host:?}");
    }
    if burrow::fuzzing::ops_host_ok(&headers) && !lower.contains('[') {
        assert!(loopback(name) || loopback(&lower), "ops took Host {host:?}");
    }
}
