//! `login/return_to.rs`: the sign-in's return URL (`/start?return=URL`,
//! the visitor's to choose), which decides where a signed-in visitor is
//! sent with a one-time code. The input's first byte picks the server's
//! port (443 or 8443); the rest is the URL.
//!
//! Properties: never panics; a URL read is HTTPS on the server's port and
//! is exactly `https://` + host + port + path (host compared in lower
//! case); its host is a valid DNS name, never the sign-in host, and a
//! name under the domain only when its label is a tunnel label; its path
//! starts with one `/` and holds no backslash; the code's redirect built
//! from it (`https://HOST[:PORT]/.burrow/login?code=…`) goes to that host
//! by a browser's (WHATWG) reading, and so does the URL itself wherever a
//! browser can read it.
#![no_main]

use burrow::login::return_to::{read, Server};
use burrow::subdomain::{is_valid_domain, is_valid_label};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(url) = std::str::from_utf8(rest) else {
        return;
    };
    let server = Server {
        domain: "tunnel.example",
        port_suffix: if which % 2 == 0 { "" } else { ":8443" },
        login_host: "login.tunnel.example",
    };
    let Some(to) = read(url, server) else {
        return;
    };
    let origin = format!("https://{}{}", to.host, server.port_suffix);
    let lower = url.to_ascii_lowercase();
    assert!(lower.starts_with(&origin), "{url:?}: {to:?}");
    let rest = &url[origin.len()..];
    assert!(rest == to.path || (rest.is_empty() && to.path == "/"), "{url:?}: {to:?}");
    assert!(to.path.starts_with('/') && !to.path.starts_with("//"), "{url:?}");
    assert!(!to.path.contains('\\'), "{url:?}");
    assert!(is_valid_domain(&to.host), "{url:?}: {to:?}");
    assert_ne!(to.host, server.login_host, "{url:?}");
    let label = to.host.strip_suffix(".tunnel.example");
    assert_eq!(to.under_domain, label.is_some(), "{url:?}: {to:?}");
    if let Some(label) = label {
        assert!(is_valid_label(label), "{url:?}: {to:?}");
    }
    let redirect = format!("{origin}/.burrow/login?code=x");
    let parsed = url::Url::parse(&redirect).expect("the code's redirect parses");
    assert_eq!(parsed.host_str(), Some(to.host.as_str()), "{url:?}");
    if let Ok(browser) = url::Url::parse(url) {
        assert_eq!(browser.host_str(), Some(to.host.as_str()), "{url:?}");
    }
});
