//! What visitor-controlled text may look like where people read it: on a
//! user's terminal (the request log, the banner) and in JSON answers (the
//! inspector, the operator's endpoints). Controls and Unicode format
//! characters (bidi overrides, zero-width characters) never pass as they
//! are; they become visible escapes, so nobody can paint, reorder or hide
//! text on someone else's screen. One rule, used everywhere.

use std::borrow::Cow;
use std::fmt::Write as _;

/// serde_json leaves bidi/format characters as they are; a JSON line read
/// on a terminal must not carry them either, so they become `\uXXXX`
/// escapes (the decoded value is unchanged). Also every JSON answer of
/// `http::pages` (the inspector's entries, the operator's endpoints).
pub fn json_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that must never reach a terminal as they are: controls (C0,
/// DEL, C1: escape sequences start there) and Unicode format characters
/// (bidi overrides and isolates, zero-width and invisible characters).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E007F}')
}

/// `text` with every unsafe character as a visible `\u{…}` escape
/// (borrowed unchanged when it has none, as for nearly every request).
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    push_escaped(&mut out, text.chars());
    Cow::Owned(out)
}

/// Appends `chars` to `out`, each unsafe one as its escape. A display unit
/// is one character, its escape kept whole, so shortening by characters
/// never cuts an escape in half.
fn push_escaped(out: &mut String, chars: impl Iterator<Item = char>) {
    for c in chars {
        if is_unsafe(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
}

/// `text` escaped and, when longer than `width` display units, shortened
/// in the middle (the start says where, the end says which).
pub fn shorten_to(text: &str, width: usize) -> Cow<'_, str> {
    let units = text.chars().count();
    if units <= width {
        return escape(text);
    }
    let head = width * 2 / 3;
    let tail = width - head - 1;
    let mut out = String::with_capacity(width + 16);
    push_escaped(&mut out, text.chars().take(head));
    out.push('…');
    push_escaped(&mut out, text.chars().skip(units - tail));
    Cow::Owned(out)
}
