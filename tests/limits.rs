//! Who may come in, and how much they may cost: the client address behind
//! trusted proxies (`security.trusted_proxies`) for
//! `sessions.max_sessions_per_client`, the header read timeout and header
//! size limit (slowloris), and the open body limit.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::{Backend, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a session on `/echo` with this `X-Forwarded-For` (if any).
async fn open_from(proxy: &Proxy, xff: Option<&str>) -> (StatusCode, Option<String>) {
    let mut req = proxy
        .http
        .post(proxy.url("/_bridge/sessions"))
        .json(&json!({"url": "/echo"}));
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    let r = req.send().await.unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), retry)
}

#[tokio::test]
async fn behind_a_trusted_proxy_sessions_are_counted_per_forwarded_client() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nmax_sessions_per_client = 1\n[security]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    )
    .await;
    assert_eq!(
        open_from(&proxy, Some("203.0.113.1")).await.0,
        StatusCode::CREATED
    );
    // The same browser again: over its own limit.
    let (status, retry) = open_from(&proxy, Some("203.0.113.1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(retry.is_some(), "503 carries Retry-After");
    // Another browser behind the same proxy has its own budget.
    assert_eq!(
        open_from(&proxy, Some("203.0.113.2")).await.0,
        StatusCode::CREATED
    );
    // A browser cannot buy a fresh budget by prepending an address of its
    // choice: the nearest untrusted hop (the one our proxy saw) counts.
    assert_eq!(
        open_from(&proxy, Some("198.51.100.7, 203.0.113.1")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Trusted hops on the right are skipped (a chain of our own proxies).
    assert_eq!(
        open_from(&proxy, Some("203.0.113.2, 127.0.0.5")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Without the header the peer itself is the client.
    assert_eq!(open_from(&proxy, None).await.0, StatusCode::CREATED);
    assert_eq!(
        open_from(&proxy, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Garbage in the header is no address: the peer is the client again.
    assert_eq!(
        open_from(&proxy, Some("not-an-ip")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_malformed_forwarded_entry_ends_the_walk_and_ports_are_understood() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nmax_sessions_per_client = 1\n[security]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    )
    .await;
    // A proxy that appends `ip:port`: the port is not part of the client.
    assert_eq!(
        open_from(&proxy, Some("203.0.113.9:4711")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        open_from(&proxy, Some("203.0.113.9")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        open_from(&proxy, Some("[2001:db8::1]:443")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        open_from(&proxy, Some("2001:db8::1")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // An entry that is no address: what is left of it was written by
    // someone we cannot vouch for, so it must not pick the client. The
    // nearest trusted hop (the peer) stands for it instead.
    assert_eq!(
        open_from(&proxy, Some("198.51.100.1, unknown")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        open_from(&proxy, None).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "the attacker-written entry left of `unknown` was taken as the client"
    );
    assert_eq!(
        open_from(&proxy, Some("198.51.100.1")).await.0,
        StatusCode::CREATED,
        "198.51.100.1 was charged for a session it never opened"
    );
}

#[tokio::test]
async fn an_untrusted_peer_spoofing_x_forwarded_for_is_counted_as_itself() {
    let backend = Backend::start().await;
    // 127.0.0.1 is not trusted here: its X-Forwarded-For means nothing.
    let proxy = Proxy::start(
        &backend,
        "[sessions]\nmax_sessions_per_client = 2\n[security]\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
    )
    .await;
    assert_eq!(
        open_from(&proxy, Some("203.0.113.1")).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        open_from(&proxy, Some("203.0.113.2")).await.0,
        StatusCode::CREATED
    );
    let (status, retry) = open_from(&proxy, Some("203.0.113.3")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a spoofed X-Forwarded-For bought a fresh per-client budget"
    );
    assert!(retry.is_some());
}

// ---- slowloris ------------------------------------------------------------------

const HEADER_TIMEOUT: Duration = Duration::from_millis(500);

/// Reads until the server closes the connection; returns how long that
/// took and what it sent. Fails if it is still open after `limit`.
async fn until_closed(
    what: &str,
    tcp: &mut TcpStream,
    started: Instant,
    limit: Duration,
) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "{what}: connection still open after {limit:?}; got {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => return (started.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn slow_proxy(extra: &str) -> (Backend, Proxy) {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        &format!(
            "[server]\nheader_read_timeout = \"{}ms\"\n{extra}",
            HEADER_TIMEOUT.as_millis()
        ),
    )
    .await;
    (backend, proxy)
}

#[tokio::test]
async fn a_stalled_request_head_is_disconnected_after_the_header_read_timeout() {
    let (_backend, proxy) = slow_proxy("").await;
    let stalls: [(&str, &[u8]); 4] = [
        (
            "half an HTTP/1.1 head",
            b"GET /_bridge/healthz HTTP/1.1\r\nHost: x\r\n",
        ),
        ("a request line only", b"GET /_bridge/healthz HTTP/1.1\r\n"),
        ("nothing at all", b""),
        ("the HTTP/2 preface cut short", b"PRI * HTTP/2.0\r\n"),
    ];
    for (what, bytes) in stalls {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let (took, got) = until_closed(what, &mut tcp, started, HEADER_TIMEOUT * 6).await;
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(50),
            "{what}: closed after {took:?}, before the timeout"
        );
        // hyper closes a late HTTP/1.1 head without a response; nothing
        // else may come back either.
        assert!(
            got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}

#[tokio::test]
async fn an_http2_connection_that_never_sends_a_request_is_closed() {
    let (_backend, proxy) = slow_proxy("").await;
    // The whole preface and a SETTINGS frame, then silence.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let (took, _) = until_closed("h2 with no request", &mut tcp, started, HEADER_TIMEOUT * 6).await;
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_millis(50),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_slow_but_timely_request_is_served_and_idle_keep_alive_is_bounded() {
    // Idle keep-alive has its own bound, longer than the head's: an idle
    // HTTP/2 connection outlives the head timeout, then closes at it.
    let (_backend, proxy) = slow_proxy(&format!(
        "keepalive_timeout = \"{}ms\"\n",
        (HEADER_TIMEOUT * 4).as_millis()
    ))
    .await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    for part in [
        &b"GET /_bridge/healthz HTTP/1.1\r\n"[..],
        b"Host: x\r\n",
        b"\r\n",
    ] {
        tcp.write_all(part).await.unwrap();
        tokio::time::sleep(HEADER_TIMEOUT / 5).await;
    }
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // An idle keep-alive connection is closed after `keepalive_timeout`
    // (like nginx's); the client opens a new one.
    let started = Instant::now();
    let (took, rest) = until_closed("idle keep-alive", &mut tcp, started, HEADER_TIMEOUT * 6).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(took >= HEADER_TIMEOUT / 2, "closed at once: {took:?}");
    // HTTP/2 over a connection idle after its first request stays up too.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let get = || {
        Request::get(format!("http://{}/_bridge/healthz", proxy.addr))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let r = send.send_request(get()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.version(), Version::HTTP_2);
    tokio::time::sleep(HEADER_TIMEOUT * 2).await;
    assert!(
        !conn.is_finished(),
        "an HTTP/2 connection was cut before keepalive_timeout"
    );
    let r = send.send_request(get()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn idle_connections_cannot_hold_every_connection_slot() {
    let (_backend, proxy) = slow_proxy("max_connections = 2\n").await;
    // Two connections that never send a byte take both slots.
    let _a = TcpStream::connect(proxy.addr).await.unwrap();
    let _b = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A real client still gets served once the header timeout frees them.
    let started = Instant::now();
    let r = proxy
        .http
        .get(proxy.url("/_bridge/healthz"))
        .timeout(HEADER_TIMEOUT * 8)
        .send()
        .await
        .expect("served once the idle connections were dropped");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= HEADER_TIMEOUT / 2,
        "served at once: max_connections did not hold ({:?})",
        started.elapsed()
    );
}

// ---- sizes ----------------------------------------------------------------------

#[tokio::test]
async fn a_request_head_over_max_header_bytes_gets_431() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[server]\nmax_header_bytes = \"16KiB\"\n").await;
    let get = |size: usize| {
        proxy
            .http
            .get(proxy.url("/_bridge/healthz"))
            .header("x-filler", "f".repeat(size))
            .send()
    };
    assert_eq!(get(4 * 1024).await.unwrap().status(), StatusCode::OK);
    // HTTP/1.1: hyper answers 431 and closes.
    match get(64 * 1024).await {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => panic!("expected a 431, the connection failed: {e}"),
    }
    // The same to pass-through: it never reaches the backend.
    let r = proxy
        .http
        .get(proxy.url("/http/echo"))
        .header("x-filler", "f".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);

    // HTTP/2: the limit is advertised in SETTINGS (SETTINGS_MAX_HEADER_LIST_SIZE);
    // a client that ignores it gets 431 on that stream, and the connection
    // lives on. Past four times the limit, h2 treats it as abuse and ends
    // the whole connection (GOAWAY ENHANCE_YOUR_CALM).
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(1 << 20)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = |size: usize| {
        Request::get(format!("http://{}/_bridge/healthz", proxy.addr))
            .header("x-filler", "f".repeat(size))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let r = send.send_request(req(4 * 1024)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = send.send_request(req(24 * 1024)).await.unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let r = send.send_request(req(4 * 1024)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the connection survives a 431");
    let err = send
        .send_request(req(80 * 1024))
        .await
        .expect_err("a head over 4x the limit ends the connection");
    // h2 is not a direct dependency: its reason shows in the error's Debug.
    assert!(format!("{err:?}").contains("ENHANCE_YOUR_CALM"), "{err:?}");
}

#[tokio::test]
async fn an_open_body_over_max_open_body_bytes_gets_413() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[limits]\nmax_open_body_bytes = 256\n").await;
    let padded = |pad: usize| json!({"url": "/echo", "pad": "p".repeat(pad)}).to_string();
    // Unknown fields are ignored, so padding makes a valid body of any size.
    let r = proxy
        .http
        .post(proxy.url("/_bridge/sessions"))
        .body(padded(100))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Declared too large.
    let r = proxy
        .http
        .post(proxy.url("/_bridge/sessions"))
        .body(padded(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );
    // Chunked, with no length declared: cut off at the limit.
    let body = padded(1000).into_bytes();
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(64)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let r = proxy
        .http
        .post(proxy.url("/_bridge/sessions"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A lying Content-Length larger than the body is the same 413, at once.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(
        b"POST /_bridge/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("413 without waiting for the body")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 413"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}
