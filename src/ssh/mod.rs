//! The SSH server: accepting connections, the russh configuration (keys,
//! keepalives, timeouts) and the host key on disk.
//!
//! Each accepted socket runs one russh session with its own
//! [`handler::ClientHandler`]; the handler turns `tcpip-forward` requests into
//! registry entries and talks to the user through the session channel.

mod banner;
mod handler;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use russh::keys::{Algorithm, PrivateKey};
use russh::server::Config as RusshConfig;
use russh::{MethodKind, MethodSet, SshId};
use tokio::net::TcpListener;

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
            MethodKind::Password,
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
        let handler = handler::ClientHandler::new(Arc::clone(&app), conn, peer);
        let config = Arc::clone(&app.ssh_config);
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            tracing::debug!(conn, %peer, "ssh connection accepted");
            let session = match russh::server::run_stream(config, socket, handler).await {
                Ok(session) => session,
                Err(err) => {
                    tracing::debug!(conn, %peer, error = %err, "ssh handshake failed");
                    return;
                }
            };
            let handle = session.handle();
            tokio::select! {
                result = session => {
                    if let Err(err) = result {
                        tracing::debug!(conn, %peer, error = %err, "ssh session ended");
                    }
                }
                _ = stop.requested() => {
                    let _ = handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            "burrow is shutting down".into(),
                            "en".into(),
                        )
                        .await;
                }
            }
            tracing::debug!(conn, %peer, "ssh connection closed");
        });
    }
}
