//! The bytes between visitors and users' apps.
//!
//! - [`channel`]: a `forwarded-tcpip` channel as a byte stream, read through
//!   a [`spool`] its pump fills the moment data arrives (one slow reader
//!   never stalls the SSH connection it shares);
//! - [`relay`]: byte relays (WebSocket, raw TCP, TLS passthrough), their
//!   limits, the PROXY header;
//! - [`spooled`], [`spooled_body`]: a cluster link stream, or an HTTP body
//!   of it, read through a spool the same way;
//! - [`rewind`]: a stream read from after bytes already read from it;
//! - [`tcp`]: the public TCP ports of raw tunnels and their accept loops.

pub mod channel;
pub mod relay;
pub mod rewind;
pub mod spool;
pub mod spooled;
pub mod spooled_body;
pub mod tcp;
