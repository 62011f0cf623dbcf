//! An HTTP body read through a spool: the body-shaped sibling of
//! [`super::spooled`]. A pump task takes every frame the moment it
//! arrives, so the sender's flow-control window (an HTTP/2 stream of the
//! cluster link) is released at once however slowly this side's reader
//! (a visitor) takes it, and one slow reader cannot hold the window the
//! link's other streams share.
//!
//! Chunks move as they came (`Bytes`, no copy while they fit in memory).
//! A body that has already arrived whole when it is wrapped (a small
//! response: its DATA frame came with the headers) needs no spool and no
//! task: it is handed on as it is.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::HeaderMap;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::spool::{Budget, Spool, SpoolReader};

/// Most bytes taken without a spool from a body that has already arrived:
/// a small response's worth, held only until the reader takes it.
const READY_MAX: usize = 64 * 1024;

/// Trailers the pump found, handed to the reader after the last chunk.
type Trailers = Arc<Mutex<Option<HeaderMap>>>;

/// A body whose chunks come from a spool (or, when it had arrived whole,
/// from memory). Dropping it stops the pump, which drops the source.
pub struct SpooledBody {
    /// Chunks that were there at once, read first.
    ready: VecDeque<Bytes>,
    /// The rest, when there was more to come.
    spooled: Option<Pumped>,
    /// Trailers of a body that had arrived whole.
    trailers: Option<HeaderMap>,
    size: SizeHint,
    ended: bool,
}

struct Pumped {
    reader: SpoolReader,
    trailers: Trailers,
    /// Tells the pump the reader is gone.
    _done: DropGuard,
}

impl SpooledBody {
    /// Wraps `body`, spooling within `budget` what does not come at once.
    pub fn new<B>(mut body: B, budget: Arc<Budget>) -> SpooledBody
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let size = body.size_hint();
        let mut out = SpooledBody {
            ready: VecDeque::new(),
            spooled: None,
            trailers: None,
            size,
            ended: false,
        };
        // What has arrived already is taken without a task; the first
        // frame still to come starts the pump.
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = 0;
        while taken < READY_MAX && !body.is_end_stream() {
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        taken += data.len();
                        out.ready.push_back(data);
                    }
                    Err(frame) => out.trailers = frame.into_trailers().ok(),
                },
                Poll::Ready(Some(Err(err))) => {
                    out.spooled = Some(Pumped::failed(budget, err.to_string()));
                    return out;
                }
                Poll::Ready(None) => return out,
                Poll::Pending => break,
            }
        }
        if !body.is_end_stream() {
            out.spooled = Some(Pumped::start(body, budget));
        }
        out
    }
}

impl Pumped {
    fn start<B>(body: B, budget: Arc<Budget>) -> Pumped
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let spool = Spool::new(budget);
        let done = CancellationToken::new();
        let trailers = Trailers::default();
        let pump = pump(
            body,
            Arc::clone(&spool),
            Arc::clone(&trailers),
            done.clone(),
        );
        tokio::spawn(pump);
        Pumped {
            reader: SpoolReader::new(spool),
            trailers,
            _done: done.drop_guard(),
        }
    }

    /// A body that failed before anything was spooled.
    fn failed(budget: Arc<Budget>, why: String) -> Pumped {
        let spool = Spool::new(budget);
        spool.abort(why);
        Pumped {
            reader: SpoolReader::new(spool),
            trailers: Trailers::default(),
            _done: CancellationToken::new().drop_guard(),
        }
    }
}

/// Moves every frame of `body` into the spool, until it ends, fails, the
/// spool refuses, or the reader is dropped.
async fn pump<B>(mut body: B, spool: Arc<Spool>, trailers: Trailers, done: CancellationToken)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display + Send,
{
    loop {
        let frame = tokio::select! {
            biased;
            _ = done.cancelled() => return,
            frame = body.frame() => frame,
        };
        let data = match frame {
            None => {
                spool.finish();
                return;
            }
            Some(Err(err)) => {
                spool.abort(format!("the body broke off: {err}"));
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(found) = frame.into_trailers() {
                        *trailers.lock().unwrap_or_else(|e| e.into_inner()) = Some(found);
                    }
                    continue;
                }
            },
        };
        if let Err(full) = spool.push(data).await {
            tracing::warn!(limit = full.limit, "reader too slow, body cut: {full}");
            spool.cut(&full);
            return;
        }
    }
}

impl Body for SpooledBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(pumped) = this.spooled.as_mut() {
            match pumped.reader.poll_chunk(cx) {
                Poll::Ready(Some(chunk)) => return Poll::Ready(Some(chunk.map(Frame::data))),
                Poll::Ready(None) => {
                    let found = pumped.trailers.lock().unwrap_or_else(|e| e.into_inner());
                    this.trailers = found.clone();
                    drop(found);
                    this.spooled = None;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        this.ended = true;
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.ready.is_empty() && self.spooled.is_none() && self.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipe::spool::SpoolLimits;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn budget() -> Arc<Budget> {
        Budget::new(SpoolLimits {
            memory_per_stream: 1 << 20,
            disk_per_stream: 1 << 20,
            memory_total: 1 << 30,
            disk_total: 1 << 30,
            dir: std::env::temp_dir(),
        })
    }

    #[tokio::test]
    async fn a_body_that_arrived_whole_needs_no_spool() {
        let body = SpooledBody::new(Full::new(Bytes::from_static(b"hello")), budget());
        assert!(body.spooled.is_none());
        let got = body.collect().await.expect("body").to_bytes();
        assert_eq!(&got[..], b"hello");
    }

    #[tokio::test]
    async fn a_body_still_coming_is_spooled_with_its_trailers() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
        let stream = tokio_stream_of(rx);
        let body = SpooledBody::new(StreamBody::new(stream), budget());
        assert!(body.spooled.is_some(), "nothing had arrived yet");
        let sender = tokio::spawn(async move {
            for i in 0..100u8 {
                let chunk = Bytes::from(vec![i; 1000]);
                tx.send(Ok(Frame::data(chunk))).await.expect("send");
            }
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("value"));
            tx.send(Ok(Frame::trailers(trailers))).await.expect("send");
        });
        let collected = body.collect().await.expect("body");
        sender.await.expect("sender");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "0");
        let bytes = collected.to_bytes();
        assert_eq!(bytes.len(), 100_000);
        assert!(bytes.chunks(1000).enumerate().all(|(i, c)| c[0] == i as u8));
    }

    #[tokio::test]
    async fn a_broken_body_is_an_error_not_an_end() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
        let body = SpooledBody::new(StreamBody::new(tokio_stream_of(rx)), budget());
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .expect("send");
        tx.send(Err(io::Error::other("reset"))).await.expect("send");
        assert!(body.collect().await.is_err());
    }

    /// A stream of `rx`'s items.
    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin + Send {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
