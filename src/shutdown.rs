//! Shutdown plumbing: two tokens every listener and connection watches, a
//! tracker of the tasks that must finish before the process exits, and the
//! OS signals that start it all.
//!
//! Shutdown has two phases. *Requested*: listeners stop accepting, HTTP
//! connections finish their in-flight requests and close, SSH users are told
//! the server is restarting, but SSH connections stay up, since in-flight
//! requests still travel through them. *Finishing*: once the requests are
//! done (or the grace period is over), SSH connections are closed too.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cloned into every accept loop and connection task.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    finish: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether shutdown has begun.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has begun.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// Begins shutdown: accept loops stop, connections are asked to finish.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Resolves once the last phase has begun: close what is left.
    pub async fn finishing(&self) {
        self.finish.cancelled().await
    }

    /// Begins the last phase (implies [`Shutdown::trigger`]).
    pub fn finish(&self) {
        self.token.cancel();
        self.finish.cancel();
    }

    /// Spawns a task that shutdown waits for (up to its grace period).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// A tick every `period` until shutdown begins: the loop of every
    /// housekeeping task.
    pub fn ticker(&self, period: Duration) -> Ticker {
        Ticker {
            shutdown: Some(self.clone()),
            ..Ticker::every(period)
        }
    }

    /// Runs `work` unless shutdown begins first (`None` then).
    pub async fn unless_requested<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            _ = self.requested() => None,
            done = work => Some(done),
        }
    }

    /// Waits for tracked tasks to finish, at most `grace`. Returns whether
    /// they all did.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// A periodic tick: the first one `period` after it was made, late ones
/// delayed rather than bunched up (a slow pass never causes a burst).
pub struct Ticker {
    interval: tokio::time::Interval,
    /// Ends the ticks once shutdown begins; `None`: they never end (the
    /// task is dropped instead).
    shutdown: Option<Shutdown>,
}

impl Ticker {
    /// A tick every `period`, for as long as it is polled.
    pub fn every(period: Duration) -> Ticker {
        let start = tokio::time::Instant::now() + period;
        let mut interval = tokio::time::interval_at(start, period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker {
            interval,
            shutdown: None,
        }
    }

    /// Waits for the next tick; `false` once shutdown has begun.
    pub async fn tick(&mut self) -> bool {
        let Some(shutdown) = &self.shutdown else {
            self.interval.tick().await;
            return true;
        };
        tokio::select! {
            _ = shutdown.requested() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, and returns a future that
/// resolves on the first of them. Installing early matters: a signal that
/// arrives before the handlers exist kills the process instead of stopping
/// it cleanly.
pub fn signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
