//! A request body that must keep arriving: its deadline is its start +
//! `server.body_timeout` + received bytes / `server.min_recv_rate`, so a
//! large body on a slow but honest uplink has time, and a body trickling at
//! 1 B/s is cut instead of holding a handler (and, on the pass-through, an
//! upstream connection) for ever. hyper's own `header_read_timeout` ends with
//! the head; nothing in hyper bounds a body.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::config::ServerConfig;

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// The client did not send it fast enough (`server.body_timeout`,
    /// `server.min_recv_rate`).
    Timeout,
    /// The body broke its framing (a malformed chunk) or the client left
    /// (hyper's error, or the HTTP/1.1 front end's socket error).
    Read(crate::body::BoxError),
}

impl From<hyper::Error> for BodyError {
    fn from(e: hyper::Error) -> BodyError {
        BodyError::Read(Box::new(e))
    }
}

impl From<std::io::Error> for BodyError {
    fn from(e: std::io::Error) -> BodyError {
        BodyError::Read(Box::new(e))
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Timeout => f.write_str("request body timed out"),
            BodyError::Read(e) => write!(f, "request body: {e}"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Timeout => None,
            BodyError::Read(e) => Some(&**e),
        }
    }
}

impl BodyError {
    /// The body error somewhere in `e`'s source chain (a pass-through
    /// request's failure carries the body's below hyper's own).
    pub(crate) fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyError> {
        let mut cur = Some(e);
        while let Some(e) = cur {
            if let Some(found) = e.downcast_ref::<BodyError>() {
                return Some(found);
            }
            cur = e.source();
        }
        None
    }
}

/// The time a body may take once `received` bytes have come:
/// `body_timeout` + `received` / `min_recv_rate` (rate 0: `body_timeout`).
pub(crate) fn recv_allowance(
    body_timeout: Duration,
    min_recv_rate: usize,
    received: u64,
) -> Duration {
    let earned = match min_recv_rate {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(received as f64 / rate as f64),
    };
    body_timeout
        .saturating_add(earned)
        .min(crate::config::MAX_DURATION)
}

/// A request body under its deadline. Cancel-safe like any body: dropping
/// it drops the timer.
pub struct Deadline<B> {
    inner: B,
    start: Instant,
    body_timeout: Duration,
    min_recv_rate: usize,
    received: u64,
    /// Armed lazily, the first time the body has nothing to give: a body
    /// that arrives whole with its head never allocates a timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// `received` when the timer was last set, to reset it only on progress.
    armed_at: u64,
    timed_out: bool,
}

impl<B> Deadline<B> {
    /// The deadline counts from now.
    pub fn new(inner: B, server: &ServerConfig) -> Deadline<B> {
        Deadline {
            inner,
            start: Instant::now(),
            body_timeout: server.body_timeout,
            min_recv_rate: server.min_recv_rate,
            received: 0,
            sleep: None,
            armed_at: 0,
            timed_out: false,
        }
    }

    /// The body itself, for a request handed on whole (a WebSocket upgrade,
    /// whose body is empty).
    pub fn into_inner(self) -> B {
        self.inner
    }

    fn deadline(&self) -> Instant {
        self.start + recv_allowance(self.body_timeout, self.min_recv_rate, self.received)
    }
}

impl<B> Body for Deadline<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                match &mut this.sleep {
                    Some(_) if this.armed_at == this.received => {}
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                this.armed_at = this.received;
                let sleep = this.sleep.as_mut().expect("armed above");
                ready!(sleep.as_mut().poll(cx));
                this.timed_out = true;
                tracing::debug!(received = this.received, "request body timed out");
                Poll::Ready(Some(Err(BodyError::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
