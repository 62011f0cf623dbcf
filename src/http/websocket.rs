//! After the app answers 101, the visitor's and the app's connections
//! become one raw byte relay (WebSocket, or any HTTP/1.1 upgrade), capped
//! by `--websocket-max-bytes` and `--websocket-idle-timeout`, holding the
//! visitor's WebSocket slot for as long as it runs.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::log::WebSocketLog;
use super::observe::WebSocketEnd;
use crate::config::LimitArgs;
use crate::counters::Gauge;
use crate::limits::http::Slot;
use crate::pipe::relay::{self, Moved, RelayEnd, RelayLimits};
use crate::shutdown::Shutdown;

/// Relays the upgraded connections in a task of their own, which shutdown
/// waits for (it ends at the latest when shutdown's last phase begins).
pub fn relay(
    shutdown: &Shutdown,
    (limits, quota): (&LimitArgs, Option<std::sync::Arc<crate::plans::Account>>),
    (visitor, origin): (OnUpgrade, OnUpgrade),
    slot: Slot,
    (log, observed): (WebSocketLog, Option<WebSocketEnd>),
) {
    let gauge = Gauge::websocket();
    let limits = RelayLimits {
        max_bytes: limits.websocket_max_bytes,
        idle: limits.websocket_idle_timeout,
        flags: "websocket",
        bandwidth: None,
        quota,
    };
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let _held = (gauge, slot);
        let (visitor, origin) = match tokio::try_join!(visitor, origin) {
            Ok(pair) => pair,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return;
            }
        };
        log.opened();
        let moved = Moved::default();
        let (visitor, origin) = (TokioIo::new(visitor), TokioIo::new(origin));
        let end = tokio::select! {
            end = relay::relay_counted(visitor, origin, &limits, &moved) => end,
            _ = stop.finishing() => RelayEnd::Closed,
        };
        tracing::debug!(end = %end.describe(&limits), "upgraded connection ended");
        // Only a limit is burrow's doing; a visitor or app that hangs up,
        // politely or not, is not.
        let cut = matches!(
            end,
            RelayEnd::TooManyBytes | RelayEnd::Idle | RelayEnd::Quota
        );
        let why = cut.then(|| format!("WebSocket {}", end.describe(&limits)));
        if let Some(end) = observed {
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            end(load(&moved.a_to_b), load(&moved.b_to_a), why.clone());
        }
        log.closed(&moved, why);
    });
}
