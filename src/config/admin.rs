//! The stats listener's address (TCP or a Unix socket) and who may use
//! what it serves: the admin token, the optional metrics token, and the
//! rate of wrong tokens tolerated.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::parse::{parse_rate, Rate};

/// `--admin-token-file`, `--metrics-token[-file]`, `--admin-token-failures`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Admin API, dashboard and metrics")]
pub struct AdminArgs {
    /// The admin token: a file whose first line is the bearer token the
    /// admin API and the dashboard require. Written (a random token, mode
    /// 0600) when it does not exist. Default: STATE_DIR/admin_token.
    #[arg(long, env = "ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Close the counts-only stats (`GET /`), `/metrics` and `/history` as
    /// well: a file whose first line is the bearer token they then require
    /// (the admin token works too). Unset: they stay open to loopback.
    #[arg(long, env = "METRICS_TOKEN_FILE", conflicts_with = "metrics_token")]
    pub metrics_token_file: Option<PathBuf>,
    /// The same token given directly (prefer the env variable or the file:
    /// a flag's value shows in `ps` to every local user).
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Wrong tokens tolerated on the stats listener, e.g. `10/m` (a
    /// minute's worth at once); beyond, every request that presents a
    /// token is answered 429 until the next one is allowed.
    #[arg(long, env = "ADMIN_TOKEN_FAILURES", default_value = "10/m", value_parser = parse_rate)]
    pub admin_token_failures: Rate,
}

/// Where the stats listener listens: `127.0.0.1:9090` or
/// `unix:/run/burrow/admin.sock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatsAddr {
    Tcp(SocketAddr),
    /// A Unix socket, created with mode 0660.
    Unix(PathBuf),
}

impl std::fmt::Display for StatsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatsAddr::Tcp(addr) => write!(f, "{addr}"),
            StatsAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// `HOST:PORT` or `unix:/ABSOLUTE/PATH`.
pub fn parse_stats_addr(text: &str) -> Result<StatsAddr, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(format!(
                "{text:?}: a Unix socket needs an absolute path, e.g. unix:/run/burrow/admin.sock"
            ));
        }
        return Ok(StatsAddr::Unix(path));
    }
    text.parse::<SocketAddr>()
        .map(StatsAddr::Tcp)
        .map_err(|_| format!("{text:?} is neither HOST:PORT nor unix:/PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_addresses() {
        assert_eq!(
            parse_stats_addr("127.0.0.1:9090").unwrap(),
            StatsAddr::Tcp("127.0.0.1:9090".parse().unwrap())
        );
        let unix = parse_stats_addr("unix:/run/burrow/admin.sock").unwrap();
        assert_eq!(unix, StatsAddr::Unix("/run/burrow/admin.sock".into()));
        assert_eq!(unix.to_string(), "unix:/run/burrow/admin.sock");
        for bad in ["unix:admin.sock", "unix:", "localhost", "9090"] {
            assert!(parse_stats_addr(bad).is_err(), "{bad}");
        }
    }
}
