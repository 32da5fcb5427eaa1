//! Session lifetime: DELETE, upstream close, idle timeout, linger, dead
//! upstreams, oversized frames and the drain, end to end over real sockets.
//! The timing itself (idle, linger, ping, heartbeat) is tested on tokio's
//! paused clock in `src/upstream.rs` and `src/transport/sse.rs`; here the
//! tests wait on what they can observe instead of sleeping.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use support::{Backend, Ev, Proxy};

#[tokio::test]
async fn delete_closes_upstream_with_1000_or_the_given_code_and_is_idempotent() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    let r = s.delete("").await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(backend.wait_close().await, (1000, String::new()));
    assert_eq!(
        s.poll_events(0, 1).await,
        vec![Ev::Close(1, 1000, String::new())]
    );
    assert_eq!(
        s.delete("").await.status(),
        StatusCode::NO_CONTENT,
        "DELETE of a lingering session"
    );

    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/echo").await;
    assert_eq!(
        s.delete("?code=4005&reason=see%20you").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(backend.wait_close().await, (4005, "see you".into()));
    assert_eq!(
        s.poll_events(0, 1).await,
        vec![Ev::Close(1, 4005, "see you".into())]
    );
    // 1001: what a page that unloads says (the JavaScript client on pagehide).
    let leaving = proxy.open("/echo").await;
    assert_eq!(
        leaving.delete("?code=1001").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        leaving.poll_events(0, 1).await,
        vec![Ev::Close(1, 1001, String::new())]
    );
    for bad in ["?code=1006", "?code=999", "?code=abc"] {
        let other = proxy.open("/echo").await;
        assert_eq!(
            other.delete(bad).await.status(),
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn upstream_close_becomes_the_last_event_and_the_session_lingers_then_goes() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nlinger = \"200ms\"\n").await;
    let s = proxy.open("/bye").await;
    assert_eq!(
        s.poll_events(0, 1).await,
        vec![Ev::Close(1, 4000, "bye".into())]
    );
    // While it lingers: events readable, sends 410, a reader that has the
    // close event 410.
    assert_eq!(s.send_text("x").await.status(), StatusCode::GONE);
    let (status, body) = s.poll(1, 0.0).await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(
        body,
        json!({"error": "session_closed", "close": {"code": 4000, "reason": "bye"}})
    );
    // Then it is gone.
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    let (status, body) = loop {
        let (status, body) = s.poll(0, 0.0).await;
        if status != StatusCode::OK || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"error": "unknown_session"}));
    assert_eq!(s.send_text("x").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_unattended_session_times_out_with_1001() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nidle_timeout = \"300ms\"\n").await;
    let s = proxy.open("/echo").await;
    assert_eq!(backend.wait_close().await.0, 1001);
    let events = s.poll_events(0, 1).await;
    assert!(matches!(events[..], [Ev::Close(1, 1001, _)]), "{events:?}");
}

#[tokio::test]
async fn an_attached_reader_or_sends_keep_a_session_alive() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nidle_timeout = \"300ms\"\nheartbeat = \"100ms\"\n",
    )
    .await;
    let watched = proxy.open("/echo").await;
    let mut sse = watched.sse(Some(0)).await;
    let talking = proxy.open("/echo").await;
    // Real sockets cannot run on a paused clock: half a second of real time,
    // well past the timeout (the timing is tested in src/upstream.rs).
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            talking.send_text("still here").await.status(),
            StatusCode::NO_CONTENT
        );
    }
    // Past the timeout: both alive.
    assert_eq!(
        watched.send_text("hi").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(sse.take(1).await, vec![Ev::Text(1, "hi".into())]);
    assert!(
        backend
            .seen()
            .iter()
            .all(|s| !matches!(s, support::Seen::Close { .. }))
    );
    // Detached, it times out.
    drop(sse);
    assert_eq!(backend.wait_close().await.0, 1001);
}

#[tokio::test]
async fn a_deaf_upstream_is_declared_dead_with_1006() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[sessions]\nupstream_ping = \"200ms\"\n").await;
    // Opened first, so it goes through every ping round the deaf one does.
    let alive = proxy.open("/echo").await;
    let s = proxy.open("/deaf").await;
    let events = s.poll_events(0, 1).await;
    assert!(matches!(events[..], [Ev::Close(1, 1006, _)]), "{events:?}");
    // An upstream that answers pings stays up.
    assert_eq!(alive.send_text("ok").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn an_oversized_upstream_frame_ends_the_session_with_1009_on_both_sides() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[limits]\nmax_upstream_frame_bytes = \"1KiB\"\n").await;
    let s = proxy.open("/big?size=5000").await;
    let events = s.poll_events(0, 1).await;
    assert!(matches!(events[..], [Ev::Close(1, 1009, _)]), "{events:?}");
    assert_eq!(backend.wait_close().await.0, 1009);
    let small = proxy.open("/big?size=1000").await;
    let events = small.poll_events(0, 1).await;
    assert!(
        matches!(&events[..], [Ev::Text(1, t)] if t.len() == 1000),
        "{events:?}"
    );
}

#[tokio::test]
async fn drain_closes_every_session_with_1001_on_both_sides() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "[server]\ndrain_timeout = \"5s\"\n").await;
    let s = proxy.open("/echo").await;
    let mut sse = s.sse(Some(0)).await;
    let polled = proxy.open("/echo").await;
    let waiting_poll = polled.poll_in_background(0, 20);
    // Both readers attached: the drain must end them.
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while !proxy
        .http
        .get(proxy.url("/_bridge/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .contains("wsbridge_sessions_active{transport=\"poll\"} 1\n")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll never attached"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = tokio::time::Instant::now();
    let done = proxy.begin_shutdown();
    let events = sse.take(1).await;
    assert!(matches!(events[..], [Ev::Close(1, 1001, _)]), "{events:?}");
    let body = tokio::time::timeout(Duration::from_secs(5), waiting_poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body["events"][0]["type"], "close");
    assert_eq!(body["events"][0]["code"], 1001);
    assert_eq!(backend.wait_close().await.0, 1001);
    tokio::time::timeout(Duration::from_secs(6), done)
        .await
        .expect("run returns within the drain timeout")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}
