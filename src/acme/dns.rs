//! DNS-01 providers: publish and withdraw the `_acme-challenge` TXT records.
//!
//! Two ways, since DNS hosts vary: an exec hook (`SCRIPT set|unset FQDN
//! VALUE`, the certbot-manual/lego-exec style that fits any provider) and
//! RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS). Both
//! *add* a value next to the ones already there, so the apex's and the
//! wildcard's values coexist while the CA checks them.

use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use hickory_net::client::{Client, ClientHandle};
use hickory_net::proto::op::ResponseCode;
use hickory_net::proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_net::proto::rr::rdata::TXT;
use hickory_net::proto::rr::{Name, RData, Record, TSigner};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::DnsMultiplexer;

use crate::config::AcmeArgs;

/// TTL of the challenge records: short, they live for one validation.
const TXT_TTL: u32 = 60;
/// Time one RFC 2136 exchange may take.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);
/// TSIG clock skew allowed (the RFC 8945 recommendation).
const TSIG_FUDGE: u16 = 300;

/// A configured DNS-01 provider.
pub enum Provider {
    Hook {
        script: std::path::PathBuf,
        timeout: Duration,
    },
    Rfc2136(Rfc2136),
}

/// RFC 2136 target: the primary, the zone and the key.
pub struct Rfc2136 {
    server: String,
    zone: Name,
    signer: TSigner,
}

impl Provider {
    /// The provider the flags configure, if any.
    pub fn from_args(args: &AcmeArgs, domain: &str) -> Result<Option<Provider>> {
        if let Some(script) = &args.acme_dns_hook {
            return Ok(Some(Provider::Hook {
                script: script.clone(),
                timeout: args.acme_dns_hook_timeout,
            }));
        }
        let Some(server) = &args.acme_rfc2136 else {
            return Ok(None);
        };
        let tsig = args
            .acme_rfc2136_tsig
            .as_deref()
            .context("--acme-rfc2136 needs --acme-rfc2136-tsig")?;
        let zone = args.acme_rfc2136_zone.as_deref().unwrap_or(domain);
        Ok(Some(Provider::Rfc2136(Rfc2136 {
            server: server.clone(),
            zone: fqdn(zone).context("--acme-rfc2136-zone")?,
            signer: parse_tsig(tsig).context("--acme-rfc2136-tsig")?,
        })))
    }

    /// Adds `value` to the TXT records of `fqdn`.
    pub async fn set(&self, fqdn: &str, value: &str) -> Result<()> {
        match self {
            Provider::Hook { script, timeout } => hook(script, *timeout, "set", fqdn, value).await,
            Provider::Rfc2136(target) => target.update(true, fqdn, value).await,
        }
    }

    /// Removes `value` from the TXT records of `fqdn`.
    pub async fn unset(&self, fqdn: &str, value: &str) -> Result<()> {
        match self {
            Provider::Hook { script, timeout } => {
                hook(script, *timeout, "unset", fqdn, value).await
            }
            Provider::Rfc2136(target) => target.update(false, fqdn, value).await,
        }
    }
}

/// Runs the hook once; a non-zero exit or a timeout is an error carrying
/// what the script wrote to stderr.
async fn hook(
    script: &std::path::Path,
    timeout: Duration,
    action: &str,
    fqdn: &str,
    value: &str,
) -> Result<()> {
    let what = || format!("--acme-dns-hook {} {action} {fqdn}", script.display());
    let child = tokio::process::Command::new(script)
        .args([action, fqdn, value])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("{}: cannot start", what()))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| {
            anyhow!(
                "{}: no exit within --acme-dns-hook-timeout {}; killed",
                what(),
                crate::limits::human(timeout)
            )
        })?
        .with_context(what)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        // The end of a long error output is the part that says why.
        let tail = &stderr[stderr.len().saturating_sub(500)..];
        bail!("{}: {}: {}", what(), output.status, tail);
    }
    Ok(())
}

impl Rfc2136 {
    /// Sends one signed update adding (or deleting) the TXT value.
    async fn update(&self, add: bool, fqdn_text: &str, value: &str) -> Result<()> {
        let what = || {
            let op = if add { "add" } else { "delete" };
            format!("--acme-rfc2136 {}: {op} TXT {fqdn_text}", self.server)
        };
        let addr = tokio::net::lookup_host(&self.server)
            .await
            .with_context(what)?
            .next()
            .ok_or_else(|| anyhow!("{}: no address", what()))?;
        let (stream, handle) = TcpClientStream::new(
            addr,
            None,
            Some(UPDATE_TIMEOUT),
            TokioRuntimeProvider::new(),
        );
        let multiplexer = DnsMultiplexer::new(stream.await.with_context(what)?, handle)
            .with_timeout(UPDATE_TIMEOUT)
            .with_signer(self.signer.clone());
        let (mut client, background) = Client::<TokioRuntimeProvider>::from_sender(multiplexer);
        let background = tokio::spawn(background);
        let record = Record::from_rdata(
            fqdn(fqdn_text)?,
            TXT_TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        );
        let response = if add {
            client.append(record, self.zone.clone(), false).await
        } else {
            client.delete_by_rdata(record, self.zone.clone()).await
        };
        background.abort();
        let response = response.map_err(|e| anyhow!("{}: {e}", what()))?;
        let code = response.response_code;
        if code != ResponseCode::NoError {
            bail!("{}: the server answered {code}", what());
        }
        Ok(())
    }
}

fn fqdn(name: &str) -> Result<Name> {
    let mut name = Name::from_str(name).map_err(|e| anyhow!("{name:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// `NAME:ALGORITHM:BASE64SECRET`, or `@FILE` holding that line.
fn parse_tsig(text: &str) -> Result<TSigner> {
    let line = match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key file {path}"))?,
        None => text.to_string(),
    };
    let mut parts = line.trim().splitn(3, ':');
    let (Some(name), Some(algorithm), Some(secret)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("expected NAME:ALGORITHM:BASE64SECRET");
    };
    let algorithm = match algorithm.to_ascii_lowercase().as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => bail!("algorithm {other:?}: use hmac-sha256, hmac-sha384 or hmac-sha512"),
    };
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret.trim())
        .context("the secret is not base64")?;
    TSigner::new(secret, algorithm, fqdn(name)?, TSIG_FUDGE).map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsig_keys() {
        assert!(parse_tsig("key.example:hmac-sha256:c2VjcmV0c2VjcmV0").is_ok());
        assert!(parse_tsig("key.example:hmac-md5:c2VjcmV0").is_err());
        assert!(parse_tsig("key.example:hmac-sha256:not base64!").is_err());
        assert!(parse_tsig("just-a-name").is_err());
    }
}
