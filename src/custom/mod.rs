//! Custom domains: `ssh -R app.example.org:80:localhost:3000 DOMAIN` serves
//! a name outside DOMAIN once DNS proves the client's key owns it.
//!
//! - [`dns`]: the ownership check (TXT fingerprint + pointing record).
//! - [`issuer`]: the [`issuer::Issuer`] seam certificates come from.
//! - [`certs`]: on-demand issuance for bound names, rate-limited and cached.
//!
//! A verified name is keyed in the registry by its full lowercase name
//! (labels under DOMAIN never contain a dot, TCP keys are `tcp:PORT`, so
//! the key spaces cannot collide), and routed by Host/SNI only while it is
//! bound.

pub mod certs;
pub mod dns;
pub mod issuer;

use std::sync::Arc;

use crate::config::{Config, Switch};
use crate::registry::{Conn, Kind};
use crate::subdomain;
use crate::App;

pub struct CustomDomains {
    pub enabled: bool,
    pub verifier: dns::Verifier,
    pub certs: certs::OnDemand,
}

impl CustomDomains {
    /// Self-signed certificates per name until another issuer is set with
    /// [`certs::OnDemand::set_issuer`]: with `--tls-cert` too, since the
    /// operator's certificate cannot cover other people's names.
    pub fn new(config: &Config, tls: Arc<crate::tls::Certs>) -> CustomDomains {
        let args = &config.custom;
        CustomDomains {
            enabled: args.custom_domains == Switch::On,
            verifier: dns::Verifier::new(args, &config.domain),
            certs: certs::OnDemand::new(args, tls, Arc::new(issuer::SelfSigned)),
        }
    }
}

/// Whether `name` (lowercase, no trailing dot) is a custom name as a bind
/// address may ask for one: at least two valid labels, not an IP address,
/// and neither DOMAIN nor a name under it.
pub fn is_custom_name(name: &str, domain: &str) -> bool {
    // A numeric last label is an IP address, never a host name.
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()));
    name.contains('.')
        && !numeric_tld
        && subdomain::is_valid_domain(name)
        && name != domain
        && !name.ends_with(&format!(".{domain}"))
}

/// Whether a registry key is a custom domain (labels under DOMAIN have no
/// dot, TCP keys are `tcp:PORT`).
pub fn is_registry_custom(key: &str) -> bool {
    key.contains('.')
}

/// The registry key of a Host or SNI value that names a custom domain bound
/// right now, else `None` (a foreign name that stays foreign).
pub fn bound_name(app: &App, host: &str) -> Option<String> {
    let name = subdomain::strip_port(host)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !is_custom_name(&name, &app.config.domain) {
        return None;
    }
    let tunnel = app.registry.peek(&name)?;
    (tunnel.kind == Kind::Name).then_some(name)
}

/// After `name` was bound: issues its certificate in the background once
/// the connection's options are known (a `tls=passthrough` tunnel
/// terminates TLS itself and gets none). A failure is logged and told to
/// the user; visitors then see the server's own certificate. A new
/// certificate may push out those of names no longer bound
/// (`--custom-cert-cache`).
pub fn start_certificate(app: &Arc<App>, name: String, conn: Arc<Conn>) {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        let options = conn.options_settled().await;
        if options.tls == crate::ssh::options::Tls::Passthrough {
            tracing::debug!(name, "custom domain passes TLS through: no certificate");
            let skipped = &app.custom.certs.counters.passthrough;
            skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        match app.custom.certs.obtain(&name).await {
            Ok(true) => {
                let still_bound = |other: &str| bound_name(&app, other).is_some();
                app.custom.certs.evict(still_bound);
            }
            Ok(false) => {}
            Err(err) => {
                let why = format!("{err:#}");
                tracing::warn!(name, error = %why, "custom domain certificate failed");
                conn.notify(crate::ssh::banner::custom_cert_failed(&name, &why));
            }
        }
    });
}

/// Checks the DNS proof of every bound custom domain again every
/// `--custom-domain-recheck`, so a name whose owner withdrew the TXT record
/// (or pointed it elsewhere) stops being served by whoever still holds the
/// tunnel. One failed check may be a DNS hiccup: a tunnel is closed only
/// after two failures in a row.
pub async fn recheck(app: Arc<App>, shutdown: crate::shutdown::Shutdown) {
    let every = app.config.custom.custom_domain_recheck;
    if every.is_zero() || !app.custom.enabled {
        return;
    }
    let mut failed_once: std::collections::HashSet<(crate::registry::ConnId, String)> =
        Default::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tick.tick() => {}
        }
        let pass = check_all(&app, &failed_once);
        failed_once = tokio::select! {
            _ = shutdown.requested() => return,
            failing = pass => failing,
        };
    }
}

/// One recheck pass: closes the tunnels in `failed_once` that fail again,
/// and returns those that failed for the first time.
async fn check_all(
    app: &App,
    failed_once: &std::collections::HashSet<(crate::registry::ConnId, String)>,
) -> std::collections::HashSet<(crate::registry::ConnId, String)> {
    let mut failing = std::collections::HashSet::new();
    for tunnel in app.registry.tunnels() {
        if !is_registry_custom(&tunnel.subdomain) || tunnel.kind != Kind::Name {
            continue;
        }
        let Some(owner) = &tunnel.owner else { continue };
        let Err(why) = app.custom.verifier.verify(&tunnel.subdomain, owner).await else {
            continue;
        };
        let key = (tunnel.conn, tunnel.subdomain.clone());
        if failed_once.contains(&key) {
            tracing::info!(subdomain = %tunnel.subdomain, conn = tunnel.conn, reason = %why, "custom domain proof gone: tunnel closed");
            app.close_tunnel(&tunnel, &format!("its DNS proof no longer holds: {why}"));
        } else {
            tracing::debug!(subdomain = %tunnel.subdomain, reason = %why, "custom domain proof failed once");
            failing.insert(key);
        }
    }
    failing
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_names() {
        let d = "tunnel.example";
        assert!(is_custom_name("app.example.org", d));
        assert!(is_custom_name("example.org", d));
        assert!(!is_custom_name("app", d));
        assert!(!is_custom_name("tunnel.example", d));
        assert!(!is_custom_name("a.tunnel.example", d));
        assert!(!is_custom_name("a..example.org", d));
        assert!(!is_custom_name("a_b.example.org", d));
        assert!(!is_custom_name("192.168.1.5", d));
    }
}
