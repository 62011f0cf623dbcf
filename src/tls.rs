//! TLS for the HTTPS listener: the operator's certificate (reloadable), or a
//! self-signed one generated for local use, and the rustls server config
//! (ALPN `h2` and `http/1.1`).
//!
//! The certificate sits behind [`Certs`], the config's certificate resolver,
//! so a renewed certificate (SIGHUP, or the files changing on disk, as
//! certbot renewals do) is served to the next handshake without touching
//! open connections. A new pair that does not load, or whose key does not
//! match, is rejected and the old one stays.
//!
//! ACME (see [`crate::acme`]) swaps its certificates in through the same
//! resolver: [`Certs::swap`] replaces the default one (the wildcard), and
//! [`Certs::set_named`] serves a certificate for one exact SNI name: the
//! apex alone, or a verified custom domain (see [`crate::custom`]); every
//! other name gets the default one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::Config;
use crate::subdomain::dns_name;

/// The certificate served now, and where it came from.
#[derive(Debug)]
pub struct Certs {
    current: RwLock<Arc<CertifiedKey>>,
    /// `--tls-cert` and `--tls-key`; `None` for the self-signed default.
    files: Option<(PathBuf, PathBuf)>,
    /// Modification time and size of both files at the last load.
    stamp: Mutex<Option<Stamp>>,
    /// Certificates for exact SNI names (lower case, no trailing dot),
    /// served before the default one: the ACME apex certificate and those
    /// of custom domains. Only names that were verified and bound are ever
    /// added for custom domains (the SNI check in `http::sni` keeps unbound
    /// names from reaching the handshake).
    named: dashmap::DashMap<String, Arc<CertifiedKey>>,
}

type Stamp = [(SystemTime, u64); 2];

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(named) = hello.server_name().and_then(|name| self.named(name)) {
            return Some(named);
        }
        Some(Arc::clone(&self.current.read().expect("certs lock")))
    }
}

impl Certs {
    /// Loads `--tls-cert/--tls-key`, or generates a self-signed certificate
    /// for `DOMAIN` and `*.DOMAIN` when neither is given.
    pub fn load(config: &Config) -> Result<Arc<Certs>> {
        let files = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => {
                tracing::warn!(
                    domain = %config.domain,
                    "no --tls-cert/--tls-key given: serving a self-signed certificate \
                     (browsers will warn; fine for local use only)"
                );
                None
            }
        };
        let certified = match &files {
            Some((cert, key)) => load(cert, key)?,
            None => self_signed(&config.domain)?,
        };
        let stamp = files.as_ref().and_then(|(c, k)| stamp(c, k));
        Ok(Arc::new(Certs {
            current: RwLock::new(Arc::new(certified)),
            files,
            stamp: Mutex::new(stamp),
            named: dashmap::DashMap::new(),
        }))
    }

    /// Whether the certificate files changed since they were last loaded.
    pub fn changed_on_disk(&self) -> bool {
        let Some((cert, key)) = &self.files else {
            return false;
        };
        stamp(cert, key) != *self.stamp.lock().expect("stamp lock")
    }

    /// Loads the files again and serves the new pair from the next
    /// handshake on. `Ok(false)`: nothing to reload (self-signed).
    pub fn reload(&self) -> Result<bool> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        // Stamp first: a file that changes while it is read is read again
        // on the next check.
        let stamp = stamp(cert, key);
        *self.stamp.lock().expect("stamp lock") = stamp;
        let certified = load(cert, key)?;
        *self.current.write().expect("certs lock") = Arc::new(certified);
        Ok(true)
    }

    /// Serves `certified` as the default certificate from the next
    /// handshake on (open connections keep theirs).
    pub fn swap(&self, certified: Arc<CertifiedKey>) {
        *self.current.write().expect("certs lock") = certified;
    }

    /// Serves `certified` to handshakes whose SNI is exactly `name`, from
    /// the next handshake on (replacing an older one: renewals go through
    /// here too).
    pub fn set_named(&self, name: &str, certified: Arc<CertifiedKey>) {
        self.named.insert(dns_name(name), certified);
    }

    /// The certificate served for SNI `name` now, if one is set for it.
    pub fn named(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.named.get(&dns_name(name)).map(|c| Arc::clone(&c))
    }

    /// Stops serving `name`'s own certificate.
    pub fn remove_named(&self, name: &str) {
        self.named.remove(&dns_name(name));
    }

    /// The end-entity certificate served now.
    pub fn current(&self) -> CertificateDer<'static> {
        self.current.read().expect("certs lock").cert[0].clone()
    }
}

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let of = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    Some([of(cert)?, of(key)?])
}

/// The server config serving whatever `certs` holds.
pub fn server_config(certs: Arc<Certs>) -> Arc<ServerConfig> {
    let mut tls = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certs);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(tls)
}

/// A certificate chain and key from PEM files, checked to belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "--tls-cert {}: cannot read PEM certificates",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        bail!(
            "--tls-cert {}: no PEM certificate found in the file",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("--tls-key {}: cannot read a PEM private key", key.display()))?;
    certified(chain, key)
        .context("--tls-cert/--tls-key: certificate and key do not form a usable pair")
}

/// A PEM chain and PEM key (as ACME hands them out) as a usable pair.
pub fn certified_from_pem(chain: &str, key: &str) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the PEM certificate chain")?;
    if chain.is_empty() {
        bail!("no PEM certificate in the chain");
    }
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).context("cannot read the PEM key")?;
    certified(chain, key).context("certificate and key do not form a usable pair")
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    Ok(CertifiedKey::from_der(chain, key, &provider)?)
}

fn self_signed(domain: &str) -> Result<CertifiedKey> {
    self_signed_for(vec![domain.to_string(), format!("*.{domain}")])
}

/// A fresh self-signed certificate for `names`, as a PEM chain and a PEM
/// key (to be stored).
pub fn self_signed_pem(names: Vec<String>) -> Result<(String, String)> {
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating the self-signed certificate")?;
    Ok((generated.cert.pem(), generated.key_pair.serialize_pem()))
}

/// A fresh self-signed certificate (and key) for `names`.
pub fn self_signed_for(names: Vec<String>) -> Result<CertifiedKey> {
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating the self-signed certificate")?;
    let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
        .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
    certified(vec![generated.cert.der().clone()], key)
}
