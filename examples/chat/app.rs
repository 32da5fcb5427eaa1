//! The example backend: an ordinary hyper app whose realtime part speaks only
//! WebSocket, the kind of app wsbridge sits in front of. It knows nothing of
//! the proxy.
//!
//! - `GET /`: the chat page (`index.html`, embedded at build time).
//! - `GET /ws?nick=NAME`: the chat room. Every text frame a member sends is
//!   broadcast to every member as `{"type":"message","from":NICK,"text":...}`;
//!   arrivals and departures as `{"type":"join"|"leave","nick":NICK,"online":N}`.
//! - `GET /echo`: text and binary frames come back unchanged; the text
//!   `close:CODE:REASON` makes the server close with that code and reason.
//! - `GET /api/health`: plain JSON, to show ordinary HTTP passing through.
//!
//! Both WebSocket endpoints accept the subprotocol `chat.v1` when offered.
//! Shared by `examples/chat/main.rs` and `examples/demo.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// The page, served at `/`.
const INDEX_HTML: &str = include_str!("index.html");

/// The only subprotocol this app speaks; accepted when a client offers it.
const SUBPROTOCOL: &str = "chat.v1";

/// Room events held for members that read slowly. A member further behind
/// than this skips ahead and is told how many it missed.
const ROOM_BACKLOG: usize = 256;

/// Largest chat message accepted; a chat line, not a file upload.
const MAX_CHAT_MESSAGE: usize = 64 * 1024;

/// Largest echo message: the proxy's default `limits.max_upstream_frame_bytes`,
/// so tests can reach the proxy's own limits through the echo.
const MAX_ECHO_MESSAGE: usize = 16 << 20;

/// Longest nick kept, in characters.
const MAX_NICK_CHARS: usize = 32;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for connections and sockets to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;
type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// State shared by every connection.
struct App {
    /// Fan-out of room events (already-encoded JSON) to every member's task.
    room: broadcast::Sender<Utf8Bytes>,
    /// Members in the room now, reported in join/leave events and health.
    online: AtomicUsize,
    /// Numbers the `guest-N` nicks given to members that sent none.
    guests: AtomicU64,
    /// For the health endpoint's uptime.
    started: Instant,
    /// Cancelled on shutdown: every WebSocket task closes with 1001.
    stop: CancellationToken,
    /// The WebSocket tasks, so shutdown can wait for their closing handshakes
    /// (hyper's graceful shutdown no longer sees a connection once upgraded).
    sockets: TaskTracker,
}

impl App {
    fn publish(&self, event: serde_json::Value) {
        // An error only means nobody is in the room to hear it.
        let _ = self.room.send(Utf8Bytes::from(event.to_string()));
    }
}

/// Serves the app on `listener` until `shutdown` completes, then closes every
/// WebSocket with 1001 and waits (at most [`SHUTDOWN_GRACE`]) for the
/// connections to finish.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let (room, _) = broadcast::channel(ROOM_BACKLOG);
    let app = Arc::new(App {
        room,
        online: AtomicUsize::new(0),
        guests: AtomicU64::new(0),
        started: Instant::now(),
        stop: CancellationToken::new(),
        sockets: TaskTracker::new(),
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            // Why: a new client connection; serve it on its own task.
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: survive, but
                        // do not spin on the error.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let app = app.clone();
                let service = service_fn(move |req| handle(app.clone(), req));
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            // Why: the owner asked us to stop; stop accepting first.
            () = &mut shutdown => break,
        }
    }

    drop(listener);
    app.stop.cancel();
    app.sockets.close();
    let drained = async {
        graceful.shutdown().await;
        app.sockets.wait().await;
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        warn!("connections still open after {SHUTDOWN_GRACE:?}; dropping them");
    }
    Ok(())
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let response = match (req.method(), path) {
        (&Method::GET, "/") => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from(INDEX_HTML))
            .expect("static response"),
        (&Method::GET, "/api/health") => json_response(
            StatusCode::OK,
            json!({
                "status": "ok",
                "online": app.online.load(Ordering::Relaxed),
                "uptime_s": app.started.elapsed().as_secs(),
            }),
        ),
        (&Method::GET, "/ws") => {
            let nick = nick_from_query(req.uri().query()).unwrap_or_else(|| {
                format!("guest-{}", app.guests.fetch_add(1, Ordering::Relaxed) + 1)
            });
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_CHAT_MESSAGE))
                .max_frame_size(Some(MAX_CHAT_MESSAGE));
            let room = app.clone();
            upgrade(&app, req, config, move |ws| chat(ws, room, nick))
        }
        (&Method::GET, "/echo") => {
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_ECHO_MESSAGE))
                .max_frame_size(Some(MAX_ECHO_MESSAGE));
            let stop = app.stop.clone();
            upgrade(&app, req, config, move |ws| echo(ws, stop))
        }
        (_, "/" | "/api/health" | "/ws" | "/echo") => {
            let mut res = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            res
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
    };
    Ok(response)
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::from(value.to_string()))
        .expect("static response")
}

/// Answers a WebSocket handshake with `101` and runs `session` on the socket
/// once hyper hands the connection over; anything else gets `426` or `400`.
fn upgrade<F, Fut>(
    app: &App,
    mut req: Request<Incoming>,
    config: WebSocketConfig,
    session: F,
) -> Response<Body>
where
    F: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        let mut res = json_response(
            StatusCode::UPGRADE_REQUIRED,
            json!({"error": "websocket_required"}),
        );
        res.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return res;
    }
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let Some(key) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
    else {
        let mut res = json_response(StatusCode::BAD_REQUEST, json!({"error": "bad_handshake"}));
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return res;
    };
    let accept = derive_accept_key(key.as_bytes());
    let offers_subprotocol = has_token(header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);

    let on_upgrade = hyper::upgrade::on(&mut req);
    app.sockets.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                session(ws).await;
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });

    let mut res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::default())
        .expect("static response");
    if offers_subprotocol {
        res.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    res
}

/// One member of the chat room, from join to leave.
async fn chat(mut ws: Socket, app: Arc<App>, nick: String) {
    // Subscribe before announcing, so the member sees its own join.
    let mut events = app.room.subscribe();
    let online = app.online.fetch_add(1, Ordering::Relaxed) + 1;
    info!(%nick, online, "join");
    app.publish(json!({"type": "join", "nick": nick, "online": online}));

    let close = loop {
        tokio::select! {
            // Why: a frame from this member. Cancel-safe: `next` keeps
            // partial frames inside the stream.
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    app.publish(json!({"type": "message", "from": nick, "text": text.as_str()}));
                }
                Some(Ok(Message::Binary(_))) => {
                    break Some(close_frame(CloseCode::Unsupported, "text messages only"));
                }
                // The peer closed: tungstenite queues the reply, and the next
                // `next()` sends it and ends the stream.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(%nick, error = %e, "socket error");
                    break None;
                }
                None => break None,
            },
            // Why: a room event to pass on to this member.
            event = events.recv() => {
                let text = match event {
                    Ok(text) => text,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Utf8Bytes::from(json!({"type": "lagged", "missed": missed}).to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => break None,
                };
                if ws.send(Message::Text(text)).await.is_err() {
                    break None;
                }
            }
            // Why: the server is shutting down; say so instead of vanishing.
            () = app.stop.cancelled() => break Some(close_frame(CloseCode::Away, "server shutting down")),
        }
    };
    if let Some(frame) = close {
        close_gracefully(&mut ws, frame).await;
    }

    let online = app.online.fetch_sub(1, Ordering::Relaxed) - 1;
    info!(%nick, online, "leave");
    app.publish(json!({"type": "leave", "nick": nick, "online": online}));
}

/// The echo: frames come back unchanged until the client closes, the server
/// stops, or the client asks for a close with `close:CODE:REASON`.
async fn echo(mut ws: Socket, stop: CancellationToken) {
    loop {
        let reply = tokio::select! {
            // Why: the next frame to echo. Cancel-safe, as in `chat`.
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Text(text))) => match close_command(&text) {
                    Some(frame) => return close_gracefully(&mut ws, frame).await,
                    None => Message::Text(text),
                },
                Some(Ok(Message::Binary(data))) => Message::Binary(data),
                // Pings are answered by tungstenite; a close is replied to on
                // the next `next()`, which then ends the stream.
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    debug!(error = %e, "echo socket error");
                    return;
                }
                None => return,
            },
            // Why: the server is shutting down.
            () = stop.cancelled() => {
                return close_gracefully(&mut ws, close_frame(CloseCode::Away, "server shutting down")).await;
            }
        };
        if ws.send(reply).await.is_err() {
            return;
        }
    }
}

/// `close:CODE` or `close:CODE:REASON` with a code a server may send; anything
/// else (`close:1006:x`, `close:abc`) is echoed like any other text.
fn close_command(text: &str) -> Option<CloseFrame> {
    let rest = text.strip_prefix("close:")?;
    let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
    let code = CloseCode::from(code.parse::<u16>().ok()?);
    code.is_allowed().then(|| close_frame(code, reason))
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // A close frame's payload is at most 125 bytes, two of them the code.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: Utf8Bytes::from(reason[..end].to_owned()),
    }
}

/// Sends our close frame and waits (bounded) for the peer's reply, so the
/// peer sees a clean close rather than a reset.
async fn close_gracefully(ws: &mut Socket, frame: CloseFrame) {
    if ws.close(Some(frame)).await.is_err() {
        return;
    }
    let drain = async { while let Some(Ok(_)) = ws.next().await {} };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}

/// The `nick` query parameter, percent-decoded, without control characters,
/// trimmed and cut to [`MAX_NICK_CHARS`]; `None` when absent or empty.
fn nick_from_query(query: Option<&str>) -> Option<String> {
    let raw = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("nick="))?;
    let decoded = percent_decode(raw);
    let nick: String = decoded
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NICK_CHARS)
        .collect();
    let nick = nick.trim().to_owned();
    (!nick.is_empty()).then_some(nick)
}

/// Form-style decoding: `+` is a space, `%XX` a byte; invalid UTF-8 becomes
/// U+FFFD and a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i + 1..i + 3) {
            Some(&[hi, lo]) if bytes[i] == b'%' => {
                hex(hi).zip(hex(lo)).map(|(hi, lo)| hi << 4 | lo)
            }
            _ => None,
        };
        match (bytes[i], escaped) {
            (_, Some(b)) => {
                out.push(b);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (b, None) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}
