//! Entries as the inspector page reads them: a summary for the list, the
//! details with headers (secrets masked unless asked for) and bodies
//! rendered by kind (JSON pretty-printed, text as is, binary as a hex
//! dump). Everything here is data; the page inserts it as text.

use serde::Serialize;
use serde_json::Value;

use super::store::{Entry, Kind, Part};

/// Headers whose values are masked until the user asks for them.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// What a masked value shows.
pub const MASK: &str = "••••••";

/// Bytes of a binary body shown as hex.
const HEX_BYTES: usize = 1024;

/// An entry in the list.
#[derive(Serialize)]
/// The fields mean what [`Entry`]'s do; the sizes are the whole bodies'.
pub struct Summary<'a> {
    /// The entry's id (newer entries have larger ones).
    id: u64,
    /// The tunnel's name.
    tunnel: &'a str,
    /// `request`, `websocket_open` or `websocket_close`.
    kind: Kind,
    /// The entry it replayed, for a replay.
    replay_of: Option<u64>,
    /// The request method.
    method: &'a str,
    /// Path and query as the visitor sent them.
    path: &'a str,
    /// The app's status (`null`: no answer).
    status: Option<u16>,
    /// Why there is no answer.
    error: Option<&'a str>,
    /// burrow answered itself; the app never saw the request.
    by_burrow: bool,
    /// The visitor's IP.
    visitor: String,
    /// When it arrived (unix ms).
    at_ms: u64,
    /// How long it took.
    duration_ms: u64,
    /// How long it was held for the tunnel's options (0: not at all).
    held_ms: u64,
    /// Who the visitor signed in as (`null`: no sign-in).
    user: Option<&'a str>,
    /// The request body's size.
    request_bytes: u64,
    /// The response body's size.
    response_bytes: u64,
}

pub fn summary(entry: &Entry) -> Summary<'_> {
    Summary {
        id: entry.id,
        tunnel: &entry.tunnel,
        kind: entry.kind,
        replay_of: entry.replay_of,
        method: &entry.method,
        path: &entry.path,
        status: entry.status,
        error: entry.error.as_deref(),
        by_burrow: entry.by_burrow,
        visitor: entry.visitor.ip().to_canonical().to_string(),
        at_ms: entry.at_ms,
        duration_ms: entry.duration_ms,
        held_ms: entry.held_ms,
        user: entry.user.as_deref(),
        request_bytes: entry.request.size,
        response_bytes: entry.response.size,
    }
}

/// An entry with its headers and bodies.
#[derive(Serialize)]
pub struct Detail<'a> {
    /// What the list shows.
    #[serde(flatten)]
    summary: Summary<'a>,
    /// The request as the app got it.
    request: PartView,
    /// The response as the app sent it.
    response: PartView,
}

/// One side's headers and body.
#[derive(Serialize)]
struct PartView {
    /// In order, secrets masked unless revealed.
    headers: Vec<HeaderView>,
    /// The captured start of the body, rendered.
    body: BodyView,
}

#[derive(Serialize)]
struct HeaderView {
    /// As sent (case kept).
    name: String,
    /// The value, or [`MASK`].
    value: String,
    /// A secret (credentials, cookies): `value` is [`MASK`] unless revealed.
    secret: bool,
}

/// A body as the page shows it.
#[derive(Serialize)]
struct BodyView {
    /// `empty`, `json`, `text` or `binary`.
    kind: &'static str,
    /// The pretty-printed JSON or the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    /// A hex dump of the start of a binary body.
    #[serde(skip_serializing_if = "Option::is_none")]
    hex: Option<String>,
    /// The whole body's size.
    size: u64,
    /// How much of it was captured.
    captured: usize,
    truncated: bool,
}

/// `entry` in full; secret header values only with `reveal`.
pub fn detail(entry: &Entry, reveal: bool) -> Detail<'_> {
    Detail {
        summary: summary(entry),
        request: part(&entry.request, reveal),
        response: part(&entry.response, reveal),
    }
}

fn part(part: &Part, reveal: bool) -> PartView {
    let headers = part.headers.iter().map(|(name, value)| {
        let secret = SECRET_HEADERS.contains(&name.to_ascii_lowercase().as_str());
        HeaderView {
            name: name.clone(),
            value: if secret && !reveal {
                MASK.into()
            } else {
                value.clone()
            },
            secret,
        }
    });
    PartView {
        headers: headers.collect(),
        body: body(part),
    }
}

fn content_type(part: &Part) -> String {
    let header = part
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    header
        .map(|(_, v)| v.to_ascii_lowercase())
        .unwrap_or_default()
}

fn body(part: &Part) -> BodyView {
    let bytes = &part.body[..];
    let (kind, text, hex) = if bytes.is_empty() {
        ("empty", None, None)
    } else if let Some(json) = pretty_json(bytes, &content_type(part)) {
        ("json", Some(json), None)
    } else if let Some(text) = as_text(bytes, part.truncated) {
        ("text", Some(text), None)
    } else {
        (
            "binary",
            None,
            Some(hex_dump(&bytes[..bytes.len().min(HEX_BYTES)])),
        )
    };
    BodyView {
        kind,
        text,
        hex,
        size: part.size,
        captured: bytes.len(),
        truncated: part.truncated,
    }
}

/// The body pretty-printed, when it is JSON (by its type, or by its looks).
fn pretty_json(bytes: &[u8], content_type: &str) -> Option<String> {
    let looks = matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    if !(content_type.contains("json") || looks) {
        return None;
    }
    let value: Value = serde_json::from_slice(bytes).ok()?;
    serde_json::to_string_pretty(&value).ok()
}

/// The body as text, when it is UTF-8 without control characters (a
/// character cut at the capture's end is allowed).
fn as_text(bytes: &[u8], truncated: bool) -> Option<String> {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) if truncated && err.error_len().is_none() => {
            std::str::from_utf8(&bytes[..err.valid_up_to()]).ok()?
        }
        Err(_) => return None,
    };
    let control = |c: char| c.is_control() && !matches!(c, '\n' | '\r' | '\t');
    (!text.chars().any(control)).then(|| text.to_string())
}

/// `00000000  68 65 6c 6c 6f ...  |hello...|`, 16 bytes a line.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!(
            "{:08x}  {:<47}  |{ascii}|\n",
            i * 16,
            hex.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn part_of(body: &[u8], content_type: &str) -> Part {
        Part {
            headers: vec![("content-type".into(), content_type.into())],
            body: Bytes::copy_from_slice(body),
            size: body.len() as u64,
            truncated: false,
        }
    }

    #[test]
    fn json_is_pretty_printed_text_kept_binary_hexed() {
        let json = body(&part_of(br#"{"a":[1,2]}"#, "application/json"));
        assert_eq!(json.kind, "json");
        assert!(json.text.unwrap().contains("\n  \"a\": ["));
        let text = body(&part_of(b"<b>hi</b>", "text/html"));
        assert_eq!(
            (text.kind, text.text.as_deref()),
            ("text", Some("<b>hi</b>"))
        );
        let binary = body(&part_of(&[0, 1, 2, 0xff], "application/octet-stream"));
        assert_eq!(binary.kind, "binary");
        assert!(binary.hex.unwrap().starts_with("00000000  00 01 02 ff"));
    }

    #[test]
    fn secrets_are_masked_unless_revealed() {
        let mut p = part_of(b"", "text/plain");
        p.headers
            .push(("Authorization".into(), "Bearer s3cret".into()));
        let masked = part(&p, false);
        assert_eq!(masked.headers[1].value, MASK);
        assert!(masked.headers[1].secret);
        assert_eq!(part(&p, true).headers[1].value, "Bearer s3cret");
    }
}
