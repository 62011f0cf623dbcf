//! One body wrapper for every limit that watches bytes go by: the body size
//! cap, the no-progress (idle) timeout, and RAII guards (in-flight slots,
//! gauges, connection state) that must live exactly as long as the body.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::BoxError;
use crate::limits::{human, Activity};

/// Why a metered body stopped early.
#[derive(Debug)]
pub enum MeterError {
    TooLarge(u64),
    Idle(Duration),
}

impl std::fmt::Display for MeterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeterError::TooLarge(limit) => {
                write!(f, "body larger than max-body-size ({limit} bytes)")
            }
            MeterError::Idle(d) => {
                write!(f, "no bytes moved for {} (request-idle-timeout)", human(*d))
            }
        }
    }
}

impl std::error::Error for MeterError {}

/// Wraps `B`, counting and timing its data frames.
pub struct MeteredBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    /// Raised when the limit cut the body, so the caller can tell a 413 from
    /// another failure.
    exceeded: Option<Arc<AtomicBool>>,
    activity: Option<Arc<Activity>>,
    idle: Duration,
    idle_sleep: Option<Pin<Box<Sleep>>>,
    _guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B) -> Self {
        MeteredBody {
            inner,
            seen: 0,
            limit: 0,
            exceeded: None,
            activity: None,
            idle: Duration::ZERO,
            idle_sleep: None,
            _guards: Vec::new(),
        }
    }

    /// Cuts the body after `limit` bytes (0 = no limit), raising `flag`.
    pub fn limit(mut self, limit: u64, flag: Option<Arc<AtomicBool>>) -> Self {
        self.limit = limit;
        self.exceeded = flag;
        self
    }

    /// Touches `activity` on every data frame; with a non-zero `idle`, fails
    /// once `activity` (shared with the other direction) has been still that
    /// long.
    pub fn activity(mut self, activity: Arc<Activity>, idle: Duration) -> Self {
        self.activity = Some(activity);
        self.idle = idle;
        self
    }

    /// Keeps `guard` alive until the body is finished or dropped.
    pub fn guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self._guards.push(Box::new(guard));
        self
    }

    /// Polls the idle timer; `Some(err)` when the body has been still too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Option<MeterError> {
        let activity = self.activity.as_ref()?;
        if self.idle.is_zero() {
            return None;
        }
        loop {
            let left = self.idle.saturating_sub(activity.idle_for());
            if left.is_zero() {
                return Some(MeterError::Idle(self.idle));
            }
            let deadline = tokio::time::Instant::now() + left;
            let sleep = self
                .idle_sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return None;
            }
        }
    }
}

impl<B> Body for MeteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let frame = match polled {
            Poll::Pending => {
                return match this.poll_idle(cx) {
                    Some(err) => Poll::Ready(Some(Err(err.into()))),
                    None => Poll::Pending,
                };
            }
            Poll::Ready(frame) => frame,
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(activity) = &this.activity {
                        activity.touch();
                    }
                    if this.limit > 0 && this.seen > this.limit {
                        if let Some(flag) = &this.exceeded {
                            flag.store(true, Ordering::Relaxed);
                        }
                        return Poll::Ready(Some(Err(MeterError::TooLarge(this.limit).into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => Poll::Ready(Some(Err(err.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames =
            (0..n).map(move |_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![7u8; size]))));
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn cuts_at_the_limit_and_raises_the_flag() {
        let flag = Arc::new(AtomicBool::new(false));
        let body = MeteredBody::new(chunks(10, 100)).limit(550, Some(Arc::clone(&flag)));
        let err = body.collect().await.expect_err("cut off");
        assert!(err.to_string().contains("max-body-size"));
        assert!(flag.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn passes_bodies_under_the_limit() {
        let body = MeteredBody::new(chunks(10, 100)).limit(1000, None);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_body_fails_after_the_timeout() {
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let body = MeteredBody::new(StreamBody::new(stream))
            .activity(Arc::new(Activity::default()), Duration::from_secs(5));
        let err = body.collect().await.expect_err("idle cut");
        assert!(err.to_string().contains("request-idle-timeout"));
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
