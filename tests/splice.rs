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
