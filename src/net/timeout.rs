//! The bounds of a connection's phases that hyper does not keep itself
//! (pingora's keep-alive, read and write timeouts, per connection):
//!
//! - a write that cannot progress is cut ([`write_allowance`]): a client
//!   that stops reading fails its connection, so its reader detaches and the
//!   session's `idle_timeout` runs. Over HTTP/2 flow control stalls the
//!   stream before any write blocks, so each response also records when
//!   hyper must take its next frame ([`Owed`]);
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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::config::ServerConfig;

/// The time a write of a buffer of `len` bytes may take to progress:
/// max(`server.write_timeout`, `len` / `server.min_send_rate`), or
/// `write_timeout` alone when the rate is 0. For every writer of a
/// downstream response, hyper's (through [`WriteDeadline`]) and the HTTP/1.1
/// front end's.
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
    /// Requests started on this connection: none yet means the first head
    /// is still due, timed from accept.
    started: AtomicU64,
    /// When the connection last went idle and when a new head's first
    /// bytes came, in milliseconds from `epoch`: kept here, not by the
    /// task, which may see a short request's whole life as one wake-up.
    idle_since: AtomicU64,
    head_since: AtomicU64,
    /// Woken on every change above, so the task recomputes its deadline.
    changed: Notify,
    /// HTTP/2 only: each open response's debt (see [`Owed`]). Flow control
    /// stalls a stream whose reader stopped without ever blocking a write,
    /// so the IO's bound never sees it; the task checks these instead.
    streams: Mutex<Vec<Weak<Owed>>>,
    /// The origin of [`Owed`]'s times.
    epoch: Instant,
    write_timeout: Duration,
    min_send_rate: usize,
}

/// When hyper must have taken the next frame of a response it was given
/// one of, in milliseconds from [`Activity::epoch`]; 0 while the body owes
/// hyper (it waits for events) rather than the other way round.
#[derive(Default)]
pub(super) struct Owed(AtomicU64);

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
    pub(super) fn new(server: &ServerConfig) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            read_since_idle: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            changed: Notify::new(),
            streams: Mutex::new(Vec::new()),
            epoch: Instant::now(),
            write_timeout: server.write_timeout,
            min_send_rate: server.min_send_rate,
        }
    }

    /// How often a busy HTTP/2 connection's streams are checked for a
    /// stall: a stall is cut at most this late.
    pub(super) fn stall_check_every(&self) -> Duration {
        (self.write_timeout / 2).max(Duration::from_millis(50))
    }

    /// Whether an HTTP/2 stream has not taken its next frame within the
    /// allowance of the last one: its reader stopped, and flow control holds
    /// the response (and the session's reader) where no write blocks.
    pub(super) fn stalled_stream(&self) -> bool {
        let now = self.millis();
        let mut streams = self.streams.lock().expect("never held across a panic");
        streams.retain(|s| s.strong_count() > 0);
        streams.iter().filter_map(Weak::upgrade).any(|owed| {
            let due = owed.0.load(Ordering::Acquire);
            due != 0 && due <= now
        })
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn owed_until(&self, len: usize) -> u64 {
        let allowed = allowance(self.write_timeout, self.min_send_rate, len);
        let allowed = u64::try_from(allowed.as_millis()).unwrap_or(u64::MAX);
        self.millis().saturating_add(allowed).max(1)
    }

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

    /// Whether a request has started on this connection.
    pub(super) fn had_request(&self) -> bool {
        self.started.load(Ordering::Acquire) > 0
    }

    /// When the connection last went idle.
    pub(super) fn idle_since(&self) -> Instant {
        self.at(self.idle_since.load(Ordering::Acquire))
    }

    /// When the first bytes of the head now arriving came.
    pub(super) fn head_since(&self) -> Instant {
        self.at(self.head_since.load(Ordering::Acquire))
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
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
        let owed = h2.then(|| {
            self.h2.store(true, Ordering::Relaxed);
            let owed = Arc::new(Owed::default());
            let mut streams = self.streams.lock().expect("never held across a panic");
            streams.retain(|s| s.strong_count() > 0);
            streams.push(Arc::downgrade(&owed));
            owed
        });
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InFlight {
            activity: Arc::clone(self),
            owed,
        }
    }

    fn bytes_read(&self) {
        if !self.read_since_idle.load(Ordering::Acquire) {
            self.head_since.store(self.millis(), Ordering::Release);
        }
        if !self.read_since_idle.swap(true, Ordering::AcqRel) {
            self.changed.notify_one();
        }
    }
}

/// Holds its connection busy; lives in the response body, so hyper drops it
/// once it has written the last byte (or given the body up).
pub(super) struct InFlight {
    activity: Arc<Activity>,
    /// HTTP/2: this response's debt, checked by the connection's task.
    owed: Option<Arc<Owed>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The next head is timed from now, as idle keep-alive first.
            activity
                .idle_since
                .store(activity.millis(), Ordering::Release);
            activity.read_since_idle.store(false, Ordering::Release);
            activity.changed.notify_one();
        }
    }
}

/// A response body holding its connection busy.
pub(super) struct Tracked<B> {
    inner: B,
    in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, in_flight: InFlight) -> Tracked<B> {
        Tracked { inner, in_flight }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(owed) = &this.in_flight.owed {
            // hyper asks again only once the stream has room for more.
            let due = match &polled {
                Poll::Ready(Some(Ok(frame))) => frame
                    .data_ref()
                    .map_or(0, |data| this.in_flight.activity.owed_until(data.len())),
                _ => 0,
            };
            owed.0.store(due, Ordering::Release);
        }
        polled
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
            let deadline = Instant::now() + self.allowance(len);
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
