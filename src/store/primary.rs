//! The connection to the primary: [`Primary`] hands out the command
//! connection ([`Conn`]) and the client the event subscription connects
//! with. For one Redis they never change. Behind Sentinel the follower
//! ([`super::follow`]) replaces them when the primary moves, and every
//! replacement starts a new *generation*, which the cluster watches: a
//! promotion can lose writes Redis had acknowledged, so the node writes
//! its state again.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind};
use redis::{TlsCertificates, Value};
use tokio::sync::{watch, Notify};
use tokio_util::sync::DropGuard;

/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(1500);

/// The command connection's settings (the same for every primary).
pub(super) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500))
}

/// The primary commands go to now.
pub(super) struct Current {
    /// Its `host:port`, to tell whether the sentinels name another one.
    pub addr: String,
    /// Opens the subscription's connections (same address, credentials,
    /// TLS and database as the command connection).
    pub client: redis::Client,
    /// The multiplexed command connection; it reconnects by itself, but
    /// only ever to this address.
    pub conn: ConnectionManager,
}

impl Current {
    /// Connects to the primary `client` leads to.
    pub async fn connect(client: redis::Client) -> RedisResult<Current> {
        let conn = client
            .get_connection_manager_with_config(manager_config())
            .await?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Current { addr, client, conn })
    }
}

/// A switch a sentinel announced: the primary's `host:port` before and
/// after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Switch {
    pub from: String,
    pub to: String,
}

/// What makes the follower ask the sentinels again; shared with every
/// [`Conn`] and the `+switch-master` watcher.
#[derive(Default)]
pub(super) struct Signals {
    /// A command failed as if the primary had moved, or a sentinel
    /// announced a switch.
    pub nudge: Notify,
    /// Switches announced since the follower last looked: one it did not
    /// make itself starts a new generation even at the same address (the
    /// primary moved away and back, and may have lost writes on the way).
    announced: Mutex<Vec<Switch>>,
}

impl Signals {
    /// A sentinel announced `switch`: ask again now.
    pub fn announce(&self, switch: Switch) {
        self.announced.lock().expect("switches lock").push(switch);
        self.nudge.notify_one();
    }

    /// The switches announced since the last call.
    pub fn take_announced(&self) -> Vec<Switch> {
        std::mem::take(&mut *self.announced.lock().expect("switches lock"))
    }
}

/// A handle on the primary, cheap to clone.
#[derive(Clone)]
pub(super) struct Primary(Arc<Shared>);

/// What every handle shares.
pub(super) struct Shared {
    /// Replaced as a whole when the primary moves (never changed in place),
    /// so a reader holds the lock only to clone the `Arc`.
    current: RwLock<Arc<Current>>,
    /// Bumped at every replacement (and after a switch at the same address).
    generation: watch::Sender<u64>,
    /// `None` for one Redis: nothing follows it, errors nudge nobody.
    signals: Option<Arc<Signals>>,
    /// Stops the follower's tasks when the last handle goes.
    _stop: Option<DropGuard>,
}

impl Primary {
    /// One Redis at `url` (`redis://`, `rediss://`), with `ca` as the
    /// only trusted root when given: connected now, never replaced.
    pub async fn single(url: &str, ca: Option<&[u8]>) -> Result<Primary> {
        let client = match ca {
            Some(pem) => redis::Client::build_with_tls(url, trusting(pem)),
            None => redis::Client::open(url),
        }
        .context("--cluster-redis")?;
        let current = Current::connect(client)
            .await
            .context("cannot reach Redis")?;
        Ok(Primary::new(current, None, None))
    }

    /// A primary found through the sentinels, which the follower replaces
    /// when it moves (it stops when `stop` is dropped with the last handle).
    pub fn followed(current: Current, signals: Arc<Signals>, stop: DropGuard) -> Primary {
        Primary::new(current, Some(signals), Some(stop))
    }

    fn new(current: Current, signals: Option<Arc<Signals>>, stop: Option<DropGuard>) -> Primary {
        Primary(Arc::new(Shared {
            current: RwLock::new(Arc::new(current)),
            generation: watch::channel(0).0,
            signals,
            _stop: stop,
        }))
    }

    /// The primary now.
    pub fn current(&self) -> Arc<Current> {
        Arc::clone(&self.0.current.read().expect("primary lock"))
    }

    /// The command connection to the primary now.
    pub fn conn(&self) -> Conn {
        Conn {
            inner: self.current().conn.clone(),
            signals: self.0.signals.clone(),
        }
    }

    /// Whether the primary can move (Sentinel).
    pub fn followed_by_sentinels(&self) -> bool {
        self.0.signals.is_some()
    }

    /// The generation now, and changes from now on.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.0.generation.subscribe()
    }

    /// A handle that does not keep the primary (or the follower) alive.
    pub fn downgrade(&self) -> Weak<Shared> {
        Arc::downgrade(&self.0)
    }

    /// From a handle [`Primary::downgrade`] made, while any other is alive.
    pub fn upgrade(weak: &Weak<Shared>) -> Option<Primary> {
        weak.upgrade().map(Primary)
    }

    /// Commands go to `next` from now on; a new generation starts. The
    /// move made.
    pub fn replace(&self, next: Current) -> Switch {
        let next = Arc::new(next);
        let old = std::mem::replace(
            &mut *self.0.current.write().expect("primary lock"),
            Arc::clone(&next),
        );
        tracing::warn!(from = %old.addr, to = %next.addr, "Redis primary moved: following it; this node writes its state again");
        self.0.generation.send_modify(|g| *g += 1);
        Switch {
            from: old.addr.clone(),
            to: next.addr.clone(),
        }
    }

    /// A new generation at the same primary (it was switched away and back).
    pub fn restart_generation(&self) {
        tracing::warn!(at = %self.current().addr, "Redis primary switched away and back: this node writes its state again");
        self.0.generation.send_modify(|g| *g += 1);
    }
}

/// Trust exactly the CA(s) in `pem`.
pub(super) fn trusting(pem: &[u8]) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

/// The command connection to one primary. Every failed command is looked
/// at: one that suggests the primary moved wakes the follower.
#[derive(Clone)]
pub(super) struct Conn {
    inner: ConnectionManager,
    /// `None` for one Redis.
    signals: Option<Arc<Signals>>,
}

impl Conn {
    fn check<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let (Err(err), Some(signals)) = (&result, &self.signals) {
            if may_have_moved(err) {
                signals.nudge.notify_one();
            }
        }
        result
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner.req_packed_command(cmd).await;
            self.check(result)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.check(result)
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

/// Errors after which the primary may be elsewhere: the connection broke
/// or timed out, or the node is no (writable) primary any more.
pub(super) fn may_have_moved(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_that_suggest_a_move() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(may_have_moved(&io));
        let readonly = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "You can't write against a read only replica.",
        ));
        assert!(may_have_moved(&readonly));
        let noscript = RedisError::from((ErrorKind::Server(ServerErrorKind::NoScript), "NOSCRIPT"));
        assert!(
            !may_have_moved(&noscript),
            "redis-rs loads the script itself"
        );
        let noperm = RedisError::from((ErrorKind::Server(ServerErrorKind::NoPerm), "NOPERM"));
        assert!(!may_have_moved(&noperm));
    }
}
