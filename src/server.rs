//! The accept loop: connections (plain, TLS, HTTP/1.1 and HTTP/2), the
//! per-request log line and metrics, and the graceful drain.
//!
//! Shutdown has one owner: the future passed to [`run`]. When it resolves,
//! readiness turns 503, the listener closes, every session gets its close
//! 1001, in-flight requests finish, and `run` returns within
//! `server.drain_timeout` whatever is still open.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Config, TlsConfig};
use crate::error::{Body, RequestBody};
use crate::metrics::{CloseReason, Metrics};
use crate::passthrough::PassThrough;
use crate::routing::{self, Endpoint};
use crate::session::registry::Registry;
use crate::upstream;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. out of file descriptors) so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// What every request handler shares.
pub struct Shared {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub passthrough: PassThrough,
    /// TLS settings for `wss://`/`https://` upstreams.
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Cancelled once shutdown starts: readiness fails, new sessions are
    /// refused, idle connections close.
    drain: CancellationToken,
    /// One token per open upstream socket: the drain waits for their close
    /// handshakes, not only for the browsers' connections.
    pub upstreams: TaskTracker,
    /// The listener's TLS acceptor; swapped on reload (SIGHUP).
    tls: RwLock<Option<TlsAcceptor>>,
}

impl Shared {
    pub fn new(config: Config) -> io::Result<Arc<Shared>> {
        let upstream_tls = upstream::tls_client_config(config.upstream.ca_file.as_deref())?;
        let tls = config.server.tls.as_ref().map(load_tls).transpose()?;
        let passthrough = PassThrough::new(&config, Arc::clone(&upstream_tls));
        Ok(Arc::new(Shared {
            registry: Arc::new(Registry::new(
                config.sessions.max_sessions,
                config.sessions.max_sessions_per_client,
                config.replay.max_total_bytes,
            )),
            metrics: Arc::new(Metrics::new()),
            passthrough,
            upstream_tls,
            drain: CancellationToken::new(),
            upstreams: TaskTracker::new(),
            tls: RwLock::new(tls),
            config,
        }))
    }

    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    /// Resolves once shutdown starts.
    pub async fn drain_started(&self) {
        self.drain.cancelled().await;
    }

    /// Reloads the certificate and key from their files; connections
    /// already open keep theirs. On error the old ones stay.
    pub fn reload_tls(&self) -> io::Result<()> {
        let Some(tls) = &self.config.server.tls else {
            return Ok(());
        };
        let acceptor = load_tls(tls)?;
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Some(acceptor);
        Ok(())
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts the drain: every session gets its close 1001, on both sides.
    fn drain_sessions(&self) {
        self.drain.cancel();
        for session in self.registry.all() {
            session.close(1001, "proxy shutting down", CloseReason::Drain);
        }
    }
}

fn load_tls(tls: &TlsConfig) -> io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    fn with_path(p: &std::path::Path) -> impl Fn(rustls::pki_types::pem::Error) -> io::Error + '_ {
        move |e| io::Error::other(format!("{}: {e}", p.display()))
    }
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(with_path(&tls.cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(with_path(&tls.cert))?;
    if certs.is_empty() {
        return Err(io::Error::other(format!(
            "{}: no certificate found",
            tls.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(with_path(&tls.key))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(io::Error::other)?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| io::Error::other(format!("{}: {e}", tls.key.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What a handler knows of the connection a request came on.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

impl ConnInfo {
    /// The browser's address: the peer, or, when the peer is a trusted proxy,
    /// the nearest untrusted address in `X-Forwarded-For`.
    ///
    /// The list is walked from the right (the hops our own proxies appended)
    /// and the walk stops at the first entry that is not an address: entries
    /// left of it were written by someone we cannot vouch for, so skipping
    /// it would let a client pick its own address (e.g. behind a proxy that
    /// appends `ip:port`, were ports not understood). Then the nearest
    /// trusted hop stands for the client, which can only over-count.
    pub fn client_ip(&self, headers: &HeaderMap, shared: &Shared) -> IpAddr {
        let security = &shared.config.security;
        let mut client = self.peer.ip();
        if !security.is_trusted_proxy(client) {
            return client;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.into_iter().rev() {
            let Some(ip) = parse_forwarded_ip(entry.trim()) else {
                break;
            };
            client = ip;
            if !security.is_trusted_proxy(ip) {
                break;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, or an address with a port
/// (`203.0.113.9:4711`, `[2001:db8::1]:443`) as some proxies write it.
fn parse_forwarded_ip(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Serves on a bound listener until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let shared = Shared::new(config)?;
    serve(listener, shared, shutdown).await
}

/// Like [`run`], with the shared state made by the caller (the binary keeps
/// it for SIGHUP reloads and the admin listener).
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(http_builder(&shared.config));
    let limit = Arc::new(Semaphore::new(shared.config.server.max_connections));
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
        let shared = Arc::clone(&shared);
        let builder = Arc::clone(&builder);
        let span = tracing::debug_span!("conn", %peer);
        tokio::spawn(
            async move {
                serve_connection(tcp, peer, shared, &builder, watcher).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::info!("draining");
    shared.drain_sessions();
    shared.upstreams.close();
    let drain_timeout = shared.config.server.drain_timeout;
    let drained = async {
        graceful.shutdown().await;
        shared.upstreams.wait().await;
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
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let shared = Arc::clone(&shared);
                async move {
                    let prefix = &shared.config.server.prefix;
                    let path = req.uri().path();
                    let resp = match path.strip_prefix(prefix.as_str()).unwrap_or(path) {
                        "/healthz" | "/readyz" | "/metrics" => {
                            crate::bridge::handle_ops(req.uri().path(), &shared)
                        }
                        _ => crate::error::BridgeError::NotFound.into_response(),
                    };
                    Ok::<_, Infallible>(resp)
                }
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

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
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

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) {
    match shared.acceptor() {
        None => {
            let info = ConnInfo { peer, tls: false };
            crate::h1::serve(tcp, info, shared, builder, watcher).await;
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let info = ConnInfo { peer, tls: true };
            // Boxed, so that plain connections' tasks are not the size of a
            // TLS one.
            Box::pin(serve_io(TokioIo::new(tls), info, shared, builder, watcher)).await;
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
pub(crate) async fn serve_io<I>(
    io: I,
    info: ConnInfo,
    shared: Arc<Shared>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let first_request = CancellationToken::new();
    let seen = first_request.clone();
    let header_read_timeout = shared.config.server.header_read_timeout;
    let service = service_fn(move |req| {
        if !seen.is_cancelled() {
            seen.cancel();
        }
        // Boxed: hyper keeps a slot the size of this future for every
        // connection, in flight or not; a box makes that slot a pointer.
        Box::pin(handle(req, info, Arc::clone(&shared)))
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

/// Every request hyper serves: dispatch, then one log line and the request
/// metrics.
pub async fn handle(
    req: Request<Incoming>,
    conn: ConnInfo,
    shared: Arc<Shared>,
) -> Result<Response<Body>, Infallible> {
    if routing::classify(&shared.config.server.prefix, req.uri().path()).is_some() {
        let req = req.map(BodyExt::boxed);
        return Ok(handle_bridge(req, conn, &shared).await);
    }
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let resp = shared.passthrough.handle(req, conn, &shared).await;
    let endpoint = if resp.status().as_u16() == 101 {
        "websocket"
    } else {
        "passthrough"
    };
    observe(&shared, &method, &path, endpoint, start, &resp);
    Ok(resp)
}

/// A request to one of the bridge's own endpoints, from hyper or from the
/// HTTP/1.1 front end ([`crate::h1`]).
pub async fn handle_bridge(
    req: Request<RequestBody>,
    conn: ConnInfo,
    shared: &Arc<Shared>,
) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let start = Instant::now();
    let resp = crate::bridge::handle(req, conn, shared).await;
    let endpoint =
        routing::classify(&shared.config.server.prefix, &path).map_or("passthrough", |e| e.name());
    observe(shared, &method, &path, endpoint, start, &resp);
    resp
}

/// One log line and the request metrics.
fn observe(
    shared: &Shared,
    method: &http::Method,
    path: &str,
    endpoint: &'static str,
    start: Instant,
    resp: &Response<Body>,
) {
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    shared.metrics.request(endpoint, status, elapsed);
    tracing::info!(
        method = %method,
        path = %log_path(&shared.config.server.prefix, path),
        status,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
}

/// The path as it may be logged: never the query (tokens live there) and
/// never a whole session id (it is a bearer capability).
fn log_path(prefix: &str, path: &str) -> String {
    match routing::classify(prefix, path) {
        Some(
            Endpoint::Sse(id)
            | Endpoint::Stream(id)
            | Endpoint::Poll(id)
            | Endpoint::Send(id)
            | Endpoint::Session(id),
        ) => path.replacen(id, &format!("{}…", crate::session::log_id(id)), 1),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_path_hides_session_ids() {
        let p = log_path("/_bridge", "/_bridge/sessions/AbCdEfGhIjKlMnOpQrStUv/sse");
        assert_eq!(p, "/_bridge/sessions/AbCdEf…/sse");
        assert_eq!(log_path("/_bridge", "/app/page"), "/app/page");
    }
}
