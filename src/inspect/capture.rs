//! The hook the HTTP proxy calls for every request: a cheap check first
//! (is anyone inspecting this connection? one atomic load while nobody
//! inspects anything), and only then a [`Capture`] that records the
//! request's and response's heads and tees the first
//! [`BODY_LIMIT`] bytes of each body as the
//! frames pass, never holding a frame back. The entry is kept when the
//! response body ends (or the exchange fails, or the WebSocket closes).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::{HeaderMap, Request, Response, StatusCode};

use super::store::{Entry, Kind, Part, Store, BODY_LIMIT};
use crate::http::observe::{Observation, WebSocketEnd};
use crate::http::{Body, BoxError};
use crate::tunnel::{unix_ms, ConnId};

/// Who is inspecting: open inspector streams per connection.
#[derive(Default)]
pub struct Watchers {
    /// Open inspector streams of every connection: the hot path reads only
    /// this while it is zero.
    total: AtomicUsize,
    /// Open inspector streams per connection (only connections with some).
    conns: DashMap<ConnId, usize>,
}

impl Watchers {
    /// Whether `conn` has an inspector open.
    #[inline]
    pub fn watching(&self, conn: ConnId) -> bool {
        self.total.load(Ordering::Relaxed) != 0 && self.conns.contains_key(&conn)
    }

    /// Inspector streams open now, on every connection.
    pub fn open_streams(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts an inspector stream of `conn` until the guard drops.
    pub fn open(self: &Arc<Self>, conn: ConnId) -> WatchGuard {
        *self.conns.entry(conn).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        WatchGuard {
            watchers: Arc::clone(self),
            conn,
        }
    }
}

/// One open inspector stream.
pub struct WatchGuard {
    /// Where the stream is counted, to uncount it on drop.
    watchers: Arc<Watchers>,
    /// The connection it inspects.
    conn: ConnId,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.watchers.total.fetch_sub(1, Ordering::Relaxed);
        self.watchers.conns.remove_if_mut(&self.conn, |_, open| {
            *open -= 1;
            *open == 0
        });
    }
}

/// The start of a body as it goes by.
#[derive(Default)]
struct Tap {
    /// The first [`BODY_LIMIT`] bytes.
    kept: BytesMut,
    /// Every byte that went by (the body's size, once it ended).
    size: u64,
}

impl Tap {
    fn push(&mut self, data: &Bytes) {
        self.size += data.len() as u64;
        let room = BODY_LIMIT.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&data[..data.len().min(room)]);
    }

    fn part(&self, headers: Vec<(String, String)>) -> Part {
        Part {
            headers,
            body: Bytes::copy_from_slice(&self.kept),
            size: self.size,
            truncated: self.size > self.kept.len() as u64,
        }
    }
}

type SharedTap = Arc<Mutex<Tap>>;

fn lock(tap: &SharedTap) -> std::sync::MutexGuard<'_, Tap> {
    tap.lock().unwrap_or_else(|e| e.into_inner())
}

/// A body that copies the start of its frames into a [`Tap`] and calls
/// `done` once when it ends or is dropped.
struct Tee<B> {
    /// The body on its way, untouched.
    inner: B,
    /// Where the start of it is copied.
    tap: SharedTap,
    /// Keeps the entry (the response's tee), once.
    done: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> Tee<B> {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done();
        }
    }
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    lock(&this.tap).push(data);
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A header map as a list of names and values.
pub fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    let value = |v: &hyper::header::HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
    headers
        .iter()
        .map(|(name, v)| (name.as_str().to_string(), value(v)))
        .collect()
}

/// Where a capture's entry is going: which connection and tunnel, from whom.
pub struct Origin {
    /// The connection whose inspector sees the entry.
    pub conn: ConnId,
    /// The tunnel's registry key (a replay goes through it again).
    pub tunnel: String,
    /// Who sent it (a replay names the same visitor to the app).
    pub visitor: SocketAddr,
    /// The entry this exchange replays, for a replay.
    pub replay_of: Option<u64>,
    /// How long the request was held for its tunnel's options before the
    /// capture began (it counts in the entry's duration).
    pub held: Duration,
}

/// One exchange being captured. Dropped before a response was recorded,
/// it keeps the entry as failed.
pub struct Capture {
    /// Where the entry goes.
    store: Arc<Store>,
    /// The entry so far; taken when it is kept.
    entry: Option<Entry>,
    /// When the request arrived, for the duration.
    started: Instant,
    /// The start of the request body, filled as the app reads it.
    request_tap: SharedTap,
    /// Receives the id the entry got, once it is kept.
    kept_as: Arc<OnceLock<u64>>,
}

impl Capture {
    /// Starts capturing a `method` request for `path` (as the visitor sent it).
    pub fn new(store: Arc<Store>, origin: Origin, method: &str, path: &str) -> Capture {
        let now = SystemTime::now();
        let arrived = now.checked_sub(origin.held).unwrap_or(now);
        let entry = Entry {
            id: 0,
            conn: origin.conn,
            tunnel: origin.tunnel,
            kind: Kind::Request,
            replay_of: origin.replay_of,
            method: method.to_string(),
            path: path.to_string(),
            status: None,
            error: None,
            visitor: origin.visitor,
            at_ms: unix_ms(arrived),
            duration_ms: 0,
            held_ms: u64::try_from(origin.held.as_millis()).unwrap_or(u64::MAX),
            user: None,
            by_burrow: false,
            request: Part::default(),
            response: Part::default(),
        };
        Capture {
            store,
            entry: Some(entry),
            started: Instant::now()
                .checked_sub(origin.held)
                .unwrap_or_else(Instant::now),
            request_tap: SharedTap::default(),
            kept_as: Arc::default(),
        }
    }

    /// Where the entry's id will be, once kept.
    pub fn kept_as(&self) -> Arc<OnceLock<u64>> {
        Arc::clone(&self.kept_as)
    }

    /// Records the request as it goes to the app (headers as rewritten),
    /// teeing its body.
    pub fn request(&mut self, req: Request<Body>) -> Request<Body> {
        self.arrived(req.headers());
        let tap = Arc::clone(&self.request_tap);
        req.map(|body| {
            Tee {
                inner: body,
                tap,
                done: None,
            }
            .boxed_unsync()
        })
    }

    /// Records the request as the visitor sent it: what shows if burrow
    /// answers it itself ([`Capture::answered_here`]); [`Capture::request`]
    /// replaces it with what went to the app.
    pub fn arrived(&mut self, headers: &HeaderMap) {
        if let Some(entry) = &mut self.entry {
            entry.request.headers = header_list(headers);
        }
    }

    /// burrow answered the request itself: the entry says so and keeps
    /// burrow's answer, tee'd on its way to the visitor like an app's.
    pub fn answered_here(mut self, response: Response<Body>) -> Response<Body> {
        self.answered(response.status(), response.headers());
        if let Some(entry) = &mut self.entry {
            entry.by_burrow = true;
        }
        self.finish(response)
    }

    /// Records the app's answer: status and headers as the app sent them.
    pub fn answered(&mut self, status: StatusCode, headers: &HeaderMap) {
        if let Some(entry) = &mut self.entry {
            entry.status = Some(status.as_u16());
            entry.response.headers = header_list(headers);
            if status == StatusCode::SWITCHING_PROTOCOLS {
                entry.kind = Kind::WebsocketOpen;
            }
        }
    }

    /// The WebSocket's close, to be recorded when it happens (`None` when
    /// the exchange was no upgrade).
    pub fn websocket(&self) -> Option<WebSocketClose> {
        let entry = self.entry.as_ref()?;
        (entry.kind == Kind::WebsocketOpen).then(|| WebSocketClose {
            store: Arc::clone(&self.store),
            entry: entry.clone(),
            started: self.started,
        })
    }

    /// Tees the response body on its way to the visitor; the entry is kept
    /// when it ends (or is dropped).
    pub fn finish<B>(mut self, response: Response<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
    {
        let tap = SharedTap::default();
        let response_tap = Arc::clone(&tap);
        let Some(entry) = self.entry.take() else {
            return response.map(|body| body.boxed_unsync());
        };
        let keep = Keep {
            store: Arc::clone(&self.store),
            started: self.started,
            request_tap: Arc::clone(&self.request_tap),
            kept_as: Arc::clone(&self.kept_as),
        };
        let done = move || keep.keep(entry, Some(&lock(&response_tap)));
        response.map(|body| {
            Tee {
                inner: body,
                tap,
                done: Some(Box::new(done)),
            }
            .boxed_unsync()
        })
    }
}

/// The proxy's observation points, recorded.
impl Observation for Capture {
    fn arrived(&mut self, headers: &HeaderMap) {
        Capture::arrived(self, headers)
    }

    fn identified(&mut self, user: &str) {
        if let Some(entry) = &mut self.entry {
            entry.user = Some(user.to_string());
        }
    }

    fn request(&mut self, req: Request<Body>) -> Request<Body> {
        Capture::request(self, req)
    }

    fn answered(&mut self, status: StatusCode, headers: &HeaderMap) {
        Capture::answered(self, status, headers)
    }

    fn answered_here(self: Box<Self>, response: Response<Body>) -> Response<Body> {
        Capture::answered_here(*self, response)
    }

    fn websocket(&self) -> Option<WebSocketEnd> {
        let close = Capture::websocket(self)?;
        Some(Box::new(move |bytes_in, bytes_out, why| {
            close.closed(bytes_in, bytes_out, why)
        }))
    }

    fn finish(self: Box<Self>, response: Response<Body>) -> Response<Body> {
        Capture::finish(*self, response)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let Some(mut entry) = self.entry.take() else {
            return;
        };
        if entry.status.is_none() {
            entry.error = Some("the app gave no response".into());
        }
        let keep = Keep {
            store: Arc::clone(&self.store),
            started: self.started,
            request_tap: Arc::clone(&self.request_tap),
            kept_as: Arc::clone(&self.kept_as),
        };
        keep.keep(entry, None);
    }
}

/// What keeping an entry needs once the exchange is over.
struct Keep {
    /// Where the entry goes.
    store: Arc<Store>,
    /// When the request arrived, for the duration.
    started: Instant,
    /// The start of the request body.
    request_tap: SharedTap,
    /// Told the entry's id.
    kept_as: Arc<OnceLock<u64>>,
}

impl Keep {
    fn keep(self, mut entry: Entry, response: Option<&Tap>) {
        entry.duration_ms = elapsed_ms(self.started);
        let headers = std::mem::take(&mut entry.request.headers);
        entry.request = lock(&self.request_tap).part(headers);
        if let Some(tap) = response {
            let headers = std::mem::take(&mut entry.response.headers);
            entry.response = tap.part(headers);
        }
        let id = self.store.add(entry);
        let _ = self.kept_as.set(id);
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Records a WebSocket's close as its own entry.
pub struct WebSocketClose {
    /// Where the close entry goes.
    store: Arc<Store>,
    /// The open entry, the close's template.
    entry: Entry,
    /// When the upgrade request arrived: the WebSocket's duration.
    started: Instant,
}

impl WebSocketClose {
    /// The WebSocket ended after `bytes_in` from the visitor and
    /// `bytes_out` to them; `why` when a limit cut it.
    pub fn closed(self, bytes_in: u64, bytes_out: u64, why: Option<String>) {
        let mut entry = self.entry;
        entry.kind = Kind::WebsocketClose;
        entry.at_ms = unix_ms(SystemTime::now());
        entry.duration_ms = elapsed_ms(self.started);
        entry.request = Part {
            size: bytes_in,
            ..Part::default()
        };
        entry.response = Part {
            size: bytes_out,
            ..Part::default()
        };
        entry.error = why;
        self.store.add(entry);
    }
}
