//! A request body the HTTP/1.1 front end hands to the service unread: its
//! bytes stay in the socket until the handler asks for them, so a refused
//! request is answered before its body is read, and nothing is buffered
//! beyond the frame being handed over.
//!
//! Only `Content-Length` bodies come here (chunked ones go to hyper with the
//! whole connection). The body never reads past its length, so the next
//! request's bytes are left in the socket; it writes `100 Continue` the first
//! time it is polled when the client asked for it. The time it may take is
//! bounded by the [`crate::body::Deadline`] around it, as on hyper's path;
//! its size by the handler's own limit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The most one read of the body takes from the socket.
const READ_CHUNK: usize = 4096;

/// What the interim response says.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the connection learns of its request's body: how much is still in
/// the socket once the handler is done, and when it is all read (the
/// connection then watches the socket for the client leaving, which it must
/// not do while the body may still be read).
pub(super) struct Progress {
    /// Body bytes not yet read from the socket.
    unread: AtomicU64,
    /// The client waits for `100 Continue` before it sends the body, and it
    /// has not been written: the body will not come unasked.
    continue_owed: AtomicBool,
    /// Woken when `unread` reaches 0.
    done: Notify,
}

impl Progress {
    pub(super) fn unread(&self) -> u64 {
        self.unread.load(Ordering::Acquire)
    }

    pub(super) fn continue_owed(&self) -> bool {
        self.continue_owed.load(Ordering::Acquire)
    }

    /// Resolves once the body is all read from the socket (never, if the
    /// handler stops reading it). Cancel-safe.
    pub(super) async fn read_whole(&self) {
        loop {
            let done = self.done.notified();
            if self.unread() == 0 {
                return;
            }
            done.await;
        }
    }
}

/// The body of one request, read from the connection's socket on demand.
pub(super) struct SocketBody {
    tcp: Arc<TcpStream>,
    /// The body's bytes that came with the head, handed over first.
    first: Option<Bytes>,
    progress: Arc<Progress>,
    /// How much of `100 Continue` is written, while it is owed.
    continue_at: Option<usize>,
}

impl SocketBody {
    /// A body whose `first` bytes were read with the head and `unread` more
    /// are to come from `tcp`; with `expect_continue`, the client waits for
    /// `100 Continue` before sending them.
    pub(super) fn new(
        tcp: Arc<TcpStream>,
        first: Bytes,
        unread: u64,
        expect_continue: bool,
    ) -> (SocketBody, Arc<Progress>) {
        let owed = expect_continue && unread > 0;
        let progress = Arc::new(Progress {
            unread: AtomicU64::new(unread),
            continue_owed: AtomicBool::new(owed),
            done: Notify::new(),
        });
        let body = SocketBody {
            tcp,
            first: (!first.is_empty()).then_some(first),
            progress: Arc::clone(&progress),
            continue_at: owed.then_some(0),
        };
        (body, progress)
    }

    /// Writes what is left of `100 Continue`.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(at) = &mut self.continue_at {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(&CONTINUE[*at..]) {
                Ok(n) => *at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            if *at == CONTINUE.len() {
                self.continue_at = None;
                self.progress.continue_owed.store(false, Ordering::Release);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl Body for SocketBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let unread = this.progress.unread();
        if unread == 0 {
            return Poll::Ready(None);
        }
        if let Err(e) = ready!(this.poll_continue(cx)) {
            return Poll::Ready(Some(Err(e)));
        }
        loop {
            if let Err(e) = ready!(this.tcp.poll_read_ready(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
            let mut chunk = [0; READ_CHUNK];
            let want = usize::try_from(unread).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
            match this.tcp.try_read(&mut chunk[..want]) {
                Ok(0) => {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client left inside the request body",
                    ))));
                }
                Ok(n) => {
                    let left = unread - n as u64;
                    this.progress.unread.store(left, Ordering::Release);
                    if left == 0 {
                        this.progress.done.notify_one();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(&chunk[..n])))));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.progress.unread() == 0
    }

    fn size_hint(&self) -> SizeHint {
        let first = self.first.as_ref().map_or(0, |b| b.len() as u64);
        SizeHint::with_exact(first + self.progress.unread())
    }
}
