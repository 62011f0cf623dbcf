//! Reading TLS's SNI before terminating it: the HTTPS listener reads the
//! visitor's ClientHello (without answering it), the router decides
//! ([`super::router::Router::tls`]), and then the raw bytes go to a
//! `tls=passthrough` tunnel, or TLS is terminated as usual (the bytes
//! already read are replayed to rustls through
//! [`crate::pipe::rewind::Rewind`]), or a name
//! outside the domain is refused with an `unrecognized_name` alert
//! ([`reject`]). A custom domain counts as ours only while it is bound, so
//! no handshake ever reaches the certificate resolver for a name nobody
//! verified.
//!
//! The ClientHello is parsed by rustls itself ([`rustls::server::Acceptor`]),
//! so what counts as a valid hello here is exactly what the terminating
//! handshake would accept.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// The most bytes read while looking for a complete ClientHello (rustls
/// accepts hellos up to a few records; post-quantum key shares make them
/// larger than one TCP segment).
const MAX_HELLO: usize = 64 * 1024;

/// A fatal `unrecognized_name` alert record (RFC 8446 §6, RFC 6066 §3).
const UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// The start of a TLS connection: the bytes read so far and the SNI.
pub struct ClientHello {
    pub bytes: Vec<u8>,
    pub server_name: Option<String>,
}

/// Reads from `stream` until a complete ClientHello is in hand. An error
/// means the connection is not TLS (or broke off).
pub async fn read_client_hello<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<ClientHello> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor.read_tls(&mut fresh)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().and_then(one_form);
                return Ok(ClientHello { bytes, server_name });
            }
            Ok(None) if bytes.len() < MAX_HELLO => {}
            Ok(None) => return Err(io::Error::other("ClientHello too large")),
            Err((err, _)) => return Err(io::Error::new(io::ErrorKind::InvalidData, err)),
        }
    }
}

/// The SNI in one form ([`crate::subdomain::dns_name`]): rustls accepts
/// the trailing dot RFC 6066 §3 says a client must not send, and `name.`
/// is the host `name`, so every reader of [`ClientHello::server_name`]
/// sees the name the router, the certificates and the logs use.
fn one_form(name: &str) -> Option<String> {
    Some(crate::subdomain::dns_name(name)).filter(|name| !name.is_empty())
}

/// Sends the `unrecognized_name` alert; the caller then drops the stream.
pub async fn reject<S: AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::AsyncWriteExt;
    let _ = stream.write_all(&UNRECOGNIZED_NAME).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pipe::rewind::Rewind;
    use tokio::io::AsyncWriteExt;

    /// A real ClientHello, as rustls's client writes it.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[tokio::test]
    async fn reads_the_sni_across_small_reads_and_replays_every_byte() {
        let hello = client_hello("myname.example.test");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            // Trickle it in: a hello split over many reads must still parse.
            for piece in sent.chunks(50) {
                client.write_all(piece).await.unwrap();
            }
            client.write_all(b"after").await.unwrap();
            client
        });
        let read = read_client_hello(&mut server).await.unwrap();
        assert_eq!(read.server_name.as_deref(), Some("myname.example.test"));
        let _client = writer.await.unwrap();
        let mut rewound = Rewind::new(read.bytes, server);
        let mut replay = vec![0u8; hello.len() + 5];
        rewound.read_exact(&mut replay).await.unwrap();
        assert_eq!(&replay[..hello.len()], &hello[..]);
        assert_eq!(&replay[hello.len()..], b"after");
    }

    /// Found by the `sni` fuzz target: a hello whose SNI ends in a dot
    /// came out with the dot (and `name.` is no name the router, the
    /// certificates or the logs otherwise see).
    #[tokio::test]
    async fn a_trailing_dot_in_the_sni_is_dropped() {
        let mut hello = client_hello("MyName.example.tes");
        let at = hello
            .windows(18)
            .position(|w| w.eq_ignore_ascii_case(b"myname.example.tes"))
            .expect("the SNI in the hello");
        // Same length, so every length field stays right.
        hello[at..at + 18].copy_from_slice(b"MyName.example.te.");
        let read = read_client_hello(&mut &hello[..]).await.unwrap();
        assert_eq!(read.server_name.as_deref(), Some("myname.example.te"));
    }

    #[tokio::test]
    async fn non_tls_bytes_are_an_error_not_a_wait() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_client_hello(&mut server).await.is_err());
    }
}
