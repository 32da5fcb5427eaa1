//! Sharing one multiplexed channel between every bridged socket of every tab
//! of a browser profile, in a real headless Chromium over plain HTTP/1.1
//! (six connections per host, so 24 sockets each on a reader of their own
//! cannot work):
//!
//! - 12 tabs of one profile, 2 sockets each, every message in every tab it
//!   should reach, in order, exactly once; the proxy counts one channel
//!   with 24 sessions on it;
//! - the same without SharedWorker (a leader tab holds the channel), the
//!   leader closed mid-stream: the other 11 lose nothing and keep sending;
//! - 4 tabs behind a relay that cuts every connection every 300 ms;
//! - the demo chat in 12 tabs;
//! - and the control: the same 12 tabs opting out (`share: false`) wedge,
//!   which shows the first check tests what sharing fixes.
//!
//! The pages are unchanged HTML from the backend, through the proxy's
//! pass-through, with their own `new WebSocket()`; the route refuses
//! upgrades and `client.inject = true` brings the client in. Each check has
//! a proxy of its own (so its metrics are its own), with an `[admin]`
//! listener whose `/metrics` the browser script reads.
//!
//! This file starts the room backend, the proxies, the relay, the chat app
//! behind a proxy set up like `examples/demo.rs`, all on 127.0.0.1:0, then
//! runs `node tests/browser/share.mjs` (Playwright driving
//! `/usr/bin/chromium`) and asserts on its report. Needs what
//! tests/browser.rs needs; without it the test is skipped, unless
//! `CI=true`, where it fails.
//!
//!     cargo test --test share -- --nocapture
//!     WSB_ONLY=leader cargo test --test share -- --nocapture   # some checks only
//!     WSB_SHARE=off cargo test --test share -- --nocapture     # every socket opts out: must fail

mod support;

#[path = "../examples/chat/app.rs"]
mod app;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use support::Proxy;
use support::relay::Relay;

/// The whole browser run, well within CI's budget.
const NODE_TIMEOUT: Duration = Duration::from_secs(150);

/// The checks share.mjs runs; each must report (unless `WSB_ONLY` picks).
const CHECKS: [&str; 5] = [
    "twelve_tabs_share_one_channel",
    "leader_tab_closed_mid_stream",
    "four_tabs_behind_a_flaky_network",
    "demo_chat_in_twelve_tabs",
    "twelve_tabs_without_sharing_wedge",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_of_one_profile_share_one_channel_in_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let Some(chromium) = support::chromium_or_skip("the sharing test") else {
        return;
    };

    let rooms = Rooms::start().await;
    // One proxy per check, so that each check's metrics count only its tabs.
    let mut tabs = start_proxy(rooms.addr).await;
    let mut leader = start_proxy(rooms.addr).await;
    let mut flaky = start_proxy(rooms.addr).await;
    let mut unshared = start_proxy(rooms.addr).await;
    let relay = Relay::start(flaky.addr).await;

    // The demo: the example chat app behind a proxy configured like
    // examples/demo.rs.
    let chat_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let chat_addr = chat_listener.local_addr().unwrap();
    let stop_chat = CancellationToken::new();
    let chat = tokio::spawn(app::serve(
        chat_listener,
        stop_chat.clone().cancelled_owned(),
    ));
    let mut demo = Proxy::start_toml_with_admin(&support::demo::config(chat_addr)).await;

    let artifacts = support::target_dir().join("browser-artifacts");
    std::fs::create_dir_all(&artifacts).expect("cannot create the artifacts directory");
    let screenshot = artifacts.join("demo-12-tabs.png");
    let _ = std::fs::remove_file(&screenshot);

    let at =
        |proxy: &Proxy, url: String| json!({"url": url, "metrics": proxy.admin_url("/metrics")});
    let setup = json!({
        "tabs": at(&tabs, tabs.url("")),
        "leader": at(&leader, leader.url("")),
        "flaky": at(&flaky, format!("http://{}", relay.addr)),
        "unshared": at(&unshared, unshared.url("")),
        "demo": at(&demo, demo.url("")),
        "relay_control": relay.control.to_string(),
        "screenshot": screenshot,
    });
    let mut node = tokio::process::Command::new("node");
    node.arg(root.join("tests/browser/share.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("WSB_SHARE_SETUP", setup.to_string())
        .env("WSB_CHROMIUM", &chromium);
    let (status, reports) = support::run_node_checks(node, NODE_TIMEOUT).await;

    // Every proxy still shuts down cleanly after the tabs' abuse; the demo
    // proxy drains before the chat app stops, so its closes reach the app.
    for proxy in [&mut tabs, &mut leader, &mut flaky, &mut unshared, &mut demo] {
        tokio::time::timeout(Duration::from_secs(20), proxy.shutdown())
            .await
            .expect("a proxy did not shut down");
    }
    let failed = support::stop_chat_and_list_failed(&stop_chat, chat, &reports).await;
    let only = std::env::var("WSB_ONLY").unwrap_or_default();
    for check in CHECKS.iter().filter(|c| c.contains(&only)) {
        assert!(
            reports.iter().any(|r| r["check"] == *check),
            "share.mjs did not report {check}"
        );
    }
    let passed = |check: &str| {
        reports
            .iter()
            .any(|r| r["check"] == check && r["ok"] == json!(true))
    };
    if passed("four_tabs_behind_a_flaky_network") {
        let cuts = relay.cuts();
        println!("the relay cut {cuts} connections");
        assert!(
            cuts >= 10,
            "the flaky check ran but the relay cut only {cuts} connections"
        );
    }
    if passed("demo_chat_in_twelve_tabs") {
        assert!(
            screenshot.exists(),
            "the demo check ran but saved no screenshot at {}",
            screenshot.display()
        );
        println!(
            "screenshot of the demo in 12 tabs: {}",
            screenshot.display()
        );
    }
    assert!(
        failed.is_empty(),
        "{} sharing check(s) failed",
        failed.len()
    );
    assert!(status.success(), "share.mjs exited with {status}");
}

/// A proxy in front of the room backend: `/room` refuses WebSocket upgrades
/// (the client must bridge), HTML pages get the client injected, and the
/// admin listener serves its metrics.
async fn start_proxy(backend: SocketAddr) -> Proxy {
    Proxy::start_toml_with_admin(&format!(
        r#"
        [upstream]
        url = "http://{backend}"

        [[routes]]
        path = "/room"
        upstream = "ws://{backend}/room"
        transports = ["sse", "stream", "poll"]

        [client]
        inject = true

        [sessions]
        heartbeat = "1s"
        client_retry = "200ms"
        # Long, so a session that ends during a check was closed by a page.
        idle_timeout = "10m"
        "#
    ))
    .await
}

/// Room events a member may fall behind by before it is told it lagged
/// (the test then fails: the backend dropped, not the bridge). A check
/// sends at most a few thousand into one room.
const ROOM_BACKLOG: usize = 16 * 1024;

/// The backend: `GET /tabs.html` is an app page that has never heard of
/// wsbridge; `GET /room?name=N` (WebSocket) joins room N, where every text
/// frame a member sends goes to every member, the sender included, in the
/// order the backend read them. A member that falls more than
/// [`ROOM_BACKLOG`] behind gets `lagged:COUNT`.
struct Rooms {
    addr: SocketAddr,
}

/// The rooms by name, made on first join.
type RoomMap = Arc<Mutex<HashMap<String, broadcast::Sender<Utf8Bytes>>>>;

impl Rooms {
    async fn start() -> Rooms {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let rooms = RoomMap::default();
        support::serve_http1(listener, move |req| room_request(req, rooms.clone()));
        Rooms { addr }
    }
}

/// Opens one WebSocket per room in `?rooms=` (socket k joins room k) and
/// keeps what each receives; the browser script reads `window.sockets` and
/// sends through them. Nothing here knows of wsbridge: it works only when
/// the proxy injects the client.
const TABS_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>tab</title>
<script>
var params = new URLSearchParams(location.search);
var tab = params.get("tab") || "0";
window.sockets = (params.get("rooms") || "a,b").split(",").map(function (room) {
  var s = { room: room, opened: false, inbox: [], errors: [], close: null };
  s.ws = new WebSocket(location.origin.replace(/^http/, "ws") + "/room?name=" + encodeURIComponent(room) + "&tab=" + tab);
  s.ws.onopen = function () { s.opened = true; };
  s.ws.onmessage = function (e) { s.inbox.push(e.data); };
  s.ws.onerror = function (e) { s.errors.push(e.message || "error"); };
  s.ws.onclose = function (e) { s.close = { code: e.code, reason: e.reason }; };
  return s;
});
</script></head><body>an app page that has never heard of wsbridge</body></html>"#;

async fn room_request(
    mut req: Request<Incoming>,
    rooms: RoomMap,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let page = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-store")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    };
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    match (req.uri().path(), key) {
        ("/tabs.html", _) => Ok(page(StatusCode::OK, TABS_PAGE)),
        ("/room", Some(accept)) => {
            let name = req
                .uri()
                .query()
                .and_then(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "name")
                        .map(|(_, v)| v.into_owned())
                })
                .unwrap_or_default();
            let room = rooms
                .lock()
                .unwrap()
                .entry(name)
                .or_insert_with(|| broadcast::channel(ROOM_BACKLOG).0)
                .clone();
            // Joined before the 101 goes out: by the time the page sees
            // open (the proxy answers its open after the handshake), it
            // hears everything said in the room.
            let events = room.subscribe();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    member(ws, room, events).await;
                }
            });
            Ok(Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                .body(Full::default())
                .unwrap())
        }
        _ => Ok(page(StatusCode::NOT_FOUND, "not found")),
    }
}

/// One member of a room, from join to leave.
async fn member<S>(
    ws: WebSocketStream<S>,
    room: broadcast::Sender<Utf8Bytes>,
    mut events: broadcast::Receiver<Utf8Bytes>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            // Why: a frame from this member, for the whole room. Cancel-safe:
            // `next` keeps a partial frame inside the stream.
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    // An error only means nobody is in the room.
                    let _ = room.send(text);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            // Why: something said in the room, for this member.
            event = events.recv() => {
                let text = match event {
                    Ok(text) => text,
                    Err(broadcast::error::RecvError::Lagged(n)) => Utf8Bytes::from(format!("lagged:{n}")),
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if sink.send(Message::Text(text)).await.is_err() {
                    return;
                }
            }
        }
    }
}
