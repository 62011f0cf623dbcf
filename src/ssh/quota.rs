//! What one authenticated SSH connection may make burrow hold or do (the
//! per-connection limits, `--max-*-per-connection` and friends), and the
//! strikes of a client that keeps asking past them.
//!
//! - forward requests: counted over the connection's life, granted or not;
//! - channel opens by the client (session, `direct-tcpip`): a bucket per
//!   minute;
//! - open `direct-tcpip` channels, and channel opens towards the client
//!   waiting for its answer: permits, held by the task that owns the
//!   channel (or waits for it), so they are given back however it ends;
//! - requests on the session channel, and the size of its command.
//!
//! Every limit answers with a [`Refusal`] naming its flag; the caller says
//! it the SSH way (an `ERROR:` line, the open-failure text, a 503 for a
//! visitor) and records it through [`crate::limits::Refusals::refuse`]. A
//! request refused here, or one against the protocol, is a strike
//! ([`Quota::strike`]); the caller ends the connection at the last one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use governor::clock::Clock;
use governor::DefaultDirectRateLimiter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ConnectionArgs;
use crate::limits::{human_bytes, Refusal};

/// The per-connection limits of one SSH connection, and what it used.
pub struct Quota {
    limits: ConnectionArgs,
    /// `tcpip-forward` requests so far, granted or refused.
    forwards: AtomicU32,
    /// Channel opens by the client; `None`: unlimited.
    opens: Option<DefaultDirectRateLimiter>,
    /// Open `direct-tcpip` channels; `None`: unlimited.
    direct: Option<Arc<Semaphore>>,
    /// Channel opens towards the client waiting for its answer; `None`:
    /// unlimited.
    pending: Option<Arc<Semaphore>>,
    /// Session-channel requests so far.
    session_requests: AtomicU32,
    /// Requests refused here or against the protocol so far.
    strikes: AtomicU32,
}

/// A slot of a per-connection limit, given back when dropped.
pub struct Held {
    /// Held only to be dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Quota {
    pub fn new(limits: &ConnectionArgs) -> Quota {
        let opens = std::num::NonZeroU32::new(limits.max_channel_opens_per_minute)
            .map(|n| governor::RateLimiter::direct(governor::Quota::per_minute(n)));
        Quota {
            opens,
            direct: semaphore(limits.max_direct_channels_per_connection),
            pending: semaphore(limits.max_pending_opens_per_connection),
            forwards: AtomicU32::new(0),
            session_requests: AtomicU32::new(0),
            strikes: AtomicU32::new(0),
            limits: limits.clone(),
        }
    }

    /// One more `tcpip-forward` request.
    pub fn forward(&self) -> Result<(), Refusal> {
        let max = self.limits.max_forwards_per_connection;
        if !counted_within(&self.forwards, max) {
            return Err(Refusal::new(
                "max-forwards-per-connection",
                format!("this connection has made its {max} forward requests (-R); reconnect to forward more"),
            ));
        }
        Ok(())
    }

    /// One more channel opened by the client.
    pub fn channel_open(&self) -> Result<(), Refusal> {
        let Some(bucket) = &self.opens else {
            return Ok(());
        };
        bucket.check().map_err(|not_until| {
            let max = self.limits.max_channel_opens_per_minute;
            let wait = not_until.wait_time_from(bucket.clock().now());
            Refusal::new(
                "max-channel-opens-per-minute",
                format!("more than {max} channel opens per minute on this connection"),
            )
            .retry_after(wait)
        })
    }

    /// A slot for one more open `direct-tcpip` channel.
    pub fn direct_channel(&self) -> Result<Held, Refusal> {
        take(&self.direct).ok_or_else(|| {
            let max = self.limits.max_direct_channels_per_connection;
            Refusal::new(
                "max-direct-channels-per-connection",
                format!("this connection already has {max} -L/-J channels open; close one first"),
            )
        })
    }

    /// A slot for one more channel open waiting for the client's answer.
    pub fn pending_open(&self) -> Result<Held, Refusal> {
        take(&self.pending).ok_or_else(|| {
            let max = self.limits.max_pending_opens_per_connection;
            Refusal::new(
                "max-pending-opens-per-connection",
                format!("the tunnel's SSH client has {max} connections it has not answered yet"),
            )
            .retry_after(std::time::Duration::from_secs(5))
        })
    }

    /// One more request on the session channel.
    pub fn session_request(&self) -> Result<(), Refusal> {
        let max = self.limits.max_session_requests;
        if !counted_within(&self.session_requests, max) {
            return Err(Refusal::new(
                "max-session-requests",
                format!("this connection has made its {max} session requests"),
            ));
        }
        Ok(())
    }

    /// The SSH command (the options), if it is not too long to read.
    pub fn command<'a>(&self, command: &'a [u8]) -> Result<&'a [u8], Refusal> {
        let max = self.limits.max_command_size;
        if max > 0 && command.len() as u64 > max {
            return Err(Refusal::new(
                "max-command-size",
                format!(
                    "the command is {} long; options fit in {}",
                    human_bytes(command.len() as u64),
                    human_bytes(max)
                ),
            ));
        }
        Ok(command)
    }

    /// Counts a strike: true when it is the one that ends the connection
    /// (once, however many more come while it goes).
    pub fn strike(&self) -> bool {
        let max = self.limits.max_violations_per_connection;
        let count = self.strikes.fetch_add(1, Ordering::Relaxed) + 1;
        max > 0 && count == max
    }

    /// `--max-violations-per-connection`, for the disconnect reason.
    pub fn max_strikes(&self) -> u32 {
        self.limits.max_violations_per_connection
    }
}

/// A permit cap of `max`; `None` for 0 (unlimited).
fn semaphore(max: u32) -> Option<Arc<Semaphore>> {
    (max > 0).then(|| Arc::new(Semaphore::new(max as usize)))
}

/// A permit of `cap` if one is free (always, without a cap).
fn take(cap: &Option<Arc<Semaphore>>) -> Option<Held> {
    match cap {
        None => Some(Held { _permit: None }),
        Some(cap) => Arc::clone(cap)
            .try_acquire_owned()
            .ok()
            .map(|p| Held { _permit: Some(p) }),
    }
}

/// Counts one more in `count`: false once it would pass `max` (0: never).
fn counted_within(count: &AtomicU32, max: u32) -> bool {
    let now = count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    max == 0 || now <= max
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn quota(args: &[&str]) -> Quota {
        let mut argv = vec!["burrow"];
        argv.extend_from_slice(args);
        let config = crate::config::Config::try_parse_from(argv).unwrap();
        Quota::new(&config.connection)
    }

    #[test]
    fn forwards_are_counted_granted_or_not() {
        let q = quota(&["--max-forwards-per-connection", "2"]);
        assert!(q.forward().is_ok());
        assert!(q.forward().is_ok());
        let refusal = q.forward().unwrap_err();
        assert_eq!(refusal.limit, "max-forwards-per-connection");
        assert!(q.forward().is_err());
        assert!(quota(&["--max-forwards-per-connection", "0"])
            .forward()
            .is_ok());
    }

    #[test]
    fn slots_come_back_when_dropped() {
        let q = quota(&["--max-direct-channels-per-connection", "1"]);
        let first = q.direct_channel().unwrap();
        let refusal = q.direct_channel().err().unwrap();
        assert_eq!(refusal.limit, "max-direct-channels-per-connection");
        drop(first);
        assert!(q.direct_channel().is_ok());
        let q = quota(&["--max-pending-opens-per-connection", "0"]);
        let held: Vec<_> = (0..1000).map(|_| q.pending_open().unwrap()).collect();
        assert_eq!(held.len(), 1000);
    }

    #[test]
    fn channel_opens_have_a_bucket_per_minute() {
        let q = quota(&["--max-channel-opens-per-minute", "3"]);
        for _ in 0..3 {
            q.channel_open().unwrap();
        }
        let refusal = q.channel_open().unwrap_err();
        assert_eq!(refusal.limit, "max-channel-opens-per-minute");
        let wait = refusal.retry_after.unwrap();
        assert!(wait <= std::time::Duration::from_secs(20), "{wait:?}");
    }

    #[test]
    fn the_last_strike_is_reported_once() {
        let q = quota(&["--max-violations-per-connection", "3"]);
        assert!(!q.strike());
        assert!(!q.strike());
        assert!(q.strike());
        assert!(!q.strike());
        let never = quota(&["--max-violations-per-connection", "0"]);
        assert!((0..100).all(|_| !never.strike()));
    }

    #[test]
    fn long_commands_are_refused() {
        let q = quota(&["--max-command-size", "16"]);
        assert!(q.command(b"auth=a:b").is_ok());
        let refusal = q.command(&[b'x'; 17]).unwrap_err();
        assert_eq!(refusal.limit, "max-command-size");
    }
}
