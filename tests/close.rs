//! Closes the proxy starts toward the upstream are handshakes, never
//! resets: the upstream gets a close frame with the right code, and then a
//! clean end of stream (FIN, read returns 0), never ECONNRESET. The upstream
//! here is a raw TCP server that does the WebSocket handshake and framing by
//! hand, so it sees exactly what reached the socket.

mod support;

use std::net::SocketAddr;

use reqwest::StatusCode;
use support::{Backend, Ev, PATIENCE, Proxy, Seen, server_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// What the raw upstream saw on one connection, once it ended.
#[derive(Debug)]
struct Outcome {
    /// The close frame the proxy sent: code and reason.
    close: Option<(u16, String)>,
    /// How the stream ended after the close: `Ok` for a clean EOF.
    end: Result<(), String>,
}

/// A raw WebSocket upstream on 127.0.0.1:0. Paths:
/// - `/big?size=N`: sends one text frame of N bytes, then as `/quiet`;
/// - `/quiet`: ignores pings (never a pong), answers a close frame with
///   one of its own.
///
/// After answering a close it ends its side first (`fin=upstream`, the
/// default, as most servers do) or waits for the proxy's FIN
/// (`fin=proxy`), then reads until EOF.
struct RawUpstream {
    addr: SocketAddr,
    outcomes: mpsc::Receiver<Outcome>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, outcomes) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(outcome) = serve(tcp).await {
                        let _ = tx.send(outcome).await;
                    }
                });
            }
        });
        RawUpstream { addr, outcomes }
    }

    async fn next_outcome(&mut self) -> Outcome {
        timeout(PATIENCE, self.outcomes.recv())
            .await
            .expect("the upstream connection never ended")
            .unwrap()
    }
}

/// Reads the handshake request head; returns the request target and the key.
async fn read_head(tcp: &mut TcpStream) -> Option<(String, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let target = head.split(' ').nth(1)?.to_owned();
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    Some((target, key))
}

/// Reads (masked) client frames until a close frame; returns its code and
/// reason. Pings go unanswered: the proxy pings every 30 s, far beyond a test.
async fn read_until_close<R: AsyncRead + Unpin>(rd: &mut R) -> Option<(u16, String)> {
    loop {
        let mut head = [0u8; 2];
        rd.read_exact(&mut head).await.ok()?;
        let opcode = head[0] & 0x0f;
        assert!(head[1] & 0x80 != 0, "a client frame must be masked");
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                rd.read_exact(&mut b).await.ok()?;
                usize::from(u16::from_be_bytes(b))
            }
            127 => panic!("the proxy sent a frame over 64 KiB"),
            n => usize::from(n),
        };
        let mut mask = [0u8; 4];
        rd.read_exact(&mut mask).await.ok()?;
        let mut payload = vec![0u8; len];
        rd.read_exact(&mut payload).await.ok()?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if opcode == 0x8 {
            return Some(parse_close(&payload));
        }
    }
}

async fn serve(tcp: TcpStream) -> Option<Outcome> {
    let (mut tcp, target) = accept(tcp).await?;
    let query = target.split_once('?').map_or("", |(_, q)| q).to_owned();
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let wait_for_proxy = param("fin").as_deref() == Some("proxy");
    let close = if target.starts_with("/big") {
        let size: usize = param("size")?.parse().ok()?;
        // The proxy stops reading this frame after its header; the rest
        // reaches it only as it discards, so it is written meanwhile.
        let big = server_frame(true, 0x1, &vec![b'x'; size]);
        let (mut rd, mut wr) = tcp.into_split();
        let writer = tokio::spawn(async move {
            let written = wr.write_all(&big).await;
            (wr, written)
        });
        let close = read_until_close(&mut rd).await;
        let (wr, written) = writer.await.ok()?;
        // A reset shows as an error on whichever call meets it first (the
        // next read then sees a plain EOF), so every call is checked.
        if let Err(e) = written {
            return Some(Outcome {
                close,
                end: Err(format!("writing the big frame: {:?}: {e}", e.kind())),
            });
        }
        tcp = rd.reunite(wr).ok()?;
        close
    } else {
        read_until_close(&mut tcp).await
    };
    if let Some((code, _)) = &close
        && let Err(e) = tcp
            .write_all(&server_frame(true, 0x8, &code.to_be_bytes()))
            .await
    {
        return Some(Outcome {
            close,
            end: Err(format!("answering the close: {:?}: {e}", e.kind())),
        });
    }
    Some(finish(tcp, close, wait_for_proxy).await)
}

/// Does the server's side of the handshake; returns the request target.
async fn accept(mut tcp: TcpStream) -> Option<(TcpStream, String)> {
    let (target, key) = read_head(&mut tcp).await?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    tcp.write_all(response.as_bytes()).await.ok()?;
    Some((tcp, target))
}

fn parse_close(payload: &[u8]) -> (u16, String) {
    if payload.len() < 2 {
        return (1005, String::new());
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    (code, String::from_utf8_lossy(&payload[2..]).into_owned())
}

/// Ends the connection after the close: our FIN first unless told to wait
/// for the proxy's, then reads until EOF, which must be clean.
async fn finish(mut tcp: TcpStream, close: Option<(u16, String)>, wait_for_proxy: bool) -> Outcome {
    if !wait_for_proxy && let Err(e) = tcp.shutdown().await {
        return Outcome {
            close,
            end: Err(format!("shutdown: {:?}: {e}", e.kind())),
        };
    }
    let mut buf = [0u8; 4096];
    let end = match tcp.read(&mut buf).await {
        Ok(0) => Ok(()),
        // Anything after the close frame is a protocol error of the proxy.
        Ok(n) => Err(format!("{n} bytes after the close frame")),
        Err(e) => Err(format!("{:?}: {e}", e.kind())),
    };
    Outcome { close, end }
}

async fn proxy(upstream: &RawUpstream, extra: &str) -> Proxy {
    Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{}\"\nconnect_timeout = \"2s\"\n{extra}",
        upstream.addr
    ))
    .await
}

#[tokio::test]
async fn an_oversized_frame_gets_close_1009_then_a_fin_never_a_reset() {
    let mut upstream = RawUpstream::start().await;
    let proxy = proxy(&upstream, "[limits]\nmax_upstream_frame_bytes = \"1KiB\"\n").await;
    // Large enough that most of it is still unread, in the proxy's kernel
    // buffer and on the way, when the proxy gives up on it.
    for (url, who) in [
        ("/big?size=4000000", "the upstream ends first"),
        (
            "/big?size=4000000&fin=proxy",
            "the upstream waits for the proxy",
        ),
    ] {
        let s = proxy.open(url).await;
        let outcome = upstream.next_outcome().await;
        assert_eq!(
            outcome.close.as_ref().map(|c| c.0),
            Some(1009),
            "{who}: {outcome:?}"
        );
        assert_eq!(outcome.end, Ok(()), "{who}: {outcome:?}");
        let events = s.poll_events(0, 1).await;
        assert!(matches!(events[..], [Ev::Close(1, 1009, _)]), "{events:?}");
    }
}

#[tokio::test]
async fn delete_gets_close_1000_then_a_fin() {
    let mut upstream = RawUpstream::start().await;
    let proxy = proxy(&upstream, "").await;
    for url in ["/quiet", "/quiet?fin=proxy"] {
        let s = proxy.open(url).await;
        assert_eq!(s.delete("").await.status(), StatusCode::NO_CONTENT);
        let outcome = upstream.next_outcome().await;
        assert_eq!(outcome.close, Some((1000, String::new())), "{url}");
        assert_eq!(outcome.end, Ok(()), "{url}: {outcome:?}");
    }
}

#[tokio::test]
async fn idle_timeout_gets_close_1001_then_a_fin() {
    let mut upstream = RawUpstream::start().await;
    let proxy = proxy(&upstream, "[sessions]\nidle_timeout = \"200ms\"\n").await;
    let s = proxy.open("/quiet?fin=proxy").await;
    let outcome = upstream.next_outcome().await;
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1001),
        "{outcome:?}"
    );
    assert_eq!(outcome.end, Ok(()), "{outcome:?}");
    let events = s.poll_events(0, 1).await;
    assert!(matches!(events[..], [Ev::Close(1, 1001, _)]), "{events:?}");
}

#[tokio::test]
async fn drain_gets_close_1001_then_a_fin() {
    let mut upstream = RawUpstream::start().await;
    let mut proxy = proxy(&upstream, "").await;
    let _s = proxy.open("/quiet").await;
    let done = proxy.begin_shutdown();
    let outcome = upstream.next_outcome().await;
    assert_eq!(
        outcome.close.as_ref().map(|c| c.0),
        Some(1001),
        "{outcome:?}"
    );
    assert_eq!(outcome.end, Ok(()), "{outcome:?}");
    timeout(PATIENCE, done).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_dead_upstream_gets_close_1001_then_a_fin() {
    let mut upstream = RawUpstream::start().await;
    // `/quiet` never answers pings: dead at the second one.
    let proxy = proxy(&upstream, "[sessions]\nupstream_ping = \"100ms\"\n").await;
    let s = proxy.open("/quiet").await;
    let outcome = upstream.next_outcome().await;
    assert_eq!(
        outcome.close,
        Some((1001, "no pong".to_owned())),
        "{outcome:?}"
    );
    assert_eq!(outcome.end, Ok(()), "{outcome:?}");
    let events = s.poll_events(0, 1).await;
    assert!(matches!(events[..], [Ev::Close(1, 1006, _)]), "{events:?}");
}

/// The proxy is the upstream's WebSocket peer: it answers a ping with its
/// payload and the upstream's close with its code, against a real
/// tokio-tungstenite backend.
#[tokio::test]
async fn the_proxy_answers_the_upstreams_ping_and_close() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "").await;
    let s = proxy.open("/ping").await;
    assert_eq!(
        s.poll_events(0, 1).await,
        vec![Ev::Text(1, "pong: are you there".into())]
    );
    let s = proxy.open("/bye").await;
    assert_eq!(
        s.poll_events(0, 1).await,
        vec![Ev::Close(1, 4000, "bye".into())]
    );
    backend
        .wait_for(
            "the proxy's answer to its close",
            |seen| matches!(seen, Seen::Text(t) if t == "close answered with 4000"),
        )
        .await;
}
