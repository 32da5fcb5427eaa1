//! Pass-through: every request outside the prefix reaches the app unchanged
//! (less hop-by-hop headers, plus X-Forwarded-*), bodies stream both ways,
//! upstream failures are 502/504, and WebSocket upgrades are spliced where
//! the route allows `websocket` and refused with 403 otherwise.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::{Backend, PATIENCE, Proxy, RawResponse, Seen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

// ---- helpers ----------------------------------------------------------------

/// Sends a hand-written HTTP/1.1 request, so that hop-by-hop headers go out
/// exactly as written (an HTTP client library would drop or rewrite them),
/// and reads the answer to the end. The request must say `Connection: close`.
async fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut bytes))
        .await
        .expect("the proxy closes after a Connection: close answer")
        .unwrap();
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8(bytes[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let rest = &bytes[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&data[..eol]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The request headers the backend's `/http/echo` saw, as (name, value) pairs.
fn echoed_headers(echo: &Value) -> Vec<(String, String)> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn echoed(echo: &Value, name: &str) -> Vec<String> {
    echoed_headers(echo)
        .into_iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v)
        .collect()
}

/// A loopback port with nothing listening on it.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Asserts a JSON error answer whose body is one line.
async fn assert_one_line_json_error(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let text = resp.text().await.unwrap();
    assert!(
        !text.trim_end().contains('\n'),
        "one line expected, got {text:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["error"].is_string(), "{v}");
    v
}

/// The status of a refused WebSocket handshake (panics if it was accepted).
fn refused_status(result: Result<impl std::fmt::Debug, WsError>) -> u16 {
    match result {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

fn handshakes(backend: &Backend) -> usize {
    backend
        .seen()
        .iter()
        .filter(|s| matches!(s, Seen::Handshake { .. }))
        .count()
}

// ---- plain HTTP -------------------------------------------------------------

#[tokio::test]
async fn methods_paths_queries_headers_and_bodies_reach_the_app_unchanged() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let path = "/http/echo?a=1&b=%20x&a=2&empty=&slash=%2F&plus=+&&t=%E2%9C%93";
    for method in ["GET", "POST", "PUT", "DELETE"] {
        let body = format!("{method} body \u{2713} with bytes");
        let resp = proxy
            .http
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                proxy.url(path),
            )
            .header("content-type", "text/plain; charset=utf-8")
            .header("x-custom", "Value With  Spaces")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header("cookie", "sid=42; theme=dark")
            .header("authorization", "Bearer abc")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{method}");
        assert_eq!(resp.headers()["x-backend"], "yes", "response headers pass");
        let echo: Value = resp.json().await.unwrap();
        assert_eq!(echo["method"], method);
        assert_eq!(echo["uri"], path, "path and query verbatim");
        assert_eq!(echo["body"], body.as_str(), "{method} body");
        assert_eq!(echo["body_len"], body.len() as u64);
        assert_eq!(echoed(&echo, "x-custom"), ["Value With  Spaces"]);
        assert_eq!(echoed(&echo, "x-multi"), ["one", "two"]);
        assert_eq!(echoed(&echo, "cookie"), ["sid=42; theme=dark"]);
        assert_eq!(echoed(&echo, "authorization"), ["Bearer abc"]);
        assert_eq!(echoed(&echo, "content-type"), ["text/plain; charset=utf-8"]);
    }
}

#[tokio::test]
async fn upstream_statuses_pass_unchanged() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    for code in [201u16, 301, 404, 418, 500, 503] {
        let resp = proxy
            .http
            .get(proxy.url(&format!("/http/status/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code);
        assert_eq!(resp.text().await.unwrap(), format!("status {code}"));
    }
}

#[tokio::test]
async fn host_is_kept_and_forwarded_headers_are_added() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let resp = raw(
        proxy.addr,
        b"GET /http/echo?x=1 HTTP/1.1\r\n\
          Host: app.example:8443\r\n\
          X-Forwarded-For: 203.0.113.9\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    let echo = resp.json();
    assert_eq!(echo["uri"], "/http/echo?x=1");
    assert_eq!(echoed(&echo, "host"), ["app.example:8443"]);
    assert_eq!(
        echoed(&echo, "x-forwarded-for"),
        ["203.0.113.9, 127.0.0.1"],
        "appended to the existing one"
    );
    assert_eq!(echoed(&echo, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&echo, "x-forwarded-host"), ["app.example:8443"]);

    // Without a prior X-Forwarded-For the peer starts one.
    let echo: Value = proxy
        .http
        .get(proxy.url("/http/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed(&echo, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed(&echo, "host"), [proxy.addr.to_string()]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    // `gzip, chunked`: if the proxy forwarded the browser's Transfer-Encoding
    // the app would see it verbatim; stripped, the upstream leg frames the
    // body itself (plain `chunked` at most).
    let resp = raw(
        proxy.addr,
        b"POST /http/echo HTTP/1.1\r\n\
          Host: app.example\r\n\
          Connection: close, X-Custom-Hop\r\n\
          X-Custom-Hop: named-by-connection\r\n\
          Keep-Alive: timeout=5\r\n\
          TE: trailers\r\n\
          Proxy-Authorization: Basic Zm9vOmJhcg==\r\n\
          Proxy-Connection: keep-alive\r\n\
          Upgrade: h2c\r\n\
          X-End-To-End: kept\r\n\
          Transfer-Encoding: gzip, chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));

    // Request side.
    let echo = resp.json();
    assert_eq!(echo["body"], "hello world");
    assert_eq!(echoed(&echo, "x-end-to-end"), ["kept"], "end-to-end kept");
    for name in [
        "x-custom-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert_eq!(
            echoed(&echo, name),
            Vec::<String>::new(),
            "{name} forwarded"
        );
    }
    for v in echoed(&echo, "connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-custom-hop") && !v.contains("close"),
            "the browser's Connection forwarded: {v}"
        );
    }
    let te = echoed(&echo, "transfer-encoding");
    assert!(
        te.is_empty() || te == ["chunked"],
        "the browser's Transfer-Encoding forwarded: {te:?}"
    );

    // Response side: /http/echo answers `connection: x-hop`, `x-hop` and
    // `keep-alive`, next to the end-to-end `x-backend`.
    assert_eq!(resp.header_values("x-backend"), ["yes"]);
    assert!(resp.header_values("x-hop").is_empty(), "{:?}", resp.headers);
    assert!(
        resp.header_values("keep-alive").is_empty(),
        "{:?}",
        resp.headers
    );
    for v in resp.header_values("connection") {
        assert!(!v.contains("x-hop"), "upstream Connection passed: {v}");
    }
}

#[tokio::test]
async fn chunked_responses_stream_chunk_by_chunk() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    // 60 chunks, one every 10 ms: the last is produced >= 590 ms after the
    // first. A proxy that buffered the response would hand over all of it at
    // once.
    let n = 60;
    let resp = proxy
        .http
        .get(proxy.url(&format!("/http/stream?n={n}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let first = tokio::time::timeout(PATIENCE, body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first_at = Instant::now();
    let mut all = first.to_vec();
    while let Some(chunk) = tokio::time::timeout(PATIENCE, body.next()).await.unwrap() {
        all.extend_from_slice(&chunk.unwrap());
    }
    let rest_took = first_at.elapsed();
    let expected: String = (0..n).map(|i| format!("chunk {i}\n")).collect();
    assert_eq!(String::from_utf8(all).unwrap(), expected);
    assert!(
        first.starts_with(b"chunk 0\n")
            && !first.ends_with(format!("chunk {}\n", n - 1).as_bytes()),
        "the first read held the whole body: {:?}",
        String::from_utf8_lossy(&first)
    );
    assert!(
        rest_took >= Duration::from_millis(300),
        "the first chunk came only {rest_took:?} before the end: buffered"
    );
}

#[tokio::test]
async fn a_large_upload_streams_through() {
    // 256 MiB generated on the fly, counted by the backend as it streams.
    // That the proxy's memory stays flat meanwhile is measured by the
    // benchmark, not asserted here.
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 4096;
    static BLOCK: [u8; CHUNK] = [b'u'; CHUNK];
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let stream = futures_util::stream::iter(
        (0..CHUNKS).map(|_| Ok::<_, std::io::Error>(Bytes::from_static(&BLOCK))),
    );
    let resp = proxy
        .http
        .put(proxy.url("/http/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echo: Value = resp.json().await.unwrap();
    assert_eq!(echo["body_len"], (CHUNK * CHUNKS) as u64);
    assert!(echo["body"].as_str().unwrap().starts_with("uuuu"));
}

#[tokio::test]
async fn an_endless_response_can_be_read_in_part_and_dropped() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let resp = tokio::time::timeout(PATIENCE, proxy.http.get(proxy.url("/http/endless")).send())
        .await
        .expect("the head of an endless response comes at once")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.bytes_stream();
    let mut read = 0usize;
    while read < 4 << 20 {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("the endless body keeps coming")
            .expect("the endless body never ends")
            .unwrap();
        assert!(chunk.iter().all(|b| *b == b'z'));
        read += chunk.len();
    }
    drop(body);
    // The proxy is still fine.
    let resp = proxy
        .http
        .get(proxy.url("/http/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_refusing_upstream_is_502() {
    let closed = closed_port();
    let proxy = Proxy::start_toml(&format!("[upstream]\nurl = \"http://{closed}\"\n")).await;
    let resp = proxy.http.get(proxy.url("/app?x=1")).send().await.unwrap();
    assert_one_line_json_error(resp, StatusCode::BAD_GATEWAY).await;
    // And a WebSocket upgrade to it.
    let status = refused_status(connect_async(format!("ws://{}/ws", proxy.addr)).await);
    assert_eq!(status, 502);
}

#[tokio::test]
async fn a_connect_timeout_is_504() {
    // A listener with a backlog of 0, its queue filled by connections it never
    // accepts: the kernel then drops further SYNs, so connecting hangs until
    // the proxy's connect_timeout (a real connect timeout on loopback).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let full = socket.listen(0).unwrap();
    let full_addr = full.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut saturated = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(full_addr)).await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => {
                saturated = true;
                break;
            }
        }
    }
    assert!(
        saturated,
        "the kernel accepted {} connections on a backlog of 0",
        fillers.len()
    );

    let proxy = Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{full_addr}\"\nconnect_timeout = \"300ms\"\n"
    ))
    .await;
    let start = Instant::now();
    let resp = proxy.http.get(proxy.url("/app")).send().await.unwrap();
    assert_one_line_json_error(resp, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    let status = refused_status(connect_async(format!("ws://{}/ws", proxy.addr)).await);
    assert_eq!(status, 504, "a WebSocket upgrade's connect timeout");
    drop(full);
}

#[tokio::test]
async fn a_slow_response_head_is_504_after_response_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "response_timeout = \"300ms\"\n").await;
    let start = Instant::now();
    let resp = proxy
        .http
        .get(proxy.url("/http/slow"))
        .send()
        .await
        .unwrap();
    assert_one_line_json_error(resp, StatusCode::GATEWAY_TIMEOUT).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "answered after {:?}, not at the timeout",
        start.elapsed()
    );
    // A fast answer under the same proxy is unaffected.
    let resp = proxy
        .http
        .get(proxy.url("/http/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

// ---- WebSocket splice -------------------------------------------------------

#[tokio::test]
async fn websocket_upgrades_are_spliced_text_binary_and_close() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let (mut ws, resp) = connect_async(format!("ws://{}/echo?room=1", proxy.addr))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let Seen::Handshake { uri, .. } = backend
        .wait_for("handshake", |s| matches!(s, Seen::Handshake { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(uri, "/echo?room=1");

    ws.send(Message::text("hello \u{1F600}")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("hello \u{1F600}"));
    let bytes: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(bytes.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(bytes));

    // The backend closes with a code and a reason: both reach the client.
    ws.send(Message::text("close:4003:why")).await.unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4003);
            assert_eq!(frame.reason, "why");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_close_reaches_the_backend() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let (mut ws, _) = connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("ping"));
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4005),
        reason: "client-done".into(),
    }))
    .await
    .unwrap();
    assert_eq!(backend.wait_close().await, (4005, "client-done".to_owned()));
}

#[tokio::test]
async fn the_subprotocol_header_is_passed() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let mut req = format!("ws://{}/proto", proxy.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "a.v1, chat.v2".parse().unwrap());
    let (mut ws, resp) = connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v2");
    let Seen::Handshake { headers, .. } = backend
        .wait_for("handshake", |s| matches!(s, Seen::Handshake { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(headers["sec-websocket-protocol"], "a.v1, chat.v2");
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("x"));
}

#[tokio::test]
async fn upgrades_follow_the_routes() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[[routes]]\npath = \"/echo\"\nupstream = \"ws://{backend}/echo\"\n\
         transports = [\"sse\", \"poll\"]\n\
         [[routes]]\npath = \"/live\"\nupstream = \"ws://{backend}/echo\"\n\
         transports = [\"websocket\"]\n",
    )
    .await;
    // The route allows bridging only: the upgrade is refused.
    let status = refused_status(connect_async(format!("ws://{}/echo", proxy.addr)).await);
    assert_eq!(status, 403);
    // No route at all for the path, with routes configured: refused too.
    let status = refused_status(connect_async(format!("ws://{}/elsewhere", proxy.addr)).await);
    assert_eq!(status, 403);
    assert_eq!(
        handshakes(&backend),
        0,
        "a refused upgrade reached the backend"
    );

    // A route allowing websocket splices to its own upstream.
    let (mut ws, _) = connect_async(format!("ws://{}/live", proxy.addr))
        .await
        .unwrap();
    ws.send(Message::text("routed")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("routed"));
    assert_eq!(handshakes(&backend), 1);

    // Plain HTTP to a routed path is still the app's.
    let resp = proxy
        .http
        .get(proxy.url("/http/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn allowed_origins_refuse_upgrades_from_other_origins() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[security]\nallowed_origins = [\"http://good.example\"]\n",
    )
    .await;
    let with_origin = |origin: &str| {
        let mut req = format!("ws://{}/echo", proxy.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    let status = refused_status(connect_async(with_origin("http://evil.example")).await);
    assert_eq!(status, 403);
    assert_eq!(handshakes(&backend), 0);

    let (mut ws, _) = connect_async(with_origin("http://good.example"))
        .await
        .unwrap();
    ws.send(Message::text("good")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("good"));

    // No Origin at all (curl, non-browser clients) is allowed.
    let (mut ws, _) = connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .unwrap();
    ws.send(Message::text("none")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("none"));

    // Plain HTTP pass-through is the app's business: not checked.
    let resp = proxy
        .http
        .get(proxy.url("/http/echo"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn next<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("a message in time")
        .expect("the socket is open")
        .unwrap()
}
