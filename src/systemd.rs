//! Telling systemd (`Type=notify`, see `deploy/burrow.service`) what the
//! server is doing: ready once every listener is bound, stopping, and
//! reloading around a SIGHUP. Without `NOTIFY_SOCKET` (not under systemd)
//! every call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "could not notify systemd");
    }
}

/// Every listener is bound and serving.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// A reload (SIGHUP) has begun. systemd 253+ wants the monotonic time with
/// it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The reload is over (whatever it kept or rejected).
pub fn reloaded() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}
