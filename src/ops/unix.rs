//! The stats listener on a Unix socket (`--stats-addr unix:/PATH`): the
//! same endpoints and checks as over TCP, except the loopback one (the
//! socket's mode, 0660, decides who may connect).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::UnixListener;

use super::{handle, Ops, Peer};
use crate::config::LimitArgs;
use crate::http::ConnLimits;
use crate::listen::SocketFile;
use crate::shutdown::Shutdown;

/// How long to wait after a failed accept.
const BACK_OFF: Duration = Duration::from_millis(50);

/// Serves the socket until shutdown, then removes it.
pub async fn serve(
    listener: UnixListener,
    file: SocketFile,
    ops: Arc<Ops>,
    limits: &LimitArgs,
    shutdown: Shutdown,
) {
    let limits = ConnLimits::new(limits, Default::default());
    let graceful = GracefulShutdown::new();
    let stop = shutdown.requested();
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(listener = "stats", error = %err, "accept failed");
                    tokio::time::sleep(BACK_OFF).await;
                    continue;
                }
            },
        };
        let ops = Arc::clone(&ops);
        let service = service_fn(move |req| {
            let ops = Arc::clone(&ops);
            async move { Ok::<_, Infallible>(handle(&ops, req, Peer::Unix).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.read_buffer())
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        shutdown.spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "stats connection error");
            }
        });
    }
    drop(listener);
    drop(file);
    graceful.shutdown().await;
}
