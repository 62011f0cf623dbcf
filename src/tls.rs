//! TLS for the HTTPS listener: loading the operator's certificate, or
//! generating a self-signed one for local use, and the rustls server config
//! (ALPN `h2` and `http/1.1`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::Config;

/// Builds the server config from `--tls-cert/--tls-key`, or a self-signed
/// certificate for `DOMAIN` and `*.DOMAIN` when neither is given.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>> {
    let (chain, key) = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => load(cert, key)?,
        _ => {
            tracing::warn!(
                domain = %config.domain,
                "no --tls-cert/--tls-key given: serving a self-signed certificate \
                 (browsers will warn; fine for local use only)"
            );
            self_signed(&config.domain)?
        }
    };
    let mut tls = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("--tls-cert/--tls-key: certificate and key do not form a usable pair")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

fn load(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
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
    Ok((chain, key))
}

fn self_signed(domain: &str) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let names = vec![domain.to_string(), format!("*.{domain}")];
    let certified = rcgen::generate_simple_self_signed(names)
        .context("generating the self-signed certificate")?;
    let key = PrivateKeyDer::try_from(certified.key_pair.serialize_der())
        .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
    Ok((vec![certified.cert.der().clone()], key))
}
