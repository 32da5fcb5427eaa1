//! The WebSocket splice's bounds: its upstream handshake is bounded by
//! `upstream.connect_timeout` like an open's, an upgrade cannot walk out of
//! a prefix route with dot segments (refused as an open's `url` is), and a
//! spliced pair holds its `server.max_connections` slot while it lasts.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::{Backend, PATIENCE, Proxy, Seen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Sends a hand-written upgrade request for `target` (exactly as written:
/// a client library would normalise the path) and reads the answer's
/// status and JSON body.
async fn upgrade_raw(addr: SocketAddr, target: &str) -> (u16, Value) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: app\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body_start) = loop {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break (String::from_utf8_lossy(&bytes[..i]).into_owned(), i + 4);
        }
    };
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    while bytes.len() < body_start + len {
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut chunk))
            .await
            .expect("the body")
            .unwrap();
        assert!(n > 0, "closed in the body");
        bytes.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&bytes[body_start..body_start + len])
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&bytes)));
    (status, body)
}

fn refused(result: Result<impl std::fmt::Debug, WsError>) -> (u16, Value) {
    match result {
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(body).unwrap_or(Value::Null),
            )
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_silent_upstream_gets_504_like_an_open_of_the_same_route() {
    // Accepts TCP, never answers a byte.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            sockets.push(tcp);
        }
    });
    let backend = Backend::start().await;
    let proxy = Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{backend}\"\nconnect_timeout = \"300ms\"\n\
         [[routes]]\npath = \"/silent\"\nupstream = \"ws://{silent_addr}/ws\"\n\
         transports = [\"websocket\", \"sse\"]\n",
        backend = backend.addr
    ))
    .await;

    let upgrade = connect_async(format!("ws://{}/silent", proxy.addr));
    let answer = tokio::time::timeout(PATIENCE, upgrade)
        .await
        .expect("the splice's handshake is bounded");
    let (status, body) = refused(answer);
    assert_eq!(status, 504);
    assert_eq!(body, json!({"error": "upstream_timeout"}));

    let (status, body, _) = proxy.open_raw(json!({"url": "/silent"})).await;
    assert_eq!(status.as_u16(), 504);
    assert_eq!(body, json!({"error": "upstream_timeout"}));
    held.abort();
}

#[tokio::test]
async fn upgrades_cannot_walk_out_of_a_prefix_route() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[[routes]]\npath = \"/sub/\"\nupstream = \"ws://{backend}/app/\"\n\
         transports = [\"websocket\", \"sse\"]\n",
    )
    .await;
    for path in [
        "/sub/../admin",
        "/sub/%2e%2e/admin",
        "/sub/%2E%2E/admin",
        "/sub/..%2fadmin",
        "/sub/..%5cadmin",
        "/sub/..\\admin",
        "/sub/x/./y",
    ] {
        let (status, body) = upgrade_raw(proxy.addr, path).await;
        // Exactly what an open of the same url answers.
        let (open_status, open_body, _) = proxy.open_raw(json!({ "url": path })).await;
        assert_eq!(
            (status, &body),
            (open_status.as_u16(), &open_body),
            "{path}"
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_url", "{path}");
    }
    let handshakes: Vec<Seen> = backend
        .seen()
        .into_iter()
        .filter(|s| matches!(s, Seen::Handshake { .. }))
        .collect();
    assert!(handshakes.is_empty(), "the backend saw {handshakes:?}");

    // The route itself still splices, to the route's upstream path.
    let (mut ws, _) = connect_async(format!("ws://{}/sub/x", proxy.addr))
        .await
        .expect("a plain path splices");
    ws.send(Message::text("x")).await.unwrap();
    let seen = backend
        .wait_for("the splice's handshake", |s| {
            matches!(s, Seen::Handshake { .. })
        })
        .await;
    let Seen::Handshake { uri, .. } = seen else {
        unreachable!()
    };
    assert_eq!(uri, "/app/x");
}

#[tokio::test]
async fn spliced_sockets_hold_their_connection_slot() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[server]\nmax_connections = 2\n").await;
    let mut first = connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .expect("first splice")
        .0;
    let mut second = connect_async(format!("ws://{}/echo", proxy.addr))
        .await
        .expect("second splice")
        .0;
    for ws in [&mut first, &mut second] {
        ws.send(Message::text("up")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("up"));
    }

    // A third connection waits in the accept queue: no answer while both
    // splices run.
    let mut third = TcpStream::connect(proxy.addr).await.unwrap();
    third
        .write_all(b"GET /_bridge/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(500), third.read_to_end(&mut answer)).await;
    assert!(
        early.is_err(),
        "served beyond max_connections: {:?}",
        String::from_utf8_lossy(&answer)
    );

    // Once one splice ends, it is served.
    first.close(None).await.unwrap();
    while first.next().await.is_some() {}
    drop(first);
    tokio::time::timeout(PATIENCE, third.read_to_end(&mut answer))
        .await
        .expect("served once a slot is free")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// What the raw upstream of the drain test saw.
#[derive(Debug, PartialEq)]
struct UpstreamSaw {
    /// The close frame the proxy sent: (masked, code, reason).
    close: (bool, u16, String),
    /// The proxy ended the TCP connection with a FIN (not a reset).
    fin: bool,
}

/// Reads one whole frame from a client (masked or not): (masked, opcode,
/// payload unmasked).
async fn read_frame(tcp: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tcp.read_exact(&mut h).await.unwrap();
    let masked = h[1] & 0x80 != 0;
    let len = match h[1] & 0x7f {
        126 => u64::from(tcp.read_u16().await.unwrap()),
        127 => tcp.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if masked {
        tcp.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0u8; len as usize];
    tcp.read_exact(&mut payload).await.unwrap();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    (masked, h[0] & 0x0f, payload)
}

/// A hand-written WebSocket upstream: answers the handshake, sends half of
/// a text frame, waits for the proxy's close (so the drain has begun while
/// that frame is under way), sends the rest, answers the close, and reports
/// what it saw up to the end of the TCP connection.
async fn raw_upstream(listener: TcpListener) -> UpstreamSaw {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_owned())
        })
        .unwrap();
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tcp.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // A text frame "hello world", cut after "hello".
    tcp.write_all(b"\x81\x0bhello").await.unwrap();
    let (masked, opcode, payload) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 8, "expected a close frame, got opcode {opcode}");
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    let reason = String::from_utf8(payload[2..].to_vec()).unwrap();
    tcp.write_all(b" world").await.unwrap();
    // The close answer: 1001.
    tcp.write_all(b"\x88\x02\x03\xe9").await.unwrap();
    let mut rest = Vec::new();
    let fin = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest))
        .await
        .expect("the proxy ends the connection")
        .is_ok();
    UpstreamSaw {
        close: (masked, code, reason),
        fin,
    }
}

#[tokio::test]
async fn at_the_drain_a_splice_finishes_the_frame_then_closes_both_sides_with_1001_and_a_fin() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = listener.local_addr().unwrap();
    let upstream = tokio::spawn(raw_upstream(listener));
    let backend = Backend::start().await;
    let mut proxy = Proxy::start(
        &backend,
        &format!(
            "[server]\ndrain_timeout = \"5s\"\n\
             [[routes]]\npath = \"/raw\"\nupstream = \"ws://{raw_addr}/raw\"\n\
             transports = [\"websocket\"]\n"
        ),
    )
    .await;
    let (mut ws, _) = connect_async(format!("ws://{}/raw", proxy.addr))
        .await
        .expect("splice");
    let done = proxy.begin_shutdown();

    // The frame under way arrives whole, then the proxy's close 1001.
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello world"),
        other => panic!("expected the whole text frame, got {other:?}"),
    }
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "proxy shutting down");
        }
        other => panic!("expected a close 1001, got {other:?}"),
    }
    // Our close answer goes out; then the proxy ends the connection.
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);

    let saw = upstream.await.unwrap();
    assert_eq!(
        saw,
        UpstreamSaw {
            close: (true, 1001, "proxy shutting down".into()),
            fin: true,
        }
    );
    tokio::time::timeout(PATIENCE, done)
        .await
        .expect("the drain ends once the splice is closed")
        .unwrap()
        .unwrap();
}
