//! The one accept loop every listener runs (SSH, HTTP, HTTPS, the stats
//! endpoint, public TCP ports): accept until told to stop, set
//! `TCP_NODELAY` (small packets are the norm here: keystrokes, request
//! heads, SSH keepalives), and back off briefly when accepting fails
//! (EMFILE and friends) instead of spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::mpsc;

use crate::config::StatsAddr;

/// How long to wait after a failed accept.
const BACK_OFF: Duration = Duration::from_millis(50);

/// Hands every connection accepted on `listener` to `each` until `stop`
/// resolves. `name` labels the listener in log lines.
pub async fn accept_loop<F>(listener: &TcpListener, name: &str, stop: impl Future, mut each: F)
where
    F: FnMut(TcpStream, SocketAddr),
{
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(listener = name, error = %err, "accept failed");
                    tokio::time::sleep(BACK_OFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        each(stream, peer);
    }
}

/// Connections waiting to be handed over; more are refused (closed).
const HANDOFF_QUEUE: usize = 256;

/// The giving end of a hand-over: a connection accepted on one listener
/// that belongs to another server (SSH arriving on :443), with its
/// client's address already resolved (PROXY header read).
#[derive(Clone)]
pub struct Handoff(mpsc::Sender<(TcpStream, SocketAddr)>);

/// The receiving end: the server the connections belong to.
pub struct Handoffs(mpsc::Receiver<(TcpStream, SocketAddr)>);

/// A new hand-over channel.
pub fn handoff() -> (Handoff, Handoffs) {
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    (Handoff(tx), Handoffs(rx))
}

impl Handoff {
    /// Hands `stream` over; `false` (and the stream closed) when the
    /// receiving server is gone or has too many waiting.
    pub fn give(&self, stream: TcpStream, peer: SocketAddr) -> bool {
        self.0.try_send((stream, peer)).is_ok()
    }
}

impl Handoffs {
    /// The next connection handed over; `None` once every giver is gone.
    pub async fn next(&mut self) -> Option<(TcpStream, SocketAddr)> {
        self.0.recv().await
    }
}

/// Every listener, bound before anything is served (so a bad flag fails
/// before anything starts).
pub struct Listeners {
    pub ssh: TcpListener,
    pub http: TcpListener,
    pub https: TcpListener,
    pub stats: StatsListener,
    /// The cluster link (`--cluster-listen`), in a cluster.
    pub cluster: Option<TcpListener>,
    /// The load balancer's health check (`--health-addr`), if asked for.
    pub health: Option<TcpListener>,
}

/// The stats listener: TCP (loopback peers only) or a Unix socket.
pub enum StatsListener {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

/// A Unix socket's path, removed when the listener goes.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where each listener is bound (ports may be 0 in the flags).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub ssh: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub stats: StatsAddr,
}

impl BoundAddrs {
    /// One machine-readable line for scripts and tests (ports may be 0 in
    /// the flags), then the command a user would type.
    pub fn announce(&self, domain: &str, connect: &str) {
        use std::io::Write;
        println!(
            "burrow ready: ssh={} http={} https={} stats={} domain={domain}",
            self.ssh, self.http, self.https, self.stats
        );
        println!("connect with: {connect}");
        let _ = std::io::stdout().flush();
    }
}

impl Listeners {
    pub async fn bind(config: &crate::config::Config) -> anyhow::Result<Listeners> {
        Ok(Listeners {
            ssh: bind("--ssh-addr", config.ssh_addr).await?,
            http: bind("--http-addr", config.http_addr).await?,
            https: bind("--https-addr", config.https_addr).await?,
            stats: match &config.stats_addr {
                StatsAddr::Tcp(addr) => StatsListener::Tcp(bind("--stats-addr", *addr).await?),
                StatsAddr::Unix(path) => bind_unix(path)?,
            },
            cluster: match config
                .cluster
                .cluster_listen
                .filter(|_| config.cluster.enabled())
            {
                Some(addr) => Some(bind("--cluster-listen", addr).await?),
                None => None,
            },
            health: match config.cluster.health_addr {
                Some(addr) => Some(bind("--health-addr", addr).await?),
                None => None,
            },
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        let local = |l: &TcpListener| l.local_addr().expect("bound socket has an address");
        BoundAddrs {
            ssh: local(&self.ssh),
            http: local(&self.http),
            https: local(&self.https),
            stats: match &self.stats {
                StatsListener::Tcp(listener) => StatsAddr::Tcp(local(listener)),
                StatsListener::Unix(_, file) => StatsAddr::Unix(file.0.clone()),
            },
        }
    }
}

async fn bind(flag: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{flag} {addr}: cannot listen"))
}

/// Binds the stats listener's Unix socket, mode 0660 (owner and group:
/// file permissions decide who may connect). A socket left by a previous
/// run is replaced; any other file there is an error.
fn bind_unix(path: &Path) -> anyhow::Result<StatsListener> {
    use anyhow::Context;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let flag = || format!("--stats-addr unix:{}", path.display());
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!("{}: the path exists and is not a socket", flag());
        }
        std::fs::remove_file(path).with_context(|| format!("{}: cannot replace", flag()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("{}: cannot listen", flag()))?;
    let file = SocketFile(path.to_path_buf());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("{}: cannot set mode 0660", flag()))?;
    Ok(StatsListener::Unix(listener, file))
}

/// Every tunnel holds one SSH socket and every visitor one more: the usual
/// soft limit of 1024 open files would cap burrow at a few hundred users.
/// Raise it to the hard limit (systemd's default hard limit is 512Ki).
pub fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < 8192 => {
            tracing::warn!(
                limit,
                "the open-files limit is low: raise LimitNOFILE / ulimit -n"
            )
        }
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(err) => tracing::warn!(error = %err, "could not raise the open-files limit"),
    }
}
