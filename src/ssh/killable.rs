//! A socket with a kill switch: once its token is cancelled every read and
//! write fails, which ends the russh session that owns the socket. russh
//! offers no way to abort a session from outside, and a disconnect message
//! cannot help when the client ignores it or stalls the key exchange: so a
//! connection is ended by [`disconnect_then_kill`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use russh::server::Handle;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// How long a disconnected client gets before its socket is cut.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// Sends a disconnect with `reason` through `handle`, and cuts the socket
/// (cancels `kill`) if the connection is still there after a grace period:
/// a client that ignores it, or a stalled key exchange that cannot carry it.
pub async fn disconnect_then_kill(handle: Handle, kill: CancellationToken, reason: String) {
    let send = handle.disconnect(russh::Disconnect::ByApplication, reason, "en".into());
    let _ = tokio::time::timeout(KILL_GRACE, send).await;
    tokio::time::sleep(KILL_GRACE).await;
    kill.cancel();
}

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

    /// Runs one I/O poll unless killed. The kill wake-up is registered
    /// only when the I/O has to wait: registering costs a lock, and a ready
    /// socket returns without parking anyway.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if self.token.is_cancelled() {
            return Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()));
        }
        match io(Pin::new(&mut self.inner), cx) {
            Poll::Pending if self.killed.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(std::io::ErrorKind::ConnectionAborted.into()))
            }
            other => other,
        }
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.poll_io(cx, |inner, cx| inner.poll_read(cx, buf))
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_io(cx, |inner, cx| inner.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_io(cx, |inner, cx| inner.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
