//! Sign-in tokens (`login/tokens.rs`): the `state` that comes back
//! through the provider, the one-time code and the session cookie, all
//! sealed JSON that visitors hand back. The input gives a token as a
//! visitor could send it, and the parts of tokens burrow seals itself.
//!
//! Properties: never panics; nothing a visitor makes up opens (no key);
//! every token burrow seals (up to the 8 KiB it opens) opens back to
//! exactly what was sealed, for its host only, as its own kind only,
//! with its key only; changing any one character of it makes it refuse.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use burrow::identity::Identity;
use burrow::login::tokens::{now, Code, Sealer, Session, State};
use burrow::store::secret::Secret;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    token: String,
    host: String,
    other_host: String,
    provider: String,
    subject: String,
    email: Option<String>,
    email_verified: bool,
    name: Option<String>,
    groups: Vec<String>,
    id: String,
    path: String,
    lifetime: u16,
    tamper_at: usize,
    tamper_with: u8,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let sealer = Sealer::new(&Secret::from_bytes([7; 32]));
    let other_key = Sealer::new(&Secret::from_bytes([8; 32]));
    let host = input.host.as_str();

    // Made up by the visitor: nothing opens.
    assert_eq!(sealer.open_state(&input.token), None);
    assert_eq!(sealer.open_code(host, &input.token), None);
    assert_eq!(sealer.open_session(host, &input.token), None);

    let identity = Identity {
        provider: input.provider.clone(),
        subject: input.subject.clone(),
        email: input.email.clone(),
        email_verified: input.email_verified,
        name: input.name.clone(),
        groups: input.groups.clone(),
    };
    let expires = now() + 1 + u64::from(input.lifetime);
    let session = Session {
        identity: identity.clone(),
        id: input.id.clone(),
        expires,
    };
    let code = Code {
        identity,
        path: input.path.clone(),
        id: input.id.clone(),
        expires,
    };
    let state = State {
        binding: input.id.clone(),
        verifier: input.subject.clone(),
        nonce: input.provider.clone(),
        back_to: input.path.clone(),
        provider: input.other_host.clone(),
        expires,
    };

    let token = sealer.seal_session(host, &session);
    if token.len() <= 8 * 1024 {
        assert_eq!(sealer.open_session(host, &token).as_ref(), Some(&session));
        assert_eq!(sealer.open_code(host, &token), None, "a session as a code");
        assert_eq!(other_key.open_session(host, &token), None, "another key");
        if input.other_host != input.host {
            assert_eq!(sealer.open_session(&input.other_host, &token), None);
        }
        assert_eq!(sealer.open_session(host, &tamper(&token, &input)), None);
    }

    let token = sealer.seal_code(host, &code);
    if token.len() <= 8 * 1024 {
        assert_eq!(sealer.open_code(host, &token).as_ref(), Some(&code));
        assert_eq!(sealer.open_session(host, &token), None, "a code as a session");
        assert_eq!(sealer.open_state(&token), None, "a code as a state");
        if input.other_host != input.host {
            assert_eq!(sealer.open_code(&input.other_host, &token), None);
        }
        assert_eq!(sealer.open_code(host, &tamper(&token, &input)), None);
    }

    let token = sealer.seal_state(&state);
    if token.len() <= 8 * 1024 {
        assert_eq!(sealer.open_state(&token).as_ref(), Some(&state));
        assert_eq!(sealer.open_session(host, &token), None, "a state as a session");
        assert_eq!(other_key.open_state(&token), None, "another key");
        assert_eq!(sealer.open_state(&tamper(&token, &input)), None);
    }
});

/// `token` with one character replaced by another of the same alphabet.
fn tamper(token: &str, input: &Input) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = token.as_bytes().to_vec();
    let at = input.tamper_at % bytes.len();
    let mut with = ALPHABET[usize::from(input.tamper_with) % ALPHABET.len()];
    if with == bytes[at] {
        with = ALPHABET[(usize::from(input.tamper_with) + 1) % ALPHABET.len()];
    }
    bytes[at] = with;
    String::from_utf8(bytes).expect("base64 is ASCII")
}
