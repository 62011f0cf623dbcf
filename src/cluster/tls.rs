//! The link's mutual TLS: every node derives the same ed25519 identity
//! (key and self-signed certificate) from the cluster secret, presents it
//! as server and as client, and accepts exactly that certificate from its
//! peer. A node without the secret can neither connect nor be connected
//! to; the handshake itself proves both ends hold it.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::store::secret::Secret;

/// The name the link certificate is for (nodes dial addresses, so it is
/// only a label; the pin is what is checked).
pub const LINK_NAME: &str = "burrow-cluster-link";

/// ALPN of the link: HTTP/2.
const ALPN: &[u8] = b"h2";

/// The TLS configurations of one node's link, both ends.
pub struct LinkTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
}

impl LinkTls {
    /// The link identity the cluster secret implies.
    pub fn new(secret: &Secret) -> Result<LinkTls> {
        let (cert, key) = identity(secret)?;
        let pin = Arc::new(Pinned {
            cert: cert.clone(),
            provider: provider(),
        });
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("link TLS: TLS 1.3")?
            .with_client_cert_verifier(Arc::clone(&pin) as Arc<dyn ClientCertVerifier>)
            .with_single_cert(vec![cert.clone()], key.clone_key())
            .context("link TLS: server identity")?;
        server.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("link TLS: TLS 1.3")?
            .dangerous()
            .with_custom_certificate_verifier(pin)
            .with_client_auth_cert(vec![cert], key)
            .context("link TLS: client identity")?;
        client.alpn_protocols = vec![ALPN.to_vec()];
        Ok(LinkTls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// The server name a client asks for.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from(LINK_NAME).expect("a valid DNS name")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The ed25519 key derived from the secret, and a certificate for it that
/// every node builds byte for byte alike.
fn identity(secret: &Secret) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let seed = secret.derive("link identity");
    let pair = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .map_err(|_| anyhow::anyhow!("link TLS: cannot derive the ed25519 key"))?;
    let pkcs8 = pair
        .to_pkcs8v1()
        .map_err(|_| anyhow::anyhow!("link TLS: cannot encode the key"))?;
    let der = PrivatePkcs8KeyDer::from(pkcs8.as_ref().to_vec());
    let key = rcgen::KeyPair::try_from(&der).context("link TLS: key")?;
    let mut params = rcgen::CertificateParams::new(vec![LINK_NAME.to_string()])
        .context("link TLS: certificate parameters")?;
    // Fixed validity and serial: ed25519 signatures are deterministic, so
    // every node derives the very same certificate.
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(4000, 1, 1);
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1]));
    let cert = params.self_signed(&key).context("link TLS: certificate")?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

/// Accepts exactly one certificate (the cluster's) from the peer, and
/// checks the handshake signature with it.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Pinned {
    fn check(&self, presented: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if presented.as_ref() == self.cert.as_ref() {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_derives_the_same_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        crate::store::secret::init(&file, false).unwrap();
        let secret = Secret::load(&file).unwrap();
        let (a, _) = identity(&secret).unwrap();
        let (b, _) = identity(&secret).unwrap();
        assert_eq!(a, b);
        crate::store::secret::init(&file, true).unwrap();
        let other = Secret::load(&file).unwrap();
        assert_ne!(identity(&other).unwrap().0, a);
        assert!(LinkTls::new(&secret).is_ok());
    }
}
