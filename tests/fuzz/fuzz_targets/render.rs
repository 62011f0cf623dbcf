//! Renderers of visitor-controlled strings: the request log
//! (`request_log.rs`: text lines, with and without colour, and JSON lines)
//! and the request inspector's JSON (`inspect/view.rs`, as
//! `http/pages.rs` serializes it). The input gives the method, path, Host,
//! reason, header names and values and a body.
//!
//! Properties: never panics; no control character (C0 other than the
//! `\r\n` line ends the log writes itself, DEL, C1) and no bidi or format
//! character (`escape::is_unsafe`) ever reaches the output; the text
//! log's only escape sequences are its own colours; JSON output parses
//! back and decodes to the strings the visitor sent; secret headers are
//! masked unless revealed.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use burrow::inspect::store::{Entry, Kind, Part};
use burrow::inspect::view::{self, MASK};
use burrow::escape::is_unsafe;
use burrow::request_log::{Event, Seen};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// The colours the text log paints with (`request_log.rs`).
const OWN_CODES: [&str; 7] = [
    "\x1b[0m", "\x1b[2m", "\x1b[1m", "\x1b[32m", "\x1b[36m", "\x1b[33m", "\x1b[31m",
];

#[derive(Arbitrary, Debug)]
struct Visit {
    method: String,
    path: String,
    host: String,
    why: Option<String>,
    status: u16,
    bytes: u64,
    millis: u32,
    visitor: [u8; 16],
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    truncated: bool,
}

fuzz_target!(|data: &[u8]| {
    let Ok(visit) = Visit::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    request_log(&visit);
    inspector(&visit);
});

fn request_log(visit: &Visit) {
    let visitor = IpAddr::from(visit.visitor);
    let duration = Duration::from_millis(visit.millis.into());
    let seen = Seen::new(&visit.method, &visit.path, visitor, &visit.host);
    if let Some(user) = &visit.why {
        seen.set_user(user.clone());
    }
    let events = [
        Event::Request {
            seen: seen.clone(),
            status: visit.status,
            bytes: visit.bytes,
            duration,
            why: visit.why.clone(),
        },
        Event::WebSocketOpen { seen: seen.clone() },
        Event::WebSocketClose {
            seen,
            duration,
            bytes_in: visit.bytes,
            bytes_out: visit.bytes / 3,
            why: visit.why.clone(),
        },
    ];
    for event in &events {
        for colour in [false, true] {
            let mut text = burrow::fuzzing::render_log(event, false, colour);
            for code in OWN_CODES {
                text = text.replace(code, "");
            }
            assert_safe(&text, "text log");
        }
        let json = burrow::fuzzing::render_log(event, true, false);
        assert_safe(&json, "JSON log");
        let line: Value = serde_json::from_str(json.trim_end_matches("\r\n"))
            .unwrap_or_else(|e| panic!("{json:?} is not JSON: {e}"));
        assert_eq!(line["method"], visit.method.as_str());
        assert_eq!(line["path"], visit.path.as_str());
        assert_eq!(line["host"], visit.host.as_str());
        assert_eq!(line["visitor"], visitor.to_canonical().to_string());
    }
}

/// No unsafe character but the `\r\n` ends of lines.
fn assert_safe(text: &str, what: &str) {
    let bare = text.replace("\r\n", "");
    if let Some(c) = bare.chars().find(|c| is_unsafe(*c)) {
        panic!("{what} carries {c:?}: {text:?}");
    }
}

fn inspector(visit: &Visit) {
    let part = |headers: &[(String, String)], body: &[u8]| Part {
        headers: headers.to_vec(),
        body: bytes::Bytes::copy_from_slice(body),
        size: body.len() as u64,
        truncated: visit.truncated,
    };
    let mut headers = visit.headers.clone();
    headers.push(("Authorization".into(), "Basic c2VjcmV0OnB3".into()));
    let entry = Entry {
        id: 7,
        conn: 1,
        tunnel: visit.host.clone(),
        kind: Kind::Request,
        replay_of: None,
        method: visit.method.clone(),
        path: visit.path.clone(),
        status: Some(visit.status),
        error: visit.why.clone(),
        by_burrow: false,
        visitor: SocketAddr::new(IpAddr::from(visit.visitor), 443),
        at_ms: 0,
        duration_ms: visit.millis.into(),
        held_ms: 0,
        // Who signed in comes from a provider's claims: as arbitrary as the
        // rest (the `why` text stands in for it).
        user: visit.why.clone(),
        request: part(&headers, &visit.body),
        response: part(&visit.headers, &visit.body),
    };
    let summary = burrow::http::pages::json_body(&serde_json::json!({
        "entries": [view::summary(&entry)]
    }));
    assert_safe(&summary, "inspector list");
    let listed: Value = serde_json::from_str(&summary).expect("the list is JSON");
    assert_eq!(listed["entries"][0]["path"], visit.path.as_str());
    assert_eq!(listed["entries"][0]["user"].as_str(), visit.why.as_deref());
    for reveal in [false, true] {
        let body = burrow::http::pages::json_body(&view::detail(&entry, reveal));
        assert_safe(&body, "inspector entry");
        let detail: Value = serde_json::from_str(&body).expect("an entry is JSON");
        assert_eq!(detail["method"], visit.method.as_str());
        assert_eq!(detail["path"], visit.path.as_str());
        assert_eq!(detail["tunnel"], visit.host.as_str());
        let shown = detail["request"]["headers"].as_array().expect("headers");
        assert_eq!(shown.len(), headers.len());
        for ((name, value), header) in headers.iter().zip(shown) {
            assert_eq!(header["name"], name.as_str());
            let secret = header["secret"].as_bool().expect("a secret flag");
            let credentials = [
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
            ];
            assert_eq!(
                secret,
                credentials.contains(&name.to_ascii_lowercase().as_str()),
                "{name:?}"
            );
            match secret && !reveal {
                true => assert_eq!(header["value"], MASK),
                false => assert_eq!(header["value"], value.as_str()),
            }
        }
        if let Some(text) = detail["request"]["body"]["text"].as_str() {
            let kind = detail["request"]["body"]["kind"].as_str();
            if kind == Some("text") {
                assert!(!text
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')));
            }
        }
    }
}
