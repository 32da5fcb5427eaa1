//! The listeners: the accept loop and its connection permits, the admin
//! listener, and the graceful drain.
//!
//! Shutdown has one owner: the future passed to [`run`]. When it resolves,
//! readiness turns 503, the listener closes, every session gets its close
//! 1001, in-flight requests finish, and `run` returns within
//! `server.drain_timeout` whatever is still open.

mod conn;
mod h1;
mod internal;
mod tls;

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::Instrument;

pub use self::internal::serve_internal;
pub use self::tls::{Tls, reload_on_sighup};
use crate::config::Config;
use crate::forwarded::ConnInfo;
use crate::state::AppState;

/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves on a bound listener until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let state = AppState::new(config)?;
    serve(listener, state, shutdown).await
}

/// Like [`run`], with the shared state made by the caller (the binary keeps
/// it for the admin listener).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let tls = Tls::load(&state.config)?;
    serve_with_tls(listener, state, tls, shutdown).await
}

/// Like [`serve`], with the TLS acceptor made by the caller (the binary
/// keeps it for SIGHUP reloads).
pub async fn serve_with_tls(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Arc<Tls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(conn::http_builder(&state.config));
    let limit = Arc::new(Semaphore::new(state.config.server.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            // Closed never: the semaphore lives as long as the loop.
            permit = Arc::clone(&limit).acquire_owned() => permit.map_err(io::Error::other)?,
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: survive and retry once some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let state = Arc::clone(&state);
        let builder = Arc::clone(&builder);
        let acceptor = tls.acceptor();
        let info = ConnInfo { peer, tls: false };
        let span = tracing::debug_span!("conn", %peer);
        tokio::spawn(
            async move {
                conn::serve_connection(tcp, info, acceptor, state, &builder, watcher).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!("draining");
    state.drain_sessions();
    state.upstreams.close();
    let drain_timeout = state.config.server.drain_timeout;
    let drained = async {
        graceful.shutdown().await;
        state.upstreams.wait().await;
        // Peers' requests for this replica's sessions, their close events
        // included, are served to the end.
        if let Some(cluster) = &state.cluster {
            cluster.drained().await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!("drained"),
        _ = tokio::time::sleep(drain_timeout) => tracing::warn!("drain timeout: closing what is left"),
    }
    Ok(())
}

/// The admin listener: health, readiness and metrics only, at `/healthz`,
/// `/readyz`, `/metrics` (and under the prefix). It keeps answering during
/// the drain, so probes see readiness fail while sessions close.
pub async fn serve_admin(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = crate::http::admin(&req, &state);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
