//! `tunnel/options.rs`: the SSH command's per-tunnel options (`-- host=…
//! auth=… allow=… cors=… allow-keys=… output= qr= tls= proxy= inspect=
//! help`, `usage`). The input is the command as the client sent it.
//!
//! Properties: never panics; parsing is deterministic; what it accepts
//! renders in the banner (`summary()`) without control, bidi or format
//! characters; every accepted value obeys its option's rules; forms that
//! must be refused are refused (a bad CIDR in `allow=`, an empty value,
//! an unknown option).
#![no_main]

use burrow::escape::is_unsafe;
use burrow::tunnel::options::{parse, Command, Cors, TunnelOptions, MAX_ALLOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(command) = std::str::from_utf8(data) else {
        return;
    };
    let first = parse(command);
    let again = parse(command);
    assert_eq!(first.is_ok(), again.is_ok(), "parse is deterministic");
    match first {
        Ok(Command::Options(options)) => {
            check_accepted(&options);
            let Ok(Command::Options(again)) = again else {
                panic!("parse is deterministic");
            };
            assert_eq!(options.summary(), again.summary());
        }
        Ok(Command::Help) => {}
        Ok(Command::Usage(output)) => {
            assert!(
                command.split_whitespace().any(|w| w == "usage"),
                "usage is only ever asked for by the word usage"
            );
            let Ok(Command::Usage(again)) = again else {
                panic!("parse is deterministic");
            };
            assert_eq!(output, again);
        }
        Err(message) => assert!(!message.is_empty()),
    }
    for word in command.split_whitespace() {
        check_word(word);
    }
});

fn check_accepted(options: &TunnelOptions) {
    let summary = options.summary();
    assert!(
        !summary.chars().any(is_unsafe),
        "summary {summary:?} carries a control or format character"
    );
    assert!(options.allow.len() <= MAX_ALLOW);
    assert!(options.allow_keys.len() <= MAX_ALLOW);
    if let Some(host) = &options.host {
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host.as_str(), None),
        };
        assert!(!name.is_empty() && name.len() <= 253, "host={host:?}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
            "host={host:?}"
        );
        if let Some(port) = port {
            assert!(
                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()),
                "host={host:?}: a port is digits only"
            );
            assert!(port.parse::<u16>().is_ok_and(|p| p > 0), "host={host:?}");
        }
    }
    if let Some(auth) = &options.auth {
        assert!(!auth.user.is_empty() && !auth.user.contains(':'));
    }
    if let Some(Cors::Origins(origins)) = &options.cors {
        assert!(!origins.is_empty());
        for origin in origins {
            assert!(origin.starts_with("https://") || origin.starts_with("http://"));
            assert!(!origin.ends_with('/'));
            assert_eq!(*origin, origin.to_ascii_lowercase());
        }
    }
    for fp in &options.allow_keys {
        let b64 = fp.strip_prefix("SHA256:").expect("a SHA256 fingerprint");
        assert_eq!(b64.len(), 43);
    }
}

/// One word on its own: what must be refused is.
fn check_word(word: &str) {
    let Some((key, value)) = word.split_once('=') else {
        return;
    };
    let refused = parse(word).is_err();
    match key {
        "allow" | "allow-keys" | "auth" | "cors" | "host" if value.is_empty() => {
            assert!(refused, "{word:?}: an empty value is refused")
        }
        "allow" => {
            let bad = value
                .split(',')
                .filter(|n| !n.is_empty())
                .any(|n| burrow::config::parse_cidr(n).is_err());
            if bad {
                assert!(refused, "{word:?}: a bad CIDR is refused");
            }
        }
        "output" | "qr" | "tls" | "proxy" | "inspect" => {
            let known = matches!(
                (key, value),
                ("output", "text" | "json")
                    | ("qr" | "inspect", "on" | "off")
                    | ("tls", "passthrough" | "terminate")
                    | ("proxy", "v1" | "v2")
            );
            assert_eq!(refused, !known, "{word:?}");
        }
        "host" | "auth" | "cors" | "allow-keys" => {}
        _ => assert!(refused, "{word:?}: an unknown option is refused"),
    }
}
