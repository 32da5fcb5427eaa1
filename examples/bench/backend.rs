//! The WebSocket backend, run as its own process (`bench backend`): plain
//! tokio-tungstenite, the fastest honest baseline for "a direct WebSocket".
//!
//! - `/pub?rate=R&size=S&count=N`: text frames `"<seq> <unix_nanos> xxx…"`
//!   of S bytes, seq from 1, at R frames/s (0 = as fast as the socket takes
//!   them), N of them (0 = until the peer goes) then close 1000 "done".
//!   Paced publishers start at a random phase within one interval, so
//!   sessions do not fire in lockstep.
//! - `/echo`: every text or binary frame goes back as it came.
//! - `/plain`: not a WebSocket: a plain HTTP/1.1 `200 ok`, on a keep-alive
//!   connection, for the pass-through requests of the `reuse` scenario.
//!
//! It prints `LISTEN <addr>` once bound. Publishing waits for a `go` line on
//! stdin, so the bench can attach every client first; end of stdin (the
//! bench went away) ends the process.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::clients::{payload, unix_nanos};
use crate::probe;

/// Frames written per flush when publishing as fast as possible.
const BURST: usize = 64;
/// Read buffer per connection: tungstenite allocates it up front, and the
/// many-sessions scenario holds ten thousand of them.
const READ_BUFFER: usize = 4 * 1024;
/// How long to wait for the peer's close reply after our close.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

pub fn main(listen: SocketAddr) -> ExitCode {
    probe::raise_nofile();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("LISTEN {}", listener.local_addr()?);
    let (go_tx, go_rx) = watch::channel(false);
    tokio::spawn(control(go_tx));
    let mut accepted = 0u64;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                eprintln!("backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        accepted += 1;
        tokio::spawn(connection(tcp, go_rx.clone(), accepted));
    }
}

/// Reads the bench's commands on stdin: `go` starts the publishers.
async fn control(go: watch::Sender<bool>) {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "go" {
            go.send_replace(true);
        }
    }
    std::process::exit(0);
}

/// What `/pub` was asked for.
struct Publish {
    rate: f64,
    size: usize,
    count: u64,
}

impl Publish {
    fn parse(query: &str) -> Result<Publish, String> {
        let mut p = Publish {
            rate: 0.0,
            size: 128,
            count: 0,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let bad = |_| format!("bad {k}={v}");
            match &*k {
                "rate" => p.rate = v.parse().map_err(bad)?,
                "size" => p.size = v.parse().map_err(|_| format!("bad size={v}"))?,
                "count" => p.count = v.parse().map_err(|_| format!("bad count={v}"))?,
                _ => return Err(format!("unknown parameter {k}")),
            }
        }
        Ok(p)
    }
}

enum Route {
    Echo,
    Publish(Publish),
}

async fn connection(mut tcp: TcpStream, go: watch::Receiver<bool>, n: u64) {
    let _ = tcp.set_nodelay(true);
    // Plain HTTP requests (pass-through) are answered here, one after
    // another, until one is an upgrade.
    loop {
        match plain_request(&mut tcp).await {
            Some(true) => continue,
            Some(false) => break,
            None => return,
        }
    }
    let mut route = None;
    // The callback's type is tungstenite's; its error is the refusal response.
    #[allow(clippy::result_large_err)]
    let pick = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let chosen = match req.uri().path() {
            "/echo" => Ok(Route::Echo),
            "/pub" => Publish::parse(req.uri().query().unwrap_or("")).map(Route::Publish),
            other => Err(format!("no such endpoint {other}")),
        };
        match chosen {
            Ok(r) => {
                route = Some(r);
                Ok(resp)
            }
            Err(msg) => {
                let mut refusal = ErrorResponse::new(Some(msg));
                *refusal.status_mut() = http::StatusCode::NOT_FOUND;
                Err(refusal)
            }
        }
    };
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(tcp, pick, Some(config)).await {
        Ok(ws) => ws,
        // A refused path or a client that went away during the handshake.
        Err(_) => return,
    };
    match route {
        Some(Route::Echo) => echo(ws).await,
        Some(Route::Publish(p)) => publish(ws, p, go, n).await,
        None => {}
    }
}

/// Looks at the next request head without taking it: a `GET /plain` is
/// read and answered (`Some(true)`); anything else is left for the
/// WebSocket handshake (`Some(false)`). `None`: the peer went away.
async fn plain_request(tcp: &mut TcpStream) -> Option<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = [0u8; 2048];
    loop {
        let n = tcp.peek(&mut head).await.ok()?;
        if n == 0 {
            return None;
        }
        if !head[..n.min(11)].starts_with(&b"GET /plain "[..n.min(11)]) {
            return Some(false);
        }
        if let Some(end) = head[..n].windows(4).position(|w| w == b"\r\n\r\n") {
            let mut taken = vec![0; end + 4];
            tcp.read_exact(&mut taken).await.ok()?;
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .ok()?;
            return Some(true);
        }
        if n == head.len() {
            return Some(false);
        }
        // Part of a head: wait for more.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn echo(mut ws: WebSocketStream<TcpStream>) {
    // Reading on after a close lets tungstenite flush its close reply.
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn publish(
    ws: WebSocketStream<TcpStream>,
    p: Publish,
    mut go: watch::Receiver<bool>,
    n: u64,
) {
    let (mut sink, mut stream) = ws.split();
    // The peer may end the session at any time (the bench stops an unbounded
    // run; the proxy closes a deleted session): then publishing stops.
    let peer_gone = async move { while let Some(Ok(_)) = stream.next().await {} };
    tokio::pin!(peer_gone);
    let finished = tokio::select! {
        _ = &mut peer_gone => false,
        sent = send_frames(&mut sink, &p, &mut go, n) => sent.is_ok(),
    };
    if finished {
        let done = CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        };
        if sink.send(Message::Close(Some(done))).await.is_ok() {
            let _ = timeout(CLOSE_WAIT, peer_gone).await;
        }
    }
}

async fn send_frames<S>(
    sink: &mut S,
    p: &Publish,
    go: &mut watch::Receiver<bool>,
    n: u64,
) -> Result<(), tungstenite::Error>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    // The sender lives as long as the process; an error cannot happen.
    let _ = go.wait_for(|started| *started).await;
    let bounded = p.count > 0;
    let mut seq = 0u64;
    if p.rate <= 0.0 {
        loop {
            for _ in 0..BURST {
                if bounded && seq == p.count {
                    break;
                }
                seq += 1;
                sink.feed(Message::text(payload(seq, unix_nanos(), p.size)))
                    .await?;
            }
            sink.flush().await?;
            if bounded && seq == p.count {
                return Ok(());
            }
        }
    }
    let interval = Duration::from_secs_f64(1.0 / p.rate);
    let start = Instant::now() + interval.mul_f64(unit_random(n));
    while !bounded || seq < p.count {
        // Behind schedule (backpressure), frames go at once: the timestamp
        // is taken at the send, so the latency stays honest.
        sleep_until(start + interval.mul_f64(seq as f64)).await;
        seq += 1;
        sink.send(Message::text(payload(seq, unix_nanos(), p.size)))
            .await?;
    }
    Ok(())
}

/// A number in [0, 1) that differs per connection (splitmix64).
fn unit_random(n: u64) -> f64 {
    let mut z = n
        .wrapping_add(unix_nanos())
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}
