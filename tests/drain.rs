//! The drain, on the real binary. SIGTERM or SIGINT turns readiness 503 on
//! both listeners at once while the main one keeps accepting (opens get
//! `503 draining`, pass-through is served with `Connection: close`); after
//! `server.drain_delay` every session and every spliced WebSocket is closed
//! with 1001 on both sides; in-flight pass-through requests finish; the
//! process exits 0 within `server.drain_timeout`.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Backend, Ev, PATIENCE, ProxyProcess, Seen};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);
/// Long enough for the checks made during it (a handful of loopback
/// requests), short enough to keep the test quick.
const DRAIN_DELAY: Duration = Duration::from_secs(2);

fn config(delay: Duration) -> String {
    format!(
        "[server]\ndrain_timeout = \"{}s\"\ndrain_delay = \"{}ms\"\n",
        DRAIN_TIMEOUT.as_secs(),
        delay.as_millis()
    )
}

async fn status_of(http: &reqwest::Client, url: &str) -> StatusCode {
    http.get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .status()
}

/// Polls until `url` answers 503 (readiness is switched by the signal
/// handler, a moment after `kill` returns).
async fn until_unavailable(http: &reqwest::Client, url: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = status_of(http, url).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still {status} while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the backend has received `n` close frames with code 1001.
async fn wait_closes_1001(backend: &Backend, n: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let closes = backend
            .seen()
            .iter()
            .filter(|s| matches!(s, Seen::Close { code: 1001, .. }))
            .count();
        if closes >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "backend got {closes} close 1001, wanted {n}: {:?}",
            backend.seen()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_serves_through_the_delay_then_closes_everything_with_1001_and_exits_0() {
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start(&backend, &config(DRAIN_DELAY)).await;
    let admin_readyz = proxy.admin_url("/_bridge/readyz");
    let main_readyz = proxy.url("/_bridge/readyz");
    assert_eq!(status_of(&proxy.http, &admin_readyz).await, StatusCode::OK);
    assert_eq!(status_of(&proxy.http, &main_readyz).await, StatusCode::OK);

    // A session with a live SSE reader.
    let session = proxy.open("/echo").await;
    let mut sse = session.sse(None).await;
    assert_eq!(session.send_text("before").await.status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(1, "before".into())]);

    // A spliced WebSocket (no routes: every path may upgrade).
    let (mut ws, _) = connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .expect("splice");
    ws.send(Message::text("spliced")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("spliced"));

    // A pass-through request the backend answers after 3 s.
    let http = proxy.http.clone();
    let slow_url = proxy.url("/http/slow");
    let slow = tokio::spawn(async move {
        let resp = http.get(slow_url).send().await.unwrap();
        (resp.status(), resp.text().await.unwrap())
    });
    // The backend has no signal for "request received": give the request a
    // moment to reach it. It then has ~2.5 s to go, all of it in the drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!slow.is_finished());

    let signalled = Instant::now();
    proxy.signal("TERM");

    // Readiness fails on both listeners: the main one still accepts.
    until_unavailable(&proxy.http, &admin_readyz).await;
    until_unavailable(&proxy.http, &main_readyz).await;

    // New connections are served: a new open is refused as draining...
    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let resp = fresh
        .post(proxy.url("/_bridge/sessions"))
        .json(&json!({"url": "/echo"}))
        .send()
        .await
        .expect("the main listener accepts while draining");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"error": "draining"})
    );
    // ... and pass-through is served, on a connection that then ends.
    let resp = fresh.get(proxy.url("/http/echo")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["connection"], "close");

    // During the delay the session and the splice still carry traffic.
    assert_eq!(session.send_text("during").await.status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(2, "during".into())]);
    ws.send(Message::text("still")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("still"));

    // After it, the session ends with 1001 on both sides...
    match sse.take(1).await.as_slice() {
        [Ev::Close(3, 1001, _)] => {}
        other => panic!("expected close 1001 over SSE, got {other:?}"),
    }
    assert!(
        signalled.elapsed() >= DRAIN_DELAY,
        "closing started before drain_delay"
    );
    assert!(sse.next_raw().await.is_none(), "SSE goes on after close");

    // ... and so does the splice: the browser gets a close 1001 ...
    let close = match ws.next().await {
        Some(Ok(Message::Close(frame))) => frame,
        other => panic!("expected a close frame, got {other:?}"),
    };
    let close = close.expect("a close code");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "proxy shutting down");
    // ... the handshake completes and the proxy ends the TCP connection.
    assert!(
        tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the proxy ends the splice after the close handshake")
            .is_none_or(|r| r.is_err() || matches!(r, Ok(Message::Close(_))))
    );
    // The backend got 1001 from the session and from the splice.
    wait_closes_1001(&backend, 2).await;

    let (status, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the in-flight request was cut");
    assert_eq!(body, "slow");

    let exit = proxy
        .wait_exit(signalled + DRAIN_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("still running after the drain timeout:\n{}", proxy.stderr()));
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
}

#[tokio::test]
async fn sigint_drains_the_same_way_and_with_no_delay_closes_at_once() {
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start(&backend, &config(Duration::ZERO)).await;
    let session = proxy.open("/echo").await;
    let mut sse = session.sse(None).await;
    assert_eq!(session.send_text("hi").await.status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(1, "hi".into())]);
    let (mut ws, _) = connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .expect("splice");

    let signalled = Instant::now();
    proxy.signal("INT");
    match sse.take(1).await.as_slice() {
        [Ev::Close(2, 1001, _)] => {}
        other => panic!("expected close 1001 over SSE, got {other:?}"),
    }
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a close 1001 on the splice, got {other:?}"),
    }
    wait_closes_1001(&backend, 2).await;
    let exit = proxy
        .wait_exit(signalled + DRAIN_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("still running after the drain timeout:\n{}", proxy.stderr()));
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
}
