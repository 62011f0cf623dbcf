//! How tunnels end, in one place: every closer (the client leaving or
//! cancelling a forward, Ctrl+C, expiry, the operator, a keys-file reload,
//! a withdrawn DNS proof, a ban, a takeover) goes through these methods, so
//! the remaining clients of a name are always told how many they are, the
//! user always learns why, and a connection left without tunnels by the
//! server is always ended (so supervisors such as autossh reconnect).

use std::net::IpAddr;
use std::sync::Arc;

use super::names::{Denied, Grants};
use super::registry::{Claimed, Registry, Removed};
use super::{ConnId, Kind, Notice, Tunnel};
use crate::counters::COUNTERS;
use crate::limits::ssh::Block;

impl Registry {
    /// Closes `tunnel` on the server's initiative: the user is told why
    /// and how to reconnect, and a connection left without tunnels is
    /// ended. Nothing happens if the tunnel is gone already.
    pub fn close(&self, tunnel: &Tunnel, reason: &str) {
        let Some(removed) = self.release(tunnel.key(), tunnel.conn()) else {
            return;
        };
        self.tell_remaining(&removed);
        tracing::info!(conn = tunnel.conn(), ip = %tunnel.client_ip(), subdomain = %tunnel.key(), reason, "tunnel closed");
        let notice = Notice::Closed {
            url: self.url(tunnel),
            reason: reason.to_string(),
            connect: self.public().connect_command(),
        };
        self.tell_or_end(tunnel, notice, format!("tunnel closed: {reason}"));
    }

    /// The client gave up one forward (`cancel-tcpip-forward`). Returns
    /// whether it held one.
    pub fn cancel(&self, key: &str, conn: ConnId, why: &str) -> bool {
        let Some(removed) = self.release(key, conn) else {
            return false;
        };
        self.tell_remaining(&removed);
        log_closed(&removed.tunnel, why);
        true
    }

    /// The client's tunnels end with it (it left, stopped, or its session
    /// ended): removes them and tells each name's remaining clients.
    /// Returns how many there were.
    pub fn leave(&self, conn: ConnId, why: &str) -> usize {
        let removed = self.release_conn(conn);
        for removed in &removed {
            log_closed(&removed.tunnel, why);
            self.tell_remaining(removed);
        }
        removed.len()
    }

    /// After a successful claim: the replaced client is told it lost the
    /// name, the clients the new one joined how many serve it now. Returns
    /// the notice for the new client when it shares the name.
    pub fn announce_claim(&self, claimed: &Claimed) -> Option<Notice> {
        if let Some(old) = &claimed.replaced {
            self.taken_over(old);
        }
        if let Some(clients) = claimed.clients_elsewhere {
            // In a cluster, every node tells its own clients (the change
            // reaches them all as an event); only the new one hears it here.
            return (clients > 1).then(|| self.clients_notice(&claimed.tunnel, clients));
        }
        if claimed.joined.is_empty() {
            return None;
        }
        let notice = self.clients_notice(&claimed.tunnel, claimed.joined.len() + 1);
        for other in &claimed.joined {
            other.client().notify(notice.clone());
        }
        Some(notice)
    }

    /// "`count` clients serve `tunnel`'s name now."
    fn clients_notice(&self, tunnel: &Tunnel, count: usize) -> Notice {
        Notice::Clients {
            url: self.url(tunnel),
            count,
            balance: self.balance(),
        }
    }

    /// In a cluster: `key` is served by `count` clients now, after a change
    /// made by `by` (a node and connection, told already): this node's
    /// other clients of it hear the new count.
    pub fn clients_changed(&self, key: &str, count: usize, by: Option<(&str, ConnId)>) {
        let me = self.directory().map(|d| d.node().to_string());
        for tunnel in self.members(key) {
            let told =
                by.is_some_and(|(node, conn)| Some(node) == me.as_deref() && conn == tunnel.conn());
            if !told && count > 0 {
                tunnel.client().notify(self.clients_notice(&tunnel, count));
            }
        }
    }

    /// In a cluster: connection `conn` of this node lost `key` to a newer
    /// claim on another node (it learned from the shared directory).
    pub fn lost(&self, key: &str, conn: ConnId) {
        let Some(tunnel) = self.members(key).into_iter().find(|t| t.conn() == conn) else {
            return;
        };
        if self.release(key, conn).is_some() {
            self.taken_over(&tunnel);
        }
    }

    /// A newer connection of the same key took `old`'s name: tell the old
    /// connection, and end it if that was its last tunnel.
    fn taken_over(&self, old: &Tunnel) {
        tracing::info!(conn = old.conn(), subdomain = %old.key(), "tunnel taken over by a newer connection of the same key");
        let notice = Notice::TakenOver { url: self.url(old) };
        let reason = "tunnel taken over by a newer connection with the same key";
        self.tell_or_end(old, notice, reason.into());
    }

    /// Applies a fresh block of `ip`: every connection of the IP (with its
    /// tunnels) is closed, with a line saying until when. Returns how many
    /// connections were closed.
    pub fn close_ip(&self, ip: IpAddr, block: &Block) -> usize {
        if let Some(directory) = self.directory() {
            directory.blocked(ip, block);
        }
        self.close_ip_here(ip, &block.until_utc(), &block.reason)
    }

    /// `ip`'s block was lifted here (by the operator): in a cluster, every
    /// node lifts it.
    pub fn unblocked(&self, ip: IpAddr) {
        if let Some(directory) = self.directory() {
            directory.unblocked(ip);
        }
    }

    /// [`Registry::close_ip`] for a block that came from another node
    /// (this node only closes its own connections).
    pub fn close_ip_here(&self, ip: IpAddr, until_utc: &str, reason: &str) -> usize {
        COUNTERS.blocked();
        tracing::warn!(%ip, until = %until_utc, reason = %reason, "ip blocked");
        let clients = self.clients_of_ip(ip);
        for client in &clients {
            self.leave(client.id(), "ip blocked");
            let notice = Notice::Blocked {
                until_utc: until_utc.to_string(),
                reason: reason.to_string(),
            };
            client.close(notice, format!("blocked until {until_utc}: {reason}"));
        }
        clients.len()
    }

    /// Closes the tunnels the grant rule no longer allows (after a keys
    /// file reload), each with the reason the rule gives.
    pub fn enforce(&self, grants: &Grants) {
        for tunnel in self.tunnels() {
            let verdict = grants
                .listed(tunnel.owner())
                .and_then(|()| match tunnel.kind() {
                    Kind::Tcp(port) => grants.port(tunnel.owner(), port).map(drop),
                    Kind::Name => grants.name(tunnel.owner(), tunnel.key()).map(drop),
                    Kind::Private(_) => {
                        let name = super::private::name_of(tunnel.key());
                        grants.name(tunnel.owner(), name).map(drop)
                    }
                });
            if let Err(denied) = verdict {
                self.close(&tunnel, revoked(&denied, tunnel.kind()));
            }
        }
    }

    /// Tells the clients still serving a name how many they are now (in a
    /// cluster their nodes do, on the directory's event).
    fn tell_remaining(&self, removed: &Removed) {
        if self.directory().is_some() {
            return;
        }
        let Some(first) = removed.remaining.first() else {
            return;
        };
        let notice = Notice::Clients {
            url: self.url(first),
            count: removed.remaining.len(),
            balance: self.balance(),
        };
        for tunnel in &removed.remaining {
            tunnel.client().notify(notice.clone());
        }
    }

    /// Tells `tunnel`'s user `notice`, ending their connection instead if
    /// it has no tunnel left (the client should exit and reconnect).
    fn tell_or_end(&self, tunnel: &Tunnel, notice: Notice, reason: String) {
        let client: &Arc<dyn super::Client> = tunnel.client();
        if self.conn_has_tunnels(tunnel.conn()) {
            client.notify(notice);
        } else {
            client.close(notice, reason);
        }
    }
}

fn log_closed(tunnel: &Tunnel, why: &str) {
    tracing::info!(conn = tunnel.conn(), ip = %tunnel.client_ip(), subdomain = %tunnel.key(), reason = why, "tunnel closed");
}

/// Why a reload closed a tunnel, as its user reads it.
fn revoked(denied: &Denied, kind: Kind) -> &'static str {
    match (denied, kind) {
        (Denied::KeyNotListed, _) => "your key was removed from the keys file",
        (Denied::OtherKey, Kind::Tcp(_)) => "the keys file now grants this port to another key",
        (Denied::OtherKey, Kind::Name | Kind::Private(_)) => {
            "the keys file now grants this name to another key"
        }
        (Denied::Reserved, _) => "the keys file no longer grants this reserved name to your key",
        (Denied::OutOfRange, _) => "the keys file no longer grants this port to your key",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_port_ranges, Balance};
    use crate::keys::KeysFile;
    use crate::tunnel::tcp_key;
    use crate::tunnel::testing::{registry, tunnel, tunnel_of, FakeClient};

    #[tokio::test]
    async fn a_closed_last_tunnel_ends_its_connection() {
        let registry = registry(Balance::Replace);
        let a = FakeClient::new(1, "192.0.2.1");
        let claimed = registry.claim(tunnel(&a, "api", None), None).await.unwrap();
        registry.close(&claimed.tunnel, "no traffic for 2 h (tunnel-idle-timeout)");
        assert_eq!(
            a.ended().as_deref(),
            Some("tunnel closed: no traffic for 2 h (tunnel-idle-timeout)")
        );
        assert!(matches!(
            &a.notices()[..],
            [Notice::Closed { url, .. }] if url == "https://api.tunnel.example"
        ));
        assert!(registry.is_empty());
        // Closing again is harmless: nothing left to close.
        registry.close(&claimed.tunnel, "again");
        assert_eq!(a.notices().len(), 1);
    }

    #[tokio::test]
    async fn a_closed_tunnel_among_others_is_only_told() {
        let registry = registry(Balance::Replace);
        let a = FakeClient::new(1, "192.0.2.1");
        let one = registry.claim(tunnel(&a, "one", None), None).await.unwrap();
        registry.claim(tunnel(&a, "two", None), None).await.unwrap();
        registry.close(&one.tunnel, CLOSED_BY_OPERATOR_FOR_TEST);
        assert!(a.ended().is_none());
        assert_eq!(a.notices().len(), 1);
        assert_eq!(registry.names(), ["two"]);
    }

    const CLOSED_BY_OPERATOR_FOR_TEST: &str = crate::tunnel::notice::CLOSED_BY_OPERATOR;

    #[tokio::test]
    async fn remaining_clients_hear_how_many_they_are() {
        let registry = registry(Balance::RoundRobin);
        let (a, b, c) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
            FakeClient::new(3, "192.0.2.3"),
        );
        registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        registry
            .claim(tunnel(&b, "api", Some("K")), None)
            .await
            .unwrap();
        let third = registry
            .claim(tunnel(&c, "api", Some("K")), None)
            .await
            .unwrap();
        let mine = registry.announce_claim(&third);
        assert!(matches!(mine, Some(Notice::Clients { count: 3, .. })));
        assert!(matches!(
            a.notices().last(),
            Some(Notice::Clients { count: 3, .. })
        ));
        assert_eq!(registry.leave(3, "ssh connection closed"), 1);
        for client in [&a, &b] {
            assert!(matches!(
                client.notices().last(),
                Some(Notice::Clients { count: 2, .. })
            ));
        }
        assert!(registry.cancel("api", 2, "forward cancelled"));
        assert!(!registry.cancel("api", 2, "forward cancelled"));
        assert!(matches!(
            a.notices().last(),
            Some(Notice::Clients { count: 1, .. })
        ));
    }

    #[tokio::test]
    async fn a_takeover_ends_the_old_connection() {
        let registry = registry(Balance::Replace);
        let (a, b) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.2"),
        );
        registry
            .claim(tunnel(&a, "api", Some("K")), None)
            .await
            .unwrap();
        let newer = registry
            .claim(tunnel(&b, "api", Some("K")), None)
            .await
            .unwrap();
        assert!(registry.announce_claim(&newer).is_none());
        assert!(matches!(&a.notices()[..], [Notice::TakenOver { .. }]));
        assert!(a.ended().unwrap().contains("taken over"));
        assert!(b.notices().is_empty());
    }

    #[tokio::test]
    async fn a_reload_revokes_a_name_and_a_port_through_the_grant_rule() {
        const KEY_B: &str =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILiW73TJIhnYKySsyz2s3hhv+Ss9MbJXIVnCPNboOoMi bob";
        let registry = registry(Balance::Replace);
        let a = FakeClient::new(1, "192.0.2.1");
        let tcp = (tcp_key(5432), Kind::Tcp(5432));
        registry
            .claim(tunnel(&a, "api", Some("SHA256:alice")), None)
            .await
            .unwrap();
        registry
            .claim(tunnel(&a, "keep", Some("SHA256:alice")), None)
            .await
            .unwrap();
        let holding = Box::new(()) as crate::tunnel::registry::Holding;
        let port = tunnel_of(&a, tcp, Some("SHA256:alice"), true);
        registry.claim(port, Some(holding)).await.unwrap();
        // The new file grants `api` and port 5432 to bob.
        let keys = KeysFile::parse(&format!("names=api,ports=5432 {KEY_B}")).unwrap();
        let ranges = parse_port_ranges("20000-20009").unwrap();
        registry.enforce(&Grants {
            keys: &keys,
            granted: &KeysFile::default(),
            reserved: &[],
            tcp_ports: &ranges,
            keys_only: false,
        });
        assert_eq!(registry.names(), ["keep"]);
        let mut reasons: Vec<String> = a
            .notices()
            .iter()
            .filter_map(|n| match n {
                Notice::Closed { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect();
        // The registry is a hash map: tunnels are enforced in no set order.
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "the keys file now grants this name to another key",
                "the keys file now grants this port to another key"
            ]
        );
    }

    #[tokio::test]
    async fn a_block_closes_every_connection_of_the_ip() {
        let registry = registry(Balance::Replace);
        let (a, b, c) = (
            FakeClient::new(1, "192.0.2.1"),
            FakeClient::new(2, "192.0.2.1"),
            FakeClient::new(3, "192.0.2.9"),
        );
        for client in [&a, &b, &c] {
            registry.add_client(Arc::clone(client) as Arc<dyn crate::tunnel::Client>);
        }
        registry.claim(tunnel(&a, "api", None), None).await.unwrap();
        let closed =
            registry.close_ip_here("192.0.2.1".parse().unwrap(), "2026-12-02 14:00:00", "abuse");
        assert_eq!(closed, 2);
        assert!(registry.is_empty());
        assert!(a.ended().unwrap().contains("blocked until"));
        assert!(b.ended().is_some());
        assert!(c.ended().is_none());
        assert!(matches!(&a.notices()[..], [Notice::Blocked { .. }]));
    }
}
