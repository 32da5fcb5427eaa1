//! The integration-test harness: a scripted backend (real hyper + real
//! tokio-tungstenite on 127.0.0.1:0), the proxy started in-process on port 0
//! with a TOML config, and small clients for each transport.
//!
//! ```ignore
//! let backend = Backend::start().await;
//! let proxy = Proxy::start(&backend, "").await;
//! let s = proxy.open("/echo").await;
//! ```
#![allow(dead_code)] // each test file uses a different part of the harness

pub mod demo;
pub mod relay;
pub mod soak;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

type BoxedBody = BoxBody<Bytes, Infallible>;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What the backend saw, for assertions.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// A WebSocket handshake: path with query, and the request headers.
    Handshake {
        uri: String,
        headers: HashMap<String, String>,
    },
    Text(String),
    Binary(Vec<u8>),
    /// A close frame from the proxy.
    Close {
        code: u16,
        reason: String,
    },
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    changed: Notify,
}

/// A scripted backend. WebSocket paths:
/// - `/echo`: echoes text and binary; text `close:CODE:REASON` makes it close.
/// - `/burst?n=N&size=S`: sends N text frames `"<i>:<padding>"` (i from 1),
///   then echoes.
/// - `/exotic`: sends [`exotic_texts`] then [`all_bytes`], then echoes.
/// - `/auth`: 401 unless `Authorization: Bearer good`, then echoes.
/// - `/forbidden`: 403.
/// - `/bye`: closes at once with 4000 "bye"; the proxy's answer is logged as
///   text `close answered with CODE`.
/// - `/ping`: pings the proxy, then sends `pong: PAYLOAD` for the pong that
///   came back, or `no pong` after 5 s; then echoes.
/// - `/proto`: picks the last offered subprotocol, then echoes.
/// - `/headers`: sends one text frame, the handshake's uri and headers as JSON.
/// - `/deaf`: completes the handshake, then never reads (no pongs).
/// - `/flood?n=N&size=S`: sends N frames as fast as the socket takes them,
///   counting them in [`Backend::sent`].
/// - `/big?size=S`: sends one text frame of S bytes.
///
/// HTTP paths: `/http/echo` answers with a JSON description of the request
/// (method, uri, headers, body length and text); `/http/stream?n=N` answers
/// with N chunks of `chunk <i>\n`, one every 10 ms; `/http/endless` never ends;
/// `/http/status/N` answers with status N; `/http/slow` answers after 3 s;
/// `/http/big?n=N` answers with N bytes and their Content-Length;
/// `/page` answers with a small HTML page.
pub struct Backend {
    pub addr: SocketAddr,
    log: Arc<Log>,
    /// Frames sent by `/flood`.
    pub sent: Arc<std::sync::atomic::AtomicU64>,
    _stop: oneshot::Sender<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let (log2, sent2) = (Arc::clone(&log), Arc::clone(&sent));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = &mut stop_rx => return,
                };
                let (log, sent) = (Arc::clone(&log2), Arc::clone(&sent2));
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (log, sent) = (Arc::clone(&log), Arc::clone(&sent));
                        async move { Ok::<_, Infallible>(backend_handle(req, log, sent).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend {
            addr,
            log,
            sent,
            _stop: stop_tx,
        }
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }

    /// Waits until the backend has seen something matching `pred`.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let notified = self.log.changed.notified();
            if let Some(s) = self.log.seen.lock().unwrap().iter().find(|s| pred(s)) {
                return s.clone();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("backend never saw {what}; saw {:?}", self.seen());
            }
        }
    }

    pub async fn wait_close(&self) -> (u16, String) {
        match self
            .wait_for("a close frame", |s| matches!(s, Seen::Close { .. }))
            .await
        {
            Seen::Close { code, reason } => (code, reason),
            _ => unreachable!(),
        }
    }
}

fn record(log: &Log, seen: Seen) {
    log.seen.lock().unwrap().push(seen);
    log.changed.notify_waiters();
}

fn full(b: impl Into<Bytes>) -> BoxedBody {
    Full::new(b.into()).boxed()
}

fn query(uri: &http::Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub fn exotic_texts() -> Vec<String> {
    vec![
        "plain".into(),
        "cr\rinside".into(),
        "crlf\r\nline".into(),
        "two\n\nblank".into(),
        "".into(),
        "nul\0byte".into(),
        "non-BMP 😀𝄞".into(),
        "\n".into(),
        " leading space".into(),
        "trailing\r".into(),
        "{\"type\":\"json\"}".into(),
    ]
}

pub fn all_bytes() -> Vec<u8> {
    (0..=255u8).collect()
}

async fn backend_handle(
    mut req: Request<Incoming>,
    log: Arc<Log>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) -> Response<BoxedBody> {
    let path = req.uri().path().to_owned();
    let q = query(req.uri());
    if let Some(rest) = path.strip_prefix("/http/") {
        return http_route(rest, req, &q).await;
    }
    if path == "/page" {
        let mut r = Response::new(full(
            "<!doctype html><html><head><title>t</title></head><body>page</body></html>",
        ));
        r.headers_mut()
            .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
        return r;
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let uri = req.uri().to_string();
    record(
        &log,
        Seen::Handshake {
            uri: uri.clone(),
            headers: headers.clone(),
        },
    );
    match path.as_str() {
        "/auth" if headers.get("authorization").map(String::as_str) != Some("Bearer good") => {
            return status(StatusCode::UNAUTHORIZED);
        }
        "/forbidden" => return status(StatusCode::FORBIDDEN),
        _ => {}
    }
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "upgrade".parse().unwrap());
    h.insert(
        "sec-websocket-accept",
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes())
            .parse()
            .unwrap(),
    );
    if let Some(offered) = headers.get("sec-websocket-protocol")
        && (path == "/proto" || path == "/echo")
    {
        let pick = offered
            .split(',')
            .map(str::trim)
            .next_back()
            .unwrap_or("")
            .to_owned();
        h.insert("sec-websocket-protocol", pick.parse().unwrap());
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        script(&path, &q, &uri, headers, ws, log, sent).await;
    });
    resp
}

fn status(s: StatusCode) -> Response<BoxedBody> {
    let mut r = Response::new(full(format!("refused with {s}")));
    *r.status_mut() = s;
    r
}

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

async fn script(
    path: &str,
    q: &HashMap<String, String>,
    uri: &str,
    headers: HashMap<String, String>,
    mut ws: Ws,
    log: Arc<Log>,
    sent: Arc<std::sync::atomic::AtomicU64>,
) {
    let num = |k: &str, d: usize| q.get(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    match path {
        "/burst" => {
            let (n, size) = (num("n", 10), num("size", 0));
            for i in 1..=n {
                let mut text = format!("{i}:");
                text.push_str(&"x".repeat(size));
                if ws.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        }
        "/exotic" => {
            for t in exotic_texts() {
                let _ = ws.feed(Message::text(t)).await;
            }
            let _ = ws.feed(Message::binary(all_bytes())).await;
            let _ = ws.feed(Message::binary(Vec::new())).await;
            let _ = ws.flush().await;
        }
        "/bye" => {
            let _ = ws
                .close(Some(CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "bye".into(),
                }))
                .await;
            // The proxy's answer to this close, as the close handshake has it.
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Close(frame) = msg {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    record(&log, Seen::Text(format!("close answered with {code}")));
                }
            }
            return;
        }
        "/ping" => {
            // Pings the proxy and says what came back (text frames meanwhile
            // are ignored).
            let payload = Bytes::from_static(b"are you there");
            if ws.send(Message::Ping(payload.clone())).await.is_err() {
                return;
            }
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Pong(got) = msg {
                        return Some(got);
                    }
                }
                None
            })
            .await;
            let text = match answer {
                Ok(Some(got)) => format!("pong: {}", String::from_utf8_lossy(&got)),
                _ => "no pong".to_owned(),
            };
            let _ = ws.send(Message::text(text)).await;
        }
        "/headers" => {
            let _ = ws
                .send(Message::text(
                    json!({"uri": uri, "headers": headers}).to_string(),
                ))
                .await;
        }
        "/deaf" => {
            // Hold the socket without ever reading: pings go unanswered.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        "/flood" => {
            let (n, size) = (num("n", 1000), num("size", 1024));
            for i in 1..=n {
                let mut text = format!("{i}:");
                text.push_str(&"x".repeat(size));
                if ws.send(Message::text(text)).await.is_err() {
                    return;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        "/big" => {
            let _ = ws.send(Message::text("y".repeat(num("size", 1024)))).await;
        }
        _ => {}
    }
    echo(ws, &log).await;
}

async fn echo(mut ws: Ws, log: &Log) {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => {
                record(log, Seen::Text(t.to_string()));
                if let Some(rest) = t.strip_prefix("close:") {
                    let (code, reason) = rest.split_once(':').unwrap_or((rest, ""));
                    let frame = CloseFrame {
                        code: CloseCode::from(code.parse::<u16>().unwrap_or(1000)),
                        reason: reason.to_owned().into(),
                    };
                    let _ = ws.close(Some(frame)).await;
                    continue;
                }
                if ws.send(Message::Text(t)).await.is_err() {
                    return;
                }
            }
            Ok(Message::Binary(b)) => {
                record(log, Seen::Binary(b.to_vec()));
                if ws.send(Message::Binary(b)).await.is_err() {
                    return;
                }
            }
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                record(log, Seen::Close { code, reason });
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn http_route(
    rest: &str,
    req: Request<Incoming>,
    q: &HashMap<String, String>,
) -> Response<BoxedBody> {
    match rest {
        "echo" => {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            // Counts the body as it streams, so a huge upload costs no memory.
            let mut body = req.into_body();
            let mut len = 0u64;
            let mut text = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    if text.len() < 4096 {
                        text.extend_from_slice(&data[..data.len().min(4096 - text.len())]);
                    }
                }
            }
            let mut r = Response::new(full(
                json!({"method": method, "uri": uri, "headers": headers, "body_len": len, "body": String::from_utf8_lossy(&text)}).to_string(),
            ));
            let h = r.headers_mut();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert("x-backend", "yes".parse().unwrap());
            h.insert("connection", "x-hop".parse().unwrap());
            h.insert("x-hop", "must-not-pass".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            r
        }
        "big" => {
            // N bytes (`x`) with a Content-Length, in 16 KiB frames.
            let n: usize = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(100_000);
            let frames = (0..n.div_ceil(16384)).map(move |i| {
                let len = (n - i * 16384).min(16384);
                Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; len])))
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))));
            r.headers_mut()
                .insert("content-length", n.to_string().parse().unwrap());
            r
        }
        "stream" => {
            let n: usize = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(5);
            let chunks = futures_util::stream::unfold(0usize, move |i| async move {
                if i >= n {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(format!("chunk {i}\n")))),
                    i + 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "endless" => {
            let chunks = futures_util::stream::unfold(0u64, |i| async move {
                tokio::task::yield_now().await;
                Some((
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'z'; 64 * 1024]))),
                    i + 1,
                ))
            });
            Response::new(BodyExt::boxed(StreamBody::new(chunks)))
        }
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("slow"))
        }
        _ => {
            if let Some(code) = rest
                .strip_prefix("status/")
                .and_then(|c| c.parse::<u16>().ok())
            {
                let mut r = Response::new(full(format!("status {code}")));
                *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
                return r;
            }
            status(StatusCode::NOT_FOUND)
        }
    }
}

/// The proxy, in-process on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The `[admin]` listener (health, readiness, `/metrics`), when started
    /// with [`Proxy::start_toml_with_admin`].
    pub admin: Option<SocketAddr>,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The admin listener's task: it has no shutdown of its own (it keeps
    /// answering through a drain), so it is aborted on drop.
    admin_task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy in front of `backend` with extra TOML (sections
    /// after `[upstream]`; `{backend}` is replaced by the backend's address).
    pub async fn start(backend: &Backend, extra: &str) -> Proxy {
        let text = format!(
            "[upstream]\nurl = \"http://{addr}\"\nconnect_timeout = \"2s\"\n{}",
            extra.replace("{backend}", &backend.addr.to_string()),
            addr = backend.addr
        );
        Proxy::start_toml(&text).await
    }

    pub async fn start_toml(text: &str) -> Proxy {
        let config = wsbridge::Config::from_toml(text)
            .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let done = tokio::spawn(wsbridge::run(listener, config, async move {
            let _ = stop_rx.await;
        }));
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Proxy {
            addr,
            admin: None,
            http,
            stop: Some(stop_tx),
            done: Some(done),
            admin_task: None,
        }
    }

    /// Like [`Proxy::start_toml`], plus the binary's `[admin]` listener on
    /// its own 127.0.0.1:0 socket, sharing the proxy's state (so its
    /// `/metrics` are the proxy's).
    pub async fn start_toml_with_admin(text: &str) -> Proxy {
        let config = wsbridge::Config::from_toml(text)
            .unwrap_or_else(|e| panic!("test config: {e}\n{text}"));
        let state = wsbridge::AppState::new(config).expect("the proxy's state");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let admin_task = tokio::spawn(wsbridge::net::serve_admin(admin, Arc::clone(&state)));
        let done = tokio::spawn(wsbridge::net::serve(listener, state, async move {
            let _ = stop_rx.await;
        }));
        Proxy {
            addr,
            admin: Some(admin_addr),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(stop_tx),
            done: Some(done),
            admin_task: Some(admin_task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A URL on the admin listener; panics when there is none.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin.expect("started without an admin listener");
        format!("http://{admin}{path}")
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            done.await.unwrap().unwrap();
        }
    }

    /// Starts a shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.done.take().expect("shutdown already awaited")
    }

    /// POST /_bridge/sessions with this body; returns status and JSON.
    pub async fn open_raw(&self, body: Value) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(self.url("/_bridge/sessions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let json = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, json, headers)
    }

    /// Opens a session on `url` and returns it; panics unless 201.
    pub async fn open(&self, url: &str) -> Session {
        let (status, json, _) = self.open_raw(json!({"url": url})).await;
        assert_eq!(status, StatusCode::CREATED, "open {url}: {json}");
        Session {
            id: json["session"].as_str().unwrap().to_owned(),
            json,
            base: self.url(""),
            http: self.http.clone(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(admin) = self.admin_task.take() {
            admin.abort();
        }
    }
}

/// An open session, seen from a test client.
pub struct Session {
    pub id: String,
    /// The open response.
    pub json: Value,
    base: String,
    http: reqwest::Client,
}

/// An event as a test sees it, from any transport.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    Text(u64, String),
    Binary(u64, Vec<u8>),
    Close(u64, u16, String),
    Gap(u64, u64, u64),
}

impl Ev {
    pub fn id(&self) -> u64 {
        match self {
            Ev::Text(id, _) | Ev::Binary(id, _) | Ev::Close(id, ..) | Ev::Gap(id, ..) => *id,
        }
    }

    /// Parses the JSON event object poll and stream share.
    pub fn from_json(v: &Value) -> Ev {
        let id = v["id"].as_u64().expect("event id");
        match v["type"].as_str().unwrap() {
            "text" => Ev::Text(id, v["data"].as_str().unwrap().to_owned()),
            "binary" => Ev::Binary(id, b64(v["data"].as_str().unwrap())),
            "close" => Ev::Close(
                id,
                v["code"].as_u64().unwrap() as u16,
                v["reason"].as_str().unwrap().to_owned(),
            ),
            "gap" => Ev::Gap(id, v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap()),
            other => panic!("unknown event type {other}"),
        }
    }

    /// Parses an SSE event (decoding `text.b64`).
    pub fn from_sse(e: &eventsource_stream::Event) -> Option<Ev> {
        let id = e.id.parse().ok();
        Some(match e.event.as_str() {
            "message" | "" => Ev::Text(id?, e.data.clone()),
            "text.b64" => Ev::Text(id?, String::from_utf8(b64(&e.data)).unwrap()),
            "binary" => Ev::Binary(id?, b64(&e.data)),
            "close" => {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                Ev::Close(
                    id?,
                    v["code"].as_u64().unwrap() as u16,
                    v["reason"].as_str().unwrap().to_owned(),
                )
            }
            "gap" => {
                let v: Value = serde_json::from_str(&e.data).unwrap();
                Ev::Gap(id?, v["from"].as_u64().unwrap(), v["to"].as_u64().unwrap())
            }
            _ => return None,
        })
    }
}

pub fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("standard base64")
}

impl Session {
    /// A session from an open response made elsewhere (a test's own
    /// request, or another replica behind a load balancer), reached at
    /// `base`.
    pub fn from_open(json: Value, base: String, http: reqwest::Client) -> Session {
        Session {
            id: json["session"].as_str().expect("a session id").to_owned(),
            json,
            base,
            http,
        }
    }

    pub fn url(&self, suffix: &str) -> String {
        format!("{}/_bridge/sessions/{}{suffix}", self.base, self.id)
    }

    pub async fn send_text(&self, text: &str) -> reqwest::Response {
        self.http
            .post(self.url("/send"))
            .header("content-type", "text/plain; charset=utf-8")
            .body(text.to_owned())
            .send()
            .await
            .unwrap()
    }

    pub async fn send_binary(&self, data: &[u8]) -> reqwest::Response {
        self.http
            .post(self.url("/send"))
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn poll(&self, cursor: u64, wait: f64) -> (StatusCode, Value) {
        let r = self
            .http
            .get(self.url(&format!("/poll?cursor={cursor}&wait={wait}")))
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Starts a long poll in the background; its JSON answer comes through
    /// the handle (for tests of what ends a waiting poll).
    pub fn poll_in_background(&self, cursor: u64, wait: u64) -> tokio::task::JoinHandle<Value> {
        let url = self.url(&format!("/poll?cursor={cursor}&wait={wait}"));
        let http = self.http.clone();
        tokio::spawn(async move {
            http.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    }

    /// Polls from `cursor` until `n` events (or a close) arrived.
    pub async fn poll_events(&self, mut cursor: u64, n: usize) -> Vec<Ev> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "poll: only {} of {n} events: {out:?}",
                out.len()
            );
            let (status, body) = self.poll(cursor, 2.0).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            for e in body["events"].as_array().unwrap() {
                out.push(Ev::from_json(e));
            }
            cursor = body["cursor"].as_u64().unwrap();
            if matches!(out.last(), Some(Ev::Close(..))) {
                break;
            }
        }
        out
    }

    /// Opens an SSE stream from `cursor` (`None`: no cursor at all).
    pub async fn sse(&self, cursor: Option<u64>) -> SseClient {
        let url = match cursor {
            Some(c) => self.url(&format!("/sse?cursor={c}")),
            None => self.url("/sse"),
        };
        let resp = self.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        SseClient::new(resp)
    }

    /// Reads `n` events (or up to a close) over SSE from `cursor`.
    pub async fn sse_events(&self, cursor: u64, n: usize) -> Vec<Ev> {
        let mut sse = self.sse(Some(cursor)).await;
        sse.take(n).await
    }

    /// Reads `n` events (or up to a close) over the NDJSON stream.
    pub async fn stream_events(&self, cursor: u64, n: usize) -> Vec<Ev> {
        let resp = self
            .http
            .get(self.url(&format!("/stream?cursor={cursor}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut lines = NdjsonClient::new(resp);
        let mut out = Vec::new();
        while out.len() < n {
            let v = lines
                .next()
                .await
                .unwrap_or_else(|| panic!("stream ended after {out:?}"));
            if v["type"] == "heartbeat" {
                continue;
            }
            let ev = Ev::from_json(&v);
            let close = matches!(ev, Ev::Close(..));
            out.push(ev);
            if close {
                break;
            }
        }
        out
    }

    pub async fn delete(&self, query: &str) -> reqwest::Response {
        self.http.delete(self.url(query)).send().await.unwrap()
    }
}

/// Reads events from an SSE response with a real SSE parser.
pub struct SseClient {
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = eventsource_stream::Event> + Send>>,
}

impl SseClient {
    pub fn new(resp: reqwest::Response) -> SseClient {
        use eventsource_stream::Eventsource;
        let events = resp
            .bytes_stream()
            .eventsource()
            .filter_map(|e| async move { e.ok() });
        SseClient {
            events: Box::pin(events),
        }
    }

    /// The next raw SSE event, or None when the response ends.
    pub async fn next_raw(&mut self) -> Option<eventsource_stream::Event> {
        tokio::time::timeout(PATIENCE, self.events.next())
            .await
            .expect("SSE event in time")
    }

    /// Up to `n` data events, stopping after a close.
    pub async fn take(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::new();
        while out.len() < n {
            let Some(raw) = self.next_raw().await else {
                panic!("SSE ended after {out:?}")
            };
            if let Some(ev) = Ev::from_sse(&raw) {
                let close = matches!(ev, Ev::Close(..));
                out.push(ev);
                if close {
                    break;
                }
            }
        }
        out
    }
}

/// Reads JSON lines from an NDJSON response.
pub struct NdjsonClient {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: Vec<u8>,
    /// The response's first line when it was the prelude (which `next`
    /// never returns: every stream response starts with one).
    pub prelude: Option<Value>,
    lines: usize,
}

impl NdjsonClient {
    pub fn new(resp: reqwest::Response) -> NdjsonClient {
        NdjsonClient {
            body: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            prelude: None,
            lines: 0,
        }
    }

    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let v: Value =
                    serde_json::from_slice(&line[..line.len() - 1]).expect("a JSON line");
                self.lines += 1;
                if v["type"] == "prelude" {
                    assert_eq!(self.lines, 1, "the prelude comes first, once");
                    self.prelude = Some(v);
                    continue;
                }
                return Some(v);
            }
            match tokio::time::timeout(PATIENCE, self.body.next())
                .await
                .expect("NDJSON line in time")
            {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}

/// Numbers `1..=n` in text events `"<i>:..."`, checked exactly once in order.
pub fn assert_sequence(events: &[Ev], n: u64) {
    let mut expect = 1;
    for e in events {
        if let Ev::Text(_, t) = e {
            let i: u64 = t.split(':').next().unwrap().parse().unwrap();
            assert_eq!(i, expect, "out of order or duplicated: {t}");
            expect += 1;
        }
    }
    assert_eq!(expect - 1, n, "expected {n} messages");
}

// ---- the real binary ----------------------------------------------------------

/// The real `wsbridge` binary as a child process in front of a backend, on
/// free loopback ports (main listener and `[admin]` listener). Killed on
/// drop if still running.
pub struct ProxyProcess {
    /// The main listener.
    pub addr: SocketAddr,
    /// The `[admin]` listener.
    pub admin: SocketAddr,
    pub http: reqwest::Client,
    child: std::process::Child,
    /// Everything the process wrote to stderr so far, filled by a thread.
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    _config: tempfile::NamedTempFile,
}

/// The environment variables the binary reads; cleared so the test's own
/// environment never changes what a test runs.
pub const WSBRIDGE_ENV: [&str; 7] = [
    "WSBRIDGE_CONFIG",
    "WSBRIDGE_LISTEN",
    "WSBRIDGE_UPSTREAM",
    "WSBRIDGE_LOG_FORMAT",
    "WSBRIDGE_LOG",
    "WSBRIDGE_CLUSTER_ADVERTISE",
    "WSBRIDGE_CLUSTER_DNS_SERVER",
];

/// Serves HTTP/1.1 (with upgrades) on `listener` for the rest of the test,
/// a task per connection, every request to `handle`: the loopback backends
/// of the Chromium tests.
pub fn serve_http1<F, Fut, B>(listener: TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .with_upgrades()
                    .await;
            });
        }
    });
}

/// A loopback port that was free a moment ago (the caller retries if it is
/// taken before use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl ProxyProcess {
    /// Starts the binary with `[upstream] url` = the backend, then `extra`
    /// TOML (whole sections, `[admin]` excepted), at the default log level.
    pub async fn start(backend: &Backend, extra: &str) -> ProxyProcess {
        ProxyProcess::start_with(backend, extra, &[], &[]).await
    }

    /// Like [`ProxyProcess::start`] with extra arguments and environment.
    /// Readiness is the `listening` log line, so the log level must keep
    /// info lines.
    pub async fn start_with(
        backend: &Backend,
        extra: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> ProxyProcess {
        ProxyProcess::start_upstream(backend.addr, extra, args, envs).await
    }

    /// Like [`ProxyProcess::start_with`] in front of any HTTP upstream at
    /// `upstream` (the chat app of the browser test, say).
    pub async fn start_upstream(
        upstream: SocketAddr,
        extra: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> ProxyProcess {
        ProxyProcess::try_start_upstream(upstream, extra, args, envs)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`ProxyProcess::start_upstream`], but a port that stays taken
    /// through every attempt is an `Err`: it may be one `extra` names (a
    /// cluster's internal listener), which only the caller can pick again.
    pub async fn try_start_upstream(
        upstream: SocketAddr,
        extra: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<ProxyProcess, String> {
        use std::io::{BufRead, Write};
        use std::process::{Command, Stdio};
        // A port picked here may be taken by someone else before the child
        // binds it: then the child exits with EADDRINUSE and we try again.
        for _attempt in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
            write!(
                config,
                "[upstream]\nurl = \"http://{upstream}\"\n{extra}\n[admin]\nlisten = \"{admin}\"\n",
            )
            .unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsbridge"));
            for k in WSBRIDGE_ENV {
                cmd.env_remove(k);
            }
            cmd.arg("--config")
                .arg(config.path())
                .arg("--listen")
                .arg(addr.to_string())
                .args(args)
                .envs(envs.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().expect("spawn wsbridge");
            let stderr = Arc::new(Mutex::new(String::new()));
            let pipe = child.stderr.take().unwrap();
            let sink = Arc::clone(&stderr);
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut s = sink.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
            let mut proxy = ProxyProcess {
                addr,
                admin,
                http: reqwest::Client::builder().no_proxy().build().unwrap(),
                child,
                stderr,
                reader: Some(reader),
                _config: config,
            };
            let deadline = std::time::Instant::now() + PATIENCE;
            loop {
                let ready = proxy
                    .stderr()
                    .lines()
                    .any(|l| l.contains("listening") && l.contains(&addr.to_string()));
                if ready {
                    return Ok(proxy);
                }
                if let Some(status) = proxy.child.try_wait().unwrap() {
                    proxy.join_reader();
                    let err = proxy.stderr();
                    if err.contains("in use") {
                        break; // someone took a port: try others
                    }
                    panic!("wsbridge exited with {status} before listening:\n{err}");
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "wsbridge never logged `listening`:\n{}",
                    proxy.stderr()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Err("no free ports for wsbridge after 5 attempts".into())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `INT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; None if it is still running at `deadline`.
    pub async fn wait_exit(
        &mut self,
        deadline: std::time::Instant,
    ) -> Option<std::process::ExitStatus> {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_reader();
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything written to stderr so far (all of it once exited).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Opens a session on `url`; panics unless 201.
    pub async fn open(&self, url: &str) -> Session {
        let r = self
            .http
            .post(self.url("/_bridge/sessions"))
            .json(&json!({"url": url}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let json: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::CREATED, "open {url}: {json}");
        Session {
            id: json["session"].as_str().unwrap().to_owned(),
            json,
            base: self.url(""),
            http: self.http.clone(),
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP backend that answers every request with `handler`, for
/// responses the scripted [`Backend`] does not make (compressed pages, odd
/// headers, bodies sent at the test's pace).
///
/// ```ignore
/// let backend = HttpBackend::start(|_req| async { Response::new(body("hi")) }).await;
/// let proxy = Proxy::start_toml(&backend.config("")).await;
/// ```
pub struct HttpBackend {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl HttpBackend {
    pub async fn start<F, Fut>(handler: F) -> HttpBackend
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<BoxBody<Bytes, Infallible>>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
                    _ = &mut stop_rx => return,
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        HttpBackend {
            addr,
            _stop: stop_tx,
        }
    }

    /// A proxy config with this backend as `upstream.url`, then `extra`.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[upstream]\nurl = \"http://{}\"\nconnect_timeout = \"2s\"\n{extra}",
            self.addr
        )
    }
}

/// A whole body for [`HttpBackend`] handlers.
pub fn body(b: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    full(b)
}

/// A response read off the wire by a test's own HTTP/1.1 client, so that
/// framing and hop-by-hop headers are seen exactly as sent.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).first().copied()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Runs a browser script (`node tests/browser/...`, set up by the caller
/// with its arguments and environment), echoing its output line by line (so
/// a slow or hung check shows where), and returns its exit status and the
/// JSON check reports (`{"check": ..}` lines) it printed. Panics past
/// `limit`.
pub async fn run_node_checks(
    mut node: tokio::process::Command,
    limit: Duration,
) -> (std::process::ExitStatus, Vec<Value>) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    node.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut child = node.spawn().expect("node could not be started");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut reports = Vec::new();
    let run = async {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{line}");
            if let Ok(report) = serde_json::from_str::<Value>(&line)
                && report.get("check").is_some()
            {
                reports.push(report);
            }
        }
        child.wait().await
    };
    let status = tokio::time::timeout(limit, run)
        .await
        .expect("the browser run took too long")
        .expect("node failed");
    (status, reports)
}

/// Stops the chat app (examples/chat) that a browser run drove, then prints
/// the failed checks among `reports` and returns them. The caller asserts
/// there are none only after its own checks, so a missing report or artifact
/// is still the first thing a failing run names.
pub async fn stop_chat_and_list_failed<'r>(
    stop_chat: &tokio_util::sync::CancellationToken,
    chat: tokio::task::JoinHandle<std::io::Result<()>>,
    reports: &'r [Value],
) -> Vec<&'r Value> {
    stop_chat.cancel();
    tokio::time::timeout(Duration::from_secs(15), chat)
        .await
        .expect("the chat app did not stop")
        .expect("the chat app panicked")
        .expect("the chat app failed");
    list_failed(reports)
}

/// Prints the failed checks among a browser run's `reports` and returns
/// them, for the caller to assert on after its own checks.
pub fn list_failed(reports: &[Value]) -> Vec<&Value> {
    let failed: Vec<&Value> = reports.iter().filter(|r| r["ok"] != json!(true)).collect();
    for f in &failed {
        eprintln!(
            "FAILED {}: {}",
            f["check"],
            f["error"].as_str().unwrap_or("")
        );
    }
    failed
}

/// The Chromium the browser tests drive (`WSB_CHROMIUM`, else Debian's
/// `/usr/bin/chromium`), once it, node and `tests/browser/node_modules`
/// are all there. `None` when one is missing: the caller skips, after a
/// banner saying what is missing, except under `CI=true`, where this
/// panics instead.
pub fn chromium_or_skip(test: &str) -> Option<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chromium = std::env::var("WSB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node_ok = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !std::path::Path::new(&chromium).exists() {
        format!("{chromium} not found (apt-get install chromium)")
    } else if !root
        .join("tests/browser/node_modules/playwright-core")
        .exists()
    {
        "tests/browser/node_modules missing (npm ci --prefix tests/browser)".into()
    } else if !node_ok {
        "node not found".into()
    } else {
        return Some(chromium);
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run in CI: {missing}");
    }
    eprintln!(
        "\n{}\nSKIPPED {test}: {missing}\n{}\n",
        "!".repeat(72),
        "!".repeat(72)
    );
    None
}

/// The target directory (honours `CARGO_TARGET_DIR`): the parent of the
/// scratch directory cargo gives integration tests. Screenshots and other
/// artifacts go under it, so they are never committed.
pub fn target_dir() -> std::path::PathBuf {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// A server's WebSocket frame (unmasked) as the wire has it, for upstreams
/// that script their bytes.
pub fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}
