//! Command-line and environment configuration.
//!
//! Every flag has an environment fallback; the names are a contract that
//! operators script against, so flags are only ever added, never renamed.
//! Parsing errors are reduced to one line that names the flag and the cause.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;

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
        Ok(self)
    }
}
