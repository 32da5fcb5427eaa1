//! HTTP/1.1 for the bridge's own endpoints on plain TCP, without hyper's
//! per-connection buffers.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for every
//! HTTP/1 connection for as long as it is open, and a held session keeps its
//! reader's connection open: those buffers were most of a session's memory.
//! This front end reads a request head into a buffer that exists only while
//! bytes arrive, answers the bridge's requests itself, and writes response
//! bodies straight to the socket (`Content-Length`, or chunked with one
//! vectored write per frame), so a connection carrying an idle SSE stream
//! holds no buffer at all.
//!
//! It takes only what it fully understands: HTTP/1.1 `GET`, `POST`, `DELETE`
//! or `OPTIONS` to a path under the prefix, with no body or a
//! `Content-Length` one within the bridge's limits, without `Upgrade`,
//! `Expect` or `Transfer-Encoding`. Anything else (the app's paths, HTTP/1.0,
//! HTTP/2 prior knowledge, `HEAD`, a malformed or oversized head) goes to
//! hyper together with every byte read so far, and hyper serves the rest of
//! the connection as it would have from its first byte, errors included.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until};

use crate::body::Body;
use crate::forwarded::ConnInfo;
use crate::routing;
use crate::state::AppState;
use crate::transport::WholeBody;

/// The most one read from the socket takes (onto the stack; the request's
/// buffer then grows by what arrived only).
const READ_CHUNK: usize = 4096;
/// Header lines a request may have (hyper's default limit too).
const MAX_HEADERS: usize = 100;

/// Serves a plain TCP connection: bridge requests here, the rest by hyper.
pub(super) async fn serve(
    tcp: TcpStream,
    info: ConnInfo,
    state: Arc<AppState>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) {
    let mut conn = Conn {
        tcp,
        pending: BytesMut::new(),
        info,
        state,
    };
    // Holding the watcher holds the drain open until this connection ends.
    if conn.run().await == End::Hyper {
        let Conn {
            tcp,
            pending,
            info,
            state,
        } = conn;
        let io = TokioIo::new(Rewind {
            prefix: pending.freeze(),
            inner: tcp,
        });
        // Boxed: the idle connection's task stays the size of this loop.
        Box::pin(super::conn::serve_io(io, info, state, builder, watcher)).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Close the connection.
    Close,
    /// Give the connection to hyper, with the bytes read so far.
    Hyper,
}

struct Conn {
    tcp: TcpStream,
    /// Bytes read and not yet consumed; empty (no allocation) between
    /// requests unless the client sent ahead.
    pending: BytesMut,
    info: ConnInfo,
    state: Arc<AppState>,
}

/// A request head this front end takes.
struct Head {
    request: Request<()>,
    /// Bytes of the head, up to and including the blank line.
    len: usize,
    body_len: usize,
    keep_alive: bool,
}

// Only ever returned and matched at once, never stored.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Ours(Head),
    NotOurs,
}

impl Conn {
    async fn run(&mut self) -> End {
        loop {
            let (head, body) = match self.next_request().await {
                Ok(pair) => pair,
                Err(end) => return end,
            };
            let keep_alive = head.keep_alive;
            let request = head
                .request
                .map(|()| Full::new(body).map_err(|never| match never {}).boxed());
            let (info, state) = (self.info, Arc::clone(&self.state));
            // Boxed: an idle connection's task holds no handler's state.
            let respond =
                Box::pin(async move { crate::http::handle_bridge(request, info, &state).await });
            // A client that leaves while its request waits (a long poll)
            // cancels it, as it would a reader.
            let response = {
                let Conn {
                    tcp,
                    pending,
                    state,
                    ..
                } = self;
                let watch = watch_client(tcp, pending, state.config.server.max_header_bytes);
                tokio::select! {
                    biased;
                    response = respond => response,
                    () = watch => return End::Close,
                }
            };
            let keep_alive = keep_alive && !self.state.is_draining();
            if self.write_response(response, keep_alive).await.is_err() || !keep_alive {
                return End::Close;
            }
        }
    }

    /// The largest body a bridge endpoint accepts: larger ones go to hyper,
    /// and the endpoint answers 413 there.
    fn max_body(&self) -> usize {
        let limits = &self.state.config.limits;
        limits.max_open_body_bytes.max(limits.max_frame_bytes)
    }

    /// Reads the next request head and its body; `Err` ends the loop.
    async fn next_request(&mut self) -> Result<(Head, Bytes), End> {
        let state = Arc::clone(&self.state);
        let config = &state.config.server;
        // As hyper's: the whole head within this, counted from the moment
        // the connection waits for it (so it also bounds idle keep-alive).
        let deadline = Instant::now() + config.header_read_timeout;
        let head = loop {
            if !self.pending.is_empty() {
                match parse_head(&self.pending, &config.prefix, self.max_body()) {
                    Parsed::Ours(head) => break head,
                    Parsed::NotOurs => return Err(End::Hyper),
                    // hyper answers an oversized head (431).
                    Parsed::Partial if self.pending.len() >= config.max_header_bytes => {
                        return Err(End::Hyper);
                    }
                    Parsed::Partial => {}
                }
            }
            self.read_more(deadline).await?;
        };
        let end = head.len + head.body_len;
        while self.pending.len() < end {
            self.read_more(deadline).await?;
        }
        self.pending.advance(head.len);
        let body = if head.body_len == 0 {
            Bytes::new()
        } else {
            self.pending.split_to(head.body_len).freeze()
        };
        if self.pending.is_empty() {
            // Free the buffer the request came in (the body, if any, keeps
            // it until the handler is done with it): a stream or a long
            // poll may hold this connection for long.
            self.pending = BytesMut::new();
        }
        Ok((head, body))
    }

    /// Reads more of a request before `deadline`. Ends the connection at
    /// end of stream, on an error, at the deadline, and at the drain while
    /// nothing of a request has arrived.
    async fn read_more(&mut self, deadline: Instant) -> Result<(), End> {
        let idle = self.pending.is_empty();
        tokio::select! {
            read = read_some(&self.tcp, &mut self.pending) => match read {
                Ok(0) | Err(_) => Err(End::Close),
                Ok(_) => Ok(()),
            },
            () = sleep_until(deadline) => Err(End::Close),
            () = self.state.closing_started(), if idle => Err(End::Close),
        }
    }

    async fn write_response(
        &mut self,
        response: Response<Body>,
        keep_alive: bool,
    ) -> io::Result<()> {
        let (parts, mut body) = response.into_parts();
        let max_pending = self.state.config.server.max_header_bytes;
        // The whole body, when it has a length or will be one frame: then
        // the head carries its Content-Length and goes in the same write.
        // (A long poll's frame comes when it is done waiting: the client is
        // watched meanwhile.)
        let bodiless = matches!(parts.status.as_u16(), 204 | 304);
        let whole = if bodiless {
            Some(Bytes::new())
        } else if body.size_hint().exact().is_some()
            || parts.extensions.get::<WholeBody>().is_some()
        {
            let Conn { tcp, pending, .. } = self;
            tokio::select! {
                biased;
                collected = (&mut body).collect() => {
                    Some(collected.map_err(io::Error::other)?.to_bytes())
                }
                () = watch_client(tcp, pending, max_pending) => {
                    return Err(io::ErrorKind::ConnectionAborted.into());
                }
            }
        } else {
            None
        };
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(parts.status.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        head.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if is_framing(name) {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
        match &whole {
            Some(_) if bodiless => {}
            Some(data) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(itoa::Buffer::new().format(data.len()).as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        if !keep_alive {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");

        if let Some(data) = whole {
            let mut out = head.as_slice().chain(data);
            return self.tcp.write_all_buf(&mut out).await;
        }
        self.tcp.write_all(&head).await?;
        drop(head);
        loop {
            let next = {
                let Conn { tcp, pending, .. } = self;
                tokio::select! {
                    biased;
                    frame = body.frame() => Some(frame),
                    () = watch_client(tcp, pending, max_pending) => None,
                }
            };
            match next {
                // The client left: dropping the body detaches its reader.
                None => return Err(io::ErrorKind::ConnectionAborted.into()),
                Some(None) => break,
                // Cut without the last chunk, so the client sees an error.
                Some(Some(Err(e))) => return Err(io::Error::other(e)),
                Some(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: none are sent
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let size = ChunkSize::new(data.len());
                    let mut out = size.as_bytes().chain(data).chain(&b"\r\n"[..]);
                    self.tcp.write_all_buf(&mut out).await?;
                }
            }
        }
        self.tcp.write_all(b"0\r\n\r\n").await
    }
}

/// Headers that frame the message: this front end writes its own.
fn is_framing(name: &HeaderName) -> bool {
    name == header::CONTENT_LENGTH
        || name == header::TRANSFER_ENCODING
        || name == header::CONNECTION
}

/// One read into `pending` once the socket is readable: the count, 0 at end
/// of stream. The bytes land on the stack first and `pending` grows by what
/// arrived only, so a waiting connection holds no read buffer and a small
/// request a small one.
async fn read_some(tcp: &TcpStream, pending: &mut BytesMut) -> io::Result<usize> {
    loop {
        tcp.readable().await?;
        let mut chunk = [0; READ_CHUNK];
        match tcp.try_read(&mut chunk) {
            Ok(n) => {
                pending.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Resolves when the client is gone (end of stream, an error) or has sent
/// more than `max_pending` bytes ahead while a response is under way. What
/// it sends ahead (a pipelined request) is kept for after the response.
async fn watch_client(tcp: &TcpStream, pending: &mut BytesMut, max_pending: usize) {
    loop {
        match read_some(tcp, pending).await {
            Ok(0) | Err(_) => return,
            Ok(_) if pending.len() > max_pending => return,
            Ok(_) => {}
        }
    }
}

/// Parses a request head from the start of `buf` and decides whether this
/// front end takes it.
fn parse_head(buf: &[u8], prefix: &str, max_body: usize) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotOurs,
    };
    match take(&req, prefix, max_body) {
        Some((request, body_len, keep_alive)) => Parsed::Ours(Head {
            request,
            len,
            body_len,
            keep_alive,
        }),
        None => Parsed::NotOurs,
    }
}

/// The request, if this front end takes it: with its body length and
/// whether the connection may stay open after it.
fn take(
    req: &httparse::Request<'_, '_>,
    prefix: &str,
    max_body: usize,
) -> Option<(Request<()>, usize, bool)> {
    if req.version != Some(1) {
        return None;
    }
    let method = match req.method? {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "DELETE" => Method::DELETE,
        "OPTIONS" => Method::OPTIONS,
        _ => return None,
    };
    let path = req.path?;
    if !path.starts_with('/') {
        return None;
    }
    let uri = Uri::try_from(path).ok()?;
    if !routing::is_bridge_path(prefix, uri.path()) {
        return None;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let mut body_len = 0;
    let mut keep_alive = true;
    let headers = request.headers_mut();
    headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return None;
        }
        if name == header::CONTENT_LENGTH {
            let text = value.to_str().ok()?;
            if headers.contains_key(header::CONTENT_LENGTH)
                || text.is_empty()
                || !text.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            body_len = text.parse::<usize>().ok().filter(|n| *n <= max_body)?;
        }
        if name == header::CONNECTION {
            let text = value.to_str().ok()?;
            if text
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
            {
                keep_alive = false;
            }
        }
        headers.append(name, value);
    }
    Some((request, body_len, keep_alive))
}

/// A chunk's size line: hex digits and CRLF.
struct ChunkSize {
    bytes: [u8; 18],
    start: usize,
}

impl ChunkSize {
    fn new(mut n: usize) -> ChunkSize {
        let mut bytes = [0; 18];
        bytes[16] = b'\r';
        bytes[17] = b'\n';
        let mut start = 16;
        loop {
            start -= 1;
            bytes[start] = b"0123456789abcdef"[n & 0xf];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        ChunkSize { bytes, start }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

/// The socket, with the bytes this front end already read put back in
/// front, for hyper.
struct Rewind {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> Option<(Request<()>, usize, bool)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(text.as_bytes()).unwrap().is_complete());
        take(&req, "/_bridge", 1024)
    }

    #[test]
    fn takes_bridge_requests_only() {
        let (req, len, keep) =
            parse("POST /_bridge/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
                .unwrap();
        assert_eq!((req.method(), len, keep), (&Method::POST, 12, true));
        let (req, _, keep) =
            parse("GET /_bridge/sessions/abc/sse?plain=1 HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
                .unwrap();
        assert_eq!(req.uri().query(), Some("plain=1"));
        assert!(!keep);
        for not_ours in [
            "GET /index.html HTTP/1.1\r\n\r\n",
            "GET /_bridgefoo HTTP/1.1\r\n\r\n",
            "GET /_bridge/healthz HTTP/1.0\r\n\r\n",
            "HEAD /_bridge/client.js HTTP/1.1\r\n\r\n",
            "PUT /_bridge/sessions HTTP/1.1\r\n\r\n",
            "GET http://x/_bridge/healthz HTTP/1.1\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
            "GET /_bridge/sessions/a/sse HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: 1025\r\n\r\n",
        ] {
            assert!(parse(not_ours).is_none(), "{not_ours:?}");
        }
    }

    /// A request this front end must take: method, path under the prefix,
    /// header lines (none that frame or upgrade), body length.
    fn bridge_request() -> impl Strategy<Value = (String, String, Vec<(String, String)>, usize)> {
        let method = prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("OPTIONS")];
        let path = "(/sessions(/[A-Za-z0-9_-]{1,22}(/(sse|stream|poll|send))?)?|/healthz|/client\\.js)(\\?[a-z]{1,5}=[a-z0-9%]{0,8})?";
        let header = ("x-[a-z]{1,12}", "[ -~]{0,40}").prop_map(|(n, v)| (n, v.trim().to_owned()));
        (
            method,
            path,
            proptest::collection::vec(header, 0..8),
            0usize..2048,
        )
            .prop_map(|(m, p, h, b)| (m.to_owned(), format!("/_bridge{p}"), h, b))
    }

    fn render(method: &str, path: &str, headers: &[(String, String)], body: usize) -> String {
        let mut text = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
        for (n, v) in headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str(&format!("content-length: {body}\r\n\r\n"));
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_head(&bytes, "/_bridge", 1024);
        }

        #[test]
        fn bridge_requests_are_taken_whole_and_only_whole(
            (method, path, headers, body) in bridge_request(),
            framing in prop_oneof![Just("transfer-encoding"), Just("upgrade"), Just("expect")],
        ) {
            let text = render(&method, &path, &headers, body);
            match parse_head(text.as_bytes(), "/_bridge", 1024) {
                Parsed::Ours(head) if body <= 1024 => {
                    prop_assert_eq!(head.len, text.len());
                    prop_assert_eq!(head.body_len, body);
                    prop_assert_eq!(head.request.method().as_str(), method.as_str());
                    prop_assert_eq!(head.request.uri().to_string(), path.as_str());
                    prop_assert_eq!(head.request.headers().len(), headers.len() + 2);
                }
                Parsed::NotOurs if body > 1024 => {}
                _ => prop_assert!(false, "{text:?}"),
            }
            // Every proper prefix is partial: nothing is taken early.
            for cut in [0, text.len() / 2, text.len() - 1] {
                prop_assert!(matches!(parse_head(&text.as_bytes()[..cut], "/_bridge", 1024), Parsed::Partial));
            }
            // A header that frames or upgrades the message leaves it to hyper.
            let mut with = headers.clone();
            with.push((framing.to_owned(), "x".to_owned()));
            let text = render(&method, &path, &with, body.min(1024));
            prop_assert!(matches!(parse_head(text.as_bytes(), "/_bridge", 1024), Parsed::NotOurs));
        }
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (n, text) in [
            (0, "0\r\n"),
            (9, "9\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            assert_eq!(ChunkSize::new(n).as_bytes(), text.as_bytes());
        }
        let max = ChunkSize::new(usize::MAX);
        assert_eq!(max.as_bytes(), b"ffffffffffffffff\r\n");
    }
}
