//! The cluster's internal listener (`cluster.listen`): HTTP/2 over
//! cleartext (prior knowledge) from peers only, each request authenticated
//! by `http::internal`. It is not stopped by the drain: a draining replica
//! keeps serving forwarded requests for its own sessions (their close
//! events included) until the process exits.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::Instrument;

use super::ACCEPT_ERROR_BACKOFF;
use crate::state::AppState;

/// Streams one peer connection may carry at once: every forwarded reader
/// holds one for its life, so this is sized like the session limit.
const MIN_STREAMS_PER_PEER: u32 = 1024;

/// Serves peers' forwarded requests, and runs peer discovery, for the life
/// of the process. Does nothing without `[cluster]`.
pub async fn serve_internal(listener: TcpListener, state: Arc<AppState>) {
    let Some(cluster) = state.cluster.clone() else {
        return;
    };
    tokio::spawn(cluster.discover(Arc::clone(&state.metrics)));
    let streams = u32::try_from(state.config.sessions.max_sessions.saturating_mul(2))
        .unwrap_or(u32::MAX)
        .max(MIN_STREAMS_PER_PEER);
    let heartbeat = state.config.sessions.heartbeat;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = Arc::clone(&state);
        let span = tracing::debug_span!("peer", %peer);
        tokio::spawn(
            async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let state = Arc::clone(&state);
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            crate::http::internal(req, peer, state).await,
                        )
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(streams)
                    .adaptive_window(true)
                    // A peer that vanished is noticed, and its streams
                    // (readers it forwarded) end.
                    .keep_alive_interval((heartbeat / 3).max(Duration::from_millis(100)))
                    .keep_alive_timeout((heartbeat / 3).max(Duration::from_millis(100)))
                    .serve_connection(TokioIo::new(tcp), service);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "peer connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
}
