//! The upstream side of a session: the handshake, and the task that owns
//! the upstream WebSocket for the session's whole life.
//!
//! The task runs the reader loop, which moves upstream frames into the
//! replay queue and pauses when undelivered events reach
//! `replay.max_pending_bytes`, so TCP backpressure reaches the backend; the
//! writer loop, a task of its own, forwards browser frames, pings, and
//! carries out closes. Reading and writing never wait on each other, so a
//! backend that stops reading cannot stall delivery, and the other way round.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::error::UpstreamError;
use crate::metrics::{CloseReason, Metrics};
use crate::session::registry::Registry;
use crate::session::replay::EventData;
use crate::session::{Frame, Outbound, Session, UpstreamHandle};

pub type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Read buffer of an upstream socket. tungstenite allocates it eagerly and
/// defaults to 128 KiB; an idle session needs far less, and 4 KiB still
/// takes 32 frames of 128 bytes per read under load.
const READ_BUFFER: usize = 4 * 1024;
/// How long a close handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// A write to the upstream that takes longer than this means a dead upstream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings a session's upstream task runs with.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub ping: Duration,
    pub idle: Duration,
    pub linger: Duration,
}

/// The WebSocket settings for upstream sockets.
pub fn socket_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Write each frame at once: the writer flushes after every frame
        // anyway, and a large write buffer would only hold memory.
        .write_buffer_size(0)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

/// A finished upstream handshake.
pub struct Connected {
    pub socket: UpstreamSocket,
    /// The negotiated subprotocol, or empty.
    pub protocol: String,
}

/// Opens the upstream WebSocket for a session: `headers` are those to pass on
/// (already chosen by the caller, `Host` included), `protocols` the page's
/// subprotocols.
pub async fn connect(
    url: &Uri,
    headers: HeaderMap,
    protocols: &[String],
    config: WebSocketConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Duration,
) -> Result<Connected, UpstreamError> {
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    // `extend` with a map replaces: a `Host` given here wins over the one
    // tungstenite derived from the URL (it writes only the first of several).
    request.headers_mut().extend(headers);
    if !protocols.is_empty() {
        let list = HeaderValue::from_str(&protocols.join(", ")).map_err(|_| {
            UpstreamError::Protocol("subprotocol is not a valid header value".into())
        })?;
        request
            .headers_mut()
            .insert(http::header::SEC_WEBSOCKET_PROTOCOL, list);
    }
    let connector = match (url.scheme_str(), tls) {
        (Some("wss"), Some(tls)) => Some(Connector::Rustls(tls)),
        _ => Some(Connector::Plain),
    };
    let handshake =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let (socket, response) = match timeout(connect_timeout, handshake).await {
        Err(_) => return Err(UpstreamError::Timeout),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            return Err(UpstreamError::Rejected(resp.status()));
        }
        Ok(Err(tungstenite::Error::Io(e))) => {
            return Err(UpstreamError::Unreachable(e.to_string()));
        }
        Ok(Err(tungstenite::Error::Tls(e))) => {
            return Err(UpstreamError::Unreachable(format!("tls: {e}")));
        }
        Ok(Err(tungstenite::Error::Url(e))) => {
            return Err(UpstreamError::Unreachable(e.to_string()));
        }
        Ok(Err(e)) => return Err(UpstreamError::Protocol(e.to_string())),
        Ok(Ok(pair)) => pair,
    };
    let protocol = response
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Ok(Connected { socket, protocol })
}

/// The HTTP status a failed handshake counts as in the metrics.
pub fn failure_status(e: &UpstreamError) -> StatusCode {
    match e {
        UpstreamError::Rejected(s) => *s,
        UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// What the reader and the writer of one upstream socket share.
#[derive(Default)]
struct Link {
    /// Whichever loop ends first stops the other.
    ended: CancellationToken,
    /// Set by the reader while backpressure holds it: no pong can be read
    /// then, so the writer must not take silence for death.
    paused: AtomicBool,
    pong_seen: AtomicBool,
}

/// Runs a session's upstream side until the session ends, then keeps it
/// readable for `linger` and removes it from the registry. `open` is held
/// while the upstream socket is.
///
/// The writer runs as a task of its own, so the frequent wake-ups of the
/// reader (every upstream frame) never poll the writer's timers and channel.
pub async fn run(
    session: Arc<Session>,
    socket: UpstreamSocket,
    handle: UpstreamHandle,
    timers: Timers,
    open: TaskTrackerToken,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    let (sink, stream) = socket.split();
    let link = Arc::new(Link::default());
    let writer = tokio::spawn(write_loop(
        Arc::clone(&session),
        sink,
        handle,
        Arc::clone(&link),
        timers,
        Arc::clone(&metrics),
    ));
    read_loop(&session, stream, &link, &metrics).await;
    // The writer ends once the reader has (the link says so), at most a
    // close handshake later.
    let _ = writer.await;
    // Both loops are done and the socket is dropped: the drain need not
    // wait for this session any longer, and it lingers.
    drop(open);
    sleep(timers.linger).await;
    registry.remove(&session.id);
}

async fn read_loop(
    session: &Session,
    mut stream: SplitStream<UpstreamSocket>,
    link: &Link,
    metrics: &Metrics,
) {
    let Link {
        ended,
        paused,
        pong_seen,
    } = link;
    let _stop_writer = ended.clone().drop_guard();
    // One future for the whole loop: making one per frame costs a
    // registration and a deregistration each time.
    let cancelled = ended.cancelled();
    tokio::pin!(cancelled);
    // What the last push said; checked again under the lock before waiting.
    let mut pause = false;
    loop {
        if pause {
            if session.must_pause() {
                paused.store(true, Ordering::Release);
                metrics.backpressure_paused();
                tokio::select! {
                    // A reader drained some events, or the session ended.
                    _ = session.drained() => {}
                    _ = &mut cancelled => return,
                }
                paused.store(false, Ordering::Release);
                continue;
            }
            pause = false;
        }
        let next = tokio::select! {
            // `next` is cancel-safe: a frame is either returned or stays buffered.
            next = stream.next() => next,
            _ = &mut cancelled => return,
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                metrics.down.count(text.len());
                pause = session.push(EventData::Text(Bytes::from(text)));
            }
            Some(Ok(Message::Binary(data))) => {
                metrics.down.count(data.len());
                pause = session.push(EventData::Binary(data));
            }
            Some(Ok(Message::Pong(_))) => pong_seen.store(true, Ordering::Release),
            // tungstenite answers pings itself.
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = match frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                };
                session.finish(code, &reason, CloseReason::Upstream);
                // Keep reading until the stream ends so tungstenite can flush
                // its close reply.
            }
            Some(Err(tungstenite::Error::Capacity(e))) => {
                tracing::debug!(session = session.log_id(), error = %e, "upstream frame too large");
                session.close(1009, "message too big", CloseReason::Error);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(session = session.log_id(), error = %e, "upstream read failed");
                session.finish(1006, "", CloseReason::Dead);
                return;
            }
            None => {
                session.finish(1006, "", CloseReason::Dead);
                return;
            }
        }
    }
}

async fn write_loop(
    session: Arc<Session>,
    mut sink: SplitSink<UpstreamSocket, Message>,
    mut handle: UpstreamHandle,
    link: Arc<Link>,
    timers: Timers,
    metrics: Arc<Metrics>,
) {
    let session = &*session;
    let metrics = &*metrics;
    let Link {
        ended,
        paused,
        pong_seen,
    } = &*link;
    let _stop_reader = ended.clone().drop_guard();
    let mut ping = tokio::time::interval_at(Instant::now() + timers.ping, timers.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_outstanding = false;
    loop {
        let idle_at = session
            .idle_since()
            .map_or_else(|| Instant::now() + timers.idle, |t| t + timers.idle);
        tokio::select! {
            biased;
            // First, so a close the reader asked for (an oversized frame) is
            // still sent after the reader has stopped.
            request = session.close_requested() => {
                let frame = CloseFrame { code: CloseCode::from(request.code), reason: request.reason.clone().into() };
                let _ = timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
                // Give the upstream a moment to answer the close.
                let _ = timeout(CLOSE_GRACE, ended.cancelled()).await;
                return;
            }
            // The reader saw the upstream end: nothing left to write to.
            _ = ended.cancelled() => return,
            Some(out) = handle.outbound.recv() => {
                if !write(session, &mut sink, out, metrics).await {
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
            }
            _ = ping.tick() => {
                if paused.load(Ordering::Acquire) {
                    ping_outstanding = false;
                    continue;
                }
                if ping_outstanding && !pong_seen.load(Ordering::Acquire) {
                    tracing::debug!(session = session.log_id(), "upstream missed a pong");
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
                pong_seen.store(false, Ordering::Release);
                ping_outstanding = true;
                if !matches!(timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Bytes::new()))).await, Ok(Ok(()))) {
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
            }
            _ = sleep_until(idle_at) => {
                if session.idle_since().is_some_and(|t| t + timers.idle <= Instant::now()) {
                    session.close(1001, "idle timeout", CloseReason::Idle);
                }
            }
        }
    }
}

/// Writes one browser frame and acknowledges it; false when the upstream is
/// gone or stuck.
async fn write(
    session: &Session,
    sink: &mut SplitSink<UpstreamSocket, Message>,
    out: Box<Outbound>,
    metrics: &Metrics,
) -> bool {
    let len = out.frame.len();
    let message = match out.frame {
        Frame::Text(bytes) => match tungstenite::Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            // `send` validated it already; never forward a broken text frame.
            Err(_) => return true,
        },
        Frame::Binary(bytes) => Message::Binary(bytes),
    };
    match timeout(WRITE_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => {
            session.frame_written(len);
            metrics.up.count(len);
            let _ = out.written.send(());
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(session = session.log_id(), error = %e, "upstream write failed");
            false
        }
        Err(_) => false,
    }
}

/// The TLS client settings for `wss://` (and `https://`) upstreams: the
/// webpki roots, plus the operator's CA file if any. Verification has no off
/// switch.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> std::io::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert =
                cert.map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(std::io::Error::other)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
