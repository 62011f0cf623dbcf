//! The live request log in the user's terminal: one line per request, and
//! one per WebSocket open and close, on the SSH session of the client that
//! served it, with a second line in plain words when burrow itself refused
//! or failed the request. With `output=json` the same events are JSON lines;
//! with `--access-log` they also go to the server's log.
//!
//! The proxy never waits for a terminal. Events go into a small bounded
//! queue per SSH connection and are dropped (counted, then shown as
//! `(+N not shown)`) when it is full. One writer task per connection drains
//! the queue into the session channel and waits for the channel's SSH
//! window, so a terminal that cannot keep up slows only its own log, and
//! russh never buffers more than one window of it. Lines for requests burrow
//! answered itself (refusals, error pages) are rate-limited, so a flood of
//! refused visitors cannot scroll the user's own traffic off the screen.
//!
//! Whatever a visitor controls (method, path) is escaped before it reaches
//! the terminal: control characters and Unicode bidi/format characters
//! become `\u{…}` escapes, so nobody can paint or reorder the user's screen.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use governor::DefaultDirectRateLimiter;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::RequestLogArgs;
use crate::escape::{escape, json_safe, shorten_to};

/// Paths longer than this many characters are shortened in the middle.
const PATH_WIDTH: usize = 64;
/// Reasons can quote what a visitor sent (an Origin header, say): they are
/// shortened too, so no visitor can flood the terminal through them.
const WHY_WIDTH: usize = 240;
/// A signed-in user's label (an e-mail, a name from the provider) is
/// shortened past this many characters.
const USER_WIDTH: usize = 64;
/// Longest wait for the session's options (and so its banner) before the
/// first line is written anyway.
const BANNER_WAIT: Duration = Duration::from_secs(5);
/// Bytes of log written to the channel in one go.
const BATCH_BYTES: usize = 16 * 1024;
/// How long drops must be followed by quiet before their marker is written
/// on its own (a line that does come carries the marker in front of it).
const MARKER_DELAY: Duration = Duration::from_millis(300);

/// Marks a response burrow made itself (an error or warning page), with
/// the reason to tell the tunnel's owner, if any.
#[derive(Clone, Debug, Default)]
pub struct Answered(pub Option<String>);

/// A request as it arrived: what the log needs once its response is done.
/// A shared handle: the request, its response and its log line hold one
/// copy between them.
#[derive(Clone, Debug)]
pub struct Seen(Arc<Arrival>);

#[derive(Debug)]
struct Arrival {
    at: SystemTime,
    started: Instant,
    method: String,
    path: String,
    visitor: IpAddr,
    host: String,
    /// How long the request was held until its tunnel's options were known
    /// (µs): the line says so, and its duration includes it.
    held_us: AtomicU64,
    /// Who the visitor is, when they signed in (their e-mail or name).
    user: OnceLock<String>,
}

impl Seen {
    pub fn new(method: &str, path: &str, visitor: IpAddr, host: &str) -> Seen {
        Seen(Arc::new(Arrival {
            at: SystemTime::now(),
            started: Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            visitor: visitor.to_canonical(),
            host: host.to_string(),
            held_us: AtomicU64::new(0),
            user: OnceLock::new(),
        }))
    }

    /// The visitor signed in as `user` (shown on the line).
    pub fn set_user(&self, user: String) {
        let _ = self.0.user.set(user);
    }

    /// Who the visitor signed in as, if they did.
    pub fn user(&self) -> Option<&str> {
        self.0.user.get().map(String::as_str)
    }

    /// The request was held `held` before it arrived here (its connection's
    /// TLS handshake waited for the tunnel's options): it counts as the
    /// request's own wait, and its time.
    pub fn held_before(mut self, held: Duration) -> Seen {
        if let Some(arrival) = Arc::get_mut(&mut self.0) {
            arrival.started = arrival.started.checked_sub(held).unwrap_or(arrival.started);
            arrival.at = arrival.at.checked_sub(held).unwrap_or(arrival.at);
        }
        self.add_held(held);
        self
    }

    /// The request waited `held` more for its tunnel's options.
    pub fn add_held(&self, held: Duration) {
        let us = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        self.0.held_us.fetch_add(us, Ordering::Relaxed);
    }

    /// How long the request was held for its tunnel's options.
    pub fn held(&self) -> Duration {
        self.0.held()
    }

    pub fn is_head(&self) -> bool {
        self.0.method == "HEAD"
    }

    pub fn elapsed(&self) -> Duration {
        self.0.started.elapsed()
    }
}

/// What happened to a request, for the log.
#[derive(Clone, Debug)]
pub enum Event {
    /// A response finished (or was cut).
    Request {
        seen: Seen,
        status: u16,
        bytes: u64,
        duration: Duration,
        why: Option<String>,
    },
    /// The app answered 101: the WebSocket is open.
    WebSocketOpen { seen: Seen },
    /// The WebSocket ended after `duration`; bytes counted per direction.
    WebSocketClose {
        seen: Seen,
        duration: Duration,
        bytes_in: u64,
        bytes_out: u64,
        why: Option<String>,
    },
}

impl Arrival {
    fn held(&self) -> Duration {
        Duration::from_micros(self.held_us.load(Ordering::Relaxed))
    }
}

impl Event {
    fn seen(&self) -> &Arrival {
        match self {
            Event::Request { seen, .. }
            | Event::WebSocketOpen { seen }
            | Event::WebSocketClose { seen, .. } => &seen.0,
        }
    }

    /// The event as a server log line (`--access-log`).
    pub fn trace(&self) {
        let seen = self.seen();
        let (method, path) = (escape(&seen.method), escape(&seen.path));
        match self {
            Event::Request {
                status,
                bytes,
                duration,
                why,
                ..
            } => {
                let held_ms = seen.held().as_millis() as u64;
                let user = escape(seen.user.get().map_or("", String::as_str));
                tracing::info!(target: "burrow::access", host = %seen.host, visitor = %seen.visitor, %user, %method, %path, status, bytes, duration_ms = duration.as_millis() as u64, held_ms, why = why.as_deref().unwrap_or(""), "request")
            }
            Event::WebSocketOpen { .. } => {
                tracing::info!(target: "burrow::access", host = %seen.host, visitor = %seen.visitor, %path, "websocket open")
            }
            Event::WebSocketClose {
                duration,
                bytes_in,
                bytes_out,
                why,
                ..
            } => {
                tracing::info!(target: "burrow::access", host = %seen.host, visitor = %seen.visitor, %path, bytes_in, bytes_out, duration_ms = duration.as_millis() as u64, why = why.as_deref().unwrap_or(""), "websocket closed")
            }
        }
    }
}

/// How a line is drawn: JSON or text, and text with or without colour
/// (colour only when the client asked for a terminal).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Style {
    pub json: bool,
    pub colour: bool,
}

struct Line {
    event: Event,
    style: Style,
    /// Lines dropped just before this one: the marker goes in front of it.
    not_shown_before: u64,
}

/// One SSH connection's request log.
pub struct RequestLog {
    queue: mpsc::Sender<Line>,
    not_shown: Arc<NotShown>,
    /// Lines for requests burrow answered itself.
    answered: Option<DefaultDirectRateLimiter>,
    colour: AtomicBool,
}

/// Lines dropped and not yet accounted for by a marker, and a wake-up for
/// the writer so the marker shows even when no line follows.
#[derive(Default)]
struct NotShown {
    count: AtomicU64,
    wake: Notify,
}

impl RequestLog {
    /// Starts the writer for the session channel `out`. It waits (briefly)
    /// for `settled`, so no line comes before the session banner.
    pub fn start(
        out: impl Terminal,
        settled: watch::Receiver<bool>,
        limits: &RequestLogArgs,
    ) -> RequestLog {
        let (queue, lines) = mpsc::channel(limits.request_log_buffer.max(1));
        let not_shown = Arc::new(NotShown::default());
        tokio::spawn(write_lines(lines, Arc::clone(&not_shown), out, settled));
        RequestLog {
            queue,
            not_shown,
            answered: crate::limits::http::bucket_quota(
                limits.request_log_answered_rate,
                limits.request_log_answered_burst,
            )
            .map(governor::RateLimiter::direct),
            colour: AtomicBool::new(false),
        }
    }

    /// The client asked for a terminal: colour the lines.
    pub fn set_colour(&self, on: bool) {
        self.colour.store(on, Ordering::Relaxed);
    }

    /// Queues `event` without waiting; `answered` marks a request burrow
    /// answered itself (rate-limited). A line that cannot be queued is
    /// counted for the `(+N not shown)` marker.
    pub fn push(&self, event: Event, answered: bool, json: bool) {
        let style = Style {
            json,
            colour: self.colour.load(Ordering::Relaxed),
        };
        let over_rate = answered
            && self
                .answered
                .as_ref()
                .is_some_and(|limiter| limiter.check().is_err());
        if over_rate {
            self.not_shown.dropped(1);
            return;
        }
        // The drops so far ride with this line, so the marker lands where
        // the lines went missing; if it does not fit either, they are
        // handed back.
        let line = Line {
            event,
            style,
            not_shown_before: self.not_shown.count.swap(0, Ordering::Relaxed),
        };
        if let Err(err) = self.queue.try_send(line) {
            let line = match err {
                mpsc::error::TrySendError::Full(line) | mpsc::error::TrySendError::Closed(line) => {
                    line
                }
            };
            self.not_shown.dropped(line.not_shown_before + 1);
        }
    }
}

impl NotShown {
    fn dropped(&self, n: u64) {
        self.count.fetch_add(n, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Where the lines go: the SSH session channel. A write waits until the
/// terminal has room (the channel's SSH window); `Err` once it is gone.
pub trait Terminal: Send + Sync + 'static {
    fn write(&self, text: Bytes) -> impl std::future::Future<Output = Result<(), ()>> + Send;
}

/// Drains the queue into the session channel until the connection ends.
async fn write_lines(
    mut lines: mpsc::Receiver<Line>,
    not_shown: Arc<NotShown>,
    out: impl Terminal,
    mut settled: watch::Receiver<bool>,
) {
    let _ = tokio::time::timeout(BANNER_WAIT, settled.wait_for(|done| *done)).await;
    let mut style = Style::default();
    loop {
        let mut text = String::new();
        tokio::select! {
            // Queued lines first: they are older than the ones dropped.
            biased;
            line = lines.recv() => {
                let Some(mut line) = line else { return };
                loop {
                    style = line.style;
                    if line.not_shown_before > 0 {
                        marker(line.not_shown_before, style, &mut text);
                    }
                    render(&line.event, style, &mut text);
                    // Whatever else is waiting goes out in the same write.
                    if text.len() >= BATCH_BYTES {
                        break;
                    }
                    let Ok(next) = lines.try_recv() else { break };
                    line = next;
                }
            }
            _ = not_shown.wake.notified() => {
                // Drops with no line after them (yet): say so once things
                // have been quiet for a moment, in one marker, not one each.
                tokio::time::sleep(MARKER_DELAY).await;
                if lines.is_empty() {
                    let lost = not_shown.count.swap(0, Ordering::Relaxed);
                    if lost > 0 {
                        marker(lost, style, &mut text);
                    }
                }
            }
        }
        if text.is_empty() {
            continue;
        }
        // Waits for the SSH window: the bound on what a stuck terminal costs.
        if out.write(Bytes::from(text)).await.is_err() {
            return;
        }
    }
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

fn status_colour(status: u16) -> &'static str {
    match status {
        100..=299 => "\x1b[32m",
        300..=399 => "\x1b[36m",
        400..=499 => "\x1b[33m",
        _ => "\x1b[31m",
    }
}

/// Appends the line(s) for `event` to `out` (`pub(crate)` for
/// `crate::fuzzing`, which checks that nothing unsafe gets through).
pub(crate) fn render(event: &Event, style: Style, out: &mut String) {
    if style.json {
        out.push_str(&json(event));
        out.push_str("\r\n");
        return;
    }
    let seen = event.seen();
    let paint = |code: &'static str| if style.colour { code } else { "" };
    let reset = paint(RESET);
    let (dim, bold) = (paint(DIM), paint(BOLD));
    let time = Clock(seen.at);
    let method = escape(&seen.method);
    let path = shorten(&seen.path);
    let ip = seen.visitor;
    let why = match event {
        Event::Request {
            status,
            bytes,
            duration,
            why,
            ..
        } => {
            let colour = paint(status_colour(*status));
            let user = seen
                .user
                .get()
                .map(|u| format!("  {}", shorten_to(u, USER_WIDTH)))
                .unwrap_or_default();
            let _ = write!(
                out,
                "{dim}{time}{reset}  {bold}{method:<7}{reset} {path}  {colour}{status}{reset}  {}  {}  {dim}{ip}{reset}{user}\r\n",
                crate::limits::human_bytes(*bytes),
                took(*duration),
            );
            why
        }
        Event::WebSocketOpen { .. } => {
            let colour = paint(status_colour(101));
            let _ = write!(
                out,
                "{dim}{time}{reset}  {bold}WS{reset}      {path}  {colour}open{reset}  {dim}{ip}{reset}\r\n"
            );
            &None
        }
        Event::WebSocketClose {
            duration,
            bytes_in,
            bytes_out,
            why,
            ..
        } => {
            let _ = write!(
                out,
                "{dim}{time}{reset}  {bold}WS{reset}      {path}  closed after {}  {} in, {} out  {dim}{ip}{reset}\r\n",
                took(*duration),
                crate::limits::human_bytes(*bytes_in),
                crate::limits::human_bytes(*bytes_out),
            );
            why
        }
    };
    if let Some(why) = why {
        let colour = paint("\x1b[33m");
        let _ = write!(
            out,
            "          {colour}↳ {}{reset}\r\n",
            shorten_to(why, WHY_WIDTH)
        );
    }
    let held = seen.held();
    if matches!(event, Event::Request { .. }) && !held.is_zero() {
        let _ = write!(
            out,
            "          {dim}↳ held {} for the client's options{reset}\r\n",
            took(held)
        );
    }
}

fn marker(lost: u64, style: Style, out: &mut String) {
    if style.json {
        let _ = write!(
            out,
            "{}\r\n",
            serde_json::json!({"event": "not_shown", "count": lost})
        );
    } else {
        let (dim, reset) = if style.colour { (DIM, RESET) } else { ("", "") };
        let _ = write!(out, "{dim}(+{lost} not shown){reset}\r\n");
    }
}

/// The JSON line of `event` (without the line end).
fn json(event: &Event) -> String {
    let seen = event.seen();
    let mut object = serde_json::json!({
        "time": humantime::format_rfc3339_millis(seen.at).to_string(),
        "host": seen.host,
        "method": seen.method,
        "path": seen.path,
        "visitor": seen.visitor.to_string(),
        "user": seen.user.get(),
    });
    let fields = match event {
        Event::Request {
            status,
            bytes,
            duration,
            why,
            ..
        } => serde_json::json!({
            "event": "request",
            "status": status,
            "bytes": bytes,
            "duration_ms": duration.as_secs_f64() * 1000.0,
            "held_ms": seen.held().as_secs_f64() * 1000.0,
            "why": why.as_deref().map(|why| shorten_to(why, WHY_WIDTH)),
        }),
        Event::WebSocketOpen { .. } => serde_json::json!({"event": "websocket_open"}),
        Event::WebSocketClose {
            duration,
            bytes_in,
            bytes_out,
            why,
            ..
        } => serde_json::json!({
            "event": "websocket_close",
            "duration_ms": duration.as_secs_f64() * 1000.0,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "why": why.as_deref().map(|why| shorten_to(why, WHY_WIDTH)),
        }),
    };
    if let (Some(object), serde_json::Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    json_safe(&object.to_string())
}

/// The escaped path, shortened in the middle to [`PATH_WIDTH`] units: the
/// start says where, the end says which.
pub fn shorten(path: &str) -> Cow<'_, str> {
    shorten_to(path, PATH_WIDTH)
}

/// `HH:MM:SS` in UTC, written where it is shown.
struct Clock(SystemTime);

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let since_epoch = self.0.duration_since(std::time::UNIX_EPOCH);
        let secs = since_epoch.map_or(0, |d| d.as_secs()) % 86_400;
        write!(
            f,
            "{:02}:{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

fn took(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escape::is_unsafe;

    #[test]
    fn escapes_controls_and_bidi() {
        let text = escape("/a\x1b[31mred\u{202e}gnp.exe\u{7f}\u{200b}");
        assert_eq!(text, "/a\\u{1b}[31mred\\u{202e}gnp.exe\\u{7f}\\u{200b}");
        assert!(!text.chars().any(is_unsafe));
    }

    #[test]
    fn shortens_long_paths_in_the_middle() {
        let path = format!("/start{}/end.html", "x".repeat(200));
        let short = shorten(&path);
        assert_eq!(short.chars().count(), PATH_WIDTH);
        assert!(short.starts_with("/startxx"));
        assert!(short.ends_with("x/end.html"));
        assert!(short.contains('…'));
        assert_eq!(shorten("/short"), "/short");
    }

    #[test]
    fn shortening_keeps_escapes_whole() {
        let path = "\u{202e}".repeat(100);
        let short = shorten(&path);
        assert!(short.starts_with("\\u{202e}"));
        assert!(short.ends_with("\\u{202e}"));
        assert_eq!(short.matches("\\u{202e}").count(), PATH_WIDTH - 1);
    }

    #[test]
    fn json_lines_escape_bidi_but_keep_the_value() {
        let seen = Seen::new("GET", "/\u{202e}x\u{1}", "127.0.0.1".parse().unwrap(), "a");
        let line = json(&Event::WebSocketOpen { seen });
        assert!(!line.chars().any(is_unsafe), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["path"], "/\u{202e}x\u{1}");
        assert_eq!(value["event"], "websocket_open");
    }

    /// A terminal that takes nothing until `open` is raised, then records.
    #[derive(Clone)]
    struct Stuck {
        open: Arc<tokio::sync::Semaphore>,
        seen: Arc<std::sync::Mutex<String>>,
        writes: Arc<Notify>,
    }

    impl Default for Stuck {
        fn default() -> Self {
            Stuck {
                open: Arc::new(tokio::sync::Semaphore::new(0)),
                seen: Default::default(),
                writes: Default::default(),
            }
        }
    }

    impl Terminal for Stuck {
        async fn write(&self, text: Bytes) -> Result<(), ()> {
            let _permit = self.open.acquire().await.map_err(|_| ())?;
            self.seen
                .lock()
                .unwrap()
                .push_str(std::str::from_utf8(&text).unwrap());
            self.writes.notify_one();
            Ok(())
        }
    }

    fn limits(buffer: usize) -> RequestLogArgs {
        use clap::Parser;
        let mut config = crate::config::Config::parse_from(["burrow"]);
        config.request_log.request_log_buffer = buffer;
        config.request_log.request_log_answered_rate = crate::config::Rate { per_second: 0.0 };
        config.request_log
    }

    fn request(path: &str) -> Event {
        Event::Request {
            seen: Seen::new("GET", path, "127.0.0.1".parse().unwrap(), "a"),
            status: 200,
            bytes: 1,
            duration: Duration::from_millis(1),
            why: None,
        }
    }

    /// A terminal that cannot keep up never makes `push` wait: what does
    /// not fit the buffer is dropped and counted, and the marker says how
    /// many once the terminal takes lines again.
    #[tokio::test]
    async fn a_stuck_terminal_drops_lines_and_shows_the_count() {
        let out = Stuck::default();
        let (settled_tx, settled) = watch::channel(true);
        let log = RequestLog::start(out.clone(), settled, &limits(4));
        // The first line is taken by the writer (stuck in its write), four
        // more fill the buffer, the other 45 are dropped.
        log.push(request("/0"), false, false);
        tokio::time::timeout(Duration::from_secs(5), async {
            while log.queue.capacity() < 4 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        for i in 1..50 {
            log.push(request(&format!("/{i}")), false, false);
        }
        out.open.add_permits(1000);
        let text = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let text = out.seen.lock().unwrap().clone();
                if text.contains("not shown") {
                    return text;
                }
                out.writes.notified().await;
            }
        })
        .await
        .expect("marker written");
        assert!(text.contains("(+45 not shown)"), "{text}");
        for shown in ["/0 ", "/1 ", "/4 "] {
            assert!(text.contains(shown), "{shown}: {text}");
        }
        assert!(!text.contains("/5 "), "{text}");
        drop(settled_tx);
    }

    #[test]
    fn text_line_has_every_field_and_the_reason() {
        let seen = Seen::new("POST", "/upload", "203.0.113.9".parse().unwrap(), "a");
        let event = Event::Request {
            seen,
            status: 502,
            bytes: 1200,
            duration: Duration::from_millis(35),
            why: Some("your local app refused the connection".into()),
        };
        let mut out = String::new();
        render(&event, Style::default(), &mut out);
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert!(lines[0].contains("POST"), "{out}");
        assert!(
            lines[0].contains("/upload  502  1.2 kB  35 ms  203.0.113.9"),
            "{out}"
        );
        assert!(lines[1].contains("↳ your local app refused the connection"));
        assert!(!out.contains('\x1b'), "no colour without a terminal");
        let mut coloured = String::new();
        render(
            &event,
            Style {
                json: false,
                colour: true,
            },
            &mut coloured,
        );
        assert!(coloured.contains("\x1b[31m502"));
    }
}
