//! Tunnel names: generating random `adjective-noun-xxxxxxxx` labels,
//! validating names.
//!
//! Everything that turns untrusted text (a Host header, a domain flag) into
//! a name the registry is asked about goes through here, so the rules for
//! what a name may look like live in one place.

use rand::seq::IndexedRandom;
use rand::RngExt;

const ADJECTIVES: &[&str] = &[
    "able", "amber", "ancient", "autumn", "bold", "brave", "breezy", "bright", "brisk", "calm",
    "clever", "cosmic", "cozy", "crimson", "crisp", "curious", "dapper", "daring", "dusty",
    "eager", "early", "electric", "fancy", "fierce", "fluffy", "frosty", "gentle", "giant",
    "golden", "grand", "happy", "hidden", "honest", "humble", "icy", "jolly", "kind", "lively",
    "lucky", "lunar", "merry", "mighty", "misty", "modest", "noble", "odd", "patient", "plucky",
    "polite", "proud", "quick", "quiet", "rapid", "rosy", "rustic", "shiny", "silent", "silver",
    "sleepy", "smooth", "snowy", "solar", "steady", "sunny", "swift", "tidy", "tiny", "vivid",
    "warm", "wild", "wise", "witty", "young", "zesty",
];

const NOUNS: &[&str] = &[
    "badger", "bear", "beaver", "bison", "cactus", "canyon", "cedar", "cloud", "comet", "coral",
    "crane", "creek", "dolphin", "dragon", "eagle", "falcon", "fern", "finch", "fox", "gecko",
    "glacier", "harbor", "hawk", "heron", "island", "jaguar", "koala", "lagoon", "lemur",
    "leopard", "lion", "lynx", "maple", "meadow", "meteor", "moose", "moth", "nebula", "ocean",
    "orca", "otter", "owl", "panda", "parrot", "pebble", "penguin", "pine", "planet", "puffin",
    "quokka", "rabbit", "raven", "reef", "river", "robin", "salmon", "seal", "sparrow", "spruce",
    "squid", "summit", "tiger", "tortoise", "tulip", "valley", "walrus", "whale", "willow", "wolf",
    "wombat", "yak", "zebra",
];

/// A fresh random name such as `happy-tiger-1a2b3c4d`.
///
/// 74 adjectives × 72 nouns × 2^32 suffixes: guessing a live name is not a
/// practical way to find someone's tunnel.
pub fn random_name() -> String {
    let mut rng = rand::rng();
    let adjective = ADJECTIVES.choose(&mut rng).expect("word list is not empty");
    let noun = NOUNS.choose(&mut rng).expect("word list is not empty");
    let suffix: u32 = rng.random();
    format!("{adjective}-{noun}-{suffix:08x}")
}

/// The stable name of an SSH key: `adjective-noun-xxxxxxxx` chosen by
/// HMAC-SHA256 of the key's wire encoding under the server's secret, so the
/// same key always gets the same name on this server and nobody without the
/// secret can predict or enumerate it.
pub fn stable_name(secret: &[u8], key_blob: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"burrow stable name v1\0");
    mac.update(key_blob);
    let digest = mac.finalize().into_bytes();
    let pick = |bytes: &[u8], len: usize| (u16::from_be_bytes([bytes[0], bytes[1]]) as usize) % len;
    let adjective = ADJECTIVES[pick(&digest[0..2], ADJECTIVES.len())];
    let noun = NOUNS[pick(&digest[2..4], NOUNS.len())];
    let suffix = u32::from_be_bytes([digest[4], digest[5], digest[6], digest[7]]);
    format!("{adjective}-{noun}-{suffix:08x}")
}

/// Whether `name` (lowercase, no trailing dot) is a custom name as a bind
/// address may ask for one: at least two valid labels that a browser reads
/// as this very name ([`browser_reads_as_is`]: not an IP address), and
/// neither `domain` nor a name under it.
pub fn is_custom_name(name: &str, domain: &str) -> bool {
    name.contains('.')
        && is_valid_domain(name)
        && browser_reads_as_is(name)
        && name != domain
        && !name.ends_with(&format!(".{domain}"))
}

/// Whether a browser reads `host` (lowercase) as this very domain name
/// (WHATWG's host parser, the `url` crate): not as an IPv4 address (a last
/// label that is a number: `1.2.3.4`, `a.0x7f`, `a.1`), and not as a
/// broken or other name (an `xn--` label that is no valid punycode).
pub fn browser_reads_as_is(host: &str) -> bool {
    matches!(url::Host::parse(host), Ok(url::Host::Domain(name)) if name == host)
}

/// Whether `name` has exactly the shape [`random_name`] produces, with words
/// from the lists (a strict whitelist, not just "looks similar").
pub fn is_random_name(name: &str) -> bool {
    let mut parts = name.splitn(3, '-');
    let (Some(adjective), Some(noun), Some(suffix)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    ADJECTIVES.contains(&adjective)
        && NOUNS.contains(&noun)
        && suffix.len() == 8
        && suffix
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A DNS label as tunnel names use them: 1–63 of `[a-z0-9-]`, no hyphen at
/// either end. Callers lowercase first.
pub fn is_valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A lowercase DNS name made of valid labels (used for `--domain`).
pub fn is_valid_domain(domain: &str) -> bool {
    !domain.is_empty() && domain.len() <= 253 && domain.split('.').all(is_valid_label)
}

/// A DNS name in the one form burrow compares: lower case, without the
/// trailing dot of a fully qualified name (`Name.Example.` is
/// `name.example`).
pub fn dns_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A Host header's (or `:authority`'s) name: its port dropped, then
/// [`dns_name`].
pub fn bare_host(host: &str) -> String {
    dns_name(strip_port(host))
}

/// `host:port` → `host`, leaving IPv6 literals (`[::1]:443`) intact.
pub fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|h| h.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// `*`-only glob matching: `*` is any run of characters (possibly empty).
pub fn glob(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut text) = text.strip_prefix(head) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let tail = parts.pop().unwrap_or_default();
    for part in parts {
        match text.find(part) {
            Some(at) => text = &text[at + part.len()..],
            None => return false,
        }
    }
    text.len() >= tail.len() && text.ends_with(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_have_the_promised_shape() {
        for _ in 0..1000 {
            let name = random_name();
            assert!(is_random_name(&name), "{name}");
            assert!(is_valid_label(&name), "{name}");
        }
        assert!(ADJECTIVES.len() >= 64 && NOUNS.len() >= 64);
    }

    #[test]
    fn random_name_whitelist_is_strict() {
        assert!(is_random_name("happy-tiger-1a2b3c4d"));
        for bad in [
            "happy-tiger-1a2b3c4",
            "happy-tiger-1a2b3c4dd",
            "happy-tiger-1A2B3C4D",
            "hapy-tiger-1a2b3c4d",
            "happy-tigers-1a2b3c4d",
            "happy-tiger-1a2b-c4d",
            "happy-tiger",
            "",
        ] {
            assert!(!is_random_name(bad), "{bad}");
        }
    }

    #[test]
    fn stable_names_depend_on_key_and_secret() {
        let a = stable_name(b"secret-1", b"key-a");
        assert_eq!(a, stable_name(b"secret-1", b"key-a"));
        assert_ne!(a, stable_name(b"secret-1", b"key-b"));
        assert_ne!(a, stable_name(b"secret-2", b"key-a"));
        assert!(is_random_name(&a), "{a}");
    }

    #[test]
    fn labels() {
        assert!(is_valid_label("a"));
        assert!(is_valid_label("api-2"));
        assert!(!is_valid_label("-api"));
        assert!(!is_valid_label("api-"));
        assert!(!is_valid_label("API"));
        assert!(!is_valid_label("a_b"));
        assert!(!is_valid_label(&"a".repeat(64)));
        assert!(is_valid_label(&"a".repeat(63)));
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.b:80"), "a.b");
        assert_eq!(strip_port("a.b"), "a.b");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
