//! Any byte stream read through a spool: a pump task moves whatever
//! arrives into a [`Spool`] at once, so the sender's flow control is never
//! held up by a slow reader on this side — the same rule as for SSH
//! channels ([`super::channel`]), here for the streams of the cluster
//! link, where one slow visitor must not stall the others sharing the
//! link's connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::spool::{Budget, Spool, SpoolReader};

/// Bytes read from the stream in one go.
const CHUNK: usize = 64 * 1024;

/// A stream whose reads come from its spool. Dropping it stops the pump.
pub struct Spooled<S> {
    reader: SpoolReader,
    writer: WriteHalf<S>,
    /// Tells the pump the reader is gone.
    _done: DropGuard,
}

impl<S> Spooled<S>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    /// Starts the pump of `stream`, spooling within `budget`.
    pub fn new(stream: S, budget: Arc<Budget>) -> Self {
        let (read, writer) = tokio::io::split(stream);
        let spool = Spool::new(budget);
        let done = CancellationToken::new();
        tokio::spawn(pump(read, Arc::clone(&spool), done.clone()));
        Spooled {
            reader: SpoolReader::new(spool),
            writer,
            _done: done.drop_guard(),
        }
    }
}

/// Moves everything the stream delivers into the spool, until it ends,
/// the spool refuses, or the reader is dropped.
async fn pump<R: AsyncRead>(mut read: ReadHalf<R>, spool: Arc<Spool>, done: CancellationToken) {
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let read = tokio::select! {
            biased;
            _ = done.cancelled() => return,
            read = read.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                spool.finish();
                return;
            }
            Ok(_) => {
                if let Err(full) = spool.push(buf.freeze()).await {
                    tracing::warn!(limit = full.limit, "reader too slow, stream cut: {full}");
                    spool.cut(&full);
                    return;
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncRead for Spooled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.reader.poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite> AsyncWrite for Spooled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_shutdown(cx)
    }
}
