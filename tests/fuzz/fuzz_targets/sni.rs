//! `edge/sni.rs`: the ClientHello read before TLS is terminated or passed
//! through. The input is the visitor's bytes; its last byte picks how the
//! socket hands them over (one read, or small pieces).
//!
//! Properties: never panics or waits on bytes it has; the bytes it returns
//! are exactly the prefix it consumed (they are replayed to rustls or to a
//! passthrough app); a name found is a lowercase DNS name; the answer does
//! not depend on how the bytes were split into reads.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use burrow::edge::sni::{read_client_hello, ClientHello};
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

/// A socket whose bytes are all there, handed over `piece` bytes a read.
struct Socket<'a> {
    data: &'a [u8],
    given: usize,
    piece: usize,
}

impl AsyncRead for Socket<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.data[self.given..];
        let n = rest.len().min(buf.remaining()).min(self.piece);
        buf.put_slice(&rest[..n]);
        self.given += n;
        Poll::Ready(Ok(()))
    }
}

/// Reads a hello from `data` in pieces of `piece` bytes: the result and how
/// many bytes the reader took from the socket.
fn read(data: &[u8], piece: usize) -> (io::Result<ClientHello>, usize) {
    let mut socket = Socket {
        data,
        given: 0,
        piece,
    };
    let result = read_client_hello(&mut socket)
        .now_or_never()
        .expect("the reader never waits on a socket that has its bytes");
    (result, socket.given)
}

fn valid_sni(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, bytes)) = data.split_last() else {
        return;
    };
    let piece = match how % 4 {
        0 => usize::MAX,
        1 => 1,
        2 => 5,
        _ => 1 + usize::from(how),
    };
    let (whole, taken) = read(bytes, usize::MAX);
    if let Ok(hello) = &whole {
        assert_eq!(
            hello.bytes,
            bytes[..taken],
            "the bytes returned are the bytes read"
        );
        if let Some(name) = &hello.server_name {
            assert!(valid_sni(name), "SNI {name:?} is not a lowercase DNS name");
        }
    }
    let (split, taken) = read(bytes, piece);
    if let Ok(hello) = &split {
        assert_eq!(
            hello.bytes,
            bytes[..taken],
            "the bytes returned are the bytes read"
        );
        if let Ok(whole) = &whole {
            assert_eq!(
                whole.server_name, hello.server_name,
                "read in pieces of {piece}"
            );
        }
    }
});
