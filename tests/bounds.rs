//! Every phase of a connection has its own bound (docs/operations.md, "Every
//! phase has a bound"): request bodies, idle keep-alive against the head,
//! writes to a client that stopped reading, idle HTTP/2 connections, the
//! connection budget with the admin listener beside it, and idle
//! pass-through pool connections. Raw TCP and real clients against the real
//! proxy; the timeouts are small and every wait is capped.
//!
//! Plain-TCP requests that must reach hyper rather than the HTTP/1.1 front
//! end (src/net/h1.rs, which takes bridge requests with no or a
//! `Content-Length` body) are sent to a pass-through path or carry a chunked
//! body, which that front end leaves to hyper.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{Backend, HttpBackend, Proxy, body};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The cap on any wait for something that must happen.
const CAP: Duration = Duration::from_secs(20);

/// Reads one HTTP/1.1 response head and its `Content-Length` body (or what
/// arrives until EOF); the status and the body.
async fn read_response(tcp: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "EOF before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = tcp.read(&mut chunk).await.expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    (status, buf[head_end..].to_vec())
}

/// Reads until the peer closes (EOF or reset); panics at the cap.
async fn wait_closed(tcp: &mut TcpStream) {
    let mut chunk = [0; 65536];
    timeout(CAP, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the proxy never closed the connection");
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// A backend that reads the whole request body and answers with its length,
/// or reports on `failed` that the body broke off (the proxy abandoned it).
async fn counting_backend(failed: mpsc::Sender<()>) -> HttpBackend {
    HttpBackend::start(move |req: Request<Incoming>| {
        let failed = failed.clone();
        async move {
            match req.into_body().collect().await {
                Ok(b) => Response::new(body(b.to_bytes().len().to_string())),
                Err(_) => {
                    let _ = failed.send(()).await;
                    Response::new(body("broken"))
                }
            }
        }
    })
    .await
}

/// A slow but honest uplink (64 KiB/s) outlasts the head timeout and the
/// body's floor: its bytes earn it time (`min_recv_rate`). Guards the body
/// deadline: one that ignored the rate, or a head timeout that ran on into
/// the body, would cut this 3 s body at 1 s.
#[tokio::test]
async fn a_slow_honest_body_is_not_cut() {
    let (tx, _rx) = mpsc::channel(1);
    let backend = counting_backend(tx).await;
    let proxy = Proxy::start_toml(&backend.config(
        "[server]\nheader_read_timeout = \"1s\"\nbody_timeout = \"1s\"\nmin_recv_rate = \"16KiB\"\n",
    ))
    .await;
    const LEN: usize = 192 * 1024;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    // 16 KiB every 250 ms: 3 s in all, three times the head timeout.
    for _ in 0..LEN / (16 * 1024) {
        tcp.write_all(&[b'a'; 16 * 1024]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, body) = timeout(CAP, read_response(&mut tcp)).await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, LEN.to_string().as_bytes());
}

/// A connection to `addr` that sends `head`, then `chunk` every 300 ms from a
/// task of its own until the write fails, so the returned read half can
/// wait for the answer while the body still trickles.
async fn trickle(
    addr: std::net::SocketAddr,
    head: &[u8],
    chunk: &'static [u8],
) -> (TcpStream, tokio::task::JoinHandle<()>) {
    let std = TcpStream::connect(addr).await.unwrap().into_std().unwrap();
    let mut write_half = TcpStream::from_std(std.try_clone().unwrap()).unwrap();
    let reader = TcpStream::from_std(std).unwrap();
    write_half.write_all(head).await.unwrap();
    let trickler = tokio::spawn(async move {
        loop {
            if write_half.write_all(chunk).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    (reader, trickler)
}

/// A chunked body trickling at about 3 B/s: cut at its deadline, 408, and
/// the upstream request is abandoned rather than held open.
#[tokio::test]
async fn a_trickling_passthrough_body_gets_408_and_the_upstream_request_ends() {
    let (tx, mut failed) = mpsc::channel(1);
    let backend = counting_backend(tx).await;
    let proxy = Proxy::start_toml(
        &backend.config("[server]\nbody_timeout = \"1s\"\nmin_recv_rate = \"1KiB\"\n"),
    )
    .await;
    let (mut reader, trickler) = trickle(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1\r\na\r\n",
    )
    .await;
    let (status, body) = timeout(CAP, read_response(&mut reader))
        .await
        .expect("a 1 B/s body was held past its deadline");
    trickler.abort();
    assert_eq!(status, 408);
    assert_eq!(json(&body)["error"], "body_timeout");
    timeout(CAP, failed.recv())
        .await
        .expect("the upstream request was not abandoned")
        .unwrap();
}

/// The same on the bridge: a chunked open body (which hyper reads) that
/// trickles gets `408 body_timeout`, and no session.
#[tokio::test]
async fn a_trickling_open_body_gets_408() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[server]\nbody_timeout = \"1s\"\n").await;
    let (mut reader, trickler) = trickle(
        proxy.addr,
        b"POST /_bridge/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n",
        b"1\r\n \r\n",
    )
    .await;
    let (status, body) = timeout(CAP, read_response(&mut reader))
        .await
        .expect("a trickling open body was held past its deadline");
    trickler.abort();
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"], "body_timeout");
}

/// A malformed chunk is the client's fault: 400 `bad_body`, on the
/// pass-through (not 502) and on the bridge.
#[tokio::test]
async fn malformed_chunked_bodies_get_400() {
    let (tx, _rx) = mpsc::channel(1);
    let backend = counting_backend(tx).await;
    let proxy = Proxy::start_toml(&backend.config("")).await;
    for path in ["/upload", "/_bridge/sessions"] {
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n0\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let (status, body) = timeout(CAP, read_response(&mut tcp)).await.unwrap();
        assert_eq!(status, 400, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["error"], "bad_body", "{path}");
    }
}

/// Idle keep-alive and the head each have their own timeout: a connection
/// quiet for longer than `header_read_timeout` (but within
/// `keepalive_timeout`) still serves its next request; one whose next head
/// stalls is closed; one left quiet is closed after `keepalive_timeout`.
#[tokio::test]
async fn idle_keep_alive_and_the_head_have_their_own_timeouts() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[server]\nheader_read_timeout = \"1s\"\nkeepalive_timeout = \"4s\"\n",
    )
    .await;
    // A body sends the request to hyper; /http/echo answers with JSON.
    let req = b"POST /http/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(req).await.unwrap();
    assert_eq!(timeout(CAP, read_response(&mut tcp)).await.unwrap().0, 200);
    // Twice the head timeout, idle: the connection is still there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tcp.write_all(req).await.unwrap();
    assert_eq!(
        timeout(CAP, read_response(&mut tcp)).await.unwrap().0,
        200,
        "an idle keep-alive connection was cut by the head timeout"
    );
    // A head that starts and stalls is cut (by the head timeout).
    tcp.write_all(b"POST /http/echo HTTP/1.1\r\n")
        .await
        .unwrap();
    wait_closed(&mut tcp).await;
    // A connection left idle is closed (by the keep-alive timeout).
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    idle.write_all(req).await.unwrap();
    assert_eq!(timeout(CAP, read_response(&mut idle)).await.unwrap().0, 200);
    wait_closed(&mut idle).await;
}

/// The value of a counter line in the metrics text, 0 when absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A reader that stops reading while the upstream floods is cut once a
/// write cannot progress within `write_timeout`; its session detaches and
/// then ends by `idle_timeout` instead of being pinned for ever.
#[tokio::test]
async fn a_stalled_sse_reader_is_cut_and_its_session_ends_by_idle() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[server]\nwrite_timeout = \"1s\"\nmin_send_rate = \"0\"\n\
         [sessions]\nidle_timeout = \"1s\"\n",
    )
    .await;
    let session = proxy.open("/flood?n=1000000&size=4096").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    // A (chunked, empty) body sends it to hyper (see the file's note).
    let req = format!(
        "GET /_bridge/sessions/{}/sse HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        session.id
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Never read: the socket buffers fill, the proxy's writes stall.
    let idle_closes = timeout(CAP, async {
        loop {
            let text = proxy
                .http
                .get(proxy.url("/_bridge/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let n = metric(&text, "wsbridge_sessions_closed_total{reason=\"idle\"}");
            if n >= 1.0 {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the stalled reader pinned its session: it never ended by idle");
    assert_eq!(idle_closes, 1.0);
    // And the reader's connection was cut: what it holds ends in EOF/RST.
    wait_closed(&mut tcp).await;
}

/// An HTTP/2 connection (h2c, prior knowledge) with no open stream is
/// closed after `keepalive_timeout`, with a GOAWAY; one with an open SSE
/// stream is not.
#[tokio::test]
async fn idle_http2_connections_are_closed_and_busy_ones_are_not() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, "[server]\nkeepalive_timeout = \"1s\"\n").await;
    let h2 = |proxy_addr| async move {
        let tcp = TcpStream::connect(proxy_addr).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        (send, tokio::spawn(conn))
    };
    let get = |path: String| Request::get(path).body(Empty::<Bytes>::new()).unwrap();

    let (mut send, conn) = h2(proxy.addr).await;
    let resp = send
        .send_request(get(proxy.url("/_bridge/healthz")))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();
    timeout(CAP, conn)
        .await
        .expect("an idle HTTP/2 connection was never closed")
        .unwrap()
        .expect("the close was not graceful (no GOAWAY)");

    let session = proxy.open("/echo").await;
    let (mut send, conn) = h2(proxy.addr).await;
    let sse = send
        .send_request(get(
            proxy.url(&format!("/_bridge/sessions/{}/sse", session.id))
        ))
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    let mut sse = sse.into_body();
    // Three keep-alive timeouts with the stream open...
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !conn.is_finished(),
        "a connection with an open stream was closed"
    );
    // ...and the stream still delivers.
    assert_eq!(session.send_text("still here").await.status(), 204);
    let delivered = timeout(CAP, async {
        let mut seen = Vec::new();
        while let Some(frame) = sse.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                seen.extend_from_slice(&data);
                if String::from_utf8_lossy(&seen).contains("still here") {
                    return true;
                }
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(delivered);
}

/// With `max_connections = 3` taken by idle but valid connections, a fourth
/// waits (it is answered once one closes) while the admin listener, with
/// its own budget, keeps answering. (A guard: the accept loop's semaphore
/// already held this before the admin budget.)
#[tokio::test]
async fn the_admin_listener_answers_while_main_is_full() {
    let backend = Backend::start().await;
    let text = format!(
        "[upstream]\nurl = \"http://{}\"\n[server]\nmax_connections = 3\n\
         header_read_timeout = \"60s\"\nkeepalive_timeout = \"60s\"\n",
        backend.addr
    );
    let config = wsbridge::Config::from_toml(&text).unwrap();
    let state = wsbridge::AppState::new(config).unwrap();
    let main = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (main_addr, admin_addr) = (main.local_addr().unwrap(), admin.local_addr().unwrap());
    tokio::spawn(wsbridge::net::serve_admin(admin, Arc::clone(&state)));
    tokio::spawn(wsbridge::net::serve(main, state, std::future::pending()));

    let req = b"POST /http/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(main_addr).await.unwrap();
        tcp.write_all(req).await.unwrap();
        assert_eq!(timeout(CAP, read_response(&mut tcp)).await.unwrap().0, 200);
        held.push(tcp);
    }
    // The fourth: accepted by the kernel, not served while the three live.
    let mut fourth = TcpStream::connect(main_addr).await.unwrap();
    fourth.write_all(req).await.unwrap();
    let fourth = tokio::spawn(async move { read_response(&mut fourth).await.0 });

    let mut probe = TcpStream::connect(admin_addr).await.unwrap();
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        timeout(CAP, read_response(&mut probe)).await.unwrap().0,
        200
    );
    assert!(
        !fourth.is_finished(),
        "a fourth connection was served past max_connections"
    );

    drop(held.pop());
    assert_eq!(timeout(CAP, fourth).await.unwrap().unwrap(), 200);
}

/// Idle pass-through pool connections expire after `pool_idle_timeout`:
/// a backend that counts its open connections sees them go.
#[tokio::test]
async fn idle_pool_connections_expire() {
    let open = Arc::new(AtomicI64::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::clone(&open);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service =
                    service_fn(|_req| async { Ok::<_, Infallible>(Response::new(body("ok"))) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
                counter.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let proxy = Proxy::start_toml(&format!(
        "[upstream]\nurl = \"http://{addr}\"\npool_idle_timeout = \"1s\"\n"
    ))
    .await;
    let resp = proxy.http.get(proxy.url("/page")).send().await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "ok");
    assert_eq!(
        open.load(Ordering::SeqCst),
        1,
        "the pool holds its connection"
    );
    timeout(CAP, async {
        while open.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("an idle pool connection never expired");
}

/// Over HTTP/2 a reader that stops reading stalls its stream by flow
/// control, where no write ever blocks: the stream's untaken frame is cut
/// after its write allowance all the same, and the session ends by idle.
#[tokio::test]
async fn a_stalled_http2_reader_is_cut_and_its_session_ends_by_idle() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(
        &backend,
        "[server]\nwrite_timeout = \"1s\"\nmin_send_rate = \"0\"\n\
         [sessions]\nidle_timeout = \"1s\"\n",
    )
    .await;
    let session = proxy.open("/flood?n=1000000&size=4096").await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get(proxy.url(&format!("/_bridge/sessions/{}/sse", session.id)))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Held, never read: the stream's window closes at 64 KiB.
    let _held = resp.into_body();
    timeout(CAP, async {
        loop {
            let text = proxy
                .http
                .get(proxy.url("/_bridge/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if metric(&text, "wsbridge_sessions_closed_total{reason=\"idle\"}") >= 1.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the stalled HTTP/2 reader pinned its session: it never ended by idle");
    let _ = timeout(CAP, conn)
        .await
        .expect("the stalled HTTP/2 connection was never closed");
}
