//! What the registry holds, counted and listed: for limits (tunnels per
//! IP), the stats and metrics, the admin API and the dashboard, the
//! housekeeping loops; and the table of client connections, so limits,
//! lifetimes and the operator can reach a user's terminal (or end their
//! connection) from outside the connection's own task.

use std::net::IpAddr;
use std::sync::Arc;

use super::Registry;
use crate::limits::ip_key;
use crate::tunnel::{Client, ConnId, Kind, Tunnel};

impl Registry {
    /// Number of tunnels (a name served by two clients counts twice).
    pub fn len(&self) -> usize {
        self.tunnels.iter().map(|g| g.members.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.tunnels.is_empty()
    }

    /// Number of distinct names and TCP ports served.
    pub fn names_len(&self) -> usize {
        self.tunnels.len()
    }

    /// Number of private aliases' clients (`-R NAME:PORT`).
    pub fn count_private(&self) -> usize {
        let private = |t: &&Arc<Tunnel>| matches!(t.kind(), Kind::Private(_));
        self.tunnels
            .iter()
            .map(|g| g.members.iter().filter(private).count())
            .sum()
    }

    /// Number of distinct client IPs that own at least one tunnel.
    pub fn unique_ips(&self) -> usize {
        let mut ips = std::collections::HashSet::new();
        for group in self.tunnels.iter() {
            ips.extend(group.members.iter().map(|t| t.client_ip()));
        }
        ips.len()
    }

    /// Tunnels owned by clients in the same limit group as `ip`.
    pub fn count_for_ip(&self, ip: IpAddr) -> usize {
        let key = ip_key(ip);
        self.tunnels
            .iter()
            .map(|g| {
                let mine = |t: &&Arc<Tunnel>| ip_key(t.client_ip()) == key;
                g.members.iter().filter(mine).count()
            })
            .sum()
    }

    /// A snapshot of every live tunnel (every client of every name).
    pub fn tunnels(&self) -> Vec<Arc<Tunnel>> {
        self.tunnels
            .iter()
            .flat_map(|g| g.members.clone())
            .collect()
    }

    /// How many live tunnels here are served for plan account `account`.
    pub fn tunnels_of_account(&self, account: &Arc<crate::plans::Account>) -> usize {
        self.tunnels
            .iter()
            .flat_map(|g| g.members.clone())
            .filter(|t| {
                t.client()
                    .account()
                    .is_some_and(|a| Arc::ptr_eq(&a, account))
            })
            .count()
    }

    /// The live tunnels of connection `conn`.
    pub fn tunnels_of(&self, conn: ConnId) -> Vec<Arc<Tunnel>> {
        let mut mine = self.tunnels();
        mine.retain(|t| t.conn() == conn);
        mine
    }

    /// Whether connection `conn` still owns any tunnel.
    pub fn conn_has_tunnels(&self, conn: ConnId) -> bool {
        self.tunnels
            .iter()
            .any(|g| g.members.iter().any(|t| t.conn() == conn))
    }

    /// Sorted names (and `tcp:PORT` keys) of all live tunnels.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tunnels.iter().map(|t| t.key().clone()).collect();
        names.sort();
        names
    }

    /// How many clients serve each name.
    pub fn client_counts(&self) -> std::collections::BTreeMap<String, usize> {
        self.tunnels
            .iter()
            .map(|g| (g.key().clone(), g.members.len()))
            .collect()
    }

    /// Registers a client connection (tunnels or not yet), so limits and
    /// the operator can reach it.
    pub fn add_client(&self, client: Arc<dyn Client>) {
        self.clients.insert(client.id(), client);
    }

    /// Forgets a client connection that ended.
    pub fn remove_client(&self, conn: ConnId) {
        self.clients.remove(&conn);
    }

    /// Number of client connections.
    pub fn client_conns(&self) -> usize {
        self.clients.len()
    }

    /// Client connections from the same limit group as `ip`.
    pub fn clients_of_ip(&self, ip: IpAddr) -> Vec<Arc<dyn Client>> {
        let key = ip_key(ip);
        self.clients
            .iter()
            .filter(|c| ip_key(c.ip()) == key)
            .map(|c| Arc::clone(c.value()))
            .collect()
    }
}
