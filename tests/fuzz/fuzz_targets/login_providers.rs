//! The sign-in providers file (`--login-providers`, `login/providers.rs`):
//! `NAME ISSUER CLIENT_ID SECRET_FILE [scopes=…] [groups=CLAIM]`, one
//! provider a line. The input is the file's text (secret files are not
//! read: each reads as `secret`).
//!
//! Properties: never panics; the file is taken exactly when each of its
//! lines is, with one provider per line, and a refusal names a line; a
//! provider's name is a label; its issuer is `https://` with a host, or
//! plain `http://` whose host (as a URL parser, the HTTP client's, finds
//! it) is a loopback address, never with userinfo or a trailing `/`, and
//! checking it again keeps it; `openid` is always among the scopes and
//! none is empty; the client ID and groups claim are single words.
#![no_main]

use burrow::fuzzing::login_providers;
use burrow::login::providers::check_issuer;
use burrow::subdomain::is_valid_label;
use libfuzzer_sys::fuzz_target;
use url::{Host, Url};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let each: Vec<bool> = lines.iter().map(|l| login_providers(l).is_ok()).collect();
    match login_providers(text) {
        Ok(providers) => {
            assert!(each.iter().all(|ok| *ok), "{text:?}");
            assert_eq!(providers.len(), lines.len(), "{text:?}");
            for (provider, line) in providers.iter().zip(&lines) {
                let words: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(provider.name, words[0]);
                assert!(is_valid_label(&provider.name), "{line:?}");
                assert_eq!(provider.client_id, words[2]);
                assert_eq!(provider.client_secret, "secret");
                assert!(!provider.client_id.contains(char::is_whitespace));
                check(&provider.issuer, line);
                assert!(provider.scopes.iter().any(|s| s == "openid"), "{line:?}");
                assert!(!provider.scopes.iter().any(String::is_empty), "{line:?}");
                assert!(!provider.groups_claim.is_empty(), "{line:?}");
                assert!(!provider.groups_claim.contains(char::is_whitespace));
            }
        }
        Err(e) => {
            assert!(!each.iter().all(|ok| *ok), "{text:?} refused: {e}");
            assert!(e.contains("line "), "{e}");
        }
    }
    // The check on its own, on the whole input as one issuer.
    if let Ok(issuer) = check_issuer(text) {
        check(&issuer, text);
    }
});

fn check(issuer: &str, line: &str) {
    assert!(!issuer.ends_with('/'), "{line:?} → {issuer:?}");
    assert_eq!(check_issuer(issuer).as_deref(), Ok(issuer), "{line:?}");
    let url = Url::parse(issuer).unwrap_or_else(|e| panic!("{line:?} → {issuer:?}: {e}"));
    assert!(url.username().is_empty() && url.password().is_none(), "{issuer:?}");
    let host = url.host();
    assert!(host.is_some(), "{issuer:?}");
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match host {
                Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
                Some(Host::Ipv4(ip)) => ip.is_loopback(),
                Some(Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            assert!(loopback, "plain http to {issuer:?} from {line:?}");
        }
        other => panic!("{issuer:?}: scheme {other}"),
    }
}
