//! What the core tells a tunnel's user, as data: the client renders it (the
//! SSH session as a terminal line or an `output=json` event, see
//! `ssh::banner`), so the core never writes text for a protocol.

use std::time::Duration;

use crate::config::Balance;

/// Something the user of a connection is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A newer connection of the same key took the tunnel at `url` over.
    TakenOver { url: String },
    /// The server closed the tunnel at `url`; `connect` is how to get one
    /// again.
    Closed {
        url: String,
        reason: String,
        connect: String,
    },
    /// `count` clients serve `url` now, balanced by `balance`.
    Clients {
        url: String,
        count: usize,
        balance: Balance,
    },
    /// `url` reaches its maximum lifetime in `left`.
    LifetimeSoon { url: String, left: Duration },
    /// `url` closes in `left` without traffic (the limit is `idle`).
    IdleSoon {
        url: String,
        left: Duration,
        idle: Duration,
    },
    /// The connection's IP is blocked until `until_utc`.
    Blocked { until_utc: String, reason: String },
    /// The server is shutting down.
    Restarting,
    /// No certificate could be had for custom domain `name`.
    CertFailed { name: String, why: String },
}

/// Why the server closed a tunnel (the text after "closed: ").
pub const CLOSED_BY_OPERATOR: &str = "closed by the server operator";
