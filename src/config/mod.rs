//! Command-line and environment configuration.
//!
//! Every flag has an environment fallback; the names are a contract that
//! operators script against, so flags are only ever added, never renamed.
//! Parsing errors are reduced to one line that names the flag and the cause.

mod acme;
mod admin;
mod cluster;
mod inspect;
mod limits;
mod login;
mod parse;
mod plans;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;

pub use self::acme::{AcmeArgs, CustomDomainArgs, LETSENCRYPT, LETSENCRYPT_STAGING};
pub use self::admin::{parse_stats_addr, AdminArgs, StatsAddr};
pub use self::cluster::{valid_node_id, ClusterArgs, ClusterCommand};
pub use self::inspect::InspectArgs;
pub use self::limits::{
    ConnectionArgs, LimitArgs, PoolArgs, RequestLogArgs, SpoolArgs, WarningArgs,
};
pub use self::login::{read_secret, LoginArgs};
pub use self::parse::{
    parse_cidr, parse_duration, parse_port_ranges, parse_rate, parse_resolver, parse_size,
    PortRanges, Rate,
};
pub use self::plans::PlanArgs;

/// The validated server configuration.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "burrow",
    version,
    about = "SSH tunnel server: `ssh -R 80:localhost:3000 DOMAIN` gives a public HTTPS URL.",
    long_about = None,
)]
pub struct Config {
    /// Domain the tunnels live under: tunnels are served as `https://NAME.DOMAIN`.
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

    /// Also answer SSH on the HTTPS port, for networks that block port 22:
    /// a connection whose first byte starts an SSH identification line
    /// (`SSH-`) goes to the SSH server, anything else is TLS as usual.
    #[arg(long, env = "SSH_ON_HTTPS", value_enum, default_value_t = Switch::On)]
    pub ssh_on_https: Switch,

    /// Address of the JSON stats endpoint, the admin API and the dashboard:
    /// HOST:PORT (only loopback peers are answered, whatever it is bound
    /// to) or unix:/PATH (a Unix socket, mode 0660).
    #[arg(long, env = "STATS_ADDR", default_value = "127.0.0.1:9090", value_parser = parse_stats_addr)]
    pub stats_addr: StatsAddr,

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

    /// Every this long, freed heap memory goes back to the system (glibc's
    /// malloc_trim), so the footprint falls back after a peak of tunnels.
    /// 0 = never.
    #[arg(long, env = "MEMORY_TRIM_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub memory_trim_interval: Duration,

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
    pub admin: AdminArgs,

    #[command(flatten)]
    pub limits: LimitArgs,

    #[command(flatten)]
    pub connection: ConnectionArgs,

    #[command(flatten)]
    pub spool: SpoolArgs,

    #[command(flatten)]
    pub pool: PoolArgs,

    #[command(flatten)]
    pub request_log: RequestLogArgs,

    #[command(flatten)]
    pub warning: WarningArgs,

    #[command(flatten)]
    pub inspect: InspectArgs,

    #[command(flatten)]
    pub login: LoginArgs,

    #[command(flatten)]
    pub plans: PlanArgs,

    #[command(flatten)]
    pub acme: AcmeArgs,

    #[command(flatten)]
    pub custom: CustomDomainArgs,

    #[command(flatten)]
    pub cluster: ClusterArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What `burrow SUBCOMMAND` does instead of serving.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Cluster tools (`burrow cluster init FILE`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

/// A feature switch.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    On,
    Off,
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
        if self.auth_mode == AuthMode::Keys
            && self.keys_file.is_none()
            && self.login.auth_url.is_none()
        {
            bail!(
                "--auth-mode keys needs --keys-file or --auth-url: without one nobody could connect"
            );
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
        self.login.validate(&self.domain)?;
        // The sign-in host's label is nobody's tunnel while sign-in is on.
        if let Some(label) = self.login.host_label(&self.domain) {
            if !reserved.contains(&label) {
                reserved.push(label);
            }
        }
        self.reserved_names = reserved;
        self.acme.validate()?;
        self.cluster.validate()?;
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

    /// humantime 2.4 panics when its running total carries past u64::MAX
    /// seconds (chronotope/humantime#66); found by the `config_values`
    /// fuzz target (seed `config_values/regression-duration-carry`).
    #[test]
    fn a_duration_past_u64_seconds_is_refused_not_a_panic() {
        for text in [
            "18446744073709551615s 1000000000ns",
            "18446744073709551615s 999999999ns 1ns",
            "18446744073709551615s 1000000000ns x",
            "18446744073709551615.1s900ms5.1s900ms",
        ] {
            let refused = parse_duration(text).unwrap_err();
            assert!(
                refused.contains("too long") || refused.contains("not a duration"),
                "{text}: {refused}"
            );
        }
        assert!(parse_duration("18446744073709551615s 1000000000ns")
            .unwrap_err()
            .contains("must stay under 2^64 seconds"));
        let most = parse_duration("18446744073709551614s 999999999ns 1ns").unwrap();
        assert_eq!(most, Duration::from_secs(u64::MAX));
    }

    #[test]
    fn a_duration_of_several_parts_adds_them_and_names_the_bad_one() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("1h 30m 5s").unwrap(),
            Duration::from_secs(5405)
        );
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2 m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86400));
        let refused = parse_duration("1h 3x").unwrap_err();
        assert!(refused.contains("in \"3x\""), "{refused}");
        assert!(!parse_duration("soon").unwrap_err().contains(" in "));
    }

    #[test]
    fn parts_whose_nanoseconds_pass_u64_still_add_up_exactly() {
        // Found by the config_values fuzz target: humantime sums the
        // nanoseconds of the parts in a u64 and refuses the whole text,
        // though the duration (about 584 years) fits.
        let text = "5ns18446744073709551614ns";
        assert_eq!(
            parse_duration(text).unwrap(),
            Duration::new(18_446_744_073, 709_551_619)
        );
        assert_eq!(
            humantime::parse_duration(text),
            Err(humantime::DurationError::NumberOverflow)
        );
    }

    #[test]
    fn a_bare_zero_after_another_part_needs_a_unit_as_humantime_says() {
        // Found by the config_values fuzz target: humantime reads "0"
        // alone as zero, but "1h0" as an error (the 0 has no unit).
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        for text in ["1h0", "1h 0", "5m0 "] {
            let refused = parse_duration(text).unwrap_err();
            assert!(refused.contains("time unit needed"), "{text:?}: {refused}");
            assert!(humantime::parse_duration(text.trim()).is_err(), "{text:?}");
        }
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
        // Limits that were constants before they were flags keep their values.
        assert_eq!(config.limits.tls_handshake_timeout, Duration::from_secs(10));
        assert_eq!(config.limits.stream_open_timeout, Duration::from_secs(10));
        assert_eq!(
            config.limits.ssh_keepalive_interval,
            Duration::from_secs(15)
        );
        assert_eq!(config.limits.ssh_keepalive_max, 4);
        assert_eq!(config.limits.auth_attempts_rate.per_second, 0.1);
        assert_eq!(config.limits.auth_attempts_burst, 10);
    }

    #[test]
    fn a_client_gets_at_least_one_keepalive() {
        let err = Config::try_parse_from(["burrow", "--ssh-keepalive-max", "0"]).unwrap_err();
        assert!(err.to_string().contains("--ssh-keepalive-max"), "{err}");
        assert!(Config::try_parse_from(["burrow", "--ssh-keepalive-max", "1"]).is_ok());
    }

    #[test]
    fn cluster_redis_targets() {
        let parse = |args: &[&str]| {
            let mut all = vec!["burrow", "--cluster-secret", "s"];
            all.extend_from_slice(&["--cluster-listen", "10.0.0.1:7000"]);
            all.extend_from_slice(args);
            Config::try_parse_from(all).unwrap().validate()
        };
        let error = |args: &[&str]| format!("{:#}", parse(args).unwrap_err());
        let sentinel = "redis+sentinel://u:pw@h1,h2:26380/mymaster/1?sentinel_password=spw";
        let config = parse(&["--cluster-redis", sentinel]).unwrap();
        let target = config.cluster.redis_target().unwrap().unwrap();
        assert!(!target.tls());
        assert!(!target.to_string().contains("pw@"), "{target}");
        let tls = [
            "--cluster-redis",
            "rediss://h:6380/0",
            "--cluster-redis-ca",
            "ca.pem",
        ];
        assert!(parse(&tls).is_ok());
        let err = error(&[
            "--cluster-redis",
            "redis://h",
            "--cluster-redis-ca",
            "ca.pem",
        ]);
        assert!(
            err.starts_with("--cluster-redis-ca ca.pem is for TLS"),
            "{err}"
        );
        let err = error(&["--cluster-redis", "redis+sentinel://u:secret@h"]);
        assert!(
            err.starts_with("--cluster-redis \"redis+sentinel://u:***@h\""),
            "{err}"
        );
        assert!(
            err.contains("master's name is missing") && !err.contains("secret"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            Config::try_parse_from(["burrow", "--cluster-redis-ca", "ca.pem"])
                .unwrap()
                .validate()
                .unwrap_err()
        );
        assert!(
            err.starts_with("--cluster-redis-ca is set but --cluster-redis is not"),
            "{err}"
        );
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
