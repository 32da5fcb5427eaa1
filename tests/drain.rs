//! The drain, on the real binary: SIGTERM or SIGINT turns readiness 503,
//! closes every session with 1001 on both sides, lets in-flight pass-through
//! requests finish, stops accepting, and exits 0 within
//! `server.drain_timeout`.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{Backend, Ev, ProxyProcess};
use tokio::net::TcpStream;

const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn config() -> String {
    format!(
        "[server]\ndrain_timeout = \"{}s\"\n",
        DRAIN_TIMEOUT.as_secs()
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

#[tokio::test]
async fn sigterm_drains_sessions_and_in_flight_requests_then_exits_0() {
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start(&backend, &config()).await;
    let readyz = proxy.admin_url("/_bridge/readyz");
    assert_eq!(status_of(&proxy.http, &readyz).await, StatusCode::OK);

    // A session with a live SSE reader.
    let session = proxy.open("/echo").await;
    let mut sse = session.sse(None).await;
    assert_eq!(session.send_text("before").await.status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(1, "before".into())]);

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

    // Readiness fails at once, on the admin listener that outlives the main one.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let status = status_of(&proxy.http, &readyz).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz still {status} while draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The session ends with 1001 on both sides, and the SSE response ends.
    match sse.take(1).await.as_slice() {
        [Ev::Close(2, 1001, _)] => {}
        other => panic!("expected close 1001 over SSE, got {other:?}"),
    }
    assert!(sse.next_raw().await.is_none(), "SSE goes on after close");
    assert_eq!(backend.wait_close().await.0, 1001);

    // New connections are refused while the in-flight request finishes.
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match TcpStream::connect(proxy.addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the main port still accepts while draining: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        !slow.is_finished(),
        "the slow request ended before the listener closed"
    );

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
async fn sigint_drains_the_same_way() {
    let backend = Backend::start().await;
    let mut proxy = ProxyProcess::start(&backend, &config()).await;
    let session = proxy.open("/echo").await;
    let mut sse = session.sse(None).await;
    assert_eq!(session.send_text("hi").await.status(), 204);
    assert_eq!(sse.take(1).await, [Ev::Text(1, "hi".into())]);

    let signalled = Instant::now();
    proxy.signal("INT");
    match sse.take(1).await.as_slice() {
        [Ev::Close(2, 1001, _)] => {}
        other => panic!("expected close 1001 over SSE, got {other:?}"),
    }
    assert_eq!(backend.wait_close().await.0, 1001);
    let exit = proxy
        .wait_exit(signalled + DRAIN_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("still running after the drain timeout:\n{}", proxy.stderr()));
    assert_eq!(exit.code(), Some(0), "{}", proxy.stderr());
}
