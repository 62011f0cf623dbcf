//! Proving a custom name in DNS. A client may serve `NAME` when
//! - the TXT record `_burrow.NAME` holds its key's SHA256 fingerprint (as
//!   OpenSSH prints it, with or without the `SHA256:` prefix), and
//! - `NAME` points at this server: a CNAME to DOMAIN or a name under it, or
//!   A/AAAA records that are all among the server's addresses
//!   (`--custom-domain-ips`, else DOMAIN's own A/AAAA records).
//!
//! Lookups go through hickory's resolver (`--dns-resolver`, else the system
//! one), bounded by `--dns-timeout`; its cache keeps answers for at most
//! `--dns-cache-ttl`. A refusal is one sentence saying which record is
//! missing or wrong and what it should hold.

use std::collections::BTreeSet;
use std::net::IpAddr;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

use crate::config::CustomDomainArgs;

/// The label in front of a custom name that holds the fingerprint.
pub const TXT_LABEL: &str = "_burrow";

/// The most TXT values quoted back in a refusal.
const QUOTED_VALUES: usize = 3;

pub struct Verifier {
    /// `Err`: the system resolver could not be set up (said in refusals).
    resolver: Result<TokioResolver, String>,
    domain: String,
    /// `--custom-domain-ips`; empty = DOMAIN's own addresses.
    fixed_ips: Vec<IpAddr>,
    timeout: std::time::Duration,
}

impl Verifier {
    pub fn new(args: &CustomDomainArgs, domain: &str) -> Verifier {
        let resolver = build_resolver(args).map_err(|e| format!("{e:#}"));
        if let Err(err) = &resolver {
            tracing::warn!(error = %err, "no DNS resolver: custom domains will be refused (set --dns-resolver)");
        }
        Verifier {
            resolver,
            domain: domain.to_string(),
            fixed_ips: args.custom_domain_ips.clone(),
            timeout: args.dns_timeout,
        }
    }

    /// Whether `name` belongs to the key `fingerprint` and points here.
    /// `Err` is the sentence for the user.
    pub async fn verify(&self, name: &str, fingerprint: &str) -> Result<(), String> {
        let resolver = self
            .resolver
            .as_ref()
            .map_err(|e| format!("this server cannot resolve DNS names ({e})"))?;
        let checks = async {
            self.check_txt(resolver, name, fingerprint).await?;
            self.check_points_here(resolver, name).await
        };
        tokio::time::timeout(self.timeout, checks)
            .await
            .map_err(|_| {
                format!(
                    "the DNS lookups for {name} took longer than {} (--dns-timeout); try again",
                    crate::limits::human(self.timeout)
                )
            })?
    }

    async fn check_txt(
        &self,
        resolver: &TokioResolver,
        name: &str,
        fingerprint: &str,
    ) -> Result<(), String> {
        let record = format!("{TXT_LABEL}.{name}");
        let wanted = bare_fingerprint(fingerprint);
        let add = format!(
            "add a TXT record {record} with the value {fingerprint} (your key's fingerprint)"
        );
        let values = match resolver.lookup(fqdn(&record), RecordType::TXT).await {
            Ok(lookup) => txt_values(lookup.answers()),
            Err(err) if err.is_no_records_found() || err.is_nx_domain() => Vec::new(),
            Err(err) => {
                return Err(format!(
                    "the DNS lookup of TXT {record} failed ({err}); try again"
                ))
            }
        };
        if values.is_empty() {
            return Err(format!("there is no TXT record {record}: {add}"));
        }
        if values.iter().any(|v| bare_fingerprint(v) == wanted) {
            return Ok(());
        }
        let found: Vec<String> = values
            .iter()
            .take(QUOTED_VALUES)
            .map(|v| format!("{:?}", printable(v)))
            .collect();
        Err(format!(
            "the TXT record {record} holds {}, not your key's fingerprint {fingerprint}: {add}",
            found.join(", ")
        ))
    }

    async fn check_points_here(&self, resolver: &TokioResolver, name: &str) -> Result<(), String> {
        let cname = match resolver.lookup(fqdn(name), RecordType::CNAME).await {
            Ok(lookup) => lookup.answers().iter().find_map(|r| match &r.data {
                RData::CNAME(target) => Some(crate::subdomain::dns_name(&target.0.to_ascii())),
                _ => None,
            }),
            Err(_) => None,
        };
        if let Some(target) = &cname {
            if target == &self.domain || target.ends_with(&format!(".{}", self.domain)) {
                return Ok(());
            }
        }
        let ours = self.server_ips(resolver).await?;
        let expected = format!(
            "a CNAME to {} or A/AAAA records among {}",
            self.domain,
            list(&ours)
        );
        let theirs = match resolver.lookup_ip(fqdn(name)).await {
            Ok(lookup) => lookup.iter().collect::<BTreeSet<IpAddr>>(),
            Err(err) if err.is_no_records_found() || err.is_nx_domain() => BTreeSet::new(),
            Err(err) => {
                return Err(format!(
                    "the DNS lookup of {name} failed ({err}); try again"
                ))
            }
        };
        if !theirs.is_empty() && theirs.iter().all(|ip| ours.contains(ip)) {
            return Ok(());
        }
        Err(not_pointing(name, cname.as_deref(), &theirs, &expected))
    }

    /// The addresses a custom name may resolve to.
    async fn server_ips(&self, resolver: &TokioResolver) -> Result<BTreeSet<IpAddr>, String> {
        if !self.fixed_ips.is_empty() {
            return Ok(self.fixed_ips.iter().copied().collect());
        }
        let domain = &self.domain;
        let ips: BTreeSet<IpAddr> = resolver
            .lookup_ip(fqdn(domain))
            .await
            .map(|lookup| lookup.iter().collect())
            .map_err(|e| lookup_failed_for_domain(domain, &e))?;
        if ips.is_empty() {
            return Err(format!("this server's own name {domain} has no A/AAAA records to compare with (operator: set --custom-domain-ips)"));
        }
        Ok(ips)
    }
}

fn lookup_failed_for_domain(domain: &str, err: &NetError) -> String {
    format!("this server cannot resolve its own name {domain} to compare addresses ({err}; operator: set --custom-domain-ips)")
}

fn not_pointing(
    name: &str,
    cname: Option<&str>,
    theirs: &BTreeSet<IpAddr>,
    expected: &str,
) -> String {
    match (cname, theirs.is_empty()) {
        (Some(target), _) => {
            format!("{name} is a CNAME to {target}, which is not this server: expected {expected}")
        }
        (None, true) => format!("{name} has no CNAME, A or AAAA record: add {expected}"),
        (None, false) => format!(
            "{name} points at {}, not at this server: expected {expected}",
            list(theirs)
        ),
    }
}

fn build_resolver(args: &CustomDomainArgs) -> anyhow::Result<TokioResolver> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match args.dns_resolver {
        Some(addr) => {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            let config = ResolverConfig::from_name_servers(vec![server]);
            Resolver::builder_with_config(config, provider)
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| anyhow::anyhow!("reading the system resolver configuration: {e}"))?,
    };
    tune(builder.options_mut(), args);
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("setting up the DNS resolver: {e}"))
}

fn tune(options: &mut ResolverOpts, args: &CustomDomainArgs) {
    // Per query, longer than the whole check: `Verifier::verify`'s own
    // timeout fires first and says which limit it was.
    options.timeout = args.dns_timeout * 2;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Proof of ownership comes from DNS, never from this machine's
    // /etc/hosts.
    options.use_hosts_file = ResolveHosts::Never;
    options.positive_max_ttl = Some(args.dns_cache_ttl);
    options.negative_max_ttl = Some(args.dns_cache_ttl);
}

/// `name.`: fully qualified, so no search domain is ever appended.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Each TXT record's strings joined (long values are split into 255-byte
/// strings), trimmed.
fn txt_values(records: &[hickory_resolver::proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => {
                let bytes: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                Some(String::from_utf8_lossy(&bytes).trim().to_string())
            }
            _ => None,
        })
        .collect()
}

/// The base64 part of `SHA256:xxxx` (or of `xxxx` written without prefix).
pub fn bare_fingerprint(value: &str) -> &str {
    let value = value.trim();
    value.strip_prefix("SHA256:").unwrap_or(value)
}

/// A TXT value safe to quote back: printable ASCII, at most 80 characters.
fn printable(value: &str) -> String {
    value
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(80)
        .collect()
}

fn list(ips: &BTreeSet<IpAddr>) -> String {
    let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
    ips.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_match_with_or_without_prefix() {
        assert_eq!(bare_fingerprint("SHA256:abc+/="), "abc+/=");
        assert_eq!(bare_fingerprint(" abc+/= "), "abc+/=");
    }

    #[test]
    fn refusals_say_what_was_found_and_expected() {
        let theirs: BTreeSet<IpAddr> = ["203.0.113.9".parse().unwrap()].into();
        let line = not_pointing("app.example.org", None, &theirs, "X");
        assert_eq!(
            line,
            "app.example.org points at 203.0.113.9, not at this server: expected X"
        );
        let line = not_pointing("a.example.org", None, &BTreeSet::new(), "X");
        assert!(line.contains("no CNAME, A or AAAA record"), "{line}");
        assert_eq!(printable("a\u{7}b"), "ab");
    }
}
