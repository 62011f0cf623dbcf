//! Command-line and environment configuration.
//!
//! Every flag has an environment fallback; the names are a contract that
//! operators script against, so flags are only ever added, never renamed.
//! Parsing errors are reduced to one line that names the flag and the cause.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use ipnet::IpNet;

/// The validated server configuration.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "burrow",
    version,
    about = "SSH tunnel server: `ssh -R 80:localhost:3000 DOMAIN` gives a public HTTPS URL.",
    long_about = None,
)]
pub struct Config {
    /// Domain the tunnels live under: tunnels are served as https://NAME.DOMAIN.
    /// Needs a wildcard DNS record `*.DOMAIN` (and `DOMAIN`) pointing at this server.
    #[arg(long, env = "DOMAIN", default_value = "localhost")]
    pub domain: String,

    /// Address of the SSH server that clients run `ssh -R` against.
    #[arg(long, env = "SSH_ADDR", default_value = "0.0.0.0:22")]
    pub ssh_addr: SocketAddr,

    /// Address of the plain-HTTP listener (redirects everything to HTTPS).
    #[arg(long, env = "HTTP_ADDR", default_value = "0.0.0.0:80")]
    pub http_addr: SocketAddr,

    /// Address of the HTTPS reverse proxy that serves the tunnels.
    #[arg(long, env = "HTTPS_ADDR", default_value = "0.0.0.0:443")]
    pub https_addr: SocketAddr,

    /// Address of the JSON stats endpoint. Only loopback peers are answered,
    /// whatever it is bound to.
    #[arg(long, env = "STATS_ADDR", default_value = "127.0.0.1:9090")]
    pub stats_addr: SocketAddr,

    /// SSH host key (OpenSSH format). An ed25519 key is generated there, mode
    /// 0600, when the file does not exist.
    #[arg(long = "host-key", env = "HOST_KEY_PATH", default_value = "host_key")]
    pub host_key: PathBuf,

    /// PEM certificate chain for DOMAIN and *.DOMAIN. Give it together with
    /// --tls-key; when both are unset a self-signed certificate is generated
    /// at start-up (for local use only).
    #[arg(long, env = "TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching --tls-cert.
    #[arg(long, env = "TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// HTTPS port printed in tunnel URLs (`:PORT` is shown when it is not 443).
    /// Defaults to the port the HTTPS listener is bound to; set it when a
    /// firewall or load balancer maps another public port.
    #[arg(long, env = "PUBLIC_HTTPS_PORT")]
    pub public_https_port: Option<u16>,

    /// Directory for state that must survive restarts (the secret that
    /// derives stable names from SSH keys). Created with mode 0700.
    #[arg(long, env = "STATE_DIR", default_value = "state")]
    pub state_dir: PathBuf,

    /// Keys file: one authorized_keys-style line per key, granting it names,
    /// e.g. `names=api,dashboard ssh-ed25519 AAAA… alice@laptop`. Reloaded
    /// on SIGHUP and when the file changes.
    #[arg(long, env = "KEYS_FILE")]
    pub keys_file: Option<PathBuf>,

    /// `redirect`: plain HTTP answers 301 to HTTPS. `proxy`: tunnels are
    /// served over plain HTTP as well (the apex still redirects).
    #[arg(long, env = "HTTP_MODE", value_enum, default_value_t = HttpMode::Redirect)]
    pub http_mode: HttpMode,

    /// `open`: anyone may connect (keys get stable names, no key gets a
    /// random one). `keys`: only keys listed in --keys-file may connect.
    #[arg(long, env = "AUTH_MODE", value_enum, default_value_t = AuthMode::Open)]
    pub auth_mode: AuthMode,

    /// Names nobody may claim unless the keys file grants them to a key.
    #[arg(
        long,
        env = "RESERVED_NAMES",
        value_delimiter = ',',
        default_value = "www,mail,admin,status,root,ssh"
    )]
    pub reserved_names: Vec<String>,

    /// Public ports raw TCP tunnels may get, e.g. `20000-29999` or
    /// `20000-20099,30000`. Empty (the default): TCP tunnels are refused.
    #[arg(long, env = "TCP_PORTS", default_value = "", value_parser = parse_port_ranges)]
    pub tcp_ports: PortRanges,

    /// Address the raw TCP tunnel listeners bind to.
    #[arg(long, env = "TCP_BIND", default_value = "0.0.0.0")]
    pub tcp_bind: std::net::IpAddr,

    /// When a second client asks for a name (or port) its key may hold:
    /// `replace` (the newest takes it over), `round-robin` (requests and
    /// connections spread over all clients) or `failover` (the oldest serves,
    /// the next takes over when it goes).
    #[arg(long, env = "BALANCE", value_enum, default_value_t = Balance::Replace)]
    pub balance: Balance,

    /// On SIGTERM/SIGINT: how long in-flight HTTP requests get to finish
    /// (no new connections are accepted meanwhile) before every connection
    /// is closed. A second signal exits at once.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log lines as human-readable text or as one JSON object per line.
    /// The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log every proxied request (and WebSocket) at info level, target
    /// `burrow::access`: host, visitor, method, path, status, bytes,
    /// duration, and why burrow refused or failed it. Off by default: the
    /// server log has no per-request lines unless asked.
    #[arg(long, env = "ACCESS_LOG")]
    pub access_log: bool,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub acme: AcmeArgs,

    #[command(flatten)]
    pub custom: CustomDomainArgs,
}

/// Let's Encrypt's production directory, the `--acme-directory` default.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`--acme-directory letsencrypt-staging`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Certificates from an ACME CA (Let's Encrypt by default). Off unless
/// `--acme-email` is given; `--tls-cert/--tls-key` win over it.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "ACME certificates")]
pub struct AcmeArgs {
    /// Contact address for the ACME account. Giving it turns ACME on: burrow
    /// gets and renews its own certificate for DOMAIN (and *.DOMAIN with a
    /// DNS-01 provider), kept in --state-dir.
    #[arg(long, env = "ACME_EMAIL")]
    pub acme_email: Option<String>,

    /// ACME directory URL, or `letsencrypt` / `letsencrypt-staging`.
    #[arg(long, env = "ACME_DIRECTORY", default_value = "letsencrypt")]
    pub acme_directory: String,

    /// PEM root certificate the ACME server's HTTPS is checked against
    /// (instead of the system roots): for private CAs and tests.
    #[arg(long, env = "ACME_CA_ROOT")]
    pub acme_ca_root: Option<PathBuf>,

    /// DNS-01 through a script, called as `SCRIPT set|unset FQDN TXT-VALUE`;
    /// exit status 0 means done. Enables the wildcard certificate.
    #[arg(long, env = "ACME_DNS_HOOK")]
    pub acme_dns_hook: Option<PathBuf>,

    /// How long one run of --acme-dns-hook may take before it is killed.
    #[arg(long, env = "ACME_DNS_HOOK_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub acme_dns_hook_timeout: Duration,

    /// DNS-01 through RFC 2136 dynamic updates sent (over TCP) to this
    /// primary server, `host:port`. Needs --acme-rfc2136-tsig. Enables the
    /// wildcard certificate.
    #[arg(long, env = "ACME_RFC2136")]
    pub acme_rfc2136: Option<String>,

    /// TSIG key for --acme-rfc2136 as `NAME:ALGORITHM:BASE64SECRET`
    /// (ALGORITHM: hmac-sha256, hmac-sha384 or hmac-sha512), or `@FILE`
    /// holding that line (keeps the secret out of `ps`).
    #[arg(long, env = "ACME_RFC2136_TSIG")]
    pub acme_rfc2136_tsig: Option<String>,

    /// Zone the RFC 2136 updates are for. Default: DOMAIN.
    #[arg(long, env = "ACME_RFC2136_ZONE")]
    pub acme_rfc2136_zone: Option<String>,

    /// Wait between publishing the DNS-01 TXT records and asking the CA to
    /// check them (secondary name servers need time to catch up).
    #[arg(long, env = "ACME_DNS_PROPAGATION", default_value = "10s", value_parser = parse_duration)]
    pub acme_dns_propagation: Duration,

    /// First wait after a failed issuance; doubles (with jitter) per failure.
    #[arg(long, env = "ACME_RETRY_MIN", default_value = "1m", value_parser = parse_duration)]
    pub acme_retry_min: Duration,

    /// Longest wait between two issuance attempts after failures.
    #[arg(long, env = "ACME_RETRY_MAX", default_value = "6h", value_parser = parse_duration)]
    pub acme_retry_max: Duration,

    /// Time one issuance (order, challenges, certificate) may take.
    #[arg(long, env = "ACME_ORDER_TIMEOUT", default_value = "3m", value_parser = parse_duration)]
    pub acme_order_timeout: Duration,

    /// On-demand single-name certificates (custom domains): issuance rate.
    /// Renewals do not count.
    #[arg(long, env = "ACME_ISSUE_RATE", default_value = "10/h", value_parser = parse_rate)]
    pub acme_issue_rate: Rate,

    /// On-demand single-name certificates: how many may be issued at once
    /// before --acme-issue-rate applies.
    #[arg(long, env = "ACME_ISSUE_BURST", default_value_t = 5)]
    pub acme_issue_burst: u32,
}

impl AcmeArgs {
    /// Whether burrow gets its certificates over ACME (`--acme-email`).
    pub fn enabled(&self) -> bool {
        self.acme_email.is_some()
    }

    /// Whether a DNS-01 provider is configured (the wildcard is possible).
    pub fn has_dns(&self) -> bool {
        self.acme_dns_hook.is_some() || self.acme_rfc2136.is_some()
    }

    /// The directory URL, shortcuts resolved.
    pub fn directory_url(&self) -> &str {
        match self.acme_directory.trim() {
            "letsencrypt" => LETSENCRYPT,
            "letsencrypt-staging" => LETSENCRYPT_STAGING,
            url => url,
        }
    }

    /// Checks the combinations clap cannot express.
    fn validate(&self) -> Result<()> {
        let Some(email) = &self.acme_email else {
            for (set, flag) in [
                (self.acme_ca_root.is_some(), "--acme-ca-root"),
                (self.acme_dns_hook.is_some(), "--acme-dns-hook"),
                (self.acme_rfc2136.is_some(), "--acme-rfc2136"),
            ] {
                if set {
                    bail!("{flag} is set but --acme-email is not: ACME is off without a contact address");
                }
            }
            return Ok(());
        };
        if !email.contains('@') || email.contains(char::is_whitespace) {
            bail!("--acme-email {email:?} is not an email address");
        }
        let url = self.directory_url();
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("--acme-directory {url:?}: give an http(s) URL, `letsencrypt` or `letsencrypt-staging`");
        }
        if self.acme_dns_hook.is_some() && self.acme_rfc2136.is_some() {
            bail!("--acme-dns-hook and --acme-rfc2136 are both set: choose one DNS-01 provider");
        }
        if let Some(hook) = &self.acme_dns_hook {
            if !hook.is_file() {
                bail!("--acme-dns-hook {}: no such file", hook.display());
            }
        }
        match (&self.acme_rfc2136, &self.acme_rfc2136_tsig) {
            (Some(_), None) => {
                bail!("--acme-rfc2136 needs --acme-rfc2136-tsig: unsigned updates are refused")
            }
            (None, Some(_)) => bail!("--acme-rfc2136-tsig is set but --acme-rfc2136 is not"),
            _ => {}
        }
        if self.acme_retry_min.is_zero() || self.acme_retry_min > self.acme_retry_max {
            bail!("--acme-retry-min must be above 0 and at most --acme-retry-max");
        }
        if self.acme_issue_rate.is_unlimited() || self.acme_issue_burst == 0 {
            bail!("--acme-issue-rate and --acme-issue-burst must be above 0");
        }
        Ok(())
    }
}

/// Custom domains: `ssh -R app.example.org:80:…` for a name the user proves
/// they own in DNS (see ARCHITECTURE.md, "Custom domains").
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Custom domains")]
pub struct CustomDomainArgs {
    /// `on`: a bind address that is a name outside DOMAIN is served once DNS
    /// proves the client's key owns it (TXT `_burrow.NAME` = the key's
    /// SHA256 fingerprint, and NAME points at this server). `off`: refused.
    #[arg(long, env = "CUSTOM_DOMAINS", value_enum, default_value_t = Switch::On)]
    pub custom_domains: Switch,

    /// DNS server for the ownership checks, `IP:PORT` (or `IP`, port 53).
    /// Default: the system resolver (/etc/resolv.conf).
    #[arg(long, env = "DNS_RESOLVER", value_parser = parse_resolver)]
    pub dns_resolver: Option<SocketAddr>,

    /// How long one ownership check (all its DNS lookups) may take before the
    /// forward is refused.
    #[arg(long, env = "DNS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub dns_timeout: Duration,

    /// How long DNS answers are reused (at most; a shorter record TTL wins).
    /// 0 = ask every time.
    #[arg(long, env = "DNS_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub dns_cache_ttl: Duration,

    /// The addresses a custom name may point at with A/AAAA records
    /// (comma-separated). Empty = whatever DOMAIN itself resolves to.
    #[arg(long, env = "CUSTOM_DOMAIN_IPS", value_delimiter = ',')]
    pub custom_domain_ips: Vec<std::net::IpAddr>,

    /// Certificates issued for custom names, all names together (`10/h`,
    /// `1/m`); a name that has one already costs nothing. 0 = unlimited.
    #[arg(long, env = "CUSTOM_CERT_RATE", default_value = "10/h", value_parser = parse_rate)]
    pub custom_cert_rate: Rate,

    /// How many certificates may be issued at once before --custom-cert-rate
    /// applies.
    #[arg(long, env = "CUSTOM_CERT_BURST", default_value_t = 5)]
    pub custom_cert_burst: u32,

    /// Certificates of custom domains kept in memory. Over it, those of
    /// names not bound right now are dropped (binding one again issues a new
    /// one, within --custom-cert-rate).
    #[arg(long, env = "CUSTOM_CERT_CACHE", default_value_t = 1000)]
    pub custom_cert_cache: usize,

    /// How often the DNS proof of every bound custom domain is checked
    /// again; a tunnel whose proof fails twice in a row (the TXT record was
    /// removed, the name points elsewhere) is closed with a line saying why.
    /// 0 = check at bind only.
    #[arg(long, env = "CUSTOM_DOMAIN_RECHECK", default_value = "10m", value_parser = parse_duration)]
    pub custom_domain_recheck: Duration,
}

/// A feature switch.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
}

/// `IP:PORT`, or a bare IP for port 53.
pub fn parse_resolver(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    text.parse()
        .map_err(|_| format!("{text:?} is not a resolver address like 127.0.0.1:53"))
}

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How several clients share one name.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// One client per name: a newer connection of the same key takes over.
    Replace,
    /// Every client gets requests (HTTP) or connections (TCP, TLS) in turn.
    RoundRobin,
    /// The oldest client serves; the next oldest takes over when it goes.
    Failover,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Replace => "replace",
            Balance::RoundRobin => "round-robin",
            Balance::Failover => "failover",
        }
    }
}

/// Inclusive port ranges (`--tcp-ports`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortRanges(pub Vec<std::ops::RangeInclusive<u16>>);

impl PortRanges {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    /// Number of ports in all ranges.
    pub fn count(&self) -> usize {
        self.0.iter().map(|r| r.clone().count()).sum()
    }

    /// The `n`-th port of the ranges, counting from the first.
    pub fn nth(&self, mut n: usize) -> Option<u16> {
        for range in &self.0 {
            let len = range.clone().count();
            if n < len {
                return Some(range.start() + n as u16);
            }
            n -= len;
        }
        None
    }
}

impl std::fmt::Display for PortRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|r| match r.start() == r.end() {
                true => r.start().to_string(),
                false => format!("{}-{}", r.start(), r.end()),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// `20000-29999`, `5432`, or a comma-separated list of them; empty = none.
pub fn parse_port_ranges(text: &str) -> Result<PortRanges, String> {
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(part)?, port(part)?),
        };
        if start > end {
            return Err(format!("{part:?}: the range ends before it starts"));
        }
        ranges.push(start..=end);
    }
    Ok(PortRanges(ranges))
}

/// What the plain-HTTP listener does with requests for tunnels.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// 301 to the same URL on HTTPS.
    Redirect,
    /// Serve tunnels over plain HTTP too (behind a TLS-terminating load
    /// balancer, or for benchmarks). The apex still redirects.
    Proxy,
}

/// Who may connect.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Anyone; SSH keys get stable names, everyone else a random one.
    Open,
    /// Only keys in --keys-file.
    Keys,
}

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

    /// Do not show the browser warning page before a tunnel's first visit.
    #[arg(long, env = "NO_BROWSER_WARNING")]
    pub no_browser_warning: bool,

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

    /// Idle keep-alive connections (each one SSH channel) kept per tunnel
    /// for reuse by later requests. 0 = a new channel per request.
    #[arg(long, env = "CHANNEL_POOL_SIZE", default_value_t = 64)]
    pub channel_pool_size: usize,

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

    /// An idle pooled connection is closed after this long; keep it below
    /// the local app's keep-alive timeout.
    #[arg(long, env = "CHANNEL_POOL_IDLE", default_value = "4s", value_parser = parse_duration)]
    pub channel_pool_idle: Duration,
}

impl LimitArgs {
    pub fn spool(&self) -> crate::spool::SpoolLimits {
        crate::spool::SpoolLimits {
            memory_per_stream: self.spool_memory_per_stream,
            disk_per_stream: self.spool_disk_per_stream,
            memory_total: self.spool_memory_total,
            disk_total: self.spool_disk_total,
            dir: self.spool_dir.clone().unwrap_or_else(std::env::temp_dir),
        }
    }
}

/// A refill rate for a token bucket: `per_second == 0.0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
}

impl Rate {
    pub fn is_unlimited(&self) -> bool {
        self.per_second <= 0.0
    }
}

/// `10/h`, `1/m`, `2/s`: the coarsest unit that gives a whole number, as
/// the flags are written.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (unit, seconds) in [("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
            let count = self.per_second * seconds;
            if (count - count.round()).abs() < 1e-6 && count >= 1.0 {
                return write!(f, "{}/{unit}", count.round());
            }
        }
        write!(f, "{:.3}/h", self.per_second * 3600.0)
    }
}

/// `25/s`, `600/m`, `1000/h`, or a bare number per second.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let (count, unit) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let count: f64 = count
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 25/s or 600/m"))?;
    let seconds = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        other => return Err(format!("unknown rate unit {other:?}: use /s, /m or /h")),
    };
    if !count.is_finite() || count < 0.0 {
        return Err(format!("{text:?} must be zero or positive"));
    }
    Ok(Rate {
        per_second: count / seconds,
    })
}

/// `90s`, `2m`, `1h30m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like 90s or 2h: {e}"))
}

/// `64KiB`, `128MiB`, `1GiB`, `500kB`; a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|e| format!("{text:?} is not a size like 64KiB or 128MiB: {e}"))
}

/// `203.0.113.0/24`, `2001:db8::/32`, or a single address.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR"))
}

impl Config {
    /// Parses the process arguments. Help and version requests print and exit
    /// 0; anything else that is wrong exits 2 with one line on stderr.
    pub fn from_args() -> Config {
        let config = Config::try_parse().unwrap_or_else(|err| {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                err.exit();
            }
            // clap renders a multi-line report with usage; operators asked
            // for a single line that names the flag and the cause.
            let rendered = err.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            let first = first.trim_start_matches("error: ");
            eprintln!("burrow: error: {first} (see burrow --help)");
            std::process::exit(2);
        });
        match config.validate() {
            Ok(config) => config,
            Err(err) => {
                eprintln!("burrow: error: {err:#}");
                std::process::exit(2);
            }
        }
    }

    /// Checks what clap cannot express and normalises the domain.
    pub fn validate(mut self) -> Result<Config> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => bail!(
                "--tls-cert is set but --tls-key is not: give both (PEM chain and key) or neither"
            ),
            (None, Some(_)) => bail!(
                "--tls-key is set but --tls-cert is not: give both (PEM chain and key) or neither"
            ),
            _ => {}
        }
        let domain = self
            .domain
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if !crate::subdomain::is_valid_domain(&domain) {
            bail!(
                "--domain {:?} is not a valid DNS name (labels of a-z, 0-9 and '-')",
                self.domain
            );
        }
        self.domain = domain;
        if self.auth_mode == AuthMode::Keys && self.keys_file.is_none() {
            bail!("--auth-mode keys needs --keys-file: without it nobody could connect");
        }
        let mut reserved = Vec::new();
        for name in &self.reserved_names {
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty() {
                continue;
            }
            if !crate::subdomain::is_valid_label(&name) {
                bail!("--reserved-names: {name:?} is not a valid DNS label");
            }
            reserved.push(name);
        }
        self.reserved_names = reserved;
        self.acme.validate()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("25/s").unwrap().per_second, 25.0);
        assert_eq!(parse_rate("600/m").unwrap().per_second, 10.0);
        assert_eq!(parse_rate("7").unwrap().per_second, 7.0);
        assert!(parse_rate("0").unwrap().is_unlimited());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5/fortnight").is_err());
        assert!(parse_rate("-1/s").is_err());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("128MiB").unwrap(), 128 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("big").is_err());
    }

    #[test]
    fn cidrs() {
        assert!(parse_cidr("203.0.113.0/24").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert_eq!(parse_cidr("10.1.2.3").unwrap().prefix_len(), 32);
        assert!(parse_cidr("10.1.2.3/33").is_err());
    }

    #[test]
    fn port_ranges() {
        let r = parse_port_ranges("20000-20009, 30000").unwrap();
        assert_eq!(r.count(), 11);
        assert!(r.contains(20005) && r.contains(30000) && !r.contains(20010));
        assert_eq!(r.nth(10), Some(30000));
        assert_eq!(r.nth(11), None);
        assert_eq!(r.to_string(), "20000-20009,30000");
        assert!(parse_port_ranges("").unwrap().is_empty());
        for bad in ["0-10", "10-5", "x", "1-70000"] {
            assert!(parse_port_ranges(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_parse() {
        let config = Config::try_parse_from(["burrow"])
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(config.limits.max_conns_per_minute, 10);
        assert_eq!(config.limits.block_duration, Duration::from_secs(3600));
        assert_eq!(config.limits.visitor_rate.per_second, 25.0);
        assert_eq!(config.limits.max_body_size, 128 << 20);
        assert_eq!(config.limits.max_header_size, 64 << 10);
        assert!(config.limits.trusted_proxies.is_empty());
        assert!(!config.acme.enabled());
        assert_eq!(config.acme.directory_url(), LETSENCRYPT);
        assert_eq!(config.custom.custom_domains, Switch::On);
        assert_eq!(config.custom.dns_resolver, None);
        assert_eq!(config.custom.dns_timeout, Duration::from_secs(5));
        assert_eq!(config.custom.custom_cert_rate.per_second, 10.0 / 3600.0);
        assert_eq!(config.custom.custom_cert_burst, 5);
    }

    #[test]
    fn acme_combinations() {
        let parse = |args: &[&str]| {
            let mut all = vec!["burrow"];
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().validate()
        };
        let staging = parse(&[
            "--acme-email",
            "a@b.example",
            "--acme-directory",
            "letsencrypt-staging",
        ]);
        assert_eq!(staging.unwrap().acme.directory_url(), LETSENCRYPT_STAGING);
        let bad: &[&[&str]] = &[
            &["--acme-dns-hook", "/bin/true"],
            &["--acme-email", "nobody"],
            &["--acme-email", "a@b.example", "--acme-directory", "ftp://x"],
            &[
                "--acme-email",
                "a@b.example",
                "--acme-rfc2136",
                "127.0.0.1:53",
            ],
            &[
                "--acme-email",
                "a@b.example",
                "--acme-dns-hook",
                "/nonexistent/hook",
            ],
            &[
                "--acme-email",
                "a@b.example",
                "--acme-dns-hook",
                "/bin/true",
                "--acme-rfc2136",
                "127.0.0.1:53",
                "--acme-rfc2136-tsig",
                "k:hmac-sha256:AAAA",
            ],
        ];
        for args in bad {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn rates_read_as_typed() {
        let text = |per_second: f64| Rate { per_second }.to_string();
        assert_eq!(text(10.0 / 3600.0), "10/h");
        assert_eq!(text(1.0 / 60.0), "1/m");
        assert_eq!(text(2.0), "2/s");
    }

    #[test]
    fn resolvers() {
        assert_eq!(
            parse_resolver("127.0.0.1:5353").unwrap(),
            "127.0.0.1:5353".parse().unwrap()
        );
        assert_eq!(parse_resolver("9.9.9.9").unwrap().port(), 53);
        assert_eq!(parse_resolver("[::1]:53").unwrap().port(), 53);
        assert!(parse_resolver("dns.example").is_err());
    }
}
