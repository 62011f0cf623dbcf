//! Issued certificates on disk, in `STATE_DIR/acme/certs/`: `FILE.crt`
//! (PEM chain) and `FILE.key` (PEM key), both 0600 and written atomically,
//! key first so a chain on disk always has its key. Also reads what a
//! certificate says about itself (names, validity) for the renewal
//! schedule and the metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// A certificate in hand, with what the schedule needs to know about it.
#[derive(Clone)]
pub struct Issued {
    pub certified: Arc<CertifiedKey>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// DNS names (SANs), lower case.
    pub names: Vec<String>,
}

impl Issued {
    /// From the PEM chain and key the CA and the order gave.
    pub fn from_pem(chain: &str, key: &str) -> Result<Issued> {
        let certified = crate::tls::certified_from_pem(chain, key)?;
        let (_, cert) = x509_parser::parse_x509_certificate(certified.cert[0].as_ref())
            .map_err(|e| anyhow!("cannot parse the certificate: {e}"))?;
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        Ok(Issued {
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
            names,
            certified: Arc::new(certified),
        })
    }

    /// When to renew: once a third of the lifetime is left.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - lifetime / 3
    }

    /// Whether it names every one of `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|n| self.names.contains(n))
    }

    /// Unix seconds of the expiry (for the metrics).
    pub fn expiry_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The certificate directory under the state directory.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("acme").join("certs")
}

/// Loads `FILE.crt`/`FILE.key`; `Ok(None)` when there is none.
pub fn load(dir: &Path, file: &str) -> Result<Option<Issued>> {
    let Some((chain, key)) = load_pem(dir, file)? else {
        return Ok(None);
    };
    let issued = Issued::from_pem(&chain, &key)
        .with_context(|| format!("{}: unusable", paths(dir, file).0.display()))?;
    Ok(Some(issued))
}

/// The PEM chain and key in `FILE.crt`/`FILE.key`; `Ok(None)` when there
/// is none.
pub fn load_pem(dir: &Path, file: &str) -> Result<Option<(String, String)>> {
    let (crt, key) = paths(dir, file);
    if !crt.exists() || !key.exists() {
        return Ok(None);
    }
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(Some((read(&crt)?, read(&key)?)))
}

/// Stores a chain and its key (key first: a chain is never without it).
pub fn save(dir: &Path, file: &str, chain: &str, key: &str) -> Result<()> {
    create_private_dir(dir)?;
    let (crt, key_path) = paths(dir, file);
    crate::state::write_private_file(&key_path, key.as_bytes())
        .with_context(|| format!("cannot write {}", key_path.display()))?;
    crate::state::write_private_file(&crt, chain.as_bytes())
        .with_context(|| format!("cannot write {}", crt.display()))
}

/// Removes the stored certificate `file` (chain and key), if any.
pub fn remove(dir: &Path, file: &str) -> Result<()> {
    let (crt, key) = paths(dir, file);
    for path in [crt, key] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot remove {}", path.display()))
            }
        }
    }
    Ok(())
}

/// File stems of the stored certificates.
pub fn stored(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".crt").map(str::to_string)
        })
        .collect();
    files.sort();
    files
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn paths(dir: &Path, file: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{file}.crt")),
        dir.join(format!("{file}.key")),
    )
}
