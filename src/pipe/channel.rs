//! One `forwarded-tcpip` channel as a byte stream for hyper: reads come
//! from a [`Spool`] that a pump task fills the moment data arrives (see
//! [`super::spool`] for why nothing may wait in russh's queue), writes go
//! through russh's window-aware writer.
//!
//! A user on a plan ([`crate::plans`]) has each byte counted into their
//! account, and with a bandwidth limit it is shaped here, where bytes
//! leave and enter burrow: a read waits (on a timer) while the account's
//! bucket is in debt, and meanwhile the pump keeps draining russh's queue
//! into the spool, so a throttled download fills the spool within its
//! limits and never stalls the SSH connection. Without a plan the cost is
//! one `Option` check.
//!
//! The other direction needs no spool: russh only sends to the client as
//! far as the client's window allows, and a writer waiting for window waits
//! alone. A slow local app thus slows only its own upload, and the visitor
//! feels it as TCP (or HTTP/2 stream) back-pressure.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::spool::{Budget, Spool, SpoolReader};
use crate::counters::{Traffic, COUNTERS};
use crate::plans::Account;

/// A channel's byte stream. Dropping it closes the channel.
pub struct ChannelIo {
    reader: SpoolReader,
    writer: Pin<Box<dyn AsyncWrite + Send>>,
    /// The tunnel's byte counters (admin API).
    traffic: Arc<Traffic>,
    /// The user's plan account, when plans are configured.
    account: Option<Shaper>,
    /// Tells the pump the reader is gone, so it closes the channel.
    _done: DropGuard,
}

impl ChannelIo {
    /// Starts the pump of `channel`, whose bytes count into `traffic` (and
    /// `account`'s plan, which may shape them).
    pub fn new(
        channel: Channel<Msg>,
        budget: Arc<Budget>,
        traffic: Arc<Traffic>,
        account: Option<Arc<Account>>,
    ) -> Self {
        let (read, write) = channel.split();
        let writer = Box::pin(write.make_writer());
        let spool = Spool::new(budget);
        let done = CancellationToken::new();
        tokio::spawn(pump(read, write, Arc::clone(&spool), done.clone()));
        ChannelIo {
            reader: SpoolReader::new(spool),
            writer,
            traffic,
            account: account.map(|account| Shaper {
                account,
                wait: None,
            }),
            _done: done.drop_guard(),
        }
    }
}

/// An account's bucket as seen by one stream: the timer it waits on.
struct Shaper {
    account: Arc<Account>,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Shaper {
    /// Ready once the account's bucket lets bytes move.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(wait) = &mut self.wait {
                std::task::ready!(wait.as_mut().poll(cx));
                self.wait = None;
            }
            match self.account.bandwidth_wait() {
                None => return Poll::Ready(()),
                Some(wait) => self.wait = Some(Box::pin(tokio::time::sleep(wait))),
            }
        }
    }
}

/// Moves everything the client sends into the spool at once, until the
/// channel ends, the spool refuses, or the stream's reader is dropped.
async fn pump(
    mut read: ChannelReadHalf,
    write: ChannelWriteHalf<Msg>,
    spool: Arc<Spool>,
    done: CancellationToken,
) {
    // Nothing may follow the client's EOF (RFC 4254 §5.3): a stream that
    // has ended stays ended, whatever a broken client sends after it.
    let mut ended = false;
    loop {
        let msg = tokio::select! {
            biased;
            _ = done.cancelled() => break,
            msg = read.wait() => msg,
        };
        match msg {
            Some(ChannelMsg::Data { .. }) if ended => {}
            Some(ChannelMsg::Data { data }) => {
                if let Err(full) = spool.push(data).await {
                    tracing::warn!(limit = full.limit, "reader too slow, stream cut: {full}");
                    spool.cut(&full);
                    break;
                }
            }
            Some(ChannelMsg::Eof) => {
                ended = true;
                spool.finish();
            }
            // russh has already answered the client's close.
            Some(ChannelMsg::Close) | None => {
                spool.finish();
                return;
            }
            Some(_) => {}
        }
    }
    // With the queue dropped, russh's sends to it fail at once instead of
    // waiting for room; then tell the client we are done.
    drop(read);
    let _ = write.close().await;
}

impl AsyncRead for ChannelIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(shaper) = &mut self.account {
            std::task::ready!(shaper.poll_ready(cx));
        }
        let before = buf.filled().len();
        let polled = self.reader.poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            COUNTERS.bytes_out(&self.traffic, read);
            if let Some(shaper) = &self.account {
                shaper.account.bytes(read);
            }
        }
        polled
    }
}

impl AsyncWrite for ChannelIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(shaper) = &mut self.account {
            std::task::ready!(shaper.poll_ready(cx));
        }
        let polled = self.writer.as_mut().poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            COUNTERS.bytes_in(&self.traffic, written as u64);
            if let Some(shaper) = &self.account {
                shaper.account.bytes(written as u64);
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.writer.as_mut().poll_shutdown(cx)
    }
}
