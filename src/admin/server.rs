//! The admin endpoint's HTTP server: axum's router on hyper's HTTP/1 connection, with what
//! `axum::serve` does not offer — a bound on the time to send a request's head, on the time and
//! size of its body, and on a connection's life — so that a client that sends nothing (or one
//! byte a minute) cannot keep connections open for ever.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::AdminState;
use crate::proxy::stopped;

/// Time allowed to send a request's line and headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to send a request's body once its head arrived. hyper bounds the head only; a
/// request announcing a body it never sends would otherwise hold its connection until
/// [`CONNECTION_LIFETIME`].
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest body accepted: no call takes more than a few bytes (pause and resume take none).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// A connection's whole life (browsers and `pgtide status --watch` reconnect transparently).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves the admin endpoint until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = super::router(state).layer(axum::middleware::from_fn(read_body_in_time));
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => return,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                _ = stopped(&mut stop) => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// Reads the whole body within [`BODY_READ_TIMEOUT`] and [`MAX_BODY_BYTES`] before the request
/// reaches a handler; 408 or 400 otherwise, and the connection is closed (its unread bytes leave
/// it in no state to carry another request).
async fn read_body_in_time(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let refuse = |status: StatusCode, why: String| {
        (status, [(header::CONNECTION, "close")], format!("{why}\n")).into_response()
    };
    let bytes = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        axum::body::to_bytes(body, MAX_BODY_BYTES),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                "the request body could not be read whole (at most {MAX_BODY_BYTES} bytes): {e}"
            ),
            )
        }
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            )
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
