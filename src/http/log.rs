//! The proxy's side of the request log: a request's line is written when
//! its response body ends (or is cut, or the visitor drops it), so size and
//! duration are final; a WebSocket gets an open and a close line. Lines go
//! to the client that served the request (its terminal, if it has one) and,
//! with `--access-log`, to the server's log.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{Response, StatusCode};

use super::metered::{Cut, MeteredBody, Stopped};
use super::Body;
use crate::pipe::relay::Moved;
use crate::request_log::{Answered, Event, Seen};
use crate::tunnel::{Client, Tunnel};

/// What cut the visitor's request body, carried on the response so the
/// log line can blame a malformed body rather than the response.
#[derive(Clone)]
pub struct RequestCut(pub Arc<Cut>);

/// Writes the request's log line (and its access-log line) when the
/// response body ends, with why it was cut if it was. A 101 is left to
/// the WebSocket's own open and close lines.
pub fn when_done(
    access_log: bool,
    tunnel: &Tunnel,
    seen: Seen,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status();
    // Nobody to tell (`-N`, no access log): no body wrapper on the hot path.
    if status == StatusCode::SWITCHING_PROTOCOLS || !(access_log || tunnel.client().has_log()) {
        return response;
    }
    let answered = response.extensions().get::<Answered>().cloned();
    let request_cut = response.extensions().get::<RequestCut>().cloned();
    // HEAD, 204 and 304 have no body to finish.
    let bodyless =
        seen.is_head() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let client = Arc::clone(tunnel.client());
    response.map(move |body| {
        MeteredBody::new(body)
            .on_end(move |ended| {
                let sent = crate::limits::human_bytes(ended.bytes);
                let broken = request_cut.as_ref().and_then(|cut| match cut.0.get() {
                    Some(Stopped::Broken(why)) => Some(why.clone()),
                    _ => None,
                });
                let why = match (answered.as_ref(), ended.error, broken) {
                    (Some(answered), _, _) => answered.0.clone(),
                    (None, Some(_), Some(broken)) => Some(format!(
                        "the visitor sent a malformed request body ({broken}): connection closed after {sent}"
                    )),
                    (None, Some(error), None) => {
                        Some(format!("response cut off after {sent}: {error}"))
                    }
                    (None, None, _) if !ended.complete && !bodyless => Some(format!(
                        "the visitor went away after {sent}, before the response ended"
                    )),
                    (None, None, _) => None,
                };
                let duration = seen.elapsed();
                let event = Event::Request {
                    seen,
                    status: status.as_u16(),
                    bytes: ended.bytes,
                    duration,
                    why,
                };
                record(&*client, access_log, event, answered.is_some());
            })
            .boxed_unsync()
    })
}

fn record(client: &dyn Client, access_log: bool, event: Event, answered: bool) {
    if access_log {
        event.trace();
    }
    client.log(event, answered);
}

/// Where a WebSocket's open and close lines go.
pub struct WebSocketLog {
    seen: Seen,
    client: Arc<dyn Client>,
    access_log: bool,
}

impl WebSocketLog {
    pub fn new(seen: Seen, tunnel: &Tunnel, access_log: bool) -> Self {
        WebSocketLog {
            seen,
            client: Arc::clone(tunnel.client()),
            access_log,
        }
    }

    pub fn opened(&self) {
        let event = Event::WebSocketOpen {
            seen: self.seen.clone(),
        };
        record(&*self.client, self.access_log, event, false);
    }

    pub fn closed(self, moved: &Moved, why: Option<String>) {
        let event = Event::WebSocketClose {
            duration: self.seen.elapsed(),
            seen: self.seen,
            bytes_in: moved.a_to_b.load(Relaxed),
            bytes_out: moved.b_to_a.load(Relaxed),
            why,
        };
        record(&*self.client, self.access_log, event, false);
    }
}
