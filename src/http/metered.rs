//! One body wrapper for every limit that watches bytes go by: the body size
//! cap, the no-progress (idle) timeout, RAII guards (in-flight slots,
//! gauges, connection state) that must live exactly as long as the body,
//! and the end-of-body callback the request log is written from.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
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

/// Why a watched body stopped early, kept for whoever answers for it (a
/// 413 for a body over the limit, a 400 for a visitor's malformed one,
/// the request log's reason). The first cut is the one kept.
#[derive(Debug, Default)]
pub struct Cut(OnceLock<Stopped>);

/// What cut a body.
#[derive(Debug, Clone, PartialEq)]
pub enum Stopped {
    /// Over `max-body-size` (the limit in bytes).
    TooLarge(u64),
    /// No bytes moved for the idle timeout.
    Idle,
    /// The body itself failed (e.g. a malformed chunked encoding): why.
    Broken(String),
}

impl Cut {
    fn record(&self, stopped: Stopped) {
        let _ = self.0.set(stopped);
    }

    /// What cut the body, if anything did.
    pub fn get(&self) -> Option<&Stopped> {
        self.0.get()
    }
}

/// How a body ended: the bytes that went by, the error that cut it, if
/// one did, and whether it was read to its end (`false`: the reader went
/// away first, e.g. a visitor who cancelled).
#[derive(Debug)]
pub struct Ended {
    pub bytes: u64,
    pub error: Option<String>,
    pub complete: bool,
}

type OnEnd = Box<dyn FnOnce(Ended) + Send + Sync>;

/// Wraps `B`, counting and timing its data frames.
pub struct MeteredBody<B> {
    inner: B,
    seen: u64,
    limit: u64,
    /// Told what cut the body, so the caller can tell a 413 (the limit) or
    /// a 400 (the body was malformed) from another failure.
    cut: Option<Arc<Cut>>,
    activity: Option<Arc<Activity>>,
    idle: Duration,
    idle_sleep: Option<Pin<Box<Sleep>>>,
    on_end: Option<OnEnd>,
    /// The inner body said it has nothing more (it may be dropped unpolled).
    inner_ended: AtomicBool,
    /// Held until the body is dropped (one box, however many were given).
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl<B> MeteredBody<B> {
    pub fn new(inner: B) -> Self {
        MeteredBody {
            inner,
            seen: 0,
            limit: 0,
            cut: None,
            activity: None,
            idle: Duration::ZERO,
            idle_sleep: None,
            on_end: None,
            inner_ended: AtomicBool::new(false),
            _guard: None,
        }
    }

    /// Calls `f` once when the body ends: at its end, at the error that cut
    /// it, or when it is dropped unfinished (the reader went away).
    pub fn on_end(mut self, f: impl FnOnce(Ended) + Send + Sync + 'static) -> Self {
        self.on_end = Some(Box::new(f));
        self
    }

    fn end(&mut self, error: Option<String>, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(Ended {
                bytes: self.seen,
                error,
                complete,
            });
        }
    }

    /// Cuts the body after `limit` bytes (0 = no limit).
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Records in `cut` why the body stopped early, if it does.
    pub fn watch(mut self, cut: Arc<Cut>) -> Self {
        self.cut = Some(cut);
        self
    }

    fn stopped(&mut self, stopped: Stopped, error: String) {
        if let Some(cut) = &self.cut {
            cut.record(stopped);
        }
        self.end(Some(error), false);
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
        self._guard = Some(match self._guard.take() {
            None => Box::new(guard),
            Some(held) => Box::new((held, guard)),
        });
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
                    Some(err) => {
                        this.stopped(Stopped::Idle, err.to_string());
                        Poll::Ready(Some(Err(err.into())))
                    }
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
                        let err = MeterError::TooLarge(this.limit);
                        // What was let through, not the frame that broke the cap.
                        this.seen -= data.len() as u64;
                        this.stopped(Stopped::TooLarge(this.limit), err.to_string());
                        return Poll::Ready(Some(Err(err.into())));
                    }
                }
                if this.inner.is_end_stream() {
                    this.inner_ended.store(true, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                let err: BoxError = err.into();
                this.stopped(Stopped::Broken(err.to_string()), err.to_string());
                Poll::Ready(Some(Err(err)))
            }
            None => {
                this.end(None, true);
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let ended = self.inner.is_end_stream();
        if ended {
            self.inner_ended.store(true, Ordering::Relaxed);
        }
        ended
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // No callback: nothing to work out (and `B` need not be a `Body`).
        if self.on_end.is_some() {
            let complete = self.inner_ended.load(Ordering::Relaxed);
            self.end(None, complete);
        }
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
    async fn cuts_at_the_limit_and_says_so() {
        let cut = Arc::new(Cut::default());
        let body = MeteredBody::new(chunks(10, 100))
            .limit(550)
            .watch(Arc::clone(&cut));
        let err = body.collect().await.expect_err("cut off");
        assert!(err.to_string().contains("max-body-size"));
        assert_eq!(cut.get(), Some(&Stopped::TooLarge(550)));
    }

    #[tokio::test]
    async fn a_failing_body_is_recorded_as_broken() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"abc"))),
            Err(std::io::Error::other("invalid chunk size")),
        ];
        let cut = Arc::new(Cut::default());
        let body = MeteredBody::new(StreamBody::new(futures_util::stream::iter(frames)))
            .watch(Arc::clone(&cut));
        assert!(body.collect().await.is_err());
        assert_eq!(
            cut.get(),
            Some(&Stopped::Broken("invalid chunk size".into()))
        );
    }

    #[tokio::test]
    async fn a_whole_body_is_not_cut() {
        let cut = Arc::new(Cut::default());
        let body = MeteredBody::new(chunks(3, 100))
            .limit(1000)
            .watch(Arc::clone(&cut));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 300);
        assert_eq!(cut.get(), None);
    }

    #[tokio::test]
    async fn passes_bodies_under_the_limit() {
        let body = MeteredBody::new(chunks(10, 100)).limit(1000);
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

    #[tokio::test]
    async fn on_end_reports_bytes_and_the_cut() {
        let (tx, rx) = std::sync::mpsc::channel();
        let done = tx.clone();
        let body = MeteredBody::new(chunks(10, 100))
            .limit(550)
            .on_end(move |ended| done.send(ended).unwrap());
        assert!(body.collect().await.is_err());
        let ended = rx.try_recv().expect("called");
        assert_eq!(ended.bytes, 500);
        assert!(ended.error.unwrap().contains("max-body-size"));

        let body = MeteredBody::new(chunks(3, 100)).on_end(move |ended| tx.send(ended).unwrap());
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 300);
        let ended = rx.try_recv().expect("called");
        assert_eq!((ended.bytes, ended.error), (300, None));
        assert!(rx.try_recv().is_err(), "called once");
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
