//! A stream that first hands out bytes already read from it: a peeked
//! ClientHello replayed to rustls, or what a read-ahead pulled in beyond
//! what its reader asked for. The bytes are held only until they are
//! handed out, then their buffer is released.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `S`, read from after the bytes put in front of it; writes pass through.
pub struct Rewind<S> {
    /// Bytes to hand out before `inner`'s, from `at` on.
    front: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(front: Vec<u8>, inner: S) -> Self {
        Rewind {
            front,
            at: 0,
            inner,
        }
    }

    /// Whether bytes put in front are still to be handed out.
    pub fn pending(&self) -> bool {
        self.at < self.front.len()
    }

    /// Puts `bytes` in front of the stream (once the previous ones are out).
    pub fn replay(&mut self, bytes: Vec<u8>) {
        debug_assert!(!self.pending(), "replayed over unread bytes");
        self.front = bytes;
        self.at = 0;
    }

    /// The stream behind, for reads that bypass the front.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Hands out front bytes, releasing the buffer once all are out.
    fn take_front(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.front.len() - self.at);
        buf.put_slice(&self.front[self.at..self.at + n]);
        self.at += n;
        if !self.pending() {
            self.front = Vec::new();
            self.at = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending() {
            this.take_front(buf);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
