//! Who a client really is when a trusted load balancer sits in front of
//! burrow (`--trusted-proxies`): the HAProxy PROXY protocol header (v1 or
//! v2) that such a proxy may put before the connection's first byte, and the
//! `X-Forwarded-For` header of HTTP requests it relays.
//!
//! Both are believed only from peers inside the trusted CIDRs; from anyone
//! else they are ignored (and `X-Forwarded-*` is dropped by the proxy).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::HeaderMap;
use ipnet::IpNet;
use tokio::net::TcpStream;

/// The PROXY v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// Longest v1 header (spec: 107 bytes including CRLF).
const V1_MAX: usize = 107;
/// Largest v2 header accepted (16-byte preamble + addresses + TLVs).
const V2_MAX: usize = 16 + 512;

/// Which HAProxy PROXY protocol header a tunnel's app gets (`proxy=`), if
/// any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    V1,
    V2,
}

/// The HAProxy PROXY protocol header announcing `source` → `destination`.
pub fn proxy_header(version: ProxyHeader, source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    match version {
        ProxyHeader::V1 => ppp::v1::Addresses::from((source, destination))
            .to_string()
            .into_bytes(),
        ProxyHeader::V2 => ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (source, destination),
        )
        .build()
        .expect("a PROXY v2 header with two addresses always encodes"),
    }
}

/// Both addresses in one family (the header has one): IPv4 when both can
/// be, else IPv6 with IPv4 addresses mapped.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s.ip() {
        std::net::IpAddr::V4(ip) => SocketAddr::new(ip.to_ipv6_mapped().into(), s.port()),
        std::net::IpAddr::V6(_) => s,
    };
    (v6(a), v6(b))
}

/// The trusted proxy networks.
#[derive(Clone, Default)]
pub struct TrustedProxies(Arc<[IpNet]>);

impl TrustedProxies {
    pub fn new(nets: &[IpNet]) -> Self {
        TrustedProxies(nets.into())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client behind `peer`: read from a PROXY header when `peer` is a
    /// trusted proxy that sent one, else `peer` itself. An error means the
    /// connection should be dropped (a broken or too slow header).
    pub async fn resolve(
        &self,
        stream: &mut TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> std::io::Result<SocketAddr> {
        if !self.contains(peer.ip()) {
            return Ok(peer);
        }
        match tokio::time::timeout(timeout, read_proxy_header(stream)).await {
            Ok(Ok(Some(client))) => Ok(client),
            Ok(Ok(None)) => Ok(peer),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "PROXY header not received in time",
            )),
        }
    }

    /// The visitor of an HTTP request from `peer`: the rightmost
    /// `X-Forwarded-For` entry that is not itself a trusted proxy, when
    /// `peer` is trusted; else `peer`.
    pub fn visitor(&self, headers: &HeaderMap, peer: SocketAddr) -> SocketAddr {
        if !self.contains(peer.ip()) {
            return peer;
        }
        let chain: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map_while(|ip| ip.trim().parse().ok())
            .collect();
        chain
            .iter()
            .rev()
            .find(|ip| !self.contains(**ip))
            .or(chain.first())
            .map_or(peer, |ip| SocketAddr::new(*ip, 0))
    }
}

/// Reads a PROXY header if the stream starts with one, consuming exactly its
/// bytes. `Ok(None)`: no header (or one that names no address).
async fn read_proxy_header(stream: &mut TcpStream) -> std::io::Result<Option<SocketAddr>> {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; V2_MAX];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let seen = &buf[..n];
        let header_len = match header_length(seen)? {
            Length::NotAHeader => return Ok(None),
            Length::NeedMore => {
                // peek returns at once with what is there; wait a little for
                // the rest (bounded by the caller's timeout).
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Length::Complete(len) => len,
        };
        let mut header = vec![0u8; header_len];
        stream.read_exact(&mut header).await?;
        return parse(&header);
    }
}

/// How much of a PROXY header has arrived (`pub(crate)` for
/// `crate::fuzzing`, which drives the reader with arbitrary bytes).
pub(crate) enum Length {
    NotAHeader,
    NeedMore,
    Complete(usize),
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("PROXY header: {why}"),
    )
}

/// How long the header at the start of `seen` is.
pub(crate) fn header_length(seen: &[u8]) -> std::io::Result<Length> {
    let is_prefix = |full: &[u8]| seen.len() < full.len() && full.starts_with(seen);
    if is_prefix(V2_SIGNATURE) || is_prefix(V1_PREFIX) {
        return Ok(Length::NeedMore);
    }
    if seen.starts_with(V2_SIGNATURE) {
        if seen.len() < 16 {
            return Ok(Length::NeedMore);
        }
        let len = 16 + usize::from(u16::from_be_bytes([seen[14], seen[15]]));
        if len > V2_MAX {
            return Err(invalid("v2 header too long"));
        }
        return Ok(if seen.len() >= len {
            Length::Complete(len)
        } else {
            Length::NeedMore
        });
    }
    if seen.starts_with(V1_PREFIX) {
        let window = &seen[..seen.len().min(V1_MAX)];
        return match window.windows(2).position(|w| w == b"\r\n") {
            Some(end) => Ok(Length::Complete(end + 2)),
            None if seen.len() < V1_MAX => Ok(Length::NeedMore),
            None => Err(invalid("v1 header without CRLF")),
        };
    }
    Ok(Length::NotAHeader)
}

/// The client a complete header (exactly [`header_length`]'s bytes)
/// names; `Ok(None)` for `UNKNOWN`/`LOCAL`.
pub(crate) fn parse(header: &[u8]) -> std::io::Result<Option<SocketAddr>> {
    use ppp::{v1, v2, HeaderResult};
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Ok(match h.addresses {
            v2::Addresses::IPv4(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            v2::Addresses::IPv6(a) => Some(SocketAddr::new(a.source_address.into(), a.source_port)),
            _ => None,
        }),
        _ => Err(invalid("malformed")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_headers_written_here_read_back_here() {
        let source: SocketAddr = "203.0.113.9:51000".parse().unwrap();
        let destination: SocketAddr = "[::ffff:192.0.2.1]:20001".parse().unwrap();
        for version in [ProxyHeader::V1, ProxyHeader::V2] {
            let bytes = proxy_header(version, source, destination);
            assert!(
                matches!(header_length(&bytes), Ok(Length::Complete(n)) if n == bytes.len()),
                "{version:?}: the reader takes exactly the header"
            );
            assert_eq!(parse(&bytes).unwrap(), Some(source), "{version:?}");
        }
        let mixed = same_family(source, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(mixed.0, "[::ffff:203.0.113.9]:51000".parse().unwrap());
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn through(bytes: Vec<u8>, trusted: &[&str]) -> (std::io::Result<SocketAddr>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&bytes).await.unwrap();
            c.shutdown().await.unwrap();
        });
        let (mut stream, peer) = listener.accept().await.unwrap();
        let nets: Vec<IpNet> = trusted.iter().map(|n| n.parse().unwrap()).collect();
        let resolved = TrustedProxies::new(&nets)
            .resolve(&mut stream, peer, Duration::from_secs(2))
            .await;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        writer.await.unwrap();
        (resolved, rest)
    }

    #[tokio::test]
    async fn v1_header_from_a_trusted_peer_names_the_client() {
        let mut bytes = b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 443\r\n".to_vec();
        bytes.extend_from_slice(b"hello");
        let (client, rest) = through(bytes, &["127.0.0.0/8"]).await;
        assert_eq!(client.unwrap(), "203.0.113.9:51000".parse().unwrap());
        assert_eq!(rest, b"hello", "only the header is consumed");
    }

    #[tokio::test]
    async fn v2_header_from_a_trusted_peer_names_the_client() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut bytes = header;
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (client, rest) = through(bytes, &["127.0.0.1/32"]).await;
        assert_eq!(client.unwrap(), "[2001:db8::7]:40000".parse().unwrap());
        assert_eq!(rest, b"\x16\x03\x01");
    }

    #[tokio::test]
    async fn untrusted_peers_are_not_believed() {
        let bytes = b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 443\r\n".to_vec();
        let (client, rest) = through(bytes.clone(), &["10.0.0.0/8"]).await;
        assert!(client.unwrap().ip().is_loopback());
        assert_eq!(rest, bytes, "nothing consumed");
    }

    #[tokio::test]
    async fn trusted_peer_without_header_is_itself() {
        let (client, rest) = through(b"\x16\x03\x01abc".to_vec(), &["127.0.0.0/8"]).await;
        assert!(client.unwrap().ip().is_loopback());
        assert_eq!(rest, b"\x16\x03\x01abc");
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_untrusted_entry() {
        let trusted = TrustedProxies::new(&["10.0.0.0/8".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 198.51.100.4, 10.0.0.3".parse().unwrap(),
        );
        let lb: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_eq!(
            trusted.visitor(&h, lb).ip(),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
        let stranger: SocketAddr = "198.51.100.9:5000".parse().unwrap();
        assert_eq!(trusted.visitor(&h, stranger), stranger);
    }
}
