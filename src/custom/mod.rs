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

use std::collections::HashSet;
use std::sync::Arc;

use crate::config::{Config, Switch};
use crate::shutdown::Shutdown;
use crate::subdomain;
use crate::tunnel::options::Tls;
use crate::tunnel::registry::Pick;
use crate::tunnel::route::Held;
use crate::tunnel::{is_custom_key, Client, ConnId, Kind, Notice, Registry};

pub struct CustomDomains {
    pub enabled: bool,
    pub verifier: dns::Verifier,
    pub certs: certs::OnDemand,
    /// Which names are bound now (routing, certificate eviction, rechecks).
    registry: Arc<Registry>,
    /// `--custom-domain-recheck`.
    recheck_every: std::time::Duration,
}

impl CustomDomains {
    /// Self-signed certificates per name until another issuer is set with
    /// [`certs::OnDemand::set_issuer`]: with `--tls-cert` too, since the
    /// operator's certificate cannot cover other people's names.
    pub fn new(
        config: &Config,
        tls: Arc<crate::tls::Certs>,
        registry: Arc<Registry>,
    ) -> CustomDomains {
        let args = &config.custom;
        CustomDomains {
            enabled: args.custom_domains == Switch::On,
            verifier: dns::Verifier::new(args, &config.domain),
            certs: certs::OnDemand::new(args, tls, Arc::new(issuer::SelfSigned)),
            registry,
            recheck_every: args.custom_domain_recheck,
        }
    }

    /// The registry key of a Host or SNI value that names a custom domain
    /// bound right now, else `None` (a foreign name that stays foreign).
    pub fn bound_name(&self, host: &str) -> Option<String> {
        let name = subdomain::bare_host(host);
        if !subdomain::is_custom_name(&name, &self.registry.public().domain) {
            return None;
        }
        let tunnel = self.registry.find(&name, Pick::Oldest)?;
        (tunnel.kind() == Kind::Name).then_some(name)
    }

    /// [`CustomDomains::bound_name`], and in a cluster a custom domain
    /// bound on another node (or on one that just died: its clients are
    /// reconnecting), as the directory says.
    pub async fn bound_anywhere(&self, host: &str) -> Option<String> {
        if let Some(name) = self.bound_name(host) {
            return Some(name);
        }
        if !self.enabled {
            return None;
        }
        let name = subdomain::bare_host(host);
        if !subdomain::is_custom_name(&name, &self.registry.public().domain) {
            return None;
        }
        match self.registry.held(&name).await {
            Held::HereByName | Held::Elsewhere => Some(name),
            Held::HereOtherwise | Held::Unknown | Held::Nowhere => None,
        }
    }

    /// Whether `name`'s certificate is worth renewing: a tunnel binds it
    /// here, or in a cluster on another node (or one reconnecting), or the
    /// directory cannot say now (then it is kept, to be asked again).
    pub async fn wants_certificate(&self, name: &str) -> bool {
        self.bound_name(name).is_some() || self.registry.held(name).await != Held::Nowhere
    }

    /// After `name` was bound by `client`: issues its certificate in the
    /// background once the connection's options are known (a
    /// `tls=passthrough` tunnel terminates TLS itself and gets none). A
    /// failure is logged and told to the user; visitors then see the
    /// server's own certificate. A new certificate may push out those of
    /// names no longer bound (`--custom-cert-cache`).
    pub fn start_certificate(self: &Arc<Self>, name: String, client: Arc<dyn Client>) {
        let custom = Arc::clone(self);
        tokio::spawn(async move {
            let options = crate::tunnel::options_settled(&*client).await;
            if options.tls == Tls::Passthrough {
                tracing::debug!(name, "custom domain passes TLS through: no certificate");
                let skipped = &custom.certs.counters.passthrough;
                skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            match custom.certs.obtain(&name).await {
                Ok(true) => {
                    let still_bound = |other: &str| custom.bound_name(other).is_some();
                    custom.certs.evict(still_bound);
                }
                Ok(false) => {}
                Err(err) => {
                    let why = format!("{err:#}");
                    tracing::warn!(name, error = %why, "custom domain certificate failed");
                    client.notify(Notice::CertFailed { name, why });
                }
            }
        });
    }

    /// Checks the DNS proof of every bound custom domain again every
    /// `--custom-domain-recheck`, so a name whose owner withdrew the TXT
    /// record (or pointed it elsewhere) stops being served by whoever still
    /// holds the tunnel. One failed check may be a DNS hiccup: a tunnel is
    /// closed only after two failures in a row.
    pub async fn recheck(self: Arc<Self>, shutdown: Shutdown) {
        let every = self.recheck_every;
        if every.is_zero() || !self.enabled {
            return;
        }
        let mut failed_once = HashSet::new();
        let mut ticker = shutdown.ticker(every);
        while ticker.tick().await {
            let pass = self.check_all(&failed_once);
            let Some(failing) = shutdown.unless_requested(pass).await else {
                return;
            };
            failed_once = failing;
        }
    }

    /// One recheck pass: closes the tunnels in `failed_once` that fail
    /// again, and returns those that failed for the first time.
    async fn check_all(
        &self,
        failed_once: &HashSet<(ConnId, String)>,
    ) -> HashSet<(ConnId, String)> {
        let mut failing = HashSet::new();
        for tunnel in self.registry.tunnels() {
            if !is_custom_key(tunnel.key()) || tunnel.kind() != Kind::Name {
                continue;
            }
            let Some(owner) = tunnel.owner() else {
                continue;
            };
            let Err(why) = self.verifier.verify(tunnel.key(), owner).await else {
                continue;
            };
            let key = (tunnel.conn(), tunnel.key().to_string());
            if failed_once.contains(&key) {
                tracing::info!(subdomain = %tunnel.key(), conn = tunnel.conn(), reason = %why, "custom domain proof gone: tunnel closed");
                self.registry
                    .close(&tunnel, &format!("its DNS proof no longer holds: {why}"));
            } else {
                tracing::debug!(subdomain = %tunnel.key(), reason = %why, "custom domain proof failed once");
                failing.insert(key);
            }
        }
        failing
    }
}

#[cfg(test)]
mod tests {
    use crate::subdomain::is_custom_name;

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
        // What a browser reads as an IPv4 address, or cannot read at all.
        assert!(!is_custom_name("app.0x7f", d));
        assert!(!is_custom_name("app.example.1", d));
        assert!(!is_custom_name("xn--zz.example.org", d));
        assert!(is_custom_name("xn--bcher-kva.example.org", d));
    }
}
