//! The WebSocket splice: an upgrade on a route that allows `websocket` is
//! forwarded to the route's upstream and, after its 101, copied both ways.
//! (The origin check is `http`'s, before this.)
//!
//! The copy follows frame boundaries (headers only, see [`frames`]) so that
//! at the drain it can stop between frames, send each side a close 1001,
//! wait for their answers, and end both TCP connections with a FIN. A
//! splice holds its browser connection's `server.max_connections` permit
//! and an upstream token of the drain for as long as it runs.

mod frames;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use self::frames::{FrameTracker, shutdown_close_frame};
use crate::body::{Body, empty};
use crate::config::Transport;
use crate::error::ProxyError;
use crate::forwarded::{ConnInfo, prepare_headers, strip_hop_by_hop};
use crate::routing;
use crate::state::{AppState, CONNECTION_PERMIT};

/// Each direction's copy buffer.
const COPY_BUF: usize = 16 * 1024;

/// At the drain, how long a splice waits for each peer to answer its close
/// 1001 (and then for their FIN) before it drops the sockets.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Splices a WebSocket upgrade to the route's upstream when the route
/// allows `websocket`; otherwise 403.
pub(super) async fn splice(
    mut req: Request<Incoming>,
    conn: ConnInfo,
    state: &AppState,
) -> Result<Response<Body>, ProxyError> {
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // The same check as an open's `url`, so that neither can walk out of a
    // prefix route with dot segments.
    let pq = routing::page_path(pq.as_str()).map_err(|e| ProxyError::BadUrl(e.0))?;
    let target = match routing::resolve(&state.config, &pq) {
        Some(t) if t.allows(Transport::Websocket) => t,
        _ => return Err(ProxyError::WebsocketNotAllowed),
    };
    let upstream = target.upstream;

    // Forward the handshake as the browser sent it (hop-by-hop headers
    // stripped, then the upgrade restored), to the upstream's path.
    let mut headers = req.headers().clone();
    let policy = state.config.upstream.host;
    prepare_headers(&mut headers, req.uri(), conn, policy, &upstream);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let upstream_pq = upstream
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let mut up_req = Request::new(http_body_util::Empty::<bytes::Bytes>::new());
    *up_req.uri_mut() = upstream_pq.parse().map_err(|_| ProxyError::BadRequest)?;
    *up_req.headers_mut() = headers;

    // The whole handshake (TCP, TLS, the upgrade's answer) is bounded, as
    // an open's is: a silent upstream gets 504, not a held connection.
    let connect_timeout = state.config.upstream.connect_timeout;
    let mut up_resp =
        match tokio::time::timeout(connect_timeout, connect(&upstream, up_req, state)).await {
            Ok(result) => result?,
            Err(_) => {
                tracing::debug!("websocket upstream handshake timed out");
                return Err(ProxyError::Timeout);
            }
        };
    if up_resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream refused: the browser sees its answer as is.
        let (mut parts, body) = up_resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(
            parts,
            body.map_err(Into::into).boxed_unsync(),
        ));
    }
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = up_resp.headers().clone();
    let upstream_upgrade = hyper::upgrade::on(&mut up_resp);
    let browser_upgrade = hyper::upgrade::on(&mut req);
    // Held by the splice task: the browser connection's slot stays taken,
    // the drain waits for the splice's close handshakes, and the splice
    // gauge counts it from the 101 until both legs are done.
    let permit = CONNECTION_PERMIT.try_with(Arc::clone).ok();
    let upstream_token = state.upstreams.token();
    let closing = state.closing_token();
    let open = state.metrics.splice_opened();
    tokio::spawn(async move {
        let _slot = (permit, upstream_token, open);
        let (browser, upstream) = match tokio::try_join!(browser_upgrade, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => return tracing::debug!(error = %e, "websocket upgrade failed"),
        };
        match copy(TokioIo::new(browser), TokioIo::new(upstream), &closing).await {
            Ok(()) => tracing::debug!("websocket splice ended"),
            Err(e) => tracing::debug!(error = %e, "websocket splice ended"),
        }
    });
    Ok(resp)
}

/// Connects to the upstream (TLS for `wss`) and sends the upgrade request.
async fn connect(
    upstream: &http::Uri,
    req: Request<http_body_util::Empty<bytes::Bytes>>,
    state: &AppState,
) -> Result<Response<Incoming>, ProxyError> {
    let secure = upstream.scheme_str() == Some("wss");
    let host = upstream
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = upstream.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "websocket upstream unreachable");
            ProxyError::Unreachable
        })?;
    let _ = tcp.set_nodelay(true);
    let result = if secure {
        let server_name =
            rustls::pki_types::ServerName::try_from(host).map_err(|_| ProxyError::Unreachable)?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&state.upstream_tls));
        let stream = tls.connect(server_name, tcp).await.map_err(|e| {
            tracing::debug!(error = %e, "websocket upstream TLS failed");
            ProxyError::Unreachable
        })?;
        handshake(TokioIo::new(stream), req).await
    } else {
        handshake(TokioIo::new(tcp), req).await
    };
    result.map_err(|e| {
        tracing::debug!(error = %e, "websocket upstream handshake failed");
        ProxyError::Unreachable
    })
}

/// Copies both ways until both sides are done; at `closing` (the drain),
/// ends the WebSocket with a close handshake on each side. An error on
/// either side ends both: a reset browser must not leave the upstream
/// held, nor the other way round.
async fn copy<B, U>(
    browser: B,
    upstream: U,
    closing: &tokio_util::sync::CancellationToken,
) -> io::Result<()>
where
    B: AsyncRead + AsyncWrite,
    U: AsyncRead + AsyncWrite,
{
    // The splice's own token: the drain's is shared by every connection,
    // and watching it locks its mutex, which every splice would otherwise
    // contend on each time it wakes.
    let closing = closing.child_token();
    let (mut browser_rx, mut browser_tx) = tokio::io::split(browser);
    let (mut upstream_rx, mut upstream_tx) = tokio::io::split(upstream);
    // Browser → upstream frames are masked: so is the close injected there.
    let up = pump(&mut browser_rx, &mut upstream_tx, true, &closing);
    let down = pump(&mut upstream_rx, &mut browser_tx, false, &closing);
    tokio::try_join!(up, down)?;
    Ok(())
}

/// One direction's copy: its buffer, what of it is still to be written,
/// and the frames of what was written.
struct Direction {
    buf: Vec<u8>,
    /// `buf[start..end]` was read and not yet written.
    start: usize,
    end: usize,
    /// Has gone over exactly the bytes written so far.
    frames: FrameTracker,
    /// A close already passed this way: the writer's peer has one, and no
    /// second may follow it.
    close_forwarded: bool,
    /// The reader's EOF came (and the FIN is being passed on).
    eof: bool,
}

impl Direction {
    fn new() -> Direction {
        Direction {
            buf: vec![0u8; COPY_BUF],
            start: 0,
            end: 0,
            frames: FrameTracker::default(),
            close_forwarded: false,
            eof: false,
        }
    }

    /// Copies until the reader's EOF, then passes the FIN on. Runs without
    /// looking at the drain, so that a wake-up costs a read and a write,
    /// not a check of the drain per read.
    ///
    /// Cancel-safe: dropped at any await, what was read and not written is
    /// `buf[start..end]`, and the tracker has gone over what was written.
    async fn forward<R, W>(&mut self, reader: &mut R, writer: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.start < self.end {
                let n = writer.write(&self.buf[self.start..self.end]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let written = &self.buf[self.start..self.start + n];
                self.close_forwarded |= self.frames.advance(written, false).close_ended;
                self.start += n;
                continue;
            }
            let n = reader.read(&mut self.buf).await?;
            if n == 0 {
                self.eof = true;
                return writer.shutdown().await;
            }
            (self.start, self.end) = (0, n);
        }
    }
}

/// One direction of the splice. Forwards until the reader's EOF (then
/// passes the FIN on). At `closing`, forwards up to the end of the frame
/// under way, sends the writer's peer a close 1001 (masked when `masked`),
/// then reads and discards until the reader's peer sent its own close (or
/// EOF), shuts the writer down, and reads on to EOF so that no unread byte
/// makes the kernel answer with a reset. The steps after `closing` share
/// one [`CLOSE_GRACE`].
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    masked: bool,
    closing: &tokio_util::sync::CancellationToken,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut d = Direction::new();
    {
        let forward = d.forward(reader, writer);
        tokio::pin!(forward);
        tokio::select! {
            // Closing first: once closing, stop as soon as allowed.
            biased;
            () = closing.cancelled() => {}
            // Dropped when closing wins: it is cancel-safe.
            done = &mut forward => return done,
        }
    }
    if d.eof {
        // The FIN was being passed on when closing came: finish that.
        return writer.shutdown().await;
    }
    // Closing: forward up to the end of the frame under way (starting with
    // what was read and not yet written), for CLOSE_GRACE at most.
    let mut frame_deadline: Option<Instant> = None;
    // The reader's peer already sent its close.
    let mut peer_closed;
    loop {
        let (start, end) = (d.start, d.end);
        if d.frames.at_boundary() {
            // What came after the boundary is the start of frames not
            // forwarded: the discard below follows them.
            let rest = d.frames.advance(&d.buf[start..end], false);
            peer_closed = d.close_forwarded || rest.close_ended;
            break;
        }
        if start == end {
            let deadline = *frame_deadline.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
            let n = match timeout_at(deadline, reader.read(&mut d.buf)).await {
                Ok(n) => n?,
                // A frame cannot be cut, nor a close put inside it: end the
                // connection without one.
                Err(_) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, writer.shutdown()).await;
                    return Ok(());
                }
            };
            if n == 0 {
                // The reader's peer is done: pass its FIN on.
                return writer.shutdown().await;
            }
            (d.start, d.end) = (0, n);
            continue;
        }
        let step = d.frames.advance(&d.buf[start..end], true);
        writer
            .write_all(&d.buf[start..start + step.consumed])
            .await?;
        d.close_forwarded |= step.close_ended;
        d.start = start + step.consumed;
    }
    let Direction {
        mut buf,
        mut frames,
        close_forwarded,
        ..
    } = d;
    let deadline = Instant::now() + CLOSE_GRACE;
    let _ = timeout_at(deadline, async {
        if !close_forwarded {
            let key = masked.then(mask_key);
            writer.write_all(&shutdown_close_frame(key)).await?;
            writer.flush().await?;
        }
        while !peer_closed {
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            peer_closed = frames.advance(&buf[..n], false).close_ended;
        }
        io::Result::Ok(())
    })
    .await;
    let _ = timeout_at(deadline, writer.shutdown()).await;
    // Read to the peer's FIN, so the socket is not dropped with unread
    // bytes (which the kernel answers with a reset).
    let _ = timeout_at(deadline, async {
        while reader.read(&mut buf).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
    Ok(())
}

/// A fresh masking key for a frame the proxy sends upstream.
fn mask_key() -> [u8; 4] {
    let mut key = [0u8; 4];
    // A failing OS generator leaves the zero key, which is still a valid
    // frame (the key only defeats cache poisoning by browsers' scripts).
    let _ = getrandom::fill(&mut key);
    key
}

/// Sends the upgrade request on a fresh connection and returns the answer;
/// the connection keeps running (with upgrades) in its own task.
async fn handshake<I>(
    io: I,
    req: Request<http_body_util::Empty<bytes::Bytes>>,
) -> hyper::Result<Response<Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "websocket upstream connection ended");
        }
    });
    sender.send_request(req).await
}
