//! The byte relay behind an HTTP/1.1 upgrade (WebSocket): both directions
//! copied at once, each capped at `websocket-max-bytes`, and the whole relay
//! closed after `websocket-idle-timeout` with no bytes either way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::limits::{human, Activity};

/// Copy buffer per direction.
const BUFFER: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed.
    Closed,
    /// One direction passed the byte cap.
    TooManyBytes,
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed.
    Error,
}

impl RelayEnd {
    pub fn describe(&self, max_bytes: u64, idle: Duration) -> String {
        match self {
            RelayEnd::Closed => "closed".into(),
            RelayEnd::TooManyBytes => {
                format!("cut after {max_bytes} bytes in one direction (websocket-max-bytes)")
            }
            RelayEnd::Idle => format!("idle for {} (websocket-idle-timeout)", human(idle)),
            RelayEnd::Error => "connection error".into(),
        }
    }
}

/// Relays between `a` and `b` until both close or a limit ends it.
/// `max_bytes == 0` and `idle == 0` disable the respective limit.
pub async fn relay<A, B>(a: A, b: B, max_bytes: u64, idle: Duration) -> RelayEnd
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let activity = Arc::new(Activity::default());
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let forward = pump(&mut a_read, &mut b_write, max_bytes, &activity);
    let backward = pump(&mut b_read, &mut a_write, max_bytes, &activity);
    let idle = idle_expired(&activity, idle);
    tokio::pin!(forward, backward, idle);
    // The first direction to end decides, unless it merely closed: then the
    // other direction may still finish (half-close).
    let rest: Pin<&mut (dyn Future<Output = RelayEnd> + Send)> = tokio::select! {
        end = &mut forward => {
            if end != RelayEnd::Closed {
                return end;
            }
            backward
        }
        end = &mut backward => {
            if end != RelayEnd::Closed {
                return end;
            }
            forward
        }
        _ = &mut idle => return RelayEnd::Idle,
    };
    tokio::select! {
        end = rest => end,
        _ = idle => RelayEnd::Idle,
    }
}

/// Copies one direction; on EOF, shuts the writer down (half-close) so the
/// other direction can finish.
async fn pump<R, W>(reader: &mut R, writer: &mut W, max_bytes: u64, activity: &Activity) -> RelayEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => {
                let _ = writer.shutdown().await;
                return RelayEnd::Closed;
            }
            Ok(n) => n,
            Err(_) => return RelayEnd::Error,
        };
        total += n as u64;
        if max_bytes > 0 && total > max_bytes {
            return RelayEnd::TooManyBytes;
        }
        activity.touch();
        if writer.write_all(&buf[..n]).await.is_err() {
            return RelayEnd::Error;
        }
        activity.touch();
    }
}

/// Resolves once `activity` has been still for `idle` (never when zero).
pub async fn idle_expired(activity: &Activity, idle: Duration) {
    if idle.is_zero() {
        return std::future::pending().await;
    }
    loop {
        let left = idle.saturating_sub(activity.idle_for());
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_closes() {
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(relay(a, b, 0, Duration::ZERO));
        a_peer.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        b_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        b_peer.write_all(b"pong").await.unwrap();
        a_peer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        drop(a_peer);
        drop(b_peer);
        assert_eq!(relay.await.unwrap(), RelayEnd::Closed);
    }

    #[tokio::test]
    async fn byte_cap_ends_the_relay() {
        let (a, mut a_peer) = tokio::io::duplex(64 * 1024);
        let (b, _b_peer) = tokio::io::duplex(64 * 1024);
        let relay = tokio::spawn(relay(a, b, 1000, Duration::ZERO));
        a_peer.write_all(&[1u8; 2000]).await.unwrap();
        assert_eq!(relay.await.unwrap(), RelayEnd::TooManyBytes);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relay_is_closed() {
        let (a, _a_peer) = tokio::io::duplex(1024);
        let (b, _b_peer) = tokio::io::duplex(1024);
        let end = relay(a, b, 0, Duration::from_secs(30)).await;
        assert_eq!(end, RelayEnd::Idle);
    }
}
