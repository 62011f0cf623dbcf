//! When a connection's options are known. They come as the session's
//! command (`ssh … -- auth=… allow=…`), and visitors that arrive before
//! them are held ([`crate::tunnel::settle_options`]) so that `auth=` and
//! `allow=` are never bypassed. A client that sends options sends its exec
//! as soon as it reads the session channel's confirmation; one that sends
//! none says so by sending nothing. How long to wait for nothing is timed
//! by the connection itself:
//!
//! - When the session channel is accepted, a ping (`keepalive@openssh.com`,
//!   which every client answers) goes out *ahead of* the confirmation.
//!   SSH is one ordered stream each way, so a client reads the ping, then
//!   the confirmation, and sends its pty/env/exec requests right behind the
//!   ping's answer — however long the link. Once the answer is in, the
//!   options get a margin of [`MARGIN_RTTS`] round trips (as measured by
//!   that ping; at least [`MARGIN_FLOOR`], at most [`MARGIN_CAP`]) to
//!   arrive, then the connection is settled without them.
//! - After the first forward, a ping the same way: a client that opens a
//!   session channel (`ssh` without `-N`) has sent its open with its
//!   forwards, or sends it as it reads the forward's answer, right behind
//!   the ping's. No session channel a margin after the answer: `-N`, no
//!   options will come.
//! - A client that never answers a ping is settled [`UNANSWERED`] after its
//!   first forward, as before this was measured.

use std::sync::Arc;
use std::time::Duration;

use russh::server::Session as Russh;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::session::Session;

/// The margin after the ping's answer, in round trips of that ping.
const MARGIN_RTTS: u32 = 2;
/// The margin is never shorter: a client's own delay between reading the
/// confirmation and writing its exec, a packet split in two.
const MARGIN_FLOOR: Duration = Duration::from_millis(50);
/// Nor longer: a link that slow has its round trip counted already (the
/// wait is the ping's answer plus the margin).
const MARGIN_CAP: Duration = Duration::from_millis(750);
/// A client that never answers the ping is settled this long after its
/// first forward anyway.
const UNANSWERED: Duration = Duration::from_millis(3500);

/// A ping sent to the client, waiting for its answer.
pub struct Ping {
    sent: Instant,
    answered: oneshot::Receiver<()>,
}

impl Ping {
    /// Sends a ping now, in order with what this callback writes next.
    pub fn send(session: &mut Russh) -> Ping {
        let (tx, answered) = oneshot::channel();
        // Before the key exchange there is nothing to ping through: the
        // answer never comes, and the fallback settles.
        let _ = session.send_ping(tx);
        Ping {
            sent: Instant::now(),
            answered,
        }
    }

    /// Waits for the answer: the round trip, or `None` when none came (at
    /// `deadline`, or the connection went).
    async fn round_trip(self, deadline: Instant) -> Option<Duration> {
        match tokio::time::timeout_at(deadline, self.answered).await {
            Ok(Ok(())) => Some(self.sent.elapsed()),
            _ => None,
        }
    }
}

/// How long after a ping's answer the options may still come.
pub fn margin(rtt: Duration) -> Duration {
    (rtt * MARGIN_RTTS).clamp(MARGIN_FLOOR, MARGIN_CAP)
}

/// After the connection's first forward: settles a client that opens no
/// session channel (`-N`); a client that does is settled by
/// [`after_session`] (or by its exec).
pub fn after_forward(session: Arc<Session>, ping: Ping) {
    tokio::spawn(async move {
        let deadline = Instant::now() + UNANSWERED;
        if let Some(rtt) = ping.round_trip(deadline).await {
            tokio::time::sleep(margin(rtt)).await;
            if !session.has_session() {
                tracing::debug!(
                    conn = session.id(),
                    rtt_ms = rtt.as_millis() as u64,
                    "no session channel after the first forward (-N): settled"
                );
                session.settle();
                return;
            }
        }
        // A session channel (its own ping settles it), or no answer at all:
        // the fallback bounds the wait.
        tokio::select! {
            _ = session.settled() => {}
            _ = tokio::time::sleep_until(deadline) => session.settle(),
        }
    });
}

/// After the session channel was accepted: settles the connection a
/// margin after the ping sent ahead of the confirmation is answered, if
/// its exec (or shell) has not settled it by then.
pub fn after_session(session: Arc<Session>, ping: Ping) {
    tokio::spawn(async move {
        let deadline = Instant::now() + UNANSWERED;
        let Some(rtt) = ping.round_trip(deadline).await else {
            return;
        };
        tokio::select! {
            _ = session.settled() => {}
            _ = tokio::time::sleep(margin(rtt)) => {
                tracing::debug!(conn = session.id(), rtt_ms = rtt.as_millis() as u64, "no options after the session channel: settled");
                session.settle();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_few_round_trips_within_bounds() {
        assert_eq!(margin(Duration::from_micros(80)), MARGIN_FLOOR);
        assert_eq!(
            margin(Duration::from_millis(100)),
            Duration::from_millis(200)
        );
        assert_eq!(margin(Duration::from_secs(2)), MARGIN_CAP);
    }
}
