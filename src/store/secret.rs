//! The cluster secret: 32 random bytes, hex in a file every node shares
//! (`burrow cluster init FILE` writes one). Nothing else is needed to join:
//! every key a node uses for its peers comes from it, each derived for one
//! purpose (HKDF-SHA256 with a label) — the link's TLS identity, the key
//! that seals secrets stored in Redis, and the check value that tells a
//! node with another secret that it is in the wrong cluster. Sign-in seals
//! its cookies and codes with a [`Secret::child`] of the stable-name
//! secret (shared by every node), through the same code.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};

/// Bytes of secret.
const LEN: usize = 32;

/// The cluster secret.
#[derive(Clone)]
pub struct Secret([u8; LEN]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `burrow cluster init FILE`: writes a fresh secret (mode 0600), refusing
/// to replace an existing one unless `force`.
pub fn init(file: &Path, force: bool) -> Result<()> {
    if file.exists() && !force {
        bail!(
            "{} exists: every node of the cluster uses it; give --force to replace it (then copy the new file to every node)",
            file.display()
        );
    }
    let secret: [u8; LEN] = rand::random();
    let text = format!("{}\n", hex(&secret));
    crate::state::write_private_file(file, text.as_bytes())
        .with_context(|| format!("{}: cannot write the cluster secret", file.display()))
}

impl Secret {
    /// A secret of `bytes` (e.g. the stable-name secret, which every node
    /// of a cluster shares), for keys derived from it.
    pub fn from_bytes(bytes: [u8; LEN]) -> Secret {
        Secret(bytes)
    }

    /// A secret for one purpose (`label`), independent of this one's other
    /// uses: its own derived keys, its own sealing key.
    pub fn child(&self, label: &str) -> Secret {
        Secret(self.derive(label))
    }

    /// Reads the secret `--cluster-secret` names.
    pub fn load(file: &Path) -> Result<Secret> {
        let context = || format!("--cluster-secret {}", file.display());
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read the cluster secret", context()))?;
        let bytes = unhex(text.trim()).with_context(|| {
            format!(
                "{}: not a cluster secret (64 hex characters; write one with `burrow cluster init FILE`)",
                context()
            )
        })?;
        Ok(Secret(bytes))
    }

    /// 32 bytes for one purpose (`label`), independent of every other.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let prk = Salt::new(HKDF_SHA256, b"burrow cluster").extract(&self.0);
        let info = [label.as_bytes()];
        let okm = prk
            .expand(&info, Len32)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        let mut out = [0u8; 32];
        okm.fill(&mut out).expect("the length was checked above");
        out
    }

    /// A value every node with this secret computes alike, and no node
    /// with another: stored in Redis to turn away a node with the wrong
    /// secret.
    pub fn check_value(&self) -> String {
        hex(&self.derive("cluster check"))
    }

    /// Encrypts `plain` (AES-256-GCM, a random nonce in front), bound to
    /// `context` (what the value is, e.g. its Redis key).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        self.sealing().seal(context, plain)
    }

    /// Decrypts what [`Secret::seal`] made for the same `context`; `None`
    /// when it was sealed with another secret or altered.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        self.sealing().open(context, sealed)
    }

    /// The sealing key, derived once: for values sealed and opened on
    /// every request (sign-in cookies), where deriving it each time would
    /// cost more than the AES itself.
    pub fn sealing(&self) -> Sealing {
        Sealing(self.sealing_key())
    }

    fn sealing_key(&self) -> LessSafeKey {
        let bytes = self.derive("redis sealing key");
        let key = UnboundKey::new(&AES_256_GCM, &bytes).expect("32 bytes is an AES-256 key");
        LessSafeKey::new(key)
    }
}

/// A [`Secret`]'s sealing key, ready to use (see [`Secret::sealing`]).
pub struct Sealing(LessSafeKey);

impl Sealing {
    /// As [`Secret::seal`].
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = plain.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .expect("sealing into a Vec cannot fail");
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        out
    }

    /// As [`Secret::open`].
    pub fn open(&self, context: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// The HKDF output length (32 bytes).
struct Len32;

impl aws_lc_rs::hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<[u8; LEN]> {
    if text.len() != LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected {} hex characters", LEN * 2);
    }
    let mut out = [0u8; LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_and_refuse_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        init(&file, false).unwrap();
        let a = Secret::load(&file).unwrap();
        assert!(init(&file, false).is_err(), "an existing secret is kept");
        init(&file, true).unwrap();
        let b = Secret::load(&file).unwrap();
        assert_ne!(a.check_value(), b.check_value());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&file, "not hex").unwrap();
        let err = format!("{:#}", Secret::load(&file).unwrap_err());
        assert!(err.contains("burrow cluster init"), "{err}");
    }

    #[test]
    fn derived_keys_and_sealing() {
        let secret = Secret([7; LEN]);
        assert_ne!(secret.derive("a"), secret.derive("b"));
        assert_eq!(secret.derive("a"), Secret([7; LEN]).derive("a"));
        let sealed = secret.seal("acme/main.key", b"private");
        assert_eq!(secret.open("acme/main.key", &sealed).unwrap(), b"private");
        assert!(secret.open("other context", &sealed).is_none());
        assert!(Secret([8; LEN]).open("acme/main.key", &sealed).is_none());
    }
}
