//! One accepted connection: its TLS handshake, then the HTTP/1.1 front end
//! (plain TCP) or hyper (HTTP/1 and HTTP/2), under a deadline for the first
//! request.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::timeout::{Activity, Phase, Tracked, WriteDeadline};
use crate::config::Config;
use crate::forwarded::ConnInfo;
use crate::state::AppState;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an HTTP/2 connection is PINGed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a PING's answer may take before the connection is dropped.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keepalive on accepted sockets: the first probe after this much
/// silence, then every [`TCP_KEEPALIVE_INTERVAL`], so a peer that vanished
/// (a laptop lid, a NAT that forgot) frees its socket even where no
/// application timer runs (a spliced WebSocket, a quiet SSE stream).
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// Sets TCP keepalive on an accepted socket; a failure is logged and
/// survived.
fn set_tcp_keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "could not set TCP keepalive");
    }
}

/// hyper's settings for the main listener's connections.
pub(super) fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A backstop only: hyper's timer starts when the previous response
        // ends, so it spans idle keep-alive and the head, which `serve_io`
        // bounds apart.
        .header_read_timeout(
            config
                .server
                .header_read_timeout
                .saturating_add(config.server.keepalive_timeout),
        )
        .max_buf_size(config.server.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.server.max_header_bytes).unwrap_or(u32::MAX))
        // Many SSE sessions share one HTTP/2 connection.
        .max_concurrent_streams(1000)
        // A peer that vanished without a FIN is found by its missing PONG.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
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
    set_tcp_keepalive(&tcp);
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

/// Serves one connection (plain or TLS) with HTTP/1 or HTTP/2, each phase
/// under its own bound:
///
/// - the first request head within `server.header_read_timeout` from
///   accept, whatever the protocol: hyper's own header timeout covers an
///   HTTP/1 head once hyper reads, but not a client that sends nothing (the
///   auto builder waits for the first bytes to choose HTTP/1 or HTTP/2, with
///   no deadline) nor an HTTP/2 client that never opens a stream (slowloris);
/// - then, with no request in flight, `server.keepalive_timeout` of quiet
///   (HTTP/1 keep-alive, or HTTP/2 with no open stream: a GOAWAY), and once
///   bytes of a new HTTP/1 head arrive, `header_read_timeout` for the head;
/// - request bodies under their [`crate::body::Deadline`], writes under
///   [`WriteDeadline`];
/// - the drain: hyper's graceful shutdown, on the drain signal.
pub(super) async fn serve_io<I>(
    io: I,
    info: ConnInfo,
    state: Arc<AppState>,
    builder: &auto::Builder<TokioExecutor>,
    // Held, not used: while it lives, the drain waits for this connection.
    // (hyper-util's `Watcher::watch` would hide the connection, which the
    // idle bound must shut down itself.)
    watcher: Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let server = &state.config.server;
    let (header_read_timeout, keepalive_timeout) =
        (server.header_read_timeout, server.keepalive_timeout);
    let activity = Arc::new(Activity::new(server));
    // hyper's IO, under the write bound: hyper-util's adapter both ways, so
    // the bound is written once against tokio's traits.
    let io = TokioIo::new(WriteDeadline::new(
        TokioIo::new(io),
        server,
        Arc::clone(&activity),
    ));
    let seen = Arc::clone(&activity);
    let app = Arc::clone(&state);
    let service = service_fn(move |req: Request<Incoming>| {
        let in_flight = seen.start_request(req.version() == Version::HTTP_2);
        // Boxed: hyper keeps a slot the size of this future for every
        // connection, in flight or not; a box makes that slot a pointer.
        let respond = Box::pin(crate::http::handle(req, info, Arc::clone(&app)));
        async move {
            let resp = respond.await?;
            Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    tokio::pin!(conn);
    let accepted = Instant::now();
    let mut shutting_down = false;
    let result = loop {
        let phase = activity.phase();
        let deadline = match phase {
            // HTTP/2 streams are checked for a flow-control stall.
            Phase::Busy if activity.is_h2() => Some(Instant::now() + activity.stall_check_every()),
            Phase::Busy => None,
            // The first head, from accept (bytes or not).
            _ if !activity.had_request() => Some(accepted + header_read_timeout),
            Phase::Idle => Some(activity.idle_since() + keepalive_timeout),
            Phase::Head => Some(activity.head_since() + header_read_timeout),
        };
        tokio::select! {
            result = &mut conn => break result,
            // A request started or ended, or a head began: a new deadline.
            () = activity.changed() => {}
            // The connection was quiet past its bound: a GOAWAY for HTTP/2, a
            // close for an idle HTTP/1 connection. Bounded in turn, by the
            // head timeout, should the peer not let the connection end.
            () = sleep_until_some(deadline), if !shutting_down => {
                if phase == Phase::Busy {
                    if activity.stalled_stream() {
                        tracing::debug!("an HTTP/2 client stopped reading a stream: closing");
                        break Ok(());
                    }
                    continue;
                }
                tracing::debug!(?phase, h2 = activity.is_h2(), "connection idle past its bound: closing");
                conn.as_mut().graceful_shutdown();
                if tokio::time::timeout(header_read_timeout, &mut conn).await.is_err() {
                    tracing::debug!("connection did not close after its shutdown: dropped");
                }
                break Ok(());
            }
            // The drain: in-flight requests finish, then the connection closes.
            () = state.closing_started(), if !shutting_down => {
                conn.as_mut().graceful_shutdown();
                shutting_down = true;
            }
        }
    };
    drop(watcher);
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
