//! Per-connection timers for visitor connections on :443:
//!
//! - **header timeout** (slow-loris): a new connection, or an idle HTTP/1.1
//!   connection that started sending the next request, must complete a
//!   request head within `header-timeout`;
//! - **keep-alive timeout**: a connection with no request in flight is
//!   closed after `keepalive-timeout`.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection
//! waits for its next request, which would make the keep-alive timeout
//! always equal to the header timeout; so both are tracked here instead, from
//! bytes read ([`WatchedIo`]) and requests started and finished
//! ([`RequestMark`]).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Shared between the IO wrapper, the service and the watchdog.
pub struct ConnWatch {
    state: Mutex<State>,
    changed: Notify,
    header_timeout: Duration,
    keepalive_timeout: Duration,
    /// HTTP/2 frames flow while idle (pings, window updates), so only
    /// HTTP/1.1 connections get the header timeout after the first request.
    track_heads: bool,
}

struct State {
    in_flight: u32,
    idle_since: Instant,
    /// First byte read since the connection went idle (HTTP/1.1).
    first_byte: Option<Instant>,
    /// No request yet on this connection.
    fresh: bool,
}

/// Why the watchdog closed a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Expired {
    Header,
    KeepAlive,
}

impl ConnWatch {
    pub fn new(header_timeout: Duration, keepalive_timeout: Duration, http2: bool) -> Arc<Self> {
        Arc::new(ConnWatch {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: Instant::now(),
                first_byte: None,
                fresh: true,
            }),
            changed: Notify::new(),
            header_timeout,
            keepalive_timeout,
            track_heads: !http2,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("watchdog state lock")
    }

    fn on_bytes(&self) {
        if !self.track_heads {
            return;
        }
        let mut state = self.lock();
        if state.in_flight == 0 && state.first_byte.is_none() && !state.fresh {
            state.first_byte = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// Marks a request as started; the mark ends it when dropped.
    pub fn begin(self: &Arc<Self>) -> RequestMark {
        let mut state = self.lock();
        state.in_flight += 1;
        state.fresh = false;
        state.first_byte = None;
        RequestMark(Arc::clone(self))
    }

    /// When the connection must be closed, and why; `None` while busy.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        let state = self.lock();
        let header = |since: Instant| {
            (!self.header_timeout.is_zero()).then(|| (since + self.header_timeout, Expired::Header))
        };
        if state.in_flight > 0 {
            None
        } else if state.fresh {
            header(state.idle_since)
        } else if let Some(first) = state.first_byte {
            header(first)
        } else {
            (!self.keepalive_timeout.is_zero()).then(|| {
                (
                    state.idle_since + self.keepalive_timeout,
                    Expired::KeepAlive,
                )
            })
        }
    }

    /// Resolves when the connection should be closed.
    pub async fn expired(&self) -> Expired {
        loop {
            let changed = self.changed.notified();
            match self.deadline() {
                None => changed.await,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            // Re-check: a request may have started meanwhile.
                            if let Some((now_at, why)) = self.deadline() {
                                if now_at <= Instant::now() {
                                    return why;
                                }
                            }
                        }
                        _ = changed => {}
                    }
                }
            }
        }
    }
}

/// A request in progress on a watched connection.
pub struct RequestMark(Arc<ConnWatch>);

impl Drop for RequestMark {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
            state.first_byte = None;
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// An IO stream that reports reads to a [`ConnWatch`].
pub struct WatchedIo<T> {
    inner: T,
    watch: Arc<ConnWatch>,
}

impl<T> WatchedIo<T> {
    pub fn new(inner: T, watch: Arc<ConnWatch>) -> Self {
        WatchedIo { inner, watch }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.watch.on_bytes();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fresh_connection_gets_the_header_timeout() {
        let w = ConnWatch::new(Duration::from_secs(10), Duration::from_secs(120), false);
        let start = Instant::now();
        assert_eq!(w.expired().await, Expired::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keepalive_gets_the_keepalive_timeout() {
        let w = ConnWatch::new(Duration::from_secs(10), Duration::from_secs(120), false);
        drop(w.begin());
        let start = Instant::now();
        assert_eq!(w.expired().await, Expired::KeepAlive);
        assert_eq!(start.elapsed(), Duration::from_secs(120));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_never_expire_and_partial_heads_do() {
        let w = ConnWatch::new(Duration::from_secs(10), Duration::from_secs(120), false);
        let mark = w.begin();
        let waited = tokio::time::timeout(Duration::from_secs(1000), w.expired()).await;
        assert!(waited.is_err(), "expired while a request was in flight");
        drop(mark);
        tokio::time::sleep(Duration::from_secs(5)).await;
        w.on_bytes();
        let start = Instant::now();
        assert_eq!(w.expired().await, Expired::Header);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
