//! The HTTP/1.1 front end for the bridge's endpoints (`src/h1.rs`), over raw
//! TCP so that framing, keep-alive and the hand-over to hyper are seen byte
//! for byte: one connection may carry bridge requests, then the app's, then
//! bridge requests again; pipelined requests are answered in order; streams
//! are chunked and the connection lives on after them; what the front end
//! does not take (chunked or expecting bodies, HTTP/1.0) still works.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{Backend, Proxy, RawResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// A client connection that reads responses itself.
struct Conn {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(proxy: &Proxy) -> Conn {
        Conn {
            tcp: TcpStream::connect(proxy.addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, text: &str) {
        self.tcp.write_all(text.as_bytes()).await.unwrap();
    }

    /// Reads more bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0; 8192];
        let n = timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("the proxy answers in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response head: status and headers.
    async fn head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(len) = resp.parse(&self.buf).unwrap() {
                let status = resp.code.unwrap();
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                self.buf.drain(..len);
                return (status, headers);
            }
            assert!(self.fill().await, "the connection ended inside a head");
        }
    }

    /// The next chunk of a chunked body; None at the last (empty) one.
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(line) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = std::str::from_utf8(&self.buf[..line]).unwrap();
                let size = usize::from_str_radix(size, 16)
                    .unwrap_or_else(|_| panic!("a chunk size line, got {size:?}"));
                let end = line + 2 + size + 2;
                if self.buf.len() >= end {
                    assert_eq!(
                        &self.buf[end - 2..end],
                        b"\r\n",
                        "chunk {size} ends in CRLF"
                    );
                    let data = self.buf[line + 2..end - 2].to_vec();
                    self.buf.drain(..end);
                    return (size > 0).then_some(data);
                }
            }
            assert!(
                self.fill().await,
                "the connection ended inside a chunked body"
            );
        }
    }

    /// The next whole response.
    async fn response(&mut self) -> RawResponse {
        let (status, headers) = self.head().await;
        let mut raw = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if raw.header("transfer-encoding") == Some("chunked") {
            while let Some(data) = self.chunk().await {
                raw.body.extend_from_slice(&data);
            }
        } else {
            let len: usize = raw
                .header("content-length")
                .map_or(0, |v| v.parse().unwrap());
            while self.buf.len() < len {
                assert!(self.fill().await, "the connection ended inside a body");
            }
            raw.body = self.buf.drain(..len).collect();
        }
        raw
    }

    /// True once the proxy has closed the connection (within `within`).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut chunk = [0; 1024];
        matches!(
            timeout(within, self.tcp.read(&mut chunk)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n")
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn bridge_app_and_bridge_requests_share_one_connection() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let mut conn = Conn::open(&proxy).await;

    conn.send(&post("/_bridge/sessions", r#"{"url": "/echo"}"#))
        .await;
    let opened = conn.response().await;
    assert_eq!(opened.status, 201, "{opened:?}");
    assert!(opened.header("date").is_some(), "a Date header: {opened:?}");
    let id = opened.json()["session"].as_str().unwrap().to_owned();

    // The app's path on the same connection: hyper takes the connection
    // over, with the bytes already read.
    conn.send(&get("/http/echo?from=raw")).await;
    let app = conn.response().await;
    assert_eq!(app.status, 200, "{app:?}");
    assert_eq!(app.json()["uri"], "/http/echo?from=raw");

    // And the bridge still answers on it.
    conn.send(&format!(
        "DELETE /_bridge/sessions/{id} HTTP/1.1\r\nhost: test\r\n\r\n"
    ))
    .await;
    assert_eq!(conn.response().await.status, 204);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let mut conn = Conn::open(&proxy).await;
    conn.send(&format!(
        "{}{}{}",
        get("/_bridge/transports"),
        post("/_bridge/sessions", r#"{"url": "/echo"}"#),
        get("/_bridge/healthz")
    ))
    .await;
    let first = conn.response().await;
    assert_eq!(first.status, 200);
    assert!(first.json()["routes"].is_array(), "{first:?}");
    let second = conn.response().await;
    assert_eq!(second.status, 201);
    assert!(second.json()["session"].is_string(), "{second:?}");
    let third = conn.response().await;
    assert_eq!(third.json()["status"], "ok");
}

#[tokio::test]
async fn a_stream_is_chunked_and_the_connection_outlives_it() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let session = proxy.open("/echo").await;
    let mut conn = Conn::open(&proxy).await;
    conn.send(&get(&format!("/_bridge/sessions/{}/stream", session.id)))
        .await;
    let (status, headers) = conn.head().await;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(status, 200);
    assert_eq!(header("transfer-encoding"), Some("chunked"));
    assert_eq!(header("content-length"), None);
    assert_eq!(header("x-realtime-transport"), Some("stream"));
    assert_eq!(header("cache-control"), Some("no-store"));

    assert_eq!(session.send_text("over raw tcp").await.status(), 204);
    let mut lines = String::new();
    while !lines.contains("over raw tcp") {
        let chunk = conn.chunk().await.expect("the stream goes on");
        lines.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let event: Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(event["data"], "over raw tcp", "{lines}");

    // The session ends: the close event, the last chunk, and the
    // connection takes the next request.
    assert_eq!(session.delete("").await.status(), 204);
    let mut rest = String::new();
    while let Some(chunk) = conn.chunk().await {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.contains(r#""type":"close""#), "{rest}");
    conn.send(&get("/_bridge/healthz")).await;
    assert_eq!(conn.response().await.status, 200);
}

#[tokio::test]
async fn a_long_poll_answers_with_a_length_once_events_come() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let session = proxy.open("/echo").await;
    let mut conn = Conn::open(&proxy).await;
    conn.send(&get(&format!(
        "/_bridge/sessions/{}/poll?cursor=0&wait=10",
        session.id
    )))
    .await;
    // Nothing is written while the poll waits.
    let mut early = [0; 64];
    assert!(
        timeout(Duration::from_millis(300), conn.tcp.read(&mut early))
            .await
            .is_err(),
        "no head before the answer"
    );
    assert_eq!(session.send_text("late").await.status(), 204);
    let resp = conn.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(
        resp.header("content-length"),
        Some(resp.body.len().to_string().as_str())
    );
    let answer = resp.json();
    assert_eq!(answer["events"][0]["data"], "late", "{answer}");
    assert_eq!(answer["cursor"], 1);
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /_bridge/healthz HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await;
    let resp = conn.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(conn.closed_within(WAIT).await, "closed after the response");
}

#[tokio::test]
async fn bodies_and_versions_the_front_end_leaves_to_hyper_still_work() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;

    // A chunked body.
    let mut conn = Conn::open(&proxy).await;
    let body = r#"{"url": "/echo"}"#;
    conn.send(&format!(
        "POST /_bridge/sessions HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    ))
    .await;
    let resp = conn.response().await;
    assert_eq!(resp.status, 201, "{resp:?}");

    // Expect: 100-continue.
    let mut conn = Conn::open(&proxy).await;
    conn.send(&format!(
        "POST /_bridge/sessions HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ))
    .await;
    assert_eq!(conn.head().await.0, 100);
    conn.send(body).await;
    assert_eq!(conn.response().await.status, 201);

    // HTTP/1.0: answered, then closed.
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /_bridge/healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!(conn.response().await.status, 200);
    assert!(conn.closed_within(WAIT).await, "HTTP/1.0 closes");

    // A malformed head: hyper's 400.
    let mut conn = Conn::open(&proxy).await;
    conn.send("GET /_bridge/healthz HTTP/1.1\r\nbad header\r\n\r\n")
        .await;
    assert_eq!(conn.response().await.status, 400);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_closes_after_the_header_read_timeout() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[server]\nheader_read_timeout = \"500ms\"\n").await;
    let mut conn = Conn::open(&proxy).await;
    conn.send(&get("/_bridge/healthz")).await;
    assert_eq!(conn.response().await.status, 200);
    assert!(
        conn.closed_within(Duration::from_secs(3)).await,
        "an idle connection is closed"
    );
}

#[tokio::test]
async fn the_drain_closes_idle_connections_at_once() {
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(&backend, "[server]\ndrain_timeout = \"30s\"\n").await;
    let mut conn = Conn::open(&proxy).await;
    conn.send(&get("/_bridge/healthz")).await;
    assert_eq!(conn.response().await.status, 200);
    let done = proxy.begin_shutdown();
    assert!(conn.closed_within(WAIT).await, "closed at the drain");
    timeout(WAIT, done)
        .await
        .expect("the drain ends well before drain_timeout")
        .unwrap()
        .unwrap();
}
