//! The limits (every one configurable, with a strict default), and the
//! settings of the buffers, pools and logs that sit next to them: each
//! group is its own `--help` section.

use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::parse::{parse_cidr, parse_duration, parse_rate, parse_size, Rate};

/// Abuse limits. Strict defaults; `0` means unlimited (or disabled, for
/// timeouts) where the help says so. Durations: `90s`, `2m`, `1h30m`; sizes:
/// `64KiB`, `128MiB`, `1GiB`; rates: `25/s`, `600/m`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Limits (0 = unlimited/disabled where noted)")]
pub struct LimitArgs {
    /// New SSH connections per source IP per sliding minute; each one over is
    /// a violation and is refused. 0 = unlimited.
    #[arg(long, env = "MAX_CONNS_PER_MINUTE", default_value_t = 10)]
    pub max_conns_per_minute: u32,

    /// Violations (connection floods, handshake floods) after which an IP is
    /// blocked. 0 = never block.
    #[arg(long, env = "VIOLATIONS_BEFORE_BLOCK", default_value_t = 10)]
    pub violations_before_block: u32,

    /// How long a block lasts. A block closes all the IP's SSH connections
    /// and tunnels.
    #[arg(long, env = "BLOCK_DURATION", default_value = "1h", value_parser = parse_duration)]
    pub block_duration: Duration,

    /// Concurrent unauthenticated SSH handshakes per IP. 0 = unlimited.
    #[arg(long, env = "MAX_HANDSHAKES_PER_IP", default_value_t = 3)]
    pub max_handshakes_per_ip: u32,

    /// Concurrent unauthenticated SSH handshakes in total. 0 = unlimited.
    #[arg(long, env = "MAX_HANDSHAKES", default_value_t = 100)]
    pub max_handshakes: u32,

    /// Time from TCP connect to successful SSH authentication.
    #[arg(long, env = "HANDSHAKE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,

    /// How long an SSH client may say nothing before burrow asks whether
    /// it is still there (an SSH keepalive). 0 = never ask: a vanished
    /// client then holds its tunnels until TCP gives up on it.
    #[arg(long, env = "SSH_KEEPALIVE_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub ssh_keepalive_interval: Duration,

    /// Keepalives in a row a client may leave unanswered (at least 1); one
    /// more and the connection (with its tunnels) is closed: 15 s × (4 + 1)
    /// = 75 s by default to notice a vanished client.
    #[arg(long, env = "SSH_KEEPALIVE_MAX", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub ssh_keepalive_max: u32,

    /// Concurrent tunnels per client IP. 0 = unlimited.
    #[arg(long, env = "MAX_TUNNELS_PER_IP", default_value_t = 3)]
    pub max_tunnels_per_ip: u32,

    /// Concurrent tunnels in total. 0 = unlimited.
    #[arg(long, env = "MAX_TUNNELS", default_value_t = 1000)]
    pub max_tunnels: u32,

    /// Requests per visitor per tunnel (token bucket refill; IPv6 visitors
    /// are grouped by /64). 0 = unlimited.
    #[arg(long, env = "VISITOR_RATE", default_value = "25/s", value_parser = parse_rate)]
    pub visitor_rate: Rate,

    /// Token bucket size per visitor per tunnel.
    #[arg(long, env = "VISITOR_BURST", default_value_t = 200)]
    pub visitor_burst: u32,

    /// Requests per tunnel, all visitors together. 0 = unlimited.
    #[arg(long, env = "TUNNEL_RATE", default_value = "50/s", value_parser = parse_rate)]
    pub tunnel_rate: Rate,

    /// Token bucket size per tunnel.
    #[arg(long, env = "TUNNEL_BURST", default_value_t = 400)]
    pub tunnel_burst: u32,

    /// Wrong Basic-auth passwords (`auth=`) per visitor per tunnel once the
    /// burst is spent; over it, every password is refused with a 429 (the
    /// right one too) until the next attempt is due. 0 = unlimited.
    #[arg(long, env = "AUTH_ATTEMPTS_RATE", default_value = "6/m", value_parser = parse_rate)]
    pub auth_attempts_rate: Rate,

    /// Wrong Basic-auth passwords in a row per visitor per tunnel before
    /// `--auth-attempts-rate` applies.
    #[arg(long, env = "AUTH_ATTEMPTS_BURST", default_value_t = 10)]
    pub auth_attempts_burst: u32,

    /// Concurrent requests per visitor per tunnel (over → 429). 0 = unlimited.
    #[arg(long, env = "MAX_INFLIGHT_PER_VISITOR", default_value_t = 256)]
    pub max_inflight_per_visitor: u32,

    /// Concurrent requests per tunnel (over → 503). 0 = unlimited.
    #[arg(long, env = "MAX_INFLIGHT_PER_TUNNEL", default_value_t = 512)]
    pub max_inflight_per_tunnel: u32,

    /// Open WebSockets per visitor per tunnel (over → 429). 0 = unlimited.
    #[arg(long, env = "MAX_WEBSOCKETS_PER_VISITOR", default_value_t = 20)]
    pub max_websockets_per_visitor: u32,

    /// Open WebSockets per tunnel (over → 429). 0 = unlimited.
    #[arg(long, env = "MAX_WEBSOCKETS_PER_TUNNEL", default_value_t = 100)]
    pub max_websockets_per_tunnel: u32,

    /// Largest request body (over → 413) and response body (over → cut off,
    /// or 502 before the headers). 0 = unlimited.
    #[arg(long, env = "MAX_BODY_SIZE", default_value = "128MiB", value_parser = parse_size)]
    pub max_body_size: u64,

    /// Bytes per direction over one WebSocket before it is closed. 0 = unlimited.
    #[arg(long, env = "WEBSOCKET_MAX_BYTES", default_value = "1GiB", value_parser = parse_size)]
    pub websocket_max_bytes: u64,

    /// A WebSocket with no bytes either way for this long is closed. 0 = never.
    #[arg(long, env = "WEBSOCKET_IDLE_TIMEOUT", default_value = "2h", value_parser = parse_duration)]
    pub websocket_idle_timeout: Duration,

    /// A proxied request with no bytes moving either way for this long is
    /// cancelled (504 before the response starts). Streams that keep moving
    /// are never cut. 0 = never.
    #[arg(long, env = "REQUEST_IDLE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub request_idle_timeout: Duration,

    /// Time a visitor gets to send a request's headers, from its first byte
    /// (or from connecting). Slow-loris protection on :80 and :443.
    #[arg(long, env = "HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// How long a visitor's request or connection waits for the SSH client
    /// to open a stream to its app (the client's answer to the channel
    /// open); then 504. 0 = as long as the client's connection lasts.
    #[arg(long, env = "STREAM_OPEN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub stream_open_timeout: Duration,

    /// Time a visitor on :443 gets to send its first byte, its ClientHello
    /// and finish the TLS handshake (each step from the last). 0 = never
    /// cut.
    #[arg(long, env = "TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// Largest request head (request line and headers) on :80 and :443.
    #[arg(long, env = "MAX_HEADER_SIZE", default_value = "64KiB", value_parser = parse_size)]
    pub max_header_size: u64,

    /// Idle visitor keep-alive connections are closed after this long.
    #[arg(long, env = "KEEPALIVE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,

    /// A tunnel with no traffic for this long is closed (never while a
    /// request or WebSocket is open). 0 = never.
    #[arg(long, env = "TUNNEL_IDLE_TIMEOUT", default_value = "2h", value_parser = parse_duration)]
    pub tunnel_idle_timeout: Duration,

    /// A tunnel is closed this long after it opened, whatever it does; a
    /// notice comes 10 minutes before. 0 = never.
    #[arg(long, env = "TUNNEL_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub tunnel_max_lifetime: Duration,

    /// Comma-separated CIDRs of load balancers in front of burrow whose
    /// X-Forwarded-For header is believed for the visitor's IP. Empty = trust
    /// nobody.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// Concurrent visitor connections one raw TCP (or TLS passthrough)
    /// tunnel relays. 0 = unlimited.
    #[arg(long, env = "TCP_MAX_CONNS_PER_TUNNEL", default_value_t = 512)]
    pub tcp_max_conns_per_tunnel: u32,

    /// Concurrent connections one visitor IP may hold to one raw TCP (or
    /// TLS passthrough) tunnel. 0 = unlimited.
    #[arg(long, env = "TCP_MAX_CONNS_PER_VISITOR", default_value_t = 128)]
    pub tcp_max_conns_per_visitor: u32,

    /// A relayed TCP (or TLS passthrough) connection with no bytes either way
    /// for this long is closed. 0 = never.
    #[arg(long, env = "TCP_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Bytes per second one raw TCP (or TLS passthrough) tunnel may relay,
    /// both directions together. 0 = not capped.
    #[arg(long, env = "TCP_BANDWIDTH", default_value = "0", value_parser = parse_size)]
    pub tcp_bandwidth: u64,
}

/// What one authenticated SSH connection may make the server hold or do.
/// A request past one of these (or against the protocol) is refused and is
/// a strike; `--max-violations-per-connection` strikes end the connection.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Limits per SSH connection (0 = unlimited)")]
pub struct ConnectionArgs {
    /// `tcpip-forward` requests (`-R`) one SSH connection may make over its
    /// life, granted or refused: each one costs a name choice, a claim and a
    /// line to the user. 0 = unlimited.
    #[arg(long, env = "MAX_FORWARDS_PER_CONNECTION", default_value_t = 32)]
    pub max_forwards_per_connection: u32,

    /// Session and `direct-tcpip` (`-L`, `-J`) channel opens per SSH
    /// connection per minute, accepted or refused (a bucket of this many,
    /// refilled over the minute). 0 = unlimited.
    #[arg(long, env = "MAX_CHANNEL_OPENS_PER_MINUTE", default_value_t = 300)]
    pub max_channel_opens_per_minute: u32,

    /// `direct-tcpip` channels (the inspector, private aliases) one SSH
    /// connection may have open at once, counting those being answered.
    /// Each one holds a task and a spool. 0 = unlimited.
    #[arg(long, env = "MAX_DIRECT_CHANNELS_PER_CONNECTION", default_value_t = 64)]
    pub max_direct_channels_per_connection: u32,

    /// Channel opens towards one SSH client (one per visitor connection)
    /// waiting for its answer at once; beyond it visitors get a 503 at once.
    /// Each one holds a task until the client answers. 0 = unlimited.
    #[arg(long, env = "MAX_PENDING_OPENS_PER_CONNECTION", default_value_t = 512)]
    pub max_pending_opens_per_connection: u32,

    /// Requests on the session channel of one SSH connection over its life
    /// (pty-req, env, exec, shell, subsystem, x11; not window-change or
    /// signal, which cost nothing). 0 = unlimited.
    #[arg(long, env = "MAX_SESSION_REQUESTS", default_value_t = 64)]
    pub max_session_requests: u32,

    /// Longest SSH command (the options after the host) read as options.
    #[arg(long, env = "MAX_COMMAND_SIZE", default_value = "4KiB", value_parser = parse_size)]
    pub max_command_size: u64,

    /// Requests one SSH connection makes past these limits, or against the
    /// protocol (cancelling a forward it never held, a second exec, data
    /// after EOF), before it is disconnected; the disconnect counts as one
    /// violation towards --violations-before-block. 0 = never disconnect.
    #[arg(long, env = "MAX_VIOLATIONS_PER_CONNECTION", default_value_t = 20)]
    pub max_violations_per_connection: u32,

    /// A channel open the client has not answered for this long makes the
    /// server ask the client for an answer; a client that does not answer
    /// that either within this long (a key exchange it never finishes, a
    /// socket it stopped reading) is disconnected. 0 = never.
    #[arg(long, env = "CLIENT_ANSWER_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub client_answer_timeout: Duration,
}

/// Buffers for visitors who read slower than the app sends.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Spool (slow visitors)")]
pub struct SpoolArgs {
    /// Bytes from the local app a slow visitor has not taken yet, held in
    /// memory per stream before they spill to disk.
    #[arg(long, env = "SPOOL_MEMORY_PER_STREAM", default_value = "2MiB", value_parser = parse_size)]
    pub spool_memory_per_stream: u64,
    /// Memory all streams together may hold for slow visitors; beyond it
    /// streams spill to disk.
    #[arg(long, env = "SPOOL_MEMORY_TOTAL", default_value = "256MiB", value_parser = parse_size)]
    pub spool_memory_total: u64,
    /// Bytes one stream may spill to disk; a stream that needs more is cut
    /// (logged). 0 = never spill.
    #[arg(long, env = "SPOOL_DISK_PER_STREAM", default_value = "1GiB", value_parser = parse_size)]
    pub spool_disk_per_stream: u64,
    /// Disk all streams together may spill to.
    #[arg(long, env = "SPOOL_DISK_TOTAL", default_value = "4GiB", value_parser = parse_size)]
    pub spool_disk_total: u64,
    /// Directory for spill files (created unlinked: nothing is left behind).
    /// Default: the system's temporary directory.
    #[arg(long, env = "SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
}

/// Keep-alive connections to users' apps, reused across requests.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Connection pool")]
pub struct PoolArgs {
    /// Idle keep-alive connections (each one SSH channel) kept per tunnel
    /// for reuse by later requests. 0 = a new channel per request. The
    /// default matches `--max-inflight-per-tunnel`: every connection an
    /// admitted burst opened can be reused, instead of a channel opened
    /// and closed per request beyond the pool.
    #[arg(long, env = "CHANNEL_POOL_SIZE", default_value_t = 512)]
    pub channel_pool_size: usize,
    /// An idle pooled connection is closed after this long; keep it below
    /// the local app's keep-alive timeout.
    #[arg(long, env = "CHANNEL_POOL_IDLE", default_value = "4s", value_parser = parse_duration)]
    pub channel_pool_idle: Duration,
}

/// The live request log in users' terminals.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Request log")]
pub struct RequestLogArgs {
    /// Lines of the live request log waiting for one SSH session's terminal;
    /// beyond it lines are dropped and shown as `(+N not shown)`.
    #[arg(long, env = "REQUEST_LOG_BUFFER", default_value_t = 256)]
    pub request_log_buffer: usize,
    /// Request-log lines per SSH session for requests burrow answered itself
    /// (refusals, error pages), so a flood of them cannot scroll the real
    /// traffic away. 0 = unlimited.
    #[arg(long, env = "REQUEST_LOG_ANSWERED_RATE", default_value = "2/s", value_parser = parse_rate)]
    pub request_log_answered_rate: Rate,
    /// Burst of request-log lines for requests burrow answered itself.
    #[arg(long, env = "REQUEST_LOG_ANSWERED_BURST", default_value_t = 20)]
    pub request_log_answered_burst: u32,
}

/// The browser warning page before a tunnel's first visit.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Browser warning")]
pub struct WarningArgs {
    /// Do not show the browser warning page before a tunnel's first visit.
    #[arg(long, env = "NO_BROWSER_WARNING")]
    pub no_browser_warning: bool,
}
