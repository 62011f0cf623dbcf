//! Where certificates for custom domains come from: the [`Issuer`] seam, and
//! its self-signed implementation for local use and the self-signed/static
//! certificate modes. An ACME issuer (HTTP-01 through the redirector) plugs
//! in behind the same trait.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rustls::sign::CertifiedKey;

/// What [`Issuer::issue`] returns.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = anyhow::Result<Arc<CertifiedKey>>> + Send + 'a>>;

/// Obtains a certificate for one verified, bound custom name. Only ever
/// called through [`super::certs::OnDemand`], which rate-limits the calls
/// and caches the result per name.
pub trait Issuer: Send + Sync {
    fn issue<'a>(&'a self, name: &'a str) -> IssueFuture<'a>;

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
