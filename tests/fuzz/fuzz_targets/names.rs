//! `-R` bind addresses → the name asked for (`tunnel/names.rs`
//! `requested`), private aliases (`tunnel/private.rs` `alias`), and the
//! name rules of `subdomain.rs`. The input is `ADDRESS\0PORT\0DOMAIN`
//! (missing parts default to port 80 and `tunnel.example`).
//!
//! Properties: never panics; a label asked for is a valid label (a-z0-9-,
//! 1–63, no '-' at either end) that a visitor's Host `LABEL.DOMAIN`
//! routes to; a custom name is a valid domain outside DOMAIN, of two or
//! more labels, not an IP address; an alias is a label other than
//! `localhost`/`tcp` with a port 1–65535 whose key names it back; `tcp:`
//! and private keys are never custom keys and no Host routes to them.
#![no_main]

use burrow::edge::router::{route, Route};
use burrow::subdomain::{is_custom_name, is_valid_domain, is_valid_label};
use burrow::tunnel::names::{requested, Requested};
use burrow::tunnel::private::{alias, name_of};
use burrow::tunnel::{is_custom_key, private_key, tcp_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let address = parts.next().unwrap_or_default();
    let port: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(80);
    let domain = parts
        .next()
        .filter(|d| is_valid_domain(d))
        .unwrap_or("tunnel.example");
    check_requested(address, domain);
    check_alias(address, port, domain);
    let tcp = tcp_key(port as u16);
    assert!(!is_custom_key(&tcp));
    assert!(
        !matches!(route(&tcp, domain), Route::Tunnel(_)),
        "no Host reaches {tcp}"
    );
});

fn check_requested(address: &str, domain: &str) {
    match requested(address, domain) {
        Ok(Requested::Default) | Err(_) => {}
        Ok(Requested::Label(label)) => {
            assert!(is_valid_label(&label), "{address:?} → label {label:?}");
            assert!(!is_custom_key(&label));
            let host = format!("{label}.{domain}");
            assert_eq!(
                route(&host, domain),
                Route::Tunnel(label.clone()),
                "Host {host}"
            );
            let upper = host.to_ascii_uppercase();
            assert_eq!(route(&upper, domain), Route::Tunnel(label), "Host {upper}");
        }
        Ok(Requested::Custom(name)) => {
            assert!(
                is_valid_domain(&name) && name.contains('.'),
                "{address:?} → {name:?}"
            );
            assert!(is_custom_name(&name, domain));
            assert!(is_custom_key(&name));
            assert!(
                name.parse::<std::net::IpAddr>().is_err(),
                "{name:?} is an IP"
            );
            assert!(name != domain && !name.ends_with(&format!(".{domain}")));
            assert_eq!(
                route(&name, domain),
                Route::Foreign,
                "custom {name:?} is not under the domain"
            );
        }
    }
}

fn check_alias(address: &str, port: u32, domain: &str) {
    let Some(alias) = alias(address, port, domain) else {
        return;
    };
    assert!(is_valid_label(&alias.name), "{address:?} → alias {alias:?}");
    assert!(!["localhost", "tcp"].contains(&alias.name.as_str()));
    assert!(alias.port > 0 && u32::from(alias.port) == port);
    let key = alias.key();
    assert_eq!(key, private_key(&alias.name, alias.port));
    assert_eq!(name_of(&key), alias.name);
    assert!(!is_custom_key(&key), "{key} is not a custom domain");
    assert!(
        !matches!(route(&key, domain), Route::Tunnel(_)),
        "no Host reaches {key}"
    );
    assert_eq!(alias.to_string(), format!("{}:{}", alias.name, alias.port));
}
