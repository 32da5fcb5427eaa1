//! The JavaScript client in a real headless Chromium: transport fallback,
//! every transport, byte-exact frames, close codes, the WebSocket shim, and a
//! network that cuts every connection every ~300ms. Also `client.inject` (a
//! page that has never heard of wsbridge, behind a route refusing WebSockets)
//! and the demo chat (`examples/chat`), whose screenshot is saved as
//! `target/browser-artifacts/demo.png`; the demo chat again through three
//! `[cluster]` replicas behind HAProxy round-robin (needs `haproxy`).
//!
//! This file starts an echo backend, the proxy in-process and a flaky TCP
//! relay in front of it, the chat app and a proxy set up like
//! `examples/demo.rs`, all on 127.0.0.1:0, then runs
//! `node tests/browser/run.mjs` (Playwright driving `/usr/bin/chromium`) and
//! asserts on its report. Needs `apt-get install chromium` and
//! `npm ci --prefix tests/browser`; without them the test is skipped, unless
//! `CI=true`, where it fails.
//!
//!     cargo test --test browser -- --nocapture
//!     WSB_ONLY=flaky cargo test --test browser -- --nocapture   # some checks only

mod support;

#[path = "cluster/harness.rs"]
mod harness;

#[path = "../examples/chat/app.rs"]
mod app;

// The bench's pass-through peer (`Role::WebsocketPassthrough`, `pids`) is
// not used here: only the firewall.
#[allow(dead_code)]
#[path = "../examples/bench/nginx.rs"]
mod nginx;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_util::sync::CancellationToken;

use support::Proxy;
use support::relay::Relay;

/// The whole browser run must end well within CI's budget.
const NODE_TIMEOUT: Duration = Duration::from_secs(170);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_client_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(chromium) = support::chromium_or_skip("the browser test") else {
        return;
    };

    let backend = Backend::start().await;
    let mut proxy = start_proxy(backend.addr, "").await;
    // Drops undelivered events instead of pausing the upstream, so a burst
    // makes gaps the page must be told about.
    let gappy_replay = r#"
        [replay]
        overflow = "drop-oldest"
        max_pending_bytes = "1KiB"
    "#;
    let mut gappy = start_proxy(backend.addr, gappy_replay).await;
    // Injects the client into HTML pages; `proxy` (no injection) is the
    // control for the same page.
    let mut inject = start_proxy(backend.addr, "[client]\ninject = true").await;
    let relay = Relay::start(proxy.addr).await;
    // A real nginx in front of `proxy`, as a firewall that refuses upgrades
    // and holds streamed bodies.
    let nginx = match nginx::nginx_bin() {
        Some(bin) => Some(
            nginx::Nginx::start(
                &bin,
                &support::target_dir(),
                proxy.addr,
                nginx::Role::BufferingFirewall,
            )
            .unwrap_or_else(|e| panic!("nginx could not be started: {e}")),
        ),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "nginx not found at {} (apt-get install nginx-light)",
                nginx::NGINX_BIN
            )
        }
        None => {
            eprintln!("SKIPPED the nginx checks: no {}", nginx::NGINX_BIN);
            None
        }
    };

    // The demo: the example chat app behind a proxy configured like
    // examples/demo.rs.
    let chat_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let chat_addr = chat_listener.local_addr().unwrap();
    let stop_chat = CancellationToken::new();
    let chat = tokio::spawn(app::serve(
        chat_listener,
        stop_chat.clone().cancelled_owned(),
    ));
    let mut demo = Proxy::start_toml(&support::demo::config(chat_addr)).await;
    // The demo again, as three [cluster] replicas behind a real HAProxy
    // round-robin with no stickiness (None: no haproxy here, and not CI).
    let demo_cluster =
        harness::Cluster::start_upstream(chat_addr, 3, &support::demo::routes(chat_addr)).await;
    // Under the target directory, so never committed.
    let artifacts = support::target_dir().join("browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("cannot create the artifacts directory");
    let screenshot = artifacts.join("demo.png");
    let _ = std::fs::remove_file(&screenshot);

    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser/run.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("WSB_PROXY", proxy.url(""))
        .env("WSB_RELAY", format!("http://{}", relay.addr))
        .env("WSB_RELAY_CONTROL", relay.control.to_string())
        .env("WSB_GAPPY", gappy.url(""))
        .env("WSB_INJECT", inject.url(""))
        .env("WSB_DEMO", demo.url(""))
        .env(
            "WSB_DEMO_CLUSTER",
            demo_cluster
                .as_ref()
                .map(|c| c.lb_url(""))
                .unwrap_or_default(),
        )
        .env("WSB_SCREENSHOT", &screenshot)
        .env("WSB_CHROMIUM", &chromium)
        .env(
            "WSB_NGINX",
            nginx.as_ref().map(|n| n.url()).unwrap_or_default(),
        );
    let (status, reports) = support::run_node_checks(node, NODE_TIMEOUT).await;
    drop(nginx);
    // Both proxies must still shut down cleanly after the browser's abuse.
    proxy.shutdown().await;
    gappy.shutdown().await;
    inject.shutdown().await;
    // The demo proxy drains first, so its closes reach the chat app.
    demo.shutdown().await;
    if let Some(cluster) = &demo_cluster
        && reports.iter().any(|r| r["check"] == "demo_chat_cluster")
    {
        // The page's requests really crossed replicas.
        let mut forwarded = 0.0;
        for i in 0..cluster.replicas.len() {
            forwarded += cluster
                .metric(i, "wsbridge_cluster_forwarded_total", "result=\"ok\"")
                .await;
        }
        assert!(
            forwarded > 0.0,
            "demo_chat_cluster ran but nothing was forwarded"
        );
    }
    if let Some(mut cluster) = demo_cluster {
        for i in 0..cluster.replicas.len() {
            cluster.replicas[i].as_ref().unwrap().process.signal("TERM");
        }
        for i in 0..cluster.replicas.len() {
            let mut r = cluster.replicas[i].take().unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            r.process.wait_exit(deadline).await;
        }
    }
    let failed = support::stop_chat_and_list_failed(&stop_chat, chat, &reports).await;
    assert!(!reports.is_empty(), "run.mjs reported no checks");
    if reports.iter().any(|r| r["check"] == "demo_chat") {
        assert!(
            screenshot.exists(),
            "demo_chat ran but saved no screenshot at {}",
            screenshot.display()
        );
        println!("screenshot of the demo chat: {}", screenshot.display());
    }
    let cuts = relay.cuts();
    println!("the relay cut {cuts} connections");
    if reports
        .iter()
        .any(|r| r["check"].as_str().is_some_and(|c| c.starts_with("flaky")))
    {
        assert!(
            cuts >= 10,
            "the flaky checks ran but the relay cut only {cuts} connections"
        );
    }
    assert!(
        failed.is_empty(),
        "{} browser check(s) failed",
        failed.len()
    );
    assert!(status.success(), "run.mjs exited with {status}");
}

/// The proxy in-process. `/ws`, `/plain` and `/deny` refuse real WebSockets
/// (so the client must fall back); `/open` allows them.
async fn start_proxy(backend: SocketAddr, extra_toml: &str) -> Proxy {
    Proxy::start_toml(&format!(
        r#"
        [upstream]
        url = "http://{backend}"

        [[routes]]
        path = "/ws"
        upstream = "ws://{backend}/ws"
        transports = ["sse", "stream", "poll"]

        [[routes]]
        path = "/open"
        upstream = "ws://{backend}/open"
        transports = ["websocket", "sse", "stream", "poll"]

        [[routes]]
        path = "/named"
        upstream = "ws://{backend}/named"
        transports = ["sse", "stream", "poll"]
        sse_event_field = "type"

        [[routes]]
        path = "/deny"
        upstream = "ws://{backend}/deny"
        transports = ["sse", "stream", "poll"]

        [[routes]]
        path = "/plain"
        upstream = "ws://{backend}/plain"
        transports = ["sse", "stream", "poll"]

        [[routes]]
        path = "/slow"
        upstream = "ws://{backend}/slow"
        transports = ["websocket", "sse", "stream", "poll"]

        [sessions]
        heartbeat = "1s"
        client_retry = "200ms"
        # Long, so a session that ends quickly was closed by its page.
        idle_timeout = "10m"

        {extra_toml}
        "#
    ))
    .await
}

/// Frames each backend WebSocket received, by its `?tag=`, as JSON objects
/// (`{"type": "text"|"binary"|"close", ...}`), served at `GET /log?tag=`.
type FrameLog = Arc<Mutex<HashMap<String, Vec<Value>>>>;

/// An echo backend on one port: plain HTTP pages (same-origin with the proxy
/// through its pass-through) and WebSockets that echo every frame.
///
/// A text frame `close:CODE:REASON` makes it close with that code and reason;
/// `push:N:MS` makes it also send `p:0` … `p:N-1`, one every MS milliseconds.
/// Handshakes on `/deny` are refused with 403; on `/slow` answered after
/// [`SLOW_HANDSHAKE`].
struct Backend {
    addr: SocketAddr,
}

impl Backend {
    async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = FrameLog::default();
        support::serve_http1(listener, move |req| backend_request(req, log.clone()));
        Backend { addr }
    }
}

/// How long a handshake on `/slow` takes: more than the client's
/// `websocketTimeout` (1.5 s), well within the proxy's `connect_timeout`.
const SLOW_HANDSHAKE: Duration = Duration::from_secs(2);

/// Counts the page's `new WebSocket()` calls (`window.__wsCount`) with a
/// wrapper the client captures as the browser's WebSocket.
const COUNTED_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>wsbridge counted</title>\
    <script>window.__wsCount = 0; (function (N) { function W(u, p) { window.__wsCount++; \
    return p === undefined ? new N(u) : new N(u, p); } W.prototype = N.prototype; \
    window.WebSocket = W; })(window.WebSocket);</script>\
    <script src=\"/_bridge/client.js\"></script></head><body>counted</body></html>";
const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>wsbridge test</title>\
    <script src=\"/_bridge/client.js\"></script></head><body>wsbridge browser test</body></html>";
const SHIM_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>wsbridge shim</title>\
    <script src=\"/_bridge/client.js\"></script><script>WsBridge.installWebSocketShim();</script>\
    </head><body>a page that only knows new WebSocket()</body></html>";
/// An app page that has never heard of wsbridge: no client script, only its
/// own `new WebSocket()` to `/plain` (a route refusing WebSocket upgrades),
/// reporting in its title. Works only when the proxy injects the client.
const PLAIN_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>waiting</title>
<script>
var events = [];
var ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/plain?tag=" + (location.hash.slice(1) || "plain"));
ws.onopen = function () { events.push("open"); ws.send("hi"); };
ws.onmessage = function (e) { events.push("message"); document.title = "got:" + e.data; };
ws.onerror = function () { events.push("error"); };
ws.onclose = function (e) {
  events.push("close:" + e.code);
  if (document.title.indexOf("got:") !== 0) document.title = "closed:" + e.code;
};
</script></head><body>an app page that has never heard of wsbridge</body></html>"#;

async fn backend_request(
    req: Request<Incoming>,
    log: FrameLog,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let tag = query_param(&query, "tag").unwrap_or_default();
    let path = req.uri().path().to_owned();

    if let Some(key) = websocket_key(&req) {
        if path.starts_with("/deny") {
            return Ok(response(StatusCode::FORBIDDEN, "text/plain", "denied"));
        }
        if path.starts_with("/slow") {
            tokio::time::sleep(SLOW_HANDSHAKE).await;
        }
        let protocol = req
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|p| p.trim().to_owned());
        let mut answer = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(
                header::SEC_WEBSOCKET_ACCEPT,
                derive_accept_key(key.as_bytes()),
            );
        if let Some(p) = &protocol {
            answer = answer.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws, tag, log).await;
            }
        });
        return Ok(answer.body(Full::default()).unwrap());
    }

    Ok(match path.as_str() {
        "/log" => {
            let frames = log.lock().unwrap().get(&tag).cloned().unwrap_or_default();
            response(
                StatusCode::OK,
                "application/json",
                &Value::Array(frames).to_string(),
            )
        }
        "/shim.html" => response(StatusCode::OK, "text/html; charset=utf-8", SHIM_PAGE),
        "/plain.html" => response(StatusCode::OK, "text/html; charset=utf-8", PLAIN_PAGE),
        "/counted.html" => response(StatusCode::OK, "text/html; charset=utf-8", COUNTED_PAGE),
        _ => response(StatusCode::OK, "text/html; charset=utf-8", PAGE),
    })
}

fn response(status: StatusCode, content_type: &str, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn websocket_key(req: &Request<Incoming>) -> Option<String> {
    let upgrade = req.headers().get(header::UPGRADE)?.to_str().ok()?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    Some(
        req.headers()
            .get(header::SEC_WEBSOCKET_KEY)?
            .to_str()
            .ok()?
            .to_owned(),
    )
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// Echoes every frame, logging what it received under `tag`.
async fn echo<S>(ws: WebSocketStream<S>, tag: String, log: FrameLog)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    // Echoes and pushes share the socket; a small bounded queue keeps the
    // reader from running ahead of a slow writer.
    let (out, mut outgoing) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let record = |frame: Value| {
        log.lock()
            .unwrap()
            .entry(tag.clone())
            .or_default()
            .push(frame)
    };
    while let Some(Ok(message)) = stream.next().await {
        match message {
            Message::Text(text) => {
                record(json!({"type": "text", "data": text.as_str()}));
                if let Some(command) = text.strip_prefix("close:") {
                    let (code, reason) = command.split_once(':').unwrap_or((command, ""));
                    let frame = CloseFrame {
                        code: code.parse::<u16>().unwrap_or(1000).into(),
                        reason: reason.to_owned().into(),
                    };
                    let _ = out.send(Message::Close(Some(frame))).await;
                } else if let Some(command) = text.strip_prefix("push:") {
                    let (count, every) = command.split_once(':').unwrap_or((command, "0"));
                    let (count, every) = (count.parse().unwrap_or(0), every.parse().unwrap_or(0));
                    tokio::spawn(push(out.clone(), count, Duration::from_millis(every)));
                } else if out.send(Message::Text(text)).await.is_err() {
                    break;
                }
            }
            Message::Binary(data) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
                record(json!({"type": "binary", "data": encoded}));
                if out.send(Message::Binary(data)).await.is_err() {
                    break;
                }
            }
            Message::Close(frame) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                record(json!({"type": "close", "code": code, "reason": reason}));
            }
            _ => {}
        }
    }
    drop(out);
    let _ = writer.await;
}

async fn push(out: mpsc::Sender<Message>, count: usize, every: Duration) {
    for i in 0..count {
        if out.send(Message::text(format!("p:{i}"))).await.is_err() {
            return;
        }
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
    }
}
