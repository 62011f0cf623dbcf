//! The health check a load balancer asks (`--health-addr`): `GET /health`
//! answers `200 ok` while the node takes new connections, and `503
//! draining` from the moment it starts shutting down, until the last
//! phase. The balancer then stops sending new visitors and SSH clients here
//! while the node finishes what it has. (It stays up while the other
//! listeners close; a balancer that retries on a refused connection, like
//! HAProxy with `retries` and `option redispatch`, loses nothing in the
//! second between the two.)

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::http::{pages, Body};
use crate::shutdown::Shutdown;

/// Serves the health check until shutdown's last phase.
pub async fn serve(listener: TcpListener, shutdown: Shutdown) {
    let tasks = shutdown.clone();
    let stop = shutdown.clone();
    crate::listen::accept_loop(&listener, "health", stop.finishing(), |stream, _peer| {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let status = Arc::new(shutdown.clone());
            let service = service_fn(move |req| {
                let status = Arc::clone(&status);
                async move { Ok::<_, Infallible>(answer(&status, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.finishing() => {}
            }
        });
    })
    .await;
}

fn answer(shutdown: &Shutdown, req: &Request<Incoming>) -> Response<Body> {
    let (status, text) = match (req.uri().path(), shutdown.is_requested()) {
        ("/health", false) => (StatusCode::OK, "ok\n"),
        ("/health", true) => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => (StatusCode::NOT_FOUND, "not found; ask GET /health\n"),
    };
    let mut response = Response::new(pages::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "cache-control",
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}
