//! The request inspector's limits: how much captured traffic a tunnel, and
//! the whole server, may hold in memory (oldest entries go first).

use super::parse::parse_size;

/// `--inspect-*`: the inspector's capture caps.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Request inspector")]
pub struct InspectArgs {
    /// Captured requests kept per tunnel for its inspector
    /// (`-L 4040:localhost:4040`); the oldest is dropped first.
    #[arg(long, env = "INSPECT_REQUESTS_PER_TUNNEL", default_value_t = 100)]
    pub inspect_requests_per_tunnel: usize,
    /// Memory the captured requests of one tunnel may take (headers and
    /// the first 64 KiB of each body); the oldest are dropped first.
    #[arg(long, env = "INSPECT_BYTES_PER_TUNNEL", default_value = "4MiB", value_parser = parse_size)]
    pub inspect_bytes_per_tunnel: u64,
    /// Memory the captured requests of every tunnel together may take; the
    /// oldest anywhere are dropped first.
    #[arg(long, env = "INSPECT_BYTES_TOTAL", default_value = "64MiB", value_parser = parse_size)]
    pub inspect_bytes_total: u64,
}
