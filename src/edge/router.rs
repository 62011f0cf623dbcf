//! Where a visitor's Host or SNI points, decided in one place: the apex, a
//! tunnel (a label under the domain, or a custom domain bound right now), a
//! malformed name, or a foreign host; and for TLS, whether the connection
//! is terminated here or passed through to the app (`tls=passthrough`).

use std::sync::Arc;
use std::time::Duration;

use crate::custom::CustomDomains;
use crate::subdomain::{is_valid_label, strip_port};
use crate::tunnel::Registry;

/// Where a request's Host points, relative to the server's domain.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// The bare domain: the landing page.
    Apex,
    /// A tunnel name (a label under the domain, possibly unknown, or a
    /// bound custom domain): its registry key.
    Tunnel(String),
    /// Under the domain but not a usable name (nested labels, bad characters).
    Malformed,
    /// Not this server's domain at all.
    Foreign,
}

/// Maps a Host header or `:authority` value to a [`Route`] under `domain`:
/// case-insensitive, port and trailing dot stripped. Custom domains are
/// not known here (see [`Router::route`]).
pub fn route(host: &str, domain: &str) -> Route {
    let host = strip_port(host).trim_end_matches('.');
    if host.eq_ignore_ascii_case(domain) {
        return Route::Apex;
    }
    // The domain is lowercase ASCII (checked at start-up).
    let Some(label) = host
        .len()
        .checked_sub(domain.len())
        .filter(|&at| host.is_char_boundary(at) && host[at..].eq_ignore_ascii_case(domain))
        .and_then(|at| host[..at].strip_suffix('.'))
    else {
        return Route::Foreign;
    };
    let label = label.to_ascii_lowercase();
    if is_valid_label(&label) {
        Route::Tunnel(label)
    } else {
        Route::Malformed
    }
}

/// What happens to a TLS connection, by its SNI.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsRoute {
    /// burrow terminates TLS (then routes each request by Host).
    Terminate,
    /// burrow terminates TLS for this bound custom domain, with its own
    /// certificate (which may still be on its way).
    TerminateCustom(String),
    /// The bytes go, untouched, to the app of this tunnel.
    Passthrough(String),
    /// A name outside the domain: refused with an alert.
    Reject,
}

/// Routes visitors to tunnels.
pub struct Router {
    registry: Arc<Registry>,
    custom: Arc<CustomDomains>,
}

impl Router {
    pub fn new(registry: Arc<Registry>, custom: Arc<CustomDomains>) -> Router {
        Router { registry, custom }
    }

    pub fn domain(&self) -> &str {
        &self.registry.public().domain
    }

    /// Where a Host or SNI value points: a custom domain bound right now
    /// (in a cluster, on any node) is a tunnel too.
    pub async fn route(&self, host: &str) -> Route {
        match route(host, self.domain()) {
            Route::Foreign => self
                .custom
                .bound_anywhere(host)
                .await
                .map(Route::Tunnel)
                .unwrap_or(Route::Foreign),
            route => route,
        }
    }

    /// Whether TLS with SNI `server_name` is terminated, passed through or
    /// refused. A new tunnel's `tls=` option may still be on its way, here
    /// or on another node: [`Registry::passthrough`] waits for it
    /// (bounded), so a first connection is never terminated by mistake.
    ///
    /// With the route, how long the connection was held for the options.
    pub async fn tls(&self, server_name: Option<&str>) -> (TlsRoute, Duration) {
        let Some(name) = server_name else {
            return (TlsRoute::Terminate, Duration::ZERO);
        };
        let key = match self.route(name).await {
            Route::Foreign => return (TlsRoute::Reject, Duration::ZERO),
            Route::Apex | Route::Malformed => return (TlsRoute::Terminate, Duration::ZERO),
            Route::Tunnel(key) => key,
        };
        let (passthrough, held) = self.registry.passthrough(&key).await;
        crate::counters::COUNTERS.held_for_options(held);
        let route = match (passthrough, crate::tunnel::is_custom_key(&key)) {
            (None, _) => TlsRoute::Terminate,
            (Some(true), _) => TlsRoute::Passthrough(key),
            (Some(false), true) => TlsRoute::TerminateCustom(key),
            (Some(false), false) => TlsRoute::Terminate,
        };
        (route, held)
    }

    /// Whether a plain-HTTP request for `host` goes to the proxy (with
    /// `--http-mode proxy`): a tunnel, unless it only speaks TLS
    /// (`tls=passthrough`).
    /// With the answer, how long the request was held for the options.
    pub async fn serves_plain_http(&self, host: &str) -> (bool, Duration) {
        let Route::Tunnel(key) = self.route(host).await else {
            return (false, Duration::ZERO);
        };
        let (passthrough, held) = self.registry.passthrough(&key).await;
        crate::counters::COUNTERS.held_for_options(held);
        (passthrough != Some(true), held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let d = "tunnel.example";
        assert_eq!(route("tunnel.example", d), Route::Apex);
        assert_eq!(route("Tunnel.Example:443", d), Route::Apex);
        assert_eq!(route("tunnel.example.", d), Route::Apex);
        assert_eq!(
            route("Happy-Tiger-1a2b3c4d.tunnel.example:8443", d),
            Route::Tunnel("happy-tiger-1a2b3c4d".into())
        );
        assert_eq!(route("a.b.tunnel.example", d), Route::Malformed);
        assert_eq!(route("a_b.tunnel.example", d), Route::Malformed);
        assert_eq!(route(".tunnel.example", d), Route::Malformed);
        assert_eq!(route("eviltunnel.example", d), Route::Foreign);
        assert_eq!(route("example.org", d), Route::Foreign);
        assert_eq!(route("[::1]:443", d), Route::Foreign);
        assert_eq!(route("", d), Route::Foreign);
    }
}
