//! The last hour of traffic for the dashboard's charts: a bounded ring of
//! per-interval samples (requests, 5xx errors, bytes) taken from the
//! process-wide [`crate::ops::metrics`] totals by a sampler task.
//!
//! The ring holds [`CAPACITY`] samples of [`INTERVAL`] each (one hour of
//! ten-second buckets, a few kilobytes), so it never grows with uptime.
//! Reads also get the bucket in progress ("so far"), which makes a request
//! show up on the page at its next poll instead of up to one interval later.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::counters::{Totals, COUNTERS};
use crate::shutdown::Shutdown;

/// The width of one bucket.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How many buckets are kept: one hour of [`INTERVAL`]s.
pub const CAPACITY: usize = 360;

/// The ring and where the bucket in progress started.
pub struct History {
    interval: Duration,
    capacity: usize,
    ring: Mutex<Ring>,
}

struct Ring {
    samples: VecDeque<Sample>,
    /// The totals when the bucket in progress started.
    base: Totals,
    started: SystemTime,
}

/// One bucket: what happened from `start` to `end` (Unix milliseconds).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct Sample {
    pub start: u64,
    pub end: u64,
    pub requests: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Sample {
    fn between(from: SystemTime, to: SystemTime, counts: Totals) -> Sample {
        Sample {
            start: unix_ms(from),
            end: unix_ms(to),
            requests: counts.requests,
            errors: counts.errors,
            bytes_in: counts.bytes_in,
            bytes_out: counts.bytes_out,
        }
    }
}

/// The JSON document served at `GET /history`. Field names are a contract,
/// like those of the stats document: add, never rename.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub interval_secs: u64,
    pub capacity: usize,
    /// Server time (Unix milliseconds) when the snapshot was taken.
    pub now: u64,
    /// Completed buckets, oldest first.
    pub samples: Vec<Sample>,
    /// The bucket in progress, from the end of the last sample until `now`.
    pub current: Sample,
    /// Totals since the process started.
    pub total_requests: u64,
    pub total_errors: u64,
}

impl History {
    /// An empty history whose first bucket starts at `now` with `totals`.
    pub fn new(interval: Duration, capacity: usize, totals: Totals, now: SystemTime) -> History {
        History {
            interval,
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                samples: VecDeque::with_capacity(capacity.max(1)),
                base: totals,
                started: now,
            }),
        }
    }

    /// The history of this process, starting now.
    pub fn start_now() -> History {
        History::new(INTERVAL, CAPACITY, COUNTERS.totals(), SystemTime::now())
    }

    /// Closes the bucket in progress at `now` with `totals`, dropping the
    /// oldest bucket once the ring is full.
    pub fn record(&self, totals: Totals, now: SystemTime) {
        let mut ring = self.lock();
        let sample = Sample::between(ring.started, now, totals.since(&ring.base));
        if ring.samples.len() == self.capacity {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
        ring.base = totals;
        ring.started = now;
    }

    /// The completed buckets and the one in progress, as of `now`.
    pub fn snapshot(&self, totals: Totals, now: SystemTime) -> Snapshot {
        let ring = self.lock();
        Snapshot {
            interval_secs: self.interval.as_secs(),
            capacity: self.capacity,
            now: unix_ms(now),
            samples: ring.samples.iter().copied().collect(),
            current: Sample::between(ring.started, now, totals.since(&ring.base)),
            total_requests: totals.requests,
            total_errors: totals.errors,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring inconsistent
        // (every update is a few plain assignments), so poison is ignored.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Closes one bucket of the process's history every interval until
/// shutdown begins.
pub async fn sample(history: Arc<History>, shutdown: Shutdown) {
    sample_into(&history, || COUNTERS.totals(), shutdown).await
}

/// The sampler loop, over any source of totals (tests use their own).
pub async fn sample_into(history: &History, totals: impl Fn() -> Totals, shutdown: Shutdown) {
    let interval = history.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A stalled runtime yields one longer bucket, not a burst of empty ones.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tick.tick() => history.record(totals(), SystemTime::now()),
        }
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(requests: u64, errors: u64) -> Totals {
        Totals {
            requests,
            errors,
            bytes_in: requests * 100,
            bytes_out: requests * 1000,
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn buckets_hold_the_differences() {
        let history = History::new(INTERVAL, 4, totals(5, 1), at(100));
        history.record(totals(8, 1), at(110));
        history.record(totals(8, 3), at(120));
        let snap = history.snapshot(totals(9, 4), at(125));
        let counts: Vec<(u64, u64)> = snap
            .samples
            .iter()
            .map(|s| (s.requests, s.errors))
            .collect();
        assert_eq!(counts, [(3, 0), (0, 2)]);
        assert_eq!(snap.samples[0].start, 100_000);
        assert_eq!(snap.samples[1].end, 120_000);
        assert_eq!((snap.current.requests, snap.current.errors), (1, 1));
        assert_eq!((snap.current.start, snap.current.end), (120_000, 125_000));
        assert_eq!((snap.total_requests, snap.total_errors), (9, 4));
        assert_eq!(snap.interval_secs, 10);
    }

    /// The sampler closes a bucket per interval and returns once shutdown
    /// is requested (it is a tracked task: shutdown waits for it).
    #[tokio::test(start_paused = true)]
    async fn the_sampler_ticks_and_stops_on_shutdown() {
        let history = Arc::new(History::new(INTERVAL, 8, totals(0, 0), SystemTime::now()));
        let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let shutdown = Shutdown::new();
        let task = tokio::spawn({
            let (history, count, shutdown) = (history.clone(), count.clone(), shutdown.clone());
            async move {
                let source = || totals(count.load(std::sync::atomic::Ordering::Relaxed), 0);
                sample_into(&history, source, shutdown).await
            }
        });
        // Traffic mid-interval, never at the same instant as a tick.
        tokio::time::sleep(INTERVAL / 2).await;
        for n in 1..=3 {
            count.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(INTERVAL).await;
        }
        let snap = history.snapshot(totals(6, 0), SystemTime::now());
        let counts: Vec<u64> = snap.samples.iter().map(|s| s.requests).collect();
        assert_eq!(counts, [1, 2, 3]);
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the sampler stops on shutdown")
            .expect("the sampler does not panic");
    }

    #[test]
    fn the_ring_is_bounded() {
        let history = History::new(INTERVAL, 3, totals(0, 0), at(0));
        for i in 1..=10 {
            history.record(totals(i, 0), at(i * 10));
        }
        let snap = history.snapshot(totals(10, 0), at(105));
        assert_eq!(snap.samples.len(), 3);
        assert_eq!(snap.samples[0].start, 70_000, "the oldest buckets go first");
        assert!(snap.samples.iter().all(|s| s.requests == 1));
    }
}
