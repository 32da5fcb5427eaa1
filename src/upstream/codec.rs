//! The upstream WebSocket's frames, read and written by the proxy itself
//! (RFC 6455, client side), over the two halves of the connection.
//!
//! A library codec keeps a read buffer for the socket's whole life: with
//! thousands of mostly idle sessions that buffer was the largest thing a
//! session held. [`FrameReader`] has a buffer only while the socket has bytes
//! for it: it asks for [`READ_CHUNK`] when the socket is readable and lets it
//! go as soon as the socket has nothing more and no frame is half read (to
//! a spare slot per thread, so the next readable socket on that thread takes
//! it without an allocation). Small payloads are copied out of it, together,
//! into one allocation the size of what that read brought, so an event kept
//! in the replay queue holds the payloads of its own read, never a whole
//! chunk, and a burst costs two allocations, not one per frame. Large
//! payloads are split off without a copy. [`FrameWriter`] likewise holds a
//! frame's bytes only until they are written.
//!
//! The reader checks what RFC 6455 asks of a client: no mask, no reserved
//! bits, no unknown opcodes, control frames whole and short, fragments in
//! order, text that is UTF-8, a valid close payload, and no message above
//! the limit, which is checked from the frame's header before its payload is
//! read. It answers nothing itself: pings and closes go to the caller, whose
//! writer answers them (`Link::owed` in the parent module).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data};
use tokio_tungstenite::tungstenite::{Error, Message, Utf8Bytes};

/// What one read asks the socket for: 128 frames of 128 bytes. The buffer
/// lives only while the socket has bytes, so its size costs an idle session
/// nothing.
const READ_CHUNK: usize = 16 * 1024;
/// Payloads below this are copied out of the read buffer (into
/// `FrameReader::small`), so a kept event does not hold a whole chunk;
/// larger ones are split off (a chunk holds few of them).
const COPY_BELOW: usize = READ_CHUNK / 4;

thread_local! {
    /// A read buffer no socket on this thread is using: a reader gives its
    /// buffer back here when its socket has nothing more, and the next one
    /// that has bytes takes it, so a busy thread does not allocate a chunk
    /// per wake-up and an idle session holds none.
    static SPARE: std::cell::Cell<Option<BytesMut>> = const { std::cell::Cell::new(None) };
}
/// The most bytes a control frame's payload may have (RFC 6455 5.5).
const MAX_CONTROL: u64 = 125;

const OP_CONTINUE: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A frame's header, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    /// The header's own length: 2, 4 or 10 bytes (a server never masks).
    len: usize,
    payload: u64,
}

impl Header {
    /// Parses the header at the start of `bytes`; `None` while it is not all
    /// there. Errors on what no server may send.
    fn parse(bytes: &[u8]) -> Result<Option<Header>, Error> {
        let [b0, b1, ..] = *bytes else {
            return Ok(None);
        };
        if b0 & 0x70 != 0 {
            return Err(Error::Protocol(ProtocolError::NonZeroReservedBits));
        }
        if b1 & 0x80 != 0 {
            return Err(Error::Protocol(ProtocolError::MaskedFrameFromServer));
        }
        let (len, payload) = match b1 & 0x7f {
            126 => match bytes.get(2..4) {
                Some(&[a, b]) => (4, u64::from(u16::from_be_bytes([a, b]))),
                _ => return Ok(None),
            },
            127 => match bytes.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                Some(b) => (10, u64::from_be_bytes(b)),
                None => return Ok(None),
            },
            n => (2, u64::from(n)),
        };
        Ok(Some(Header {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0f,
            len,
            payload,
        }))
    }
}

/// A message whose fragments are still arriving.
struct Fragments {
    text: bool,
    bytes: BytesMut,
}

/// The read half of an upstream WebSocket as a stream of messages.
pub struct FrameReader<R> {
    io: R,
    /// Bytes read and not yet taken as frames. Empty, with nothing
    /// allocated, whenever the socket has nothing more for it: an idle
    /// session holds no read buffer.
    buf: BytesMut,
    /// Where small payloads are copied to: the rest of an allocation sized
    /// by the bytes buffered when it was made, shared by the payloads copied
    /// into it. Let go with `buf`.
    small: BytesMut,
    /// The message being put together from fragments, if one is.
    fragments: Option<Fragments>,
    /// The largest message (and so frame) taken; a larger one is an error
    /// before its payload is read.
    max_message: usize,
    /// A close frame was read: what follows is no frame, only read and
    /// dropped until the upstream hangs up.
    closed: bool,
}

impl<R> FrameReader<R> {
    /// A reader over `io`, which may already have read `read` (what came
    /// behind the handshake's response).
    pub fn new(io: R, read: BytesMut, max_message: usize) -> Self {
        FrameReader {
            io,
            buf: read,
            small: BytesMut::new(),
            fragments: None,
            max_message,
            closed: false,
        }
    }

    pub fn into_inner(self) -> R {
        self.io
    }

    /// The next whole message in `buf`, if one is there.
    fn next_message(&mut self) -> Result<Option<Message>, Error> {
        loop {
            let Some(head) = Header::parse(&self.buf)? else {
                return Ok(None);
            };
            self.check(&head)?;
            // Fits in usize: `check` bounded it by `max_message`.
            let total = head.len + head.payload as usize;
            if self.buf.len() < total {
                // Room for the whole frame at once, so its payload can be
                // split off without a copy.
                self.buf.reserve(total - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(head.len);
            let payload = self.take(head.payload as usize);
            let message = match head.opcode {
                OP_TEXT | OP_BINARY if head.fin => whole(head.opcode == OP_TEXT, payload)?,
                OP_TEXT | OP_BINARY => {
                    self.fragments = Some(Fragments {
                        text: head.opcode == OP_TEXT,
                        bytes: BytesMut::from(payload),
                    });
                    continue;
                }
                // `check` made sure a message is under way.
                OP_CONTINUE => match self.fragments.take() {
                    None => return Err(Error::Protocol(ProtocolError::UnexpectedContinueFrame)),
                    Some(mut fragments) => {
                        fragments.bytes.extend_from_slice(&payload);
                        if !head.fin {
                            self.fragments = Some(fragments);
                            continue;
                        }
                        whole(fragments.text, fragments.bytes.freeze())?
                    }
                },
                OP_PING => Message::Ping(payload),
                OP_PONG => Message::Pong(payload),
                OP_CLOSE => {
                    self.closed = true;
                    Message::Close(close_frame(payload)?)
                }
                // `check` let no other opcode through.
                op => return Err(Error::Protocol(ProtocolError::UnknownControlFrameType(op))),
            };
            return Ok(Some(message));
        }
    }

    /// Refuses a frame from its header alone: before its payload is read,
    /// and so before any of it is buffered.
    fn check(&self, head: &Header) -> Result<(), Error> {
        match head.opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !head.fin {
                    return Err(Error::Protocol(ProtocolError::FragmentedControlFrame));
                }
                if head.payload > MAX_CONTROL {
                    return Err(Error::Protocol(ProtocolError::ControlFrameTooBig));
                }
                Ok(())
            }
            OP_TEXT | OP_BINARY | OP_CONTINUE => {
                match (&self.fragments, head.opcode) {
                    (None, OP_CONTINUE) => {
                        return Err(Error::Protocol(ProtocolError::UnexpectedContinueFrame));
                    }
                    (Some(f), OP_TEXT | OP_BINARY) => {
                        let data = if f.text { Data::Text } else { Data::Binary };
                        return Err(Error::Protocol(ProtocolError::ExpectedFragment(data)));
                    }
                    _ => {}
                }
                let so_far = self.fragments.as_ref().map_or(0, |f| f.bytes.len());
                let size = (so_far as u64).saturating_add(head.payload);
                if size > self.max_message as u64 {
                    return Err(Error::Capacity(CapacityError::MessageTooLong {
                        size: usize::try_from(size).unwrap_or(usize::MAX),
                        max_size: self.max_message,
                    }));
                }
                Ok(())
            }
            op @ 3..=7 => Err(Error::Protocol(ProtocolError::UnknownDataFrameType(op))),
            op => Err(Error::Protocol(ProtocolError::UnknownControlFrameType(op))),
        }
    }

    /// Takes a payload of `len` bytes off the front of `buf`.
    fn take(&mut self, len: usize) -> Bytes {
        if len < COPY_BELOW {
            if self.small.capacity() - self.small.len() < len {
                // Room for the small payloads still buffered, at most: a
                // read's worth, whatever large frame is buffered behind them.
                self.small = BytesMut::with_capacity(self.buf.len().min(READ_CHUNK).max(len));
            }
            self.small.extend_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            self.small.split().freeze()
        } else {
            self.buf.split_to(len).freeze()
        }
    }
}

/// A complete data message.
fn whole(text: bool, payload: Bytes) -> Result<Message, Error> {
    if !text {
        return Ok(Message::Binary(payload));
    }
    Utf8Bytes::try_from(payload)
        .map(Message::Text)
        .map_err(|e| Error::Utf8(format!("text message: {e}")))
}

/// A close frame's payload: nothing, or a code and a UTF-8 reason.
fn close_frame(payload: Bytes) -> Result<Option<CloseFrame>, Error> {
    match *payload {
        [] => Ok(None),
        [_] => Err(Error::Protocol(ProtocolError::InvalidCloseSequence)),
        [a, b, ..] => {
            let reason = Utf8Bytes::try_from(payload.slice(2..))
                .map_err(|e| Error::Utf8(format!("close reason: {e}")))?;
            Ok(Some(CloseFrame {
                code: CloseCode::from(u16::from_be_bytes([a, b])),
                reason,
            }))
        }
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Message, Error>;

    /// Cancel-safe: a message is returned or stays in the buffer.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.closed {
                // Nothing after a close is a frame; keep no byte of it.
                this.buf.clear();
            } else {
                match this.next_message() {
                    Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            if this.buf.capacity() == 0 {
                this.buf = SPARE
                    .take()
                    .unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK));
            }
            if this.buf.capacity() == this.buf.len() {
                this.buf.reserve(READ_CHUNK);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Pending => {
                    if this.buf.is_empty() {
                        // Idle between frames: hold nothing.
                        this.small = BytesMut::new();
                        let buf = std::mem::take(&mut this.buf);
                        // Not one grown for a large frame: a thread keeps
                        // at most a few chunks.
                        if (READ_CHUNK..=4 * READ_CHUNK).contains(&buf.capacity()) {
                            SPARE.set(Some(buf));
                        }
                    }
                    return Poll::Pending;
                }
                // The upstream hung up; a frame cut short by it is lost with it.
                Poll::Ready(Ok(0)) => return Poll::Ready(None),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Error::Io(e)))),
            }
        }
    }
}

/// The write half of an upstream WebSocket as a sink of messages, masked as
/// a client's must be.
pub struct FrameWriter<W> {
    io: W,
    /// The frame being written, and how much of it is: empty, with nothing
    /// allocated, between frames.
    out: Vec<u8>,
    written: usize,
}

impl<W> FrameWriter<W> {
    pub fn new(io: W) -> Self {
        FrameWriter {
            io,
            out: Vec::new(),
            written: 0,
        }
    }

    pub fn into_inner(self) -> W {
        self.io
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Writes what is left of the frame in `out`.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> Sink<Message> for FrameWriter<W> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_out(cx)
    }

    fn start_send(self: Pin<&mut Self>, message: Message) -> io::Result<()> {
        let this = self.get_mut();
        debug_assert!(this.out.is_empty(), "start_send before poll_ready");
        match message {
            Message::Text(text) => encode(&mut this.out, OP_TEXT, text.as_bytes()),
            Message::Binary(bytes) => encode(&mut this.out, OP_BINARY, &bytes),
            Message::Ping(bytes) => encode(&mut this.out, OP_PING, &bytes),
            Message::Pong(bytes) => encode(&mut this.out, OP_PONG, &bytes),
            Message::Close(None) => encode(&mut this.out, OP_CLOSE, &[]),
            Message::Close(Some(frame)) => {
                let mut payload = u16::from(frame.code).to_be_bytes().to_vec();
                // A control frame's payload is at most 125 bytes: the reason
                // is cut at a character boundary to fit.
                let mut end = frame.reason.len().min(MAX_CONTROL as usize - 2);
                while !frame.reason.is_char_boundary(end) {
                    end -= 1;
                }
                payload.extend_from_slice(&frame.reason.as_bytes()[..end]);
                encode(&mut this.out, OP_CLOSE, &payload);
            }
            Message::Frame(_) => {
                return Err(io::Error::other("raw frames are not sent upstream"));
            }
        }
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Appends one final frame, masked with a fresh key (RFC 6455 5.3: a key
/// the page whose bytes these are cannot predict).
fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let len = payload.len();
    out.reserve(14 + len);
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(0x80 | len as u8),
        126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    let key: [u8; 4] = rand::random();
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::AsyncWriteExt;

    /// A server frame: unmasked.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(fin) << 7 | opcode];
        match payload.len() {
            n @ 0..=125 => out.push(n as u8),
            n @ 126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// Reads every message `bytes` holds, fed in pieces of `piece` bytes.
    async fn read_all(bytes: Vec<u8>, piece: usize, max: usize) -> Vec<Result<Message, String>> {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(piece.max(1)) {
                if tx.write_all(chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut reader = FrameReader::new(rx, BytesMut::new(), max);
        let mut got = Vec::new();
        while let Some(next) = reader.next().await {
            let failed = next.is_err();
            got.push(next.map_err(|e| e.to_string()));
            if failed {
                break;
            }
        }
        writer.abort();
        got
    }

    #[tokio::test]
    async fn messages_read_whole_whatever_the_pieces() {
        let mut bytes = frame(true, OP_TEXT, b"hello");
        bytes.extend(frame(false, OP_BINARY, &[1; 200]));
        bytes.extend(frame(true, OP_PING, b"p"));
        bytes.extend(frame(true, OP_CONTINUE, &[2; 70_000]));
        bytes.extend(frame(true, OP_TEXT, &[]));
        bytes.extend(frame(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k']));
        let mut joined = vec![1; 200];
        joined.extend([2; 70_000]);
        for piece in [1, 3, 7, 100, 5000, 1 << 20] {
            let got = read_all(bytes.clone(), piece, 1 << 20).await;
            let got: Vec<Message> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(
                got,
                vec![
                    Message::Text("hello".into()),
                    Message::Ping(Bytes::from_static(b"p")),
                    Message::Binary(joined.clone().into()),
                    Message::Text("".into()),
                    Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "ok".into()
                    })),
                ],
                "in pieces of {piece}"
            );
        }
    }

    #[tokio::test]
    async fn what_no_server_may_send_is_an_error() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0x81 | 0x40, 0x00], "reserved"),
            (vec![0x81, 0x80, 0, 0, 0, 0], "masked"),
            (vec![0x83, 0x00], "Unknown data frame type"),
            (vec![0x8b, 0x00], "Unknown control frame type"),
            (frame(false, OP_PING, b""), "fragmented"),
            (frame(true, OP_PING, &[0; 126]), "too big"),
            (frame(true, OP_CONTINUE, b"x"), "Continue frame"),
            (
                [frame(false, OP_TEXT, b"a"), frame(true, OP_TEXT, b"b")].concat(),
                "fragment",
            ),
            (frame(true, OP_TEXT, &[0xff, 0xfe]), "UTF-8"),
            (frame(true, OP_CLOSE, &[3]), "close"),
            (frame(true, OP_CLOSE, &[3, 0xe8, 0xff]), "UTF-8"),
        ];
        for (bytes, want) in cases {
            let got = read_all(bytes.clone(), 1, 1024).await;
            let Some(Err(e)) = got.last() else {
                panic!("{bytes:?} read as {got:?}");
            };
            assert!(
                e.to_lowercase().contains(&want.to_lowercase()),
                "{bytes:?}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn a_message_above_the_limit_is_refused_from_its_header() {
        // Only the header is sent: the refusal must not wait for the payload.
        let mut head = frame(true, OP_BINARY, &[]);
        head[1] = 127;
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        let got = read_all(head, 1, 1024).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("too long")),
            "{got:?}"
        );
        // Fragments count together.
        let bytes = [
            frame(false, OP_TEXT, &[b'a'; 600]),
            frame(true, OP_CONTINUE, &[b'a'; 600]),
        ]
        .concat();
        let got = read_all(bytes, 1000, 1024).await;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("too long")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer_and_drops_what_follows_a_close() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(rx, BytesMut::new(), 1 << 20);
        tx.write_all(&frame(true, OP_TEXT, b"one")).await.unwrap();
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Message::Text("one".into())
        );
        // Nothing more to read: the next poll finds the socket empty.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(reader.poll_next_unpin(&mut cx).is_pending());
        assert_eq!((reader.buf.capacity(), reader.small.capacity()), (0, 0));
        // Half a frame is kept, and only that.
        tx.write_all(&frame(true, OP_TEXT, b"two")[..3])
            .await
            .unwrap();
        assert!(reader.poll_next_unpin(&mut cx).is_pending());
        assert_eq!(reader.buf.len(), 3);
        tx.write_all(&frame(true, OP_TEXT, b"two")[3..])
            .await
            .unwrap();
        tx.write_all(&frame(true, OP_CLOSE, &[])).await.unwrap();
        tx.write_all(&frame(true, OP_TEXT, b"after")).await.unwrap();
        drop(tx);
        assert_eq!(
            reader.next().await.unwrap().unwrap(),
            Message::Text("two".into())
        );
        assert_eq!(reader.next().await.unwrap().unwrap(), Message::Close(None));
        assert!(reader.next().await.is_none());
    }

    /// The writer's frames, read back by tungstenite acting as the server
    /// (which insists on the mask), and tungstenite's frames read by ours.
    #[tokio::test]
    async fn frames_agree_with_tungstenite_both_ways() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (read, write) = tokio::io::split(ours);
        let mut reader = FrameReader::new(read, BytesMut::new(), 1 << 20);
        let mut writer = FrameWriter::new(write);
        let mut server =
            tokio_tungstenite::WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
        let long_reason = "é".repeat(100);
        let messages = vec![
            Message::Text("hi".into()),
            Message::Binary(vec![7; 300].into()),
            Message::Binary(vec![8; 70_000].into()),
            Message::Ping(Bytes::from_static(b"x")),
            Message::Pong(Bytes::new()),
        ];
        for m in &messages {
            writer.send(m.clone()).await.unwrap();
            assert_eq!(&server.next().await.unwrap().unwrap(), m);
            server.send(m.clone()).await.unwrap();
            // tungstenite answers our ping by itself; skip its pong.
            let mut got = reader.next().await.unwrap().unwrap();
            if matches!(m, Message::Ping(_)) {
                assert_eq!(got, *m);
                got = reader.next().await.unwrap().unwrap();
                assert_eq!(got, Message::Pong(Bytes::from_static(b"x")));
            } else {
                assert_eq!(&got, m);
            }
        }
        let close = CloseFrame {
            code: CloseCode::Away,
            reason: long_reason.as_str().into(),
        };
        writer.send(Message::Close(Some(close))).await.unwrap();
        let Some(Ok(Message::Close(Some(got)))) = server.next().await else {
            panic!("no close");
        };
        assert_eq!(got.code, CloseCode::Away);
        assert_eq!(got.reason.len(), 122, "cut to fit at a character boundary");
    }
}
