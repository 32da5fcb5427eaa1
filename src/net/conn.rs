//! One accepted connection: its TLS handshake, then the HTTP/1.1 front end
//! (plain TCP) or hyper (HTTP/1 and HTTP/2), under a deadline for the first
//! request.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::forwarded::ConnInfo;
use crate::state::AppState;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// hyper's settings for the main listener's connections.
pub(super) fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_read_timeout)
        .max_buf_size(config.server.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.server.max_header_bytes).unwrap_or(u32::MAX))
        // Many SSE sessions share one HTTP/2 connection.
        .max_concurrent_streams(1000);
    builder
}

/// Serves one accepted TCP connection, with TLS when an acceptor is given.
pub(super) async fn serve_connection(
    tcp: TcpStream,
    info: ConnInfo,
    acceptor: Option<TlsAcceptor>,
    state: Arc<AppState>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) {
    match acceptor {
        None => super::h1::serve(tcp, info, state, builder, watcher).await,
        Some(acceptor) => {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let info = ConnInfo { tls: true, ..info };
            // Boxed, so that plain connections' tasks are not the size of a
            // TLS one.
            Box::pin(serve_io(TokioIo::new(tls), info, state, builder, watcher)).await;
        }
    }
}

/// Serves one connection (plain or TLS) with HTTP/1 or HTTP/2.
///
/// A connection must deliver its first request head within
/// `server.header_read_timeout`, whatever the protocol: hyper's own header
/// timeout covers an HTTP/1 head once bytes arrive, but not a client that
/// sends nothing (the auto builder waits for the first bytes to choose
/// HTTP/1 or HTTP/2, with no deadline) nor an HTTP/2 client that never opens
/// a stream. Without this, idle sockets would hold `max_connections` slots
/// for ever (slowloris).
pub(super) async fn serve_io<I>(
    io: I,
    info: ConnInfo,
    state: Arc<AppState>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let first_request = CancellationToken::new();
    let seen = first_request.clone();
    let header_read_timeout = state.config.server.header_read_timeout;
    let service = service_fn(move |req| {
        if !seen.is_cancelled() {
            seen.cancel();
        }
        // Boxed: hyper keeps a slot the size of this future for every
        // connection, in flight or not; a box makes that slot a pointer.
        Box::pin(crate::http::handle(req, info, Arc::clone(&state)))
    });
    let conn = watcher.watch(
        builder
            .serve_connection_with_upgrades(io, service)
            .into_owned(),
    );
    tokio::pin!(conn);
    let result = tokio::select! {
        result = &mut conn => result,
        // A request arrived in time: from now on hyper's own limits apply.
        _ = first_request.cancelled() => conn.await,
        _ = tokio::time::sleep(header_read_timeout) => {
            return tracing::debug!("no request within the header read timeout: closing");
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
