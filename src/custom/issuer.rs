//! Where certificates for custom domains come from: the [`Issuer`] seam, and
//! its self-signed implementations for local use and the self-signed/static
//! certificate modes — one per node ([`SelfSigned`]), or one per cluster
//! ([`SharedSelfSigned`]). An ACME issuer (HTTP-01 through the redirector)
//! plugs in behind the same trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use rustls::sign::CertifiedKey;

use crate::store::shared::SharedCerts;
use crate::store::CertKind;

/// What [`Issuer::issue`] returns.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = anyhow::Result<Arc<CertifiedKey>>> + Send + 'a>>;

/// What [`Issuer::issued_elsewhere`] returns.
pub type ElsewhereFuture<'a> = Pin<Box<dyn Future<Output = Option<Arc<CertifiedKey>>> + Send + 'a>>;

/// Obtains a certificate for one verified, bound custom name. Only ever
/// called through [`super::certs::OnDemand`], which rate-limits the calls
/// and caches the result per name.
pub trait Issuer: Send + Sync {
    fn issue<'a>(&'a self, name: &'a str) -> IssueFuture<'a>;

    /// In a cluster: the certificate another node issued for `name`, if
    /// it is stored (this never issues one). A node serving a name bound
    /// elsewhere needs it for the handshake.
    fn issued_elsewhere<'a>(&'a self, _name: &'a str) -> ElsewhereFuture<'a> {
        Box::pin(async { None })
    }

    /// Names the issuer in logs and the stats (`self-signed`, `acme`).
    fn kind(&self) -> &'static str;
}

/// A fresh self-signed certificate per name: browsers warn, which is what
/// the self-signed mode means anyway.
pub struct SelfSigned;

impl Issuer for SelfSigned {
    fn issue<'a>(&'a self, name: &'a str) -> IssueFuture<'a> {
        Box::pin(async move {
            let name = name.to_string();
            // Key generation is CPU work: keep it off the async workers.
            let cert = tokio::task::spawn_blocking(move || crate::tls::self_signed_for(vec![name]))
                .await??;
            Ok(Arc::new(cert))
        })
    }

    fn kind(&self) -> &'static str {
        "self-signed"
    }
}

/// In a cluster without ACME: one self-signed certificate per custom
/// name for every node. The first node to issue it stores it in Redis (the
/// key sealed with the cluster secret); the others serve that one.
pub struct SharedSelfSigned {
    shared: SharedCerts,
}

/// The kind these certificates are stored as.
const KIND: CertKind = CertKind::SelfSigned;

impl SharedSelfSigned {
    pub fn new(shared: SharedCerts) -> SharedSelfSigned {
        SharedSelfSigned { shared }
    }

    /// The certificate stored for `name`, if any.
    async fn stored(&self, name: &str) -> anyhow::Result<Option<Arc<CertifiedKey>>> {
        let Some((chain, key)) = self.shared.load(KIND, name).await? else {
            return Ok(None);
        };
        let cert = crate::tls::certified_from_pem(&chain, &key)
            .with_context(|| format!("the certificate stored for {name}"))?;
        Ok(Some(Arc::new(cert)))
    }

    async fn issue_once(&self, name: &str) -> anyhow::Result<Arc<CertifiedKey>> {
        if let Some(cert) = self.stored(name).await? {
            return Ok(cert);
        }
        let names = vec![name.to_string()];
        // Key generation is CPU work: keep it off the async workers.
        let (chain, key) =
            tokio::task::spawn_blocking(move || crate::tls::self_signed_pem(names)).await??;
        // Two nodes may issue at once (a name shared round-robin): the
        // first stored is the one everybody serves.
        let (chain, key) = self
            .shared
            .save_first(KIND, name, &chain, &key)
            .await
            .context("storing it in Redis")?;
        Ok(Arc::new(crate::tls::certified_from_pem(&chain, &key)?))
    }
}

impl Issuer for SharedSelfSigned {
    fn issue<'a>(&'a self, name: &'a str) -> IssueFuture<'a> {
        Box::pin(self.issue_once(name))
    }

    fn issued_elsewhere<'a>(&'a self, name: &'a str) -> ElsewhereFuture<'a> {
        Box::pin(async move {
            match self.stored(name).await {
                Ok(cert) => cert,
                Err(err) => {
                    tracing::debug!(name, error = %format!("{err:#}"), "no certificate from the cluster");
                    None
                }
            }
        })
    }

    fn kind(&self) -> &'static str {
        "self-signed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn self_signed_certificates_name_the_domain() {
        let cert = SelfSigned.issue("app.example.org").await.unwrap();
        let der = cert.cert[0].as_ref();
        let needle = b"app.example.org";
        assert!(der.windows(needle.len()).any(|w| w == needle));
    }
}
