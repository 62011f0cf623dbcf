//! A socket with a kill switch: once its token is cancelled every read and
//! write fails, which ends the russh session that owns the socket. russh
//! offers no way to abort a session from outside, and a disconnect message
//! cannot help when the client ignores it or stalls the key exchange.
//!
//! It also re-arms TCP quick-ACK after every read (see [`quickack`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A socket that fails every read and write once its token is cancelled,
/// which ends the russh session that owns it.
pub struct KillableStream {
    inner: TcpStream,
    token: CancellationToken,
    killed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl KillableStream {
    pub fn new(inner: TcpStream, token: CancellationToken) -> Self {
        KillableStream {
            inner,
            killed: Box::pin(token.clone().cancelled_owned()),
            token,
        }
    }

    /// `Err` once killed; otherwise registers for the kill wake-up.
    fn check(&mut self, cx: &mut Context<'_>) -> std::io::Result<()> {
        if self.token.is_cancelled() || self.killed.as_mut().poll(cx).is_ready() {
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        Ok(())
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            quickack(&self.inner);
        }
        read
    }
}

/// ACKs what we just read at once instead of up to 40 ms later.
///
/// OpenSSH's client leaves Nagle's algorithm on unless the session is
/// interactive (a pty), so an `ssh -N` client holds a small packet back
/// until its previous one is ACKed. When the app writes a response in two
/// pieces (nginx: headers, then sendfile) the client's second packet waits
/// for our ACK, which Linux delays by up to 40 ms when it has nothing to
/// send back: every such response took 40+ ms. Quick-ACK mode is not
/// sticky, so it is re-armed after every read.
fn quickack(socket: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(socket).set_tcp_quickack(true);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
