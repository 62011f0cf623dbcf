//! The state directory: what must survive restarts. Today that is the
//! secret from which stable names are derived; files are 0600 and written
//! atomically (temporary file, fsync, rename).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const SECRET_FILE: &str = "name_secret";
const SECRET_LEN: usize = 32;

/// The opened state directory.
pub struct State {
    pub dir: PathBuf,
    /// Keys the HMAC that turns an SSH key into its stable name.
    pub name_secret: [u8; SECRET_LEN],
}

impl State {
    /// Opens (creating, mode 0700) the directory and loads or generates the
    /// name secret.
    pub fn open(dir: &Path) -> Result<State> {
        let context = || format!("--state-dir {}", dir.display());
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", context()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = dir.join(SECRET_FILE);
        let name_secret = if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read {}", context(), path.display()))?;
            decode_hex(text.trim()).with_context(|| {
                format!(
                    "{}: {} is corrupt (expected {SECRET_LEN} hex bytes)",
                    context(),
                    path.display()
                )
            })?
        } else {
            let secret: [u8; SECRET_LEN] = rand::random();
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            crate::state::write_private_file(&path, format!("{hex}\n").as_bytes())
                .with_context(|| format!("{}: cannot write {}", context(), path.display()))?;
            tracing::info!(path = %path.display(), "generated the stable-name secret");
            secret
        };
        Ok(State {
            dir: dir.to_path_buf(),
            name_secret,
        })
    }
}

fn decode_hex(text: &str) -> Result<[u8; SECRET_LEN]> {
    if text.len() != SECRET_LEN * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("not {SECRET_LEN} hex bytes");
    }
    let mut out = [0u8; SECRET_LEN];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

/// Writes a secret file atomically with mode 0600: a temporary file next to
/// it, flushed to disk, then renamed over the target.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    // A name of its own, so two writers never rename each other's file away.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = std::path::PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("burrow-state-{}", rand::random::<u64>()));
        let first = State::open(&dir).unwrap().name_secret;
        let second = State::open(&dir).unwrap().name_secret;
        assert_eq!(first, second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_secret_is_an_error() {
        let dir = std::env::temp_dir().join(format!("burrow-state-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SECRET_FILE), "zz").unwrap();
        assert!(State::open(&dir).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
