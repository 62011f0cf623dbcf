//! Certificates: ACME (Let's Encrypt by default) and custom domains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::parse::{parse_duration, parse_rate, parse_resolver, Rate};
use super::Switch;

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
    pub(super) fn validate(&self) -> Result<()> {
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
