//! The bounds of a connection's phases that hyper does not keep itself
//! (pingora's keep-alive, read and write timeouts, per connection):
//!
//! - a write that cannot progress is cut ([`write_allowance`]): a client
//!   that stops reading fails its connection, so its reader detaches and the
//!   session's `idle_timeout` runs;
//! - [`Activity`] tells the connection's task whether a request is in
//!   flight and whether bytes arrived since the last one ended, so idle
//!   keep-alive (`server.keepalive_timeout`) and a request head
//!   (`server.header_read_timeout`) each get their own deadline, and an
//!   HTTP/2 connection with no open stream is closed.
//!
//! hyper's HTTP/1 `header_read_timeout` starts when the previous response
//! ends, so it covers idle keep-alive and the head together; it is kept only
//! as a backstop at the sum of both.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::config::ServerConfig;

/// The time a write of a buffer of `len` bytes may take to progress:
/// max(`server.write_timeout`, `len` / `server.min_send_rate`), or
/// `write_timeout` alone when the rate is 0. For every writer of a
/// downstream response, hyper's (through [`WriteDeadline`]) and the HTTP/1.1
/// front end's.
#[allow(
    dead_code,
    reason = "the HTTP/1.1 front end's writes use it (src/net/h1.rs)"
)]
pub(crate) fn write_allowance(server: &ServerConfig, len: usize) -> Duration {
    allowance(server.write_timeout, server.min_send_rate, len)
}

fn allowance(write_timeout: Duration, min_send_rate: usize, len: usize) -> Duration {
    let by_rate = match min_send_rate {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(len as f64 / rate as f64),
    };
    write_timeout.max(by_rate).min(crate::config::MAX_DURATION)
}

/// What a connection's task watches to choose its deadline; shared by the
/// IO (bytes read), the service (requests in flight) and the task.
#[derive(Default)]
pub(super) struct Activity {
    /// Requests whose responses hyper has not finished with (their body
    /// guards are alive): while any is, the connection is not idle.
    in_flight: AtomicUsize,
    /// Whether bytes arrived since the connection last went idle: a head
    /// is on its way, and `header_read_timeout` replaces `keepalive_timeout`.
    read_since_idle: AtomicBool,
    /// Whether the connection speaks HTTP/2 (seen on its first request):
    /// idle then means no open stream, and closing is a GOAWAY.
    h2: AtomicBool,
    /// Woken on every change above, so the task recomputes its deadline.
    changed: Notify,
}

/// What the connection is doing, for its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// At least one request in flight: bodies and writes have their own
    /// bounds.
    Busy,
    /// No request in flight and nothing received since.
    Idle,
    /// No request in flight, and bytes of a new head arrived.
    Head,
}

impl Activity {
    pub(super) fn phase(&self) -> Phase {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            Phase::Busy
        } else if self.read_since_idle.load(Ordering::Acquire) && !self.is_h2() {
            // HTTP/2 reads frames (PINGs, WINDOW_UPDATEs) while idle; only
            // streams count there.
            Phase::Head
        } else {
            Phase::Idle
        }
    }

    pub(super) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Resolves after the next change. Cancel-safe: a change while no one
    /// waits is kept for the next call.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// A request arrived: the connection is busy until the guard is dropped.
    pub(super) fn start_request(self: &Arc<Self>, h2: bool) -> InFlight {
        if h2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    fn bytes_read(&self) {
        if !self.read_since_idle.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }
}

/// Holds its connection busy; lives in the response body, so hyper drops it
/// once it has written the last byte (or given the body up).
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The next head is timed from now, as idle keep-alive first.
            self.0.read_since_idle.store(false, Ordering::Release);
            self.0.changed.notify_one();
        }
    }
}

/// A response body holding its connection busy.
pub(super) struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's IO: reads are reported to its [`Activity`], and a write,
/// flush or shutdown that cannot progress within its [`write_allowance`]
/// fails with `TimedOut`, which ends the connection.
pub(super) struct WriteDeadline<I> {
    inner: I,
    activity: Arc<Activity>,
    write_timeout: Duration,
    min_send_rate: usize,
    /// Armed on the first `Pending` of a write and disarmed by progress;
    /// allocated once, on the first write that has to wait.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl<I> WriteDeadline<I> {
    pub(super) fn new(inner: I, server: &ServerConfig, activity: Arc<Activity>) -> Self {
        WriteDeadline {
            inner,
            activity,
            write_timeout: server.write_timeout,
            min_send_rate: server.min_send_rate,
            sleep: None,
            armed: false,
        }
    }

    fn allowance(&self, len: usize) -> Duration {
        allowance(self.write_timeout, self.min_send_rate, len)
    }

    /// Called with the inner IO's answer to a write of `len` bytes.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        if !self.armed {
            let deadline = tokio::time::Instant::now() + self.allowance(len);
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let sleep = self.sleep.as_mut().expect("armed above");
        if sleep.as_mut().poll(cx).is_ready() {
            self.armed = false;
            tracing::debug!(len, "client stopped reading: write timed out");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write timed out (server.write_timeout)",
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if polled.is_ready() && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, buf.len(), polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, len, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, 0, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, 0, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_grows_with_the_buffer_past_the_floor() {
        let secs = Duration::from_secs;
        assert_eq!(allowance(secs(30), 1024, 0), secs(30));
        assert_eq!(allowance(secs(30), 1024, 1024 * 60), secs(60));
        assert_eq!(allowance(secs(30), 0, usize::MAX), secs(30));
    }
}
