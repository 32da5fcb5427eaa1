//! HTTP/1.1 for the bridge's own requests (the readers: sse, stream, poll;
//! opens, sends, closes, channels; healthz, client.js and the like) and the
//! app's bodyless `GET`s, on plain TCP, without hyper's per-connection
//! buffers.
//!
//! hyper 1.x keeps an 8 KiB read buffer and an 8 KiB write buffer for every
//! HTTP/1 connection for as long as it is open (`max_buf_size` cannot go
//! below 8 KiB and the write buffer is allocated at 8 KiB whatever the write
//! strategy), and a held session keeps its reader's connection open: those
//! buffers were most of a session's memory (see docs/operations.md). This
//! front end reads a request head into a buffer that exists only while
//! bytes arrive, answers the request itself, and writes the body straight
//! to the socket (`Content-Length`, or chunked with one vectored write per
//! frame), so a connection carrying an idle SSE stream holds no buffer at
//! all. hyper cannot hand a connection back between requests, so a
//! connection stays here only as long as every request on it is one this
//! front end takes: hence the app's `GET`s too, which a page sends on the
//! connection before it opens a session.
//!
//! It takes only what it fully understands: an HTTP/1.1 `GET`, `POST`,
//! `DELETE` or `OPTIONS` to a path under the prefix, or a `GET` with no body
//! elsewhere; with at most one plain-digits `Content-Length`, no
//! `Transfer-Encoding` or `Upgrade`, and no `Expect` but `100-continue`. A
//! body is handed to the service unread (`h1_body`): the handler reads it
//! only once the endpoint, the origin and the session are known, under the
//! same deadline and limits as on hyper's path. A body the handler left
//! unread is skipped after the response if it is small ([`MAX_SKIP`]), else
//! the connection closes. Anything else (chunked bodies, the app's bodies
//! and other methods, upgrades, `HEAD`, HTTP/1.0, HTTP/2 prior knowledge, a
//! malformed or oversized head) goes to hyper together with every byte read
//! so far, and hyper serves the rest of the connection as it would have from
//! its first byte, errors included. `tests/h1.rs` checks, against a real
//! hyper server, that every request taken here is framed as hyper frames it.
//!
//! Each phase is bounded: the first head within `server.header_read_timeout`
//! of the accept; between requests, `server.keepalive_timeout` for the next
//! one to start, then `server.header_read_timeout` from its first byte for
//! the head; each write of a response within the allowance
//! max(`server.write_timeout`, len / `server.min_send_rate`), so a client
//! that stops reading is cut and its reader detaches.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep_until, timeout};

use super::h1_body::{Progress, SocketBody};
use super::timeout::write_allowance;
use crate::body::{Body, Deadline, RequestBody, recv_allowance};
use crate::forwarded::ConnInfo;
use crate::routing;
use crate::state::AppState;
use crate::transport::WholeBody;

/// The most one read from the socket takes (onto the stack; the request's
/// buffer then grows by what arrived only).
const READ_CHUNK: usize = 4096;
/// Header lines a request may have (hyper's default limit too).
const MAX_HEADERS: usize = 100;
/// The longest request target hyper takes (it answers 414 past it).
const MAX_URI_LEN: usize = (u16::MAX - 1) as usize;
/// The most of a body the handler did not read that is read and dropped
/// after the response to keep the connection; past it, the connection
/// closes.
const MAX_SKIP: u64 = 64 * 1024;
/// A response body with a length up to this is collected and written with
/// its head in one write; a longer one (the app's) is streamed.
const MAX_WHOLE: u64 = 64 * 1024;

/// Serves a plain TCP connection: what [`parse_head`] takes here, the rest
/// by hyper.
pub(super) async fn serve(
    tcp: TcpStream,
    info: ConnInfo,
    state: Arc<AppState>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) {
    let mut conn = Conn {
        tcp: Arc::new(tcp),
        pending: BytesMut::new(),
        skip: 0,
        info,
        state,
    };
    // Holding the watcher holds the drain open until this connection ends.
    match conn.run().await {
        End::Hyper => {
            let Conn {
                tcp,
                pending,
                info,
                state,
                ..
            } = conn;
            // Every body is dropped before a hand-over (they die with their
            // handlers), so the socket is the connection's alone again.
            let Ok(tcp) = Arc::try_unwrap(tcp) else {
                return tracing::debug!("connection ended: a request body outlived its handler");
            };
            let io = TokioIo::new(Rewind::new(pending.freeze(), tcp));
            // Boxed: the idle connection's task stays the size of this loop.
            Box::pin(super::conn::serve_io(io, info, state, builder, watcher)).await;
        }
        End::Close(why) => tracing::debug!(reason = why, "connection ended"),
        End::Failed(e) => tracing::debug!(error = %e, "connection ended with an error"),
    }
}

#[derive(Debug)]
enum End {
    /// Close the connection, for the reason named (logged at debug).
    Close(&'static str),
    /// Close the connection after an I/O error (logged at debug).
    Failed(io::Error),
    /// Give the connection to hyper, with the bytes read so far.
    Hyper,
}

struct Conn {
    /// Shared with the request body being read, if any.
    tcp: Arc<TcpStream>,
    /// Bytes read and not yet consumed; empty (no allocation) between
    /// requests unless the client sent ahead.
    pending: BytesMut,
    /// Bytes of a body the handler left unread, still to be read from the
    /// socket and dropped before the next request.
    skip: u64,
    info: ConnInfo,
    state: Arc<AppState>,
}

/// A request head this front end takes (public, hidden, for the fuzz
/// target and the differential test against hyper).
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    /// Whether the connection may stay open after the response.
    pub keep_alive: bool,
    /// The body's length (`Content-Length`, 0 without one): the request
    /// ends `len + body_len` bytes from its start.
    pub body_len: u64,
    /// `Expect: 100-continue`: the client waits to be told to send the body.
    pub expect_continue: bool,
}

/// What the front end makes of the bytes at the start of a request.
// Only ever returned and matched at once, never stored.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request this front end serves.
    Ours(Head),
    /// Everything from here goes to hyper, untouched.
    NotOurs,
}

impl Conn {
    async fn run(&mut self) -> End {
        // The first head is due within the header read timeout of the
        // accept, as on hyper's path (`conn::serve_io`).
        let mut first = Some(Instant::now() + self.state.config.server.header_read_timeout);
        loop {
            let head = match self.next_request(first.take()).await {
                Ok(head) => head,
                Err(end) => return end,
            };
            let keep_alive = head.keep_alive;
            let (request, progress) = self.request_body(head);
            let (info, state) = (self.info, Arc::clone(&self.state));
            // Boxed: an idle connection's task holds no handler's state.
            let respond =
                Box::pin(async move { crate::http::handle_h1(request, info, &state).await });
            // A client that leaves while its request waits (a long poll)
            // cancels it, as it would a reader. Not while its body may still
            // be read: those bytes are the handler's.
            let response = {
                let Conn {
                    tcp,
                    pending,
                    state,
                    skip,
                    ..
                } = self;
                let watch = async {
                    if let Some(progress) = &progress {
                        progress.read_whole().await;
                    }
                    watch_client(tcp, pending, skip, state.config.server.max_header_bytes).await;
                };
                tokio::select! {
                    biased;
                    response = respond => response,
                    () = watch => return End::Close("client left during the request"),
                }
            };
            // What the handler left of the body: skipped if small, unless
            // the client waits for a `100 Continue` it will not get now.
            let mut keep_alive = keep_alive && !self.state.is_draining();
            if let Some(progress) = progress {
                self.skip = progress.unread();
                let alone = Arc::strong_count(&progress) == 1;
                if self.skip > 0 && (progress.continue_owed() || self.skip > MAX_SKIP || !alone) {
                    keep_alive = false;
                }
            }
            if let Err(end) = self.write_response(response, keep_alive).await {
                return end;
            }
            if !keep_alive {
                return End::Close("not keep-alive");
            }
            if let Err(end) = self.skip_body().await {
                return end;
            }
        }
    }

    /// The request with its body, unread, and what the connection learns of
    /// the body as it is read (none without one).
    fn request_body(&mut self, head: Head) -> (Request<RequestBody>, Option<Arc<Progress>>) {
        if head.body_len == 0 {
            let empty = Empty::new().map_err(|never| match never {}).boxed();
            return (head.request.map(|()| empty), None);
        }
        // What came with the head, up to the body's end; the rest (a
        // pipelined request) stays for after the response.
        let have = usize::try_from(head.body_len)
            .map_or(self.pending.len(), |n| n.min(self.pending.len()));
        let first = self.pending.split_to(have).freeze();
        if self.pending.is_empty() {
            self.pending = BytesMut::new();
        }
        let unread = head.body_len - have as u64;
        let (body, progress) =
            SocketBody::new(Arc::clone(&self.tcp), first, unread, head.expect_continue);
        // Timed from the end of the head, as on hyper's path.
        let body = Deadline::new(body, &self.state.config.server).boxed();
        (head.request.map(|()| body), Some(progress))
    }

    /// Reads and drops what the handler left of its request's body, within
    /// the body's allowance for that many bytes.
    async fn skip_body(&mut self) -> Result<(), End> {
        if self.skip == 0 {
            return Ok(());
        }
        let server = &self.state.config.server;
        let deadline =
            Instant::now() + recv_allowance(server.body_timeout, server.min_recv_rate, self.skip);
        while self.skip > 0 {
            tokio::select! {
                read = read_some(&self.tcp, &mut self.pending, &mut self.skip) => match read {
                    Ok(0) => return Err(End::Close("end of stream inside an unread body")),
                    Err(e) => return Err(End::Failed(e)),
                    Ok(_) => {}
                },
                () = sleep_until(deadline) => return Err(End::Close("unread body not sent in time")),
            }
        }
        Ok(())
    }

    /// Reads the next request head. `first` is the deadline of a
    /// connection's first head; later ones wait up to the keep-alive timeout
    /// for a first byte, then the header read timeout for the rest.
    async fn next_request(&mut self, first: Option<Instant>) -> Result<Head, End> {
        let state = Arc::clone(&self.state);
        let config = &state.config.server;
        let mut deadline = match first {
            Some(deadline) => deadline,
            None if self.pending.is_empty() => Instant::now() + config.keepalive_timeout,
            // Sent ahead (pipelined): the head has begun.
            None => Instant::now() + config.header_read_timeout,
        };
        let mut started = first.is_some() || !self.pending.is_empty();
        let head = loop {
            if !self.pending.is_empty() {
                match parse_head(&self.pending, &config.prefix) {
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
            if !started {
                started = true;
                deadline = Instant::now() + config.header_read_timeout;
            }
        };
        self.pending.advance(head.len);
        if self.pending.is_empty() {
            // Free the buffer the request came in: a stream or a long poll
            // may hold this connection for long.
            self.pending = BytesMut::new();
        }
        Ok(head)
    }

    /// Reads more of a request before `deadline`. Ends the connection at
    /// end of stream, on an error, at the deadline, and at the drain while
    /// nothing of a request has arrived.
    async fn read_more(&mut self, deadline: Instant) -> Result<(), End> {
        let idle = self.pending.is_empty();
        tokio::select! {
            read = read_some(&self.tcp, &mut self.pending, &mut self.skip) => match read {
                Ok(0) => Err(End::Close("end of stream")),
                Err(e) => Err(End::Failed(e)),
                Ok(_) => Ok(()),
            },
            () = sleep_until(deadline) => Err(End::Close(if idle {
                "idle: keep-alive timeout"
            } else {
                "request head not read within the header read timeout"
            })),
            () = self.state.closing_started(), if idle => Err(End::Close("draining")),
        }
    }

    /// Writes `buf` whole, within its allowance.
    async fn write(&mut self, buf: &mut impl Buf) -> Result<(), End> {
        let allowance = write_allowance(&self.state.config.server, buf.remaining());
        match timeout(allowance, write_all_buf(&self.tcp, buf)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Failed(e)),
            Err(_) => Err(End::Close(
                "response write timed out: the client does not read",
            )),
        }
    }

    async fn write_response(
        &mut self,
        response: Response<Body>,
        keep_alive: bool,
    ) -> Result<(), End> {
        let (parts, mut body) = response.into_parts();
        let max_pending = self.state.config.server.max_header_bytes;
        // The whole body, when it has a length or will be one frame: then
        // the head carries its Content-Length and goes in the same write.
        // (A long poll's frame comes when it is done waiting: the client is
        // watched meanwhile.)
        let bodiless = matches!(parts.status.as_u16(), 204 | 304);
        let exact = body.size_hint().exact();
        let whole = if bodiless {
            Some(Bytes::new())
        } else if exact.is_some_and(|n| n <= MAX_WHOLE)
            || parts.extensions.get::<WholeBody>().is_some()
        {
            let Conn {
                tcp, pending, skip, ..
            } = self;
            tokio::select! {
                biased;
                collected = (&mut body).collect() => {
                    Some(collected.map_err(|e| End::Failed(io::Error::other(e)))?.to_bytes())
                }
                () = watch_client(tcp, pending, skip, max_pending) => {
                    return Err(End::Close("client left before the response"));
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
        // The app's own Date, if it sent one (as hyper keeps it).
        if !parts.headers.contains_key(header::DATE) {
            head.extend_from_slice(b"date: ");
            head.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        match &whole {
            Some(_) if bodiless => {}
            Some(data) => {
                head.extend_from_slice(b"content-length: ");
                head.extend_from_slice(itoa::Buffer::new().format(data.len()).as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            None => match exact {
                Some(n) => {
                    head.extend_from_slice(b"content-length: ");
                    head.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    head.extend_from_slice(b"\r\n");
                }
                None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            },
        }
        if !keep_alive {
            head.extend_from_slice(b"connection: close\r\n");
        }
        head.extend_from_slice(b"\r\n");

        if let Some(data) = whole {
            return self.write(&mut head.as_slice().chain(data)).await;
        }
        // The head's parts are written: a stream may last for hours, and
        // its headers (a few hundred bytes of map) are not needed again.
        drop(parts);
        self.write(&mut head.as_slice()).await?;
        drop(head);
        // A long body with a length (the app's download): its bytes as they
        // come, and exactly as many as it said.
        let mut left = exact;
        loop {
            let next = {
                let Conn {
                    tcp, pending, skip, ..
                } = self;
                tokio::select! {
                    biased;
                    frame = body.frame() => Some(frame),
                    () = watch_client(tcp, pending, skip, max_pending) => None,
                }
            };
            match next {
                // The client left: dropping the body detaches its reader.
                None => return Err(End::Close("client left during the response")),
                Some(None) => break,
                // Cut without the last chunk, so the client sees an error.
                Some(Some(Err(e))) => return Err(End::Failed(io::Error::other(e))),
                Some(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: none are sent
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if let Some(left) = &mut left {
                        *left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                            End::Failed(io::Error::other("a response body longer than its length"))
                        })?;
                        let mut data = data;
                        self.write(&mut data).await?;
                        continue;
                    }
                    let size = ChunkSize::new(data.len());
                    let mut out = size.as_bytes().chain(data).chain(&b"\r\n"[..]);
                    self.write(&mut out).await?;
                }
            }
        }
        match left {
            None => self.write(&mut &b"0\r\n\r\n"[..]).await,
            Some(0) => Ok(()),
            Some(_) => Err(End::Failed(io::Error::other(
                "a response body shorter than its length",
            ))),
        }
    }
}

/// Writes `buf` whole, in vectored writes (the socket is shared with a
/// request body, so through `&TcpStream`).
async fn write_all_buf(tcp: &TcpStream, buf: &mut impl Buf) -> io::Result<()> {
    while buf.has_remaining() {
        tcp.writable().await?;
        let mut slices = [io::IoSlice::new(&[]); 8];
        let n = buf.chunks_vectored(&mut slices);
        match tcp.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
/// request a small one. The first `skip` bytes (the rest of a body the
/// handler did not read) are dropped, and `skip` counts them off.
async fn read_some(tcp: &TcpStream, pending: &mut BytesMut, skip: &mut u64) -> io::Result<usize> {
    loop {
        tcp.readable().await?;
        let mut chunk = [0; READ_CHUNK];
        match tcp.try_read(&mut chunk) {
            Ok(n) => {
                let skipped = usize::try_from(*skip).map_or(n, |s| s.min(n));
                *skip -= skipped as u64;
                pending.extend_from_slice(&chunk[skipped..n]);
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
async fn watch_client(tcp: &TcpStream, pending: &mut BytesMut, skip: &mut u64, max_pending: usize) {
    loop {
        match read_some(tcp, pending, skip).await {
            Ok(0) | Err(_) => return,
            Ok(_) if pending.len() > max_pending => return,
            Ok(_) => {}
        }
    }
}

/// Parses a request head from the start of `buf` and decides whether this
/// front end takes it (public, hidden: `wsbridge::parsers::h1_parse_head`).
pub fn parse_head(buf: &[u8], prefix: &str) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::NotOurs,
    };
    match take(&req, prefix) {
        Some(taken) => Parsed::Ours(Head {
            request: taken.request,
            len,
            keep_alive: taken.keep_alive,
            body_len: taken.body_len,
            expect_continue: taken.expect_continue,
        }),
        None => Parsed::NotOurs,
    }
}

/// What [`take`] makes of a head it takes.
struct Taken {
    request: Request<()>,
    keep_alive: bool,
    body_len: u64,
    expect_continue: bool,
}

/// A `Content-Length` this front end frames: plain digits, no sign, list
/// or space (anything else is hyper's to accept or refuse), and short
/// enough not to overflow.
fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The request, if this front end takes it, whether the connection may
/// stay open after it, and how its body is framed.
fn take(req: &httparse::Request<'_, '_>, prefix: &str) -> Option<Taken> {
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
    if !path.starts_with('/') || path.len() > MAX_URI_LEN {
        return None;
    }
    let uri = Uri::try_from(path).ok()?;
    // The app's requests: a bodyless `GET` only (a `HEAD`'s answer, an
    // upgrade and the app's bodies stay hyper's).
    let bridge = routing::is_bridge_path(prefix, uri.path());
    if !bridge && method != Method::GET {
        return None;
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    let mut keep_alive = true;
    let mut body_len = None;
    let mut expect_continue = false;
    let headers = request.headers_mut();
    headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        // A chunked body, an upgrade, or framing hyper might read another
        // way (two lengths, an odd one, another expectation) is hyper's.
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE {
            return None;
        }
        if name == header::CONTENT_LENGTH {
            if body_len.is_some() {
                return None;
            }
            body_len = Some(content_length(h.value)?);
        }
        if name == header::EXPECT {
            if expect_continue || !h.value.eq_ignore_ascii_case(b"100-continue") {
                return None;
            }
            expect_continue = true;
        }
        if name == header::CONNECTION
            && value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        {
            keep_alive = false;
        }
        headers.append(name, value);
    }
    let body_len = body_len.unwrap_or(0);
    if !bridge && (body_len > 0 || expect_continue) {
        return None;
    }
    Some(Taken {
        request,
        keep_alive,
        body_len,
        expect_continue,
    })
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
/// front, for hyper. The replayed bytes are freed once consumed (as
/// hyper-util's `common/rewind.rs`): a connection handed over with a
/// pipelined request does not keep its buffer for life.
struct Rewind<I> {
    prefix: Option<Bytes>,
    inner: I,
}

impl<I> Rewind<I> {
    fn new(prefix: Bytes, inner: I) -> Rewind<I> {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        Rewind { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut prefix) = self.prefix.take() {
            if buf.remaining() == 0 {
                self.prefix = Some(prefix);
                return Poll::Ready(Ok(()));
            }
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            // Kept only while some is left: the last byte frees it.
            if !prefix.is_empty() {
                self.prefix = Some(prefix);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
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
    use std::time::Duration;

    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn parse(text: &str) -> Option<Taken> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(text.as_bytes()).unwrap().is_complete());
        take(&req, "/_bridge")
    }

    #[test]
    fn takes_bridge_requests_it_can_frame_only() {
        let t = parse("GET /_bridge/sessions/abc/sse?plain=1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            (
                t.request.method(),
                t.request.uri().query(),
                t.keep_alive,
                t.body_len
            ),
            (&Method::GET, Some("plain=1"), true, 0)
        );
        let t = parse("GET /_bridge/healthz HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n")
            .unwrap();
        assert!(!t.keep_alive);
        // Bodies with a plain length, and the other bridge methods.
        let t = parse("POST /_bridge/sessions HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(
            (t.request.method(), t.body_len, t.expect_continue),
            (&Method::POST, 12, false)
        );
        let t = parse(
            "POST /_bridge/sessions/abc/send HTTP/1.1\r\ncontent-length: 007\r\nExpect: 100-Continue\r\n\r\n",
        )
        .unwrap();
        assert_eq!((t.body_len, t.expect_continue), (7, true));
        assert_eq!(
            parse("POST /_bridge/sessions/abc/send HTTP/1.1\r\n\r\n")
                .unwrap()
                .body_len,
            0
        );
        assert!(parse("DELETE /_bridge/sessions/abc HTTP/1.1\r\n\r\n").is_some());
        assert!(parse("OPTIONS /_bridge/sessions HTTP/1.1\r\n\r\n").is_some());
        // The app's bodyless GETs.
        assert!(parse("GET /index.html HTTP/1.1\r\n\r\n").is_some());
        assert!(parse("GET /_bridgefoo HTTP/1.1\r\ncontent-length: 0\r\n\r\n").is_some());
        for not_ours in [
            "POST /app/form HTTP/1.1\r\ncontent-length: 2\r\n\r\n",
            "GET /app HTTP/1.1\r\ncontent-length: 2\r\n\r\n",
            "GET /app HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "DELETE /app HTTP/1.1\r\n\r\n",
            "OPTIONS /app HTTP/1.1\r\n\r\n",
            "GET /app HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "GET /_bridge/healthz HTTP/1.0\r\n\r\n",
            "HEAD /_bridge/client.js HTTP/1.1\r\n\r\n",
            "PUT /_bridge/sessions HTTP/1.1\r\n\r\n",
            // Chunked bodies, and lengths hyper may read another way.
            "POST /_bridge/sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: +2\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: \r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nExpect: something-else\r\n\r\n",
            "POST /_bridge/sessions HTTP/1.1\r\nExpect: 100-continue\r\nExpect: 100-continue\r\n\r\n",
            "GET http://x/_bridge/healthz HTTP/1.1\r\n\r\n",
            "GET /_bridge/sessions/a/sse HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(parse(not_ours).is_none(), "{not_ours:?}");
        }
    }

    #[test]
    fn write_allowance_grows_with_the_length_past_the_timeout() {
        let mut server = crate::Config::from_toml("[upstream]\nurl = \"http://a:1\"\n")
            .unwrap()
            .server;
        server.write_timeout = Duration::from_secs(10);
        server.min_send_rate = 1000;
        assert_eq!(write_allowance(&server, 10), Duration::from_secs(10));
        assert_eq!(write_allowance(&server, 50_000), Duration::from_secs(50));
        server.min_send_rate = 0;
        assert_eq!(write_allowance(&server, 50_000), Duration::from_secs(10));
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix_then_frees_it() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut rewind = Rewind::new(Bytes::from_static(b"GET / HTTP/1.1\r\n"), server);
        client.write_all(b"host: x\r\n\r\n").await.unwrap();
        drop(client);
        let mut first = [0; 4];
        rewind.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"GET ");
        assert!(rewind.prefix.is_some(), "kept while some is left");
        let mut rest = Vec::new();
        rewind.read_to_end(&mut rest).await.unwrap();
        assert_eq!(
            rest, b"/ HTTP/1.1\r\nhost: x\r\n\r\n",
            "untouched, in order"
        );
        assert!(rewind.prefix.is_none(), "freed once consumed");
        assert!(
            Rewind::new(Bytes::new(), tokio::io::empty())
                .prefix
                .is_none()
        );
    }

    /// A request this front end must take: a path under the prefix and
    /// header lines (none that frame or upgrade).
    fn bridge_request() -> impl Strategy<Value = (String, Vec<(String, String)>)> {
        let path = "(/sessions(/[A-Za-z0-9_-]{1,22}(/(sse|stream|poll|send))?)?|/healthz|/client\\.js)(\\?[a-z]{1,5}=[a-z0-9%]{0,8})?";
        let header = ("x-[a-z]{1,12}", "[ -~]{0,40}").prop_map(|(n, v)| (n, v.trim().to_owned()));
        (path, proptest::collection::vec(header, 0..8))
            .prop_map(|(p, h)| (format!("/_bridge{p}"), h))
    }

    fn render(path: &str, headers: &[(String, String)]) -> String {
        let mut text = format!("GET {path} HTTP/1.1\r\nhost: test\r\n");
        for (n, v) in headers {
            text.push_str(&format!("{n}: {v}\r\n"));
        }
        text.push_str("\r\n");
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_head(&bytes, "/_bridge");
        }

        #[test]
        fn bridge_gets_are_taken_whole_and_only_whole(
            (path, headers) in bridge_request(),
            framing in prop_oneof![
                Just(("transfer-encoding", "chunked")), Just(("content-length", "+1")),
                Just(("upgrade", "websocket")), Just(("expect", "later")),
            ],
            length in proptest::option::of(0u64..1_000_000),
        ) {
            let mut headers = headers;
            if let Some(length) = length {
                headers.push(("content-length".to_owned(), length.to_string()));
            }
            let text = render(&path, &headers);
            match parse_head(text.as_bytes(), "/_bridge") {
                Parsed::Ours(head) => {
                    prop_assert_eq!(head.len, text.len());
                    prop_assert_eq!(head.body_len, length.unwrap_or(0));
                    prop_assert_eq!(head.request.uri().to_string(), path.as_str());
                    prop_assert_eq!(head.request.headers().len(), headers.len() + 1);
                }
                _ => prop_assert!(false, "{text:?}"),
            }
            // Every proper prefix is partial: nothing is taken early.
            for cut in [0, text.len() / 2, text.len() - 1] {
                prop_assert!(matches!(parse_head(&text.as_bytes()[..cut], "/_bridge"), Parsed::Partial));
            }
            // A header that frames the message another way or upgrades it
            // leaves it to hyper.
            let mut with = headers.clone();
            with.push((framing.0.to_owned(), framing.1.to_owned()));
            let text = render(&path, &with);
            prop_assert!(matches!(parse_head(text.as_bytes(), "/_bridge"), Parsed::NotOurs));
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
