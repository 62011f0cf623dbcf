//! Running several nodes as one service on Redis, and the health check a
//! load balancer asks. Without `--cluster-redis` the node is alone and
//! nothing external is needed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};

use super::parse::parse_duration;
use crate::store::target::{redact, Target};

/// Cluster mode and the load balancer's health check.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Cluster (several nodes sharing one namespace on Redis)")]
pub struct ClusterArgs {
    /// Redis (or Valkey) holding the cluster's shared state:
    /// `redis://[user:pass@]host:port/db`, or `rediss://…` for TLS; behind
    /// Sentinel `redis+sentinel://[user:pass@]host:26379,host:26379/MASTER/db`
    /// (`rediss+sentinel://…` for TLS; the sentinels' own credentials as
    /// `?sentinel_user=U&sentinel_password=P`), following failovers. Unset:
    /// a single node, nothing external needed.
    #[arg(long, env = "CLUSTER_REDIS")]
    pub cluster_redis: Option<String>,

    /// PEM file of the CA that signed Redis's TLS certificate (a private
    /// CA), trusted instead of the system's CAs for `rediss://` and
    /// `rediss+sentinel://` (sentinels and data nodes).
    #[arg(long, env = "CLUSTER_REDIS_CA")]
    pub cluster_redis_ca: Option<PathBuf>,

    /// This node's name in the cluster (letters, digits, `.`, `_`, `-`).
    /// Default: the host name.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    /// Address of the inter-node link (mutual TLS; other nodes forward
    /// visitors here). Needed with --cluster-redis.
    #[arg(long, env = "CLUSTER_LISTEN")]
    pub cluster_listen: Option<SocketAddr>,

    /// `HOST:PORT` other nodes dial to reach this node's link. Default:
    /// --cluster-listen, unless that is an unspecified address (0.0.0.0, ::).
    #[arg(long, env = "CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,

    /// File holding the cluster secret: it authenticates nodes to each
    /// other and encrypts what Redis must not read (certificate keys, the
    /// stable-name secret). Write one with `burrow cluster init FILE`; every
    /// node needs the same file. Needed with --cluster-redis.
    #[arg(long = "cluster-secret", env = "CLUSTER_SECRET_FILE")]
    pub cluster_secret: Option<PathBuf>,

    /// A node that has not renewed its heartbeat for this long is dead:
    /// its names become claimable by others.
    #[arg(long, env = "CLUSTER_NODE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub cluster_node_ttl: Duration,

    /// Plain-HTTP health check for load balancers: `GET /health` answers
    /// 200 `ok`, or 503 `draining` once the node is shutting down (so the
    /// balancer stops sending new connections before they are refused).
    /// Unset: no health listener.
    #[arg(long, env = "HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
}

impl ClusterArgs {
    /// Whether this node is part of a cluster.
    pub fn enabled(&self) -> bool {
        self.cluster_redis.is_some()
    }

    /// Where the cluster's Redis is (`None`: no cluster); the error is one
    /// line naming the flag, without the URL's passwords.
    pub fn redis_target(&self) -> Result<Option<Target>> {
        let Some(url) = &self.cluster_redis else {
            return Ok(None);
        };
        Target::parse(url)
            .map(Some)
            .map_err(|err| anyhow!("--cluster-redis {:?}: {err:#}", redact(url)))
    }

    /// Every combination that cannot work, as one line naming the flags.
    pub(super) fn validate(&self) -> Result<()> {
        let Some(target) = self.redis_target()? else {
            for (set, flag) in [
                (self.cluster_listen.is_some(), "--cluster-listen"),
                (self.cluster_advertise.is_some(), "--cluster-advertise"),
                (self.cluster_secret.is_some(), "--cluster-secret"),
                (self.node_id.is_some(), "--node-id"),
                (self.cluster_redis_ca.is_some(), "--cluster-redis-ca"),
            ] {
                if set {
                    bail!(
                        "{flag} is set but --cluster-redis is not: cluster mode needs a Redis URL"
                    );
                }
            }
            return Ok(());
        };
        if let Some(ca) = &self.cluster_redis_ca {
            if !target.tls() {
                bail!("--cluster-redis-ca {} is for TLS: give rediss://… or rediss+sentinel://… to --cluster-redis", ca.display());
            }
        }
        if self.cluster_secret.is_none() {
            bail!("--cluster-redis needs --cluster-secret FILE (write one with `burrow cluster init FILE` and copy it to every node)");
        }
        let Some(listen) = self.cluster_listen else {
            bail!("--cluster-redis needs --cluster-listen ADDR: the address other nodes forward visitors to");
        };
        if self.cluster_advertise.is_none() && listen.ip().is_unspecified() {
            bail!("--cluster-listen {listen} is an unspecified address: set --cluster-advertise HOST:PORT, the address other nodes dial");
        }
        if let Some(id) = &self.node_id {
            if !valid_node_id(id) {
                bail!("--node-id {id:?}: use 1-64 letters, digits, '.', '_' or '-'");
            }
        }
        if self.cluster_node_ttl < Duration::from_secs(3) {
            bail!(
                "--cluster-node-ttl must be at least 3s (a heartbeat goes out every third of it)"
            );
        }
        Ok(())
    }
}

/// Whether `id` may name a node: it appears in Redis keys and link headers.
pub fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// `burrow cluster …`: tools for running a cluster.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ClusterCommand {
    /// Writes a fresh cluster secret to FILE (mode 0600); copy it to every
    /// node and give it with --cluster-secret.
    Init {
        /// Where to write the secret.
        file: PathBuf,
        /// Replace FILE if it exists (every node then needs the new one).
        #[arg(long)]
        force: bool,
    },
}
