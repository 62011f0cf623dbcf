//! The SSH server: accepting connections, the russh configuration (keys,
//! keepalives, timeouts) and the host key on disk.
//!
//! Each accepted socket runs one russh session with its own
//! [`handler::ClientHandler`]; the handler turns `tcpip-forward` requests into
//! registry entries and talks to the user through the session channel.

pub mod banner;
pub mod handler;
mod killable;
pub mod options;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::keys::{Algorithm, PrivateKey};
use russh::server::Config as RusshConfig;
use russh::{MethodKind, MethodSet, SshId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use crate::limits::ssh::{Admission, HandshakePermit};
use crate::metrics::SshOutcome;
use crate::registry::{Conn, ConnId};
use crate::shutdown::Shutdown;
use crate::App;

/// Server keepalive period: a client that answers nothing for this long is
/// sent a keepalive request.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered keepalives before the connection is declared dead
/// (15 s × 5 = 75 s to notice a vanished client).
const KEEPALIVE_MAX: usize = 4;
/// Hard ceiling on silence. A live client answers every keepalive, so this
/// only fires for peers that stopped talking altogether; it replaces russh's
/// 600 s default, which would otherwise kill idle `-N` tunnels.
const INACTIVITY_TIMEOUT: Duration = Duration::from_secs(90);

/// Builds the russh configuration around the host key.
pub fn russh_config(host_key: PrivateKey) -> Arc<RusshConfig> {
    let methods = MethodSet::from(
        &[
            MethodKind::None,
            MethodKind::PublicKey,
            MethodKind::KeyboardInteractive,
        ][..],
    );
    Arc::new(RusshConfig {
        server_id: SshId::Standard(format!("SSH-2.0-burrow_{}", env!("CARGO_PKG_VERSION")).into()),
        methods,
        keys: vec![host_key],
        keepalive_interval: Some(KEEPALIVE_INTERVAL),
        keepalive_max: KEEPALIVE_MAX,
        inactivity_timeout: Some(INACTIVITY_TIMEOUT),
        // Anonymous logins are accepted, so there is nothing to slow down.
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        nodelay: true,
        ..RusshConfig::default()
    })
}

/// Loads the OpenSSH host key at `path`, generating an ed25519 key there
/// (mode 0600, written atomically) when the file does not exist.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey> {
    let context = || format!("--host-key {}", path.display());
    if path.exists() {
        return russh::keys::load_secret_key(path, None)
            .with_context(|| format!("{}: cannot load the SSH host key", context()));
    }
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .with_context(|| format!("{}: cannot generate a host key", context()))?;
    let pem = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .with_context(|| format!("{}: cannot encode the host key", context()))?;
    crate::write_private_file(path, pem.as_bytes()).with_context(context)?;
    tracing::info!(path = %path.display(), "generated a new ed25519 SSH host key");
    Ok(key)
}

/// Accepts SSH connections until shutdown.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: Shutdown) {
    static NEXT_CONN: AtomicU64 = AtomicU64::new(1);
    loop {
        let (socket, peer) = tokio::select! {
            _ = shutdown.requested() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %err, "ssh accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        app.stats.total_connections.fetch_add(1, Ordering::Relaxed);
        let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
        let app = Arc::clone(&app);
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            let mut socket = socket;
            let timeout = app.config.limits.handshake_timeout;
            let peer = match app.trusted.resolve(&mut socket, peer, timeout).await {
                Ok(client) => client,
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "dropped: bad PROXY header");
                    return;
                }
            };
            match app.ip_guard.admit(peer.ip()) {
                Admission::Allowed(permit) => {
                    serve_connection(app, conn, socket, peer, Some(permit), None, stop).await
                }
                Admission::Blocked(block) => {
                    crate::metrics::METRICS.ssh_connection(SshOutcome::Blocked);
                    // Cheapest possible refusal: before the version exchange.
                    // RFC 4253 §4.2 lets the server send text lines first.
                    let text = format!(
                        "burrow: your IP is blocked until {} ({})\r\n",
                        block.until_utc(),
                        block.reason
                    );
                    refuse_before_version(socket, &text).await;
                }
                Admission::Refused {
                    refusal,
                    newly_blocked,
                    before_version,
                } => {
                    app.stats.refused(refusal.limit);
                    crate::metrics::METRICS.ssh_connection(SshOutcome::Refused);
                    if app.refusal_log.first(peer.ip(), refusal.limit) {
                        tracing::warn!(ip = %peer.ip(), limit = refusal.limit, reason = %refusal.message, "ssh connection refused");
                    }
                    if let Some(block) = newly_blocked {
                        app.block_ip(peer.ip(), &block);
                    }
                    if before_version {
                        let text = format!("burrow: {}: {}\r\n", refusal.limit, refusal.message);
                        refuse_before_version(socket, &text).await;
                    } else {
                        // Finish the key exchange so OpenSSH prints the
                        // reason ("Received disconnect ...: too many ...").
                        let reason = format!("{}: {}", refusal.limit, refusal.message);
                        serve_connection(app, conn, socket, peer, None, Some(reason), stop).await;
                    }
                }
            }
        });
    }
}

/// Writes one line and closes, without speaking SSH at all.
async fn refuse_before_version(mut socket: TcpStream, text: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = socket.write_all(text.as_bytes()).await;
        let _ = socket.shutdown().await;
    })
    .await;
}

/// Runs one SSH connection to its end. With `refused`, the connection is
/// disconnected with that reason as soon as the key exchange allows.
async fn serve_connection(
    app: Arc<App>,
    id: ConnId,
    socket: TcpStream,
    peer: SocketAddr,
    permit: Option<HandshakePermit>,
    refused: Option<String>,
    stop: Shutdown,
) {
    let conn = Arc::new(Conn::new(id, peer.ip()));
    app.registry.add_conn(Arc::clone(&conn));
    let deadline = Instant::now() + app.config.limits.handshake_timeout;
    let handler = handler::ClientHandler::new(
        Arc::clone(&app),
        Arc::clone(&conn),
        peer,
        permit,
        refused.is_some(),
    );
    let config = Arc::clone(&app.ssh_config);
    // The socket is wrapped so the connection can be cut even when the
    // client ignores a disconnect (or stalls the key exchange, when russh
    // cannot send one at all).
    let socket = killable::KillableStream::new(socket, conn.kill.clone());
    let started =
        tokio::time::timeout_at(deadline, russh::server::run_stream(config, socket, handler)).await;
    let session = match started {
        Ok(Ok(session)) => session,
        Ok(Err(err)) => {
            crate::metrics::METRICS.ssh_connection(SshOutcome::Failed);
            tracing::debug!(conn = id, %peer, error = %err, "ssh handshake failed");
            app.registry.remove_conn_entry(id);
            return;
        }
        Err(_) => {
            crate::metrics::METRICS.ssh_connection(SshOutcome::Failed);
            tracing::debug!(conn = id, %peer, "no ssh version line before the handshake timeout");
            app.registry.remove_conn_entry(id);
            return;
        }
    };
    let handle = session.handle();
    conn.set_handle(handle.clone());
    if let Some(reason) = refused {
        let _ = handle
            .disconnect(russh::Disconnect::TooManyConnections, reason, "en".into())
            .await;
    }

    tokio::pin!(session);
    let mut watch_handshake = true;
    let mut told_restart = false;
    loop {
        tokio::select! {
            result = &mut session => {
                if let Err(err) = result {
                    tracing::debug!(conn = id, %peer, error = %err, "ssh session ended");
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline), if watch_handshake => {
                watch_handshake = false;
                if !conn.is_authenticated() {
                    crate::metrics::METRICS.ssh_connection(SshOutcome::Failed);
                    let limit = app.config.limits.handshake_timeout;
                    tracing::info!(conn = id, ip = %peer.ip(), limit = "handshake-timeout", "ssh authentication timed out");
                    let reason = format!(
                        "handshake-timeout: authentication did not finish within {}",
                        crate::limits::human(limit)
                    );
                    conn.disconnect_then_kill(reason);
                }
            }
            // Requests may still be on their way through this connection:
            // say what is coming, and keep it up until the last phase.
            _ = stop.requested(), if !told_restart => {
                told_restart = true;
                conn.notify(banner::restarting());
            }
            _ = stop.finishing() => {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "burrow is restarting; reconnect in a few seconds".into(),
                        "en".into(),
                    )
                    .await;
                break;
            }
        }
    }
    app.registry.remove_conn_entry(id);
    tracing::debug!(conn = id, %peer, "ssh connection closed");
}
