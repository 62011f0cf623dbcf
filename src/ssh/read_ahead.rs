//! Read-ahead for the SSH socket. russh reads every packet with two exact
//! reads straight from its stream: the first block (to learn the length),
//! then the rest. On a bare socket that is two `recv` calls per packet, and
//! most packets of a busy tunnel are small. Here a small read pulls in up
//! to [`READ_AHEAD`] bytes at once and the rest is handed out from memory.
//!
//! The spare bytes live in a heap buffer only while there are some: an
//! idle tunnel holds none, and a read that has to wait allocates nothing
//! (the bytes land on the stack first).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pipe::rewind::Rewind;

/// Bytes asked of the socket when russh asks for fewer. Reads at least
/// this large go straight into russh's buffer.
const READ_AHEAD: usize = 16 * 1024;

/// `S` with its reads batched; writes pass straight through. The spare
/// bytes are put back in front of the stream ([`Rewind`]).
pub struct ReadAhead<S>(Rewind<S>);

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead(Rewind::new(Vec::new(), inner))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rewind = &mut self.get_mut().0;
        if rewind.pending() || buf.remaining() >= READ_AHEAD {
            return Pin::new(rewind).poll_read(cx, buf);
        }
        let mut landing = [MaybeUninit::<u8>::uninit(); READ_AHEAD];
        let mut ahead = ReadBuf::uninit(&mut landing);
        ready!(Pin::new(rewind.inner_mut()).poll_read(cx, &mut ahead))?;
        let got = ahead.filled();
        let n = buf.remaining().min(got.len());
        buf.put_slice(&got[..n]);
        if n < got.len() {
            rewind.replay(got[n..].to_vec());
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Packets read the way russh reads them (a small exact read, then the
    /// rest) come out whole and in order, and the spare buffer is gone once
    /// everything was handed out.
    #[tokio::test]
    async fn small_exact_reads_see_every_byte_in_order() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let packets: Vec<Vec<u8>> = (0..50u32)
            .map(|i| {
                let body_len = (i as usize * 997) % 40_000 + 1;
                let mut packet = (body_len as u32).to_be_bytes().to_vec();
                packet.extend((0..body_len).map(|k| (k as u32 ^ i) as u8));
                packet
            })
            .collect();
        let sent = packets.clone();
        let writer = tokio::spawn(async move {
            for packet in &sent {
                tx.write_all(packet).await.unwrap();
            }
        });
        let mut reader = ReadAhead::new(rx);
        for packet in &packets {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            reader.read_exact(&mut body).await.unwrap();
            assert_eq!(&packet[4..], &body[..]);
        }
        assert!(!reader.0.pending());
        writer.await.unwrap();
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
