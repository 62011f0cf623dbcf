//! Gives freed heap memory back to the operating system.
//!
//! glibc's allocator keeps memory it has freed: after 10,000 tunnels closed,
//! burrow held on to ~500 MiB that it no longer used (BENCHMARKS.md, "Idle
//! tunnels"). `malloc_trim(0)` releases every free page of every arena, so
//! a periodic trim brings the footprint back to idle after a peak, and a
//! later peak reuses nothing stale (no growth round over round). It is
//! cheap (it touches free chunks only) and runs on the blocking pool, so a
//! slow one never holds up a runtime worker. Other allocators (musl, or a
//! build that swaps the global allocator) have no such call: then this does
//! nothing.

use std::time::Duration;

use crate::shutdown::Shutdown;

/// Trims every `every` until shutdown; `every` = 0 turns it off.
pub async fn run(every: Duration, shutdown: Shutdown) {
    if every.is_zero() || !supported() {
        return;
    }
    let mut ticker = shutdown.ticker(every);
    while ticker.tick().await {
        let started = std::time::Instant::now();
        let released = tokio::task::spawn_blocking(trim).await.unwrap_or(false);
        tracing::trace!(
            released,
            took_us = started.elapsed().as_micros() as u64,
            "heap trimmed"
        );
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn supported() -> bool {
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn supported() -> bool {
    false
}

/// One trim; whether any memory went back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
