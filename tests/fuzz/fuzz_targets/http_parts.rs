//! The hand-written HTTP parsing in front of and beside hyper (hyper
//! parses the request heads themselves): cookies (`http/interstitial.rs`
//! `cookie`, `http/rewrite.rs` `strip_burrow_cookies`), the warning page's
//! redirect target (`safe_path`), Basic credentials (`http/access.rs`),
//! and the admin API's percent-decoding of path segments
//! (`ops/admin.rs` `decode`). The input is `Cookie` header values, one a
//! line, or the text the other parsers take.
//!
//! Properties: never panics; a cookie found is the value of exactly that
//! name; stripping burrow's cookies keeps every other cookie, in order,
//! and leaves none of burrow's; a redirect target is a path on this host;
//! credentials written are read back; `decode` is the inverse of
//! percent-encoding, and leaves alone a `%` not followed by two hex digits.
#![no_main]

use burrow::fuzzing::{basic_credentials, cookie, safe_path, strip_burrow_cookies};
use burrow::ops::admin::decode;
use hyper::header::{HeaderMap, HeaderValue, AUTHORIZATION, COOKIE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cookies(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    redirect(text);
    credentials(text);
    percent(text);
});

/// The `Cookie` headers of `data`, one a line.
fn cookie_headers(data: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(COOKIE, value);
        }
    }
    headers
}

/// Every `name=value` pair (or bare word) of the headers, in order.
fn pairs(headers: &HeaderMap) -> Vec<Vec<u8>> {
    headers
        .get_all(COOKIE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b';'))
        .map(|pair| pair.trim_ascii().to_vec())
        .filter(|pair| !pair.is_empty())
        .collect()
}

fn ours(pair: &[u8]) -> bool {
    let name = pair.split(|b| *b == b'=').next().unwrap_or(pair);
    name.starts_with(b"burrow_warned_")
        || name.starts_with(b"burrow_csrf_")
        || name == b"__Host-burrow_session"
}

fn cookies(data: &[u8]) {
    let headers = cookie_headers(data);
    for name in ["burrow_warned_api", "burrow_csrf_api", "__Host-burrow_session", "session"] {
        if let Some(value) = cookie(&headers, name) {
            let pair = format!("{name}={value}").into_bytes();
            assert!(pairs(&headers).contains(&pair), "{name}={value}");
        }
    }
    let before = pairs(&headers);
    let mut stripped = headers.clone();
    strip_burrow_cookies(&mut stripped);
    let after = pairs(&stripped);
    assert!(!after.iter().any(|p| ours(p)), "{stripped:?}");
    let kept: Vec<_> = before.iter().filter(|p| !ours(p)).cloned().collect();
    assert_eq!(after, kept, "the app's cookies in {headers:?}");
}

fn redirect(next: &str) {
    let target = safe_path(next);
    assert!(target == "/" || target == next);
    assert!(target.starts_with('/'));
    assert!(
        !target.starts_with("//") && !target.starts_with("/\\"),
        "{target:?}"
    );
    assert!(!target.chars().any(char::is_control), "{target:?}");
}

fn credentials(text: &str) {
    use base64::Engine;
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(text) {
        headers.insert(AUTHORIZATION, value);
        let _ = basic_credentials(&headers);
    }
    let Some((user, password)) = text.split_once(':').filter(|(u, _)| !u.contains(':')) else {
        return;
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {encoded}")).unwrap(),
    );
    assert_eq!(
        basic_credentials(&headers),
        Some((user.to_string(), password.to_string())),
        "{text:?}"
    );
}

fn percent(text: &str) {
    let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(decode(&encoded), text, "decode ∘ encode");
    let lower: String = text.bytes().map(|b| format!("%{b:02x}")).collect();
    assert_eq!(decode(&lower), text, "decode ∘ encode (lowercase)");
    assert_eq!(decode(text), reference_decode(text), "decode({text:?})");
}

/// Percent-decoding as RFC 3986 §2.1 has it: `%` and two hex digits is a
/// byte, anything else is itself.
fn reference_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
