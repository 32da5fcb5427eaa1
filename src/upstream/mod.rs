//! The upstream side of a session: the task that owns the upstream
//! WebSocket for the session's whole life. Opening it is in `connect`, its
//! frames in `codec`.
//!
//! The task runs the reader loop, which moves upstream frames into the
//! replay queue and pauses when undelivered events reach
//! `replay.max_pending_bytes` or the process-wide budget
//! (`replay.max_total_bytes`) has no room, so TCP backpressure reaches the
//! backend; the writer loop, a task of its own, forwards browser frames,
//! pings, and carries out closes. Reading and writing never wait on each
//! other, so a backend that stops reading cannot stall delivery, and the
//! other way round. Both loops are generic over a `Stream`/`Sink` of
//! messages, so the unit tests below drive them with channels on tokio's
//! paused clock.
//!
//! Closes are handshakes, never resets: whoever ends the session, the proxy
//! sends its close frame, reads (discarding) until the upstream answers or
//! hangs up or [`CLOSE_GRACE`] ends, and only then shuts the connection
//! down, with no unread byte left in the kernel's buffer (which would make
//! it send RST, and the upstream see 1006 instead of our close).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::metrics::{CloseReason, Metrics};
use crate::session::registry::Registry;
use crate::session::replay::EventData;
use crate::session::{
    ClaimedWriter, DirectWriter, Frame, Outbound, Pushed, Session, UpstreamHandle, WakeLater,
};

mod codec;
mod connect;

pub use codec::FrameReader;
pub use connect::{UpstreamSink, UpstreamStream, connect, failure_status, tls_client_config};

/// How long each step of a close may take: the upstream's answer to our
/// close frame, and its FIN after that. Past it the connection is shut.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Read buffer for discarding what arrives after a close.
const DISCARD_BUFFER: usize = 16 * 1024;
/// A write to the upstream that takes longer than this means a dead upstream.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings a session's upstream task runs with.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    pub ping: Duration,
    pub idle: Duration,
    pub linger: Duration,
}

/// What the reader and the writer of one upstream socket share.
#[derive(Default)]
struct Link {
    /// Whichever loop ends first stops the other.
    ended: CancellationToken,
    /// Set by the reader while backpressure holds it: no pong can be read
    /// then, so the writer must not take silence for death.
    paused: AtomicBool,
    pong_seen: AtomicBool,
    /// What the reader read that the writer must answer: the reader never
    /// writes, so it leaves the answer here and signals `answer`.
    owed: std::sync::Mutex<Owed>,
    answer: Notify,
}

/// Answers owed to the upstream.
#[derive(Default)]
struct Owed {
    /// The payload of the last ping not yet answered (RFC 6455 5.5.3 lets
    /// one pong answer several pings).
    pong: Option<Bytes>,
    /// The upstream began the close handshake: echo its close.
    close: Option<Option<CloseFrame>>,
}

impl Link {
    fn owe(&self, update: impl FnOnce(&mut Owed)) {
        // Plain data: a panic elsewhere cannot leave it half written.
        update(&mut self.owed.lock().unwrap_or_else(|p| p.into_inner()));
        self.answer.notify_one();
    }

    fn take_owed(&self) -> Owed {
        std::mem::take(&mut *self.owed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// What the reader's poll of the socket gave.
enum Next {
    /// Data frames, in `burst`.
    Burst,
    /// Anything else: a control frame, an error, the end.
    Other(Option<Result<Message, tungstenite::Error>>),
}

/// How the reader ended, which decides how the connection is shut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The stream ended in order: the close handshake is done, or the
    /// upstream hung up. Nothing more is coming.
    Closed,
    /// The stream was cut short (an oversized frame, a read error, the
    /// writer gave up): bytes may still be arriving, unread.
    Cut,
}

/// Runs a session's upstream side until the session ends, closes the
/// connection in order, then keeps the session readable for `linger` and
/// removes it from the registry. `open` is held while the upstream socket is.
///
/// The writer runs as a task of its own, so the frequent wake-ups of the
/// reader (every upstream frame) never poll the writer's timers and channel.
///
/// This future lives as long as the session, so its size is memory per
/// session: it takes the socket already split (two pointers, where the
/// halves inline would be kept by an `async fn` argument for good) and boxes
/// the close path, which only runs once.
pub async fn run(
    session: Arc<Session>,
    (sink, stream): (UpstreamSink, UpstreamStream),
    handle: UpstreamHandle,
    timers: Timers,
    open: TaskTrackerToken,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
) {
    let (stream, sink, end) = pump(&session, stream, sink, handle, timers, &metrics).await;
    if let Some(sink) = sink {
        Box::pin(shut_down(stream.into_inner(), sink.into_inner(), end)).await;
    }
    // The socket is closed: the drain need not wait for this session any
    // longer, and it lingers.
    drop(open);
    linger(&session, timers.linger, &registry).await;
}

/// Runs the reader here and the writer as a task until both have ended;
/// gives the two halves back (the sink unless the writer panicked).
async fn pump<S, K>(
    session: &Arc<Session>,
    mut stream: S,
    sink: K,
    handle: UpstreamHandle,
    timers: Timers,
    metrics: &Arc<Metrics>,
) -> (S, Option<K>, ReadEnd)
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    K: Sink<Message> + Unpin + Send + 'static,
    K::Error: std::fmt::Display + Send,
{
    let link = Arc::new(Link::default());
    let shared: SharedSink<K> = Arc::new(tokio::sync::Mutex::new(Some(sink)));
    session.set_direct_writer(Arc::clone(&shared) as Arc<dyn DirectWriter>);
    let writer = tokio::spawn(write_loop(
        Arc::clone(session),
        Arc::clone(&shared),
        handle,
        Arc::clone(&link),
        timers,
        Arc::clone(metrics),
    ));
    let end = read_loop(session, &mut stream, &link, metrics).await;
    // The writer ends once the reader has (the link says so), at most a
    // close handshake later; a send still writing is let finish (within
    // its write timeout), and later ones find the half gone.
    let sink = match writer.await {
        Ok(()) => shared.lock().await.take(),
        Err(_) => None,
    };
    (stream, sink, end)
}

/// The upstream's write half, shared by the writer task and the sends that
/// find it free (`session::DirectWriter`): whoever holds the lock writes.
/// `None` once the pump has taken the half back to shut the socket. One
/// allocation per session: it is itself what the session keeps.
type SharedSink<K> = Arc<tokio::sync::Mutex<Option<K>>>;

impl<K> DirectWriter for tokio::sync::Mutex<Option<K>>
where
    K: Sink<Message> + Unpin + Send + 'static,
{
    fn try_claim(self: Arc<Self>) -> Option<Box<dyn ClaimedWriter>> {
        let guard = self.try_lock_owned().ok()?;
        guard.is_some().then(|| {
            Box::new(Claimed {
                guard,
                started: false,
                failed: false,
            }) as Box<dyn ClaimedWriter>
        })
    }
}

/// The write half held by a send.
struct Claimed<K> {
    guard: tokio::sync::OwnedMutexGuard<Option<K>>,
    /// A frame was handed to the socket...
    started: bool,
    /// ...or the socket refused it (it is broken).
    failed: bool,
}

impl<K> ClaimedWriter for Claimed<K>
where
    K: Sink<Message> + Unpin + Send + 'static,
{
    fn start(&mut self, frame: Frame) -> Result<(), Frame> {
        let Some(sink) = self.guard.as_mut() else {
            return Err(frame);
        };
        // Ready at once unless a frame is still on its way (the reader
        // holds the socket this instant, or it is full): then the writer
        // task, which can wait, takes it. The no-op waker is never needed:
        // nothing waits on this poll.
        let mut cx = Context::from_waker(Waker::noop());
        if !matches!(
            Pin::new(&mut *sink).poll_ready(&mut cx),
            Poll::Ready(Ok(()))
        ) {
            return Err(frame);
        }
        let message = match frame {
            Frame::Text(bytes) => match tungstenite::Utf8Bytes::try_from(bytes) {
                Ok(text) => Message::Text(text),
                // `send` validated it already; never forward a broken text frame.
                Err(_) => return Ok(()),
            },
            Frame::Binary(bytes) => Message::Binary(bytes),
        };
        self.started = true;
        if Pin::new(sink).start_send(message).is_err() {
            self.failed = true;
        }
        Ok(())
    }

    fn started(&self) -> bool {
        self.started && !self.failed
    }

    fn finish(mut self: Box<Self>) -> Pin<Box<dyn Future<Output = bool> + Send>> {
        Box::pin(async move {
            if self.failed {
                return false;
            }
            if !self.started {
                return true;
            }
            let Some(sink) = self.guard.as_mut() else {
                return false;
            };
            matches!(timeout(WRITE_TIMEOUT, sink.flush()).await, Ok(Ok(())))
        })
    }
}

/// Keeps a finished session readable for `linger` from its close event
/// (not from the end of the close handshake), then forgets it.
async fn linger(session: &Session, linger: Duration, registry: &Registry) {
    let from = session.closed_at().unwrap_or_else(Instant::now);
    sleep_until(from + linger).await;
    registry.remove(&session.id);
}

/// Shuts an upstream connection down without a reset, within
/// [`CLOSE_GRACE`]. After an orderly end the FIN goes first (a peer waiting
/// for it may go at once), then what still arrives is read up to the
/// upstream's own FIN. After a cut (the rest of an oversized frame may be
/// on its way, and the reader is out of step with the frames) everything
/// is read and discarded until the upstream, which has our close frame,
/// hangs up; only then the FIN. Either way no unread byte is left behind.
async fn shut_down<R, W>(mut read: R, mut write: W, end: ReadEnd)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let deadline = Instant::now() + CLOSE_GRACE;
    if end == ReadEnd::Closed {
        let _ = timeout_at(deadline, write.shutdown()).await;
        discard_until_eof(&mut read, deadline).await;
    } else {
        discard_until_eof(&mut read, deadline).await;
        let _ = timeout(CLOSE_GRACE, write.shutdown()).await;
    }
}

/// Reads and drops bytes until EOF, an error or `deadline`; true on EOF.
async fn discard_until_eof<T: AsyncRead + Unpin>(io: &mut T, deadline: Instant) -> bool {
    // Only on the close path, so a heap buffer of a useful size is fine.
    let mut buf = vec![0u8; DISCARD_BUFFER];
    loop {
        match timeout_at(deadline, io.read(&mut buf)).await {
            Ok(Ok(0)) => return true,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}

async fn read_loop<S>(session: &Session, stream: &mut S, link: &Link, metrics: &Metrics) -> ReadEnd
where
    S: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    let Link {
        ended,
        paused,
        pong_seen,
        ..
    } = link;
    let _stop_writer = ended.clone().drop_guard();
    // One future for the whole loop: making one per frame costs a
    // registration and a deregistration each time.
    let cancelled = ended.cancelled();
    tokio::pin!(cancelled);
    // What the last push said; checked again under the lock before waiting.
    let mut pause = false;
    // Data frames the socket already had, pushed together (at most a
    // wake-up's worth, `WakeLater::FRAMES` or `BYTES`): empty between bursts,
    // and between reads unless a push found no room for all of them.
    let mut burst = VecDeque::new();
    // What ended a burst without being a data frame: handled after it.
    let mut after = None;
    // The reader's wake-up, put off while frames already read are pushed;
    // woken before every wait below, and on return when dropped.
    let mut wake = WakeLater::default();
    loop {
        if pause {
            wake.wake();
            if session.must_pause() {
                paused.store(true, Ordering::Release);
                metrics.backpressure_paused();
                tokio::select! {
                    // A reader drained some events, or the session ended.
                    _ = session.drained() => {}
                    _ = &mut cancelled => return ReadEnd::Cut,
                }
                paused.store(false, Ordering::Release);
                continue;
            }
            pause = false;
        }
        let next = if !burst.is_empty() {
            // Left by a push that stopped at `max_pending_bytes` or found
            // no budget room: pushed before anything more is read.
            Next::Burst
        } else if let Some(next) = after.take() {
            Next::Other(next)
        } else {
            let mut gathered = 0;
            let next = tokio::select! {
                // Biased: the stream first, so a frame that is ready costs no
                // poll of the cancellation (a stop is seen once the socket
                // has nothing ready, at the latest when tokio's budget says
                // so).
                biased;
                // `poll_next` is cancel-safe: a frame is either returned or
                // stays buffered. Data frames the socket already has are
                // taken together; only when it has nothing more is the
                // reader woken, once for every frame pushed since it last was.
                next = std::future::poll_fn(|cx| loop {
                    if burst.len() >= WakeLater::FRAMES || gathered >= WakeLater::BYTES {
                        return Poll::Ready(Next::Burst);
                    }
                    let next = match stream.poll_next_unpin(cx) {
                        Poll::Pending if burst.is_empty() => {
                            wake.wake();
                            return Poll::Pending;
                        }
                        Poll::Pending => return Poll::Ready(Next::Burst),
                        Poll::Ready(next) => next,
                    };
                    let data = match next {
                        Some(Ok(Message::Text(text))) => EventData::Text(Bytes::from(text)),
                        Some(Ok(Message::Binary(data))) => EventData::Binary(data),
                        other if burst.is_empty() => return Poll::Ready(Next::Other(other)),
                        // Handled once the frames before it are in.
                        other => {
                            after = Some(other);
                            return Poll::Ready(Next::Burst);
                        }
                    };
                    gathered += data.data_len();
                    burst.push_back(data);
                }) => next,
                _ = &mut cancelled => return ReadEnd::Cut,
            };
            if matches!(next, Next::Burst) {
                metrics.down.count_many(burst.len(), gathered);
            }
            next
        };
        let next = match next {
            Next::Burst => {
                let bytes = burst.iter().map(EventData::data_len).sum();
                pause = match session.push_burst(&mut burst, bytes, &mut wake) {
                    Pushed::Queued { pause } => {
                        if wake.due() {
                            wake.wake();
                        }
                        pause
                    }
                    Pushed::NoRoom(data) => {
                        wake.wake();
                        match push_when_room(session, data, link, metrics, &mut cancelled).await {
                            Some(pause) => pause,
                            None => return ReadEnd::Cut,
                        }
                    }
                };
                continue;
            }
            Next::Other(next) => next,
        };
        match next {
            // Data frames are taken in bursts, above.
            Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Pong(_))) => {
                pong_seen.store(true, Ordering::Release);
            }
            Some(Ok(Message::Ping(payload))) => {
                link.owe(|owed| owed.pong = Some(payload));
            }
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = match &frame {
                    Some(f) => (u16::from(f.code), f.reason.to_string()),
                    None => (1005, String::new()),
                };
                session.finish(code, &reason, CloseReason::Upstream);
                // The writer echoes it (unless this answers our own close),
                // and the reader reads on until the upstream hangs up.
                link.owe(|owed| owed.close = Some(frame));
            }
            Some(Err(tungstenite::Error::Capacity(e))) => {
                tracing::debug!(session = session.log_id(), error = %e, "upstream frame too large");
                session.close(1009, "message too big", CloseReason::Error);
                return ReadEnd::Cut;
            }
            Some(Err(e)) => {
                tracing::debug!(session = session.log_id(), error = %e, "upstream read failed");
                session.finish(1006, "", CloseReason::Dead);
                return ReadEnd::Cut;
            }
            None => {
                session.finish(1006, "", CloseReason::Dead);
                return ReadEnd::Closed;
            }
        }
    }
}

/// Pushes a frame the process-wide budget had no room for, once it has:
/// the reader holds it meanwhile and reads nothing more, so TCP
/// backpressure reaches the backend. `None` when the loop is stopped.
async fn push_when_room(
    session: &Session,
    mut data: EventData,
    link: &Link,
    metrics: &Metrics,
    cancelled: &mut (impl Future<Output = ()> + Unpin),
) -> Option<bool> {
    let budget = session.budget();
    let _waiting = budget.waiting();
    link.paused.store(true, Ordering::Release);
    metrics.backpressure_paused();
    let pause = loop {
        // Enabled before trying, so a release in between is not lost.
        let freed = budget.freed();
        tokio::pin!(freed);
        freed.as_mut().enable();
        match session.push(data) {
            Pushed::Queued { pause } => break Some(pause),
            Pushed::NoRoom(back) => data = back,
        }
        tokio::select! {
            // Another session gave bytes back.
            _ = freed => {}
            // This session's reader read (what it sent may now be shed),
            // or the session ended (the frame is then let go).
            _ = session.drained() => {}
            _ = &mut *cancelled => break None,
        }
    };
    link.paused.store(false, Ordering::Release);
    pause
}

/// Writes queued frames and pings and carries out closes, each with the
/// write half locked (a send may hold it meanwhile, writing its own frame).
async fn write_loop<K>(
    session: Arc<Session>,
    shared: SharedSink<K>,
    mut handle: UpstreamHandle,
    link: Arc<Link>,
    timers: Timers,
    metrics: Arc<Metrics>,
) where
    K: Sink<Message> + Unpin,
    K::Error: std::fmt::Display,
{
    // The half, locked: only the pump takes it away, after this loop ends.
    macro_rules! locked {
        ($guard:ident) => {
            let mut $guard = shared.lock().await;
            let Some($guard) = $guard.as_mut() else {
                return;
            };
        };
    }
    let session = &*session;
    let metrics = &*metrics;
    let Link {
        ended,
        paused,
        pong_seen,
        ..
    } = &*link;
    let _stop_reader = ended.clone().drop_guard();
    let mut ping = tokio::time::interval_at(Instant::now() + timers.ping, timers.ping);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_outstanding = false;
    loop {
        let idle_at = session
            .idle_since()
            .map_or_else(|| Instant::now() + timers.idle, |t| t + timers.idle);
        tokio::select! {
            biased;
            // First, so a close the reader asked for (an oversized frame) is
            // still sent after the reader has stopped.
            request = session.close_requested() => {
                {
                    locked!(sink);
                    send_close(sink, close_frame(request.code, &request.reason)).await;
                }
                // The reader reads on until the upstream answers the close
                // (the stream then ends), for at most the grace.
                let _ = timeout(CLOSE_GRACE, ended.cancelled()).await;
                return;
            }
            // The reader saw the upstream end: nothing left to write to.
            _ = ended.cancelled() => return,
            // The reader read a ping or the upstream's close.
            () = link.answer.notified() => {
                let owed = link.take_owed();
                locked!(sink);
                if let Some(frame) = owed.close {
                    send_close(sink, frame.map(echo)).await;
                    // The upstream hangs up now; the reader sees it.
                    let _ = timeout(CLOSE_GRACE, ended.cancelled()).await;
                    return;
                }
                if let Some(payload) = owed.pong
                    && !matches!(timeout(WRITE_TIMEOUT, sink.send(Message::Pong(payload))).await, Ok(Ok(())))
                {
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
            }
            Some(out) = handle.outbound.recv() => {
                locked!(sink);
                if !write(session, sink, out, metrics).await {
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
            }
            // A send that started a frame was dropped before its flush.
            () = session.flush_requested() => {
                locked!(sink);
                if !matches!(timeout(WRITE_TIMEOUT, sink.flush()).await, Ok(Ok(()))) {
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
            }
            _ = ping.tick() => {
                if paused.load(Ordering::Acquire) {
                    ping_outstanding = false;
                    continue;
                }
                locked!(sink);
                if ping_outstanding && !pong_seen.load(Ordering::Acquire) {
                    tracing::debug!(session = session.log_id(), "upstream missed a pong");
                    session.finish(1006, "", CloseReason::Dead);
                    // It may only be slow: tell it, as a handshake like any
                    // other close (1006 itself never goes on the wire).
                    send_close(sink, close_frame(1001, "no pong")).await;
                    let _ = timeout(CLOSE_GRACE, ended.cancelled()).await;
                    return;
                }
                pong_seen.store(false, Ordering::Release);
                ping_outstanding = true;
                if !matches!(timeout(WRITE_TIMEOUT, sink.send(Message::Ping(Bytes::new()))).await, Ok(Ok(()))) {
                    session.finish(1006, "", CloseReason::Dead);
                    return;
                }
            }
            _ = sleep_until(idle_at) => {
                if session.idle_since().is_some_and(|t| t + timers.idle <= Instant::now()) {
                    session.close(1001, "idle timeout", CloseReason::Idle);
                }
            }
        }
    }
}

/// Sends a close frame, giving up after the grace (a stuck upstream).
async fn send_close<K>(sink: &mut K, frame: Option<CloseFrame>)
where
    K: Sink<Message> + Unpin,
{
    let _ = timeout(CLOSE_GRACE, sink.send(Message::Close(frame))).await;
}

fn close_frame(code: u16, reason: &str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    })
}

/// The answer to the upstream's close: its code back (RFC 6455 5.5.1), or
/// 1002 for a code no endpoint may send.
fn echo(frame: CloseFrame) -> CloseFrame {
    let code = if frame.code.is_allowed() {
        frame.code
    } else {
        CloseCode::Protocol
    };
    CloseFrame {
        code,
        reason: "".into(),
    }
}

/// Writes one browser frame and acknowledges it; false when the upstream is
/// gone or stuck.
async fn write<K>(session: &Session, sink: &mut K, out: Box<Outbound>, metrics: &Metrics) -> bool
where
    K: Sink<Message> + Unpin,
    K::Error: std::fmt::Display,
{
    let len = out.frame.len();
    let message = match out.frame {
        Frame::Text(bytes) => match tungstenite::Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            // `send` validated it already; never forward a broken text frame.
            Err(_) => {
                session.frame_dropped(len);
                return true;
            }
        },
        Frame::Binary(bytes) => Message::Binary(bytes),
    };
    match timeout(WRITE_TIMEOUT, sink.send(message)).await {
        Ok(Ok(())) => {
            session.frame_written(len);
            metrics.up.count(len);
            let _ = out.written.send(());
            true
        }
        Ok(Err(e)) => {
            tracing::debug!(session = session.log_id(), error = %e, "upstream write failed");
            false
        }
        Err(_) => false,
    }
}

/// The loops driven through channels on tokio's paused clock: what the
/// upstream would see on the wire, at the times it would see it.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Overflow, Transport};
    use crate::session::testing::{limits, session};
    use crate::session::{Batch, SessionLimits};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;
    use tokio::time::sleep;
    use tokio_util::sync::PollSender;
    use tungstenite::error::CapacityError;

    type Incoming = Result<Message, tungstenite::Error>;

    const HOUR: Duration = Duration::from_secs(3600);

    /// The upstream's end of an in-memory WebSocket.
    struct Peer {
        /// What the upstream sends the proxy.
        send: mpsc::Sender<Incoming>,
        /// What the proxy sent the upstream.
        got: mpsc::Receiver<Message>,
    }

    struct Running {
        session: Arc<Session>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        peer: Peer,
        pump: JoinHandle<ReadEnd>,
    }

    fn timers(ping: Duration, idle: Duration, linger: Duration) -> Timers {
        Timers { ping, idle, linger }
    }

    fn start_in(registry: Arc<Registry>, timers: Timers, limits: SessionLimits) -> Running {
        let metrics = Arc::new(Metrics::new());
        let (session, handle) = session(&registry, limits, Arc::clone(&metrics));
        let (send, mut incoming) = mpsc::channel::<Incoming>(16);
        let (outgoing, got) = mpsc::channel::<Message>(16);
        let stream = futures_util::stream::poll_fn(move |cx| incoming.poll_recv(cx));
        let sink = PollSender::new(outgoing);
        let (s, m) = (Arc::clone(&session), Arc::clone(&metrics));
        let pump = tokio::spawn(async move { pump(&s, stream, sink, handle, timers, &m).await.2 });
        Running {
            session,
            registry,
            metrics,
            peer: Peer { send, got },
            pump,
        }
    }

    fn start(timers: Timers) -> Running {
        start_in(
            Arc::new(Registry::new(10, 0, 1 << 20)),
            timers,
            limits(1 << 20, Overflow::Backpressure),
        )
    }

    fn close_code(message: &Message) -> Option<u16> {
        match message {
            Message::Close(Some(frame)) => Some(u16::from(frame.code)),
            _ => None,
        }
    }

    fn close(code: u16) -> Incoming {
        Ok(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        })))
    }

    #[tokio::test(start_paused = true)]
    async fn an_unattended_session_closes_with_1001_at_the_idle_timeout() {
        let idle = Duration::from_secs(60);
        let mut run = start(timers(HOUR, idle, HOUR));
        let t0 = Instant::now();
        // A reader attached at 50 s holds the session open...
        sleep(Duration::from_secs(50)).await;
        let reader = run.session.attach(Transport::Sse, 0).unwrap();
        sleep(Duration::from_secs(100)).await;
        assert!(
            run.peer.got.try_recv().is_err(),
            "closed with a reader attached"
        );
        assert!(run.session.closed().is_none());
        // ...and the timeout runs from when it leaves.
        drop(reader);
        let left = Instant::now();
        let message = run.peer.got.recv().await.unwrap();
        assert_eq!(close_code(&message), Some(1001), "{message:?}");
        assert_eq!(left.elapsed(), idle);
        assert!(t0.elapsed() >= Duration::from_secs(150) + idle);
        assert_eq!(run.session.closed().unwrap().code, 1001);
        // The upstream answers: the handshake is done and the reader ends in order.
        run.peer.send.send(close(1001)).await.unwrap();
        drop(run.peer.send);
        assert_eq!(run.pump.await.unwrap(), ReadEnd::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn sends_keep_a_session_alive() {
        let idle = Duration::from_secs(60);
        let mut run = start(timers(HOUR, idle, HOUR));
        // Ten minutes of a send every 45 s: never idle for 60 s.
        for _ in 0..(600 / 45) {
            sleep(Duration::from_secs(45)).await;
            let s = Arc::clone(&run.session);
            let sent =
                tokio::spawn(
                    async move { s.send(Frame::Text(Bytes::from_static(b"hi")), None).await },
                );
            let got = run.peer.got.recv().await.unwrap();
            assert!(
                matches!(&got, Message::Text(t) if t.as_str() == "hi"),
                "{got:?}"
            );
            assert_eq!(
                sent.await.unwrap().unwrap(),
                crate::session::SendOutcome::Written
            );
        }
        assert!(run.session.closed().is_none());
        // Then silence: closed a whole idle timeout after the last send.
        let last = Instant::now();
        let message = run.peer.got.recv().await.unwrap();
        assert_eq!(close_code(&message), Some(1001), "{message:?}");
        assert_eq!(last.elapsed(), idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_session_lingers_then_is_removed() {
        let linger_for = Duration::from_secs(30);
        let run = start(timers(HOUR, HOUR, linger_for));
        run.peer.send.send(close(4000)).await.unwrap();
        drop(run.peer.send);
        assert_eq!(run.pump.await.unwrap(), ReadEnd::Closed);
        assert_eq!(run.session.closed().unwrap().code, 4000);
        // The linger runs from the close event, however long the socket's
        // shutdown then takes.
        sleep(Duration::from_secs(10)).await;
        let id = run.session.id.clone();
        let (s, r) = (Arc::clone(&run.session), Arc::clone(&run.registry));
        let lingering = tokio::spawn(async move { linger(&s, linger_for, &r).await });
        sleep(linger_for - Duration::from_secs(11)).await;
        assert!(
            run.registry.get(&id).is_some(),
            "gone before the linger ended"
        );
        sleep(Duration::from_secs(2)).await;
        assert!(lingering.is_finished());
        assert!(
            run.registry.get(&id).is_none(),
            "still there after the linger"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pings_every_interval_and_a_missed_pong_is_a_dead_upstream() {
        let every = Duration::from_secs(30);
        let mut run = start(timers(every, HOUR, HOUR));
        let t0 = Instant::now();
        let first = run.peer.got.recv().await.unwrap();
        assert!(matches!(first, Message::Ping(_)), "{first:?}");
        assert_eq!(t0.elapsed(), every);
        // Answered: the next ping comes, and the session lives on.
        run.peer
            .send
            .send(Ok(Message::Pong(Bytes::new())))
            .await
            .unwrap();
        let second = run.peer.got.recv().await.unwrap();
        assert!(matches!(second, Message::Ping(_)), "{second:?}");
        assert_eq!(t0.elapsed(), every * 2);
        assert!(run.session.closed().is_none());
        // Unanswered: at the next ping the upstream is dead (close event
        // 1006), and it is told so with a close frame.
        let last = run.peer.got.recv().await.unwrap();
        assert_eq!(close_code(&last), Some(1001), "{last:?}");
        assert_eq!(t0.elapsed(), every * 3);
        assert_eq!(run.session.closed().unwrap().code, 1006);
        // Nobody answers the close: the loops give up after the grace.
        assert_eq!(run.pump.await.unwrap(), ReadEnd::Cut);
        assert_eq!(t0.elapsed(), every * 3 + CLOSE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_frame_closes_with_1009() {
        let mut run = start(timers(HOUR, HOUR, HOUR));
        let too_big = CapacityError::MessageTooLong {
            size: 5000,
            max_size: 1024,
        };
        run.peer
            .send
            .send(Err(tungstenite::Error::Capacity(too_big)))
            .await
            .unwrap();
        let message = run.peer.got.recv().await.unwrap();
        assert_eq!(close_code(&message), Some(1009), "{message:?}");
        let closed = run.session.closed().unwrap();
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (1009, "message too big")
        );
        // The stream is out of step with the frames: the socket is cut, and
        // shut_down discards what still arrives.
        assert_eq!(run.pump.await.unwrap(), ReadEnd::Cut);
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_ping_is_answered_with_its_payload() {
        let mut run = start(timers(HOUR, HOUR, HOUR));
        let payload = Bytes::from_static(b"are you there");
        run.peer
            .send
            .send(Ok(Message::Ping(payload.clone())))
            .await
            .unwrap();
        assert_eq!(run.peer.got.recv().await.unwrap(), Message::Pong(payload));
        assert!(run.session.closed().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_upstreams_close_is_echoed_and_ends_the_session() {
        let mut run = start(timers(HOUR, HOUR, HOUR));
        run.peer.send.send(close(4001)).await.unwrap();
        let message = run.peer.got.recv().await.unwrap();
        assert_eq!(close_code(&message), Some(4001), "{message:?}");
        assert_eq!(run.session.closed().unwrap().code, 4001);
        // A code no endpoint may send is answered with a protocol error.
        let mut run = start(timers(HOUR, HOUR, HOUR));
        run.peer.send.send(close(1006)).await.unwrap();
        let message = run.peer.got.recv().await.unwrap();
        assert_eq!(close_code(&message), Some(1002), "{message:?}");
        // The upstream hangs up: the stream ends in order.
        drop(run.peer.send);
        assert_eq!(run.pump.await.unwrap(), ReadEnd::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_without_budget_room_pauses_and_resumes_when_room_frees() {
        let registry = Arc::new(Registry::new(10, 0, 100));
        let metrics = Arc::new(Metrics::new());
        // Another session holds 80 of the 100 bytes, undelivered.
        let (other, _handle) = session(
            &registry,
            limits(1 << 20, Overflow::Backpressure),
            Arc::clone(&metrics),
        );
        let _ = other.push(EventData::Text(Bytes::from(vec![b'o'; 80])));
        let run = start_in(
            Arc::clone(&registry),
            timers(HOUR, HOUR, HOUR),
            limits(1 << 20, Overflow::Backpressure),
        );
        let frames = [50, 10, 10, 10, 10, 10, 10];
        let send = |i: usize| {
            let text = format!("{i}{}", "x".repeat(frames[i] - 1));
            run.peer.send.send(Ok(Message::text(text)))
        };
        // What the socket had at once is one burst, taken whole; the first
        // frame has no room, so none is queued and the reader holds them.
        for i in 0..4 {
            send(i).await.unwrap();
        }
        sleep(Duration::from_secs(5)).await;
        assert_eq!(run.session.replay_depth(), (0, 0));
        assert_eq!(run.peer.send.capacity(), 16);
        // Meanwhile it reads nothing more: the rest wait in the socket
        // (here, the channel), so backpressure reaches the upstream.
        for i in 4..frames.len() {
            send(i).await.unwrap();
        }
        sleep(Duration::from_secs(5)).await;
        assert_eq!(run.peer.send.capacity(), 16 - 3);
        assert!(
            run.metrics
                .render(&Default::default(), crate::metrics::Format::Prometheus)
                .contains("wsbridge_backpressure_pauses_total 1\n")
        );
        // The other session's reader takes and acknowledges its event.
        let mut other_reader = other.attach(Transport::Poll, 0).unwrap();
        assert!(matches!(
            other_reader.try_next(10, 1 << 20),
            Batch::Events(_)
        ));
        drop(other_reader);
        other.attach(Transport::Poll, 1).unwrap();
        // Every frame then arrives, in order, none dropped.
        let mut reader = run.session.attach(Transport::Poll, 0).unwrap();
        let mut got = Vec::new();
        while got.len() < frames.len() {
            let Batch::Events(events) = reader.next(10, 1 << 20).await else {
                panic!("superseded")
            };
            got.extend(events);
        }
        let ids: Vec<u64> = got.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6, 7]);
        for (event, (i, len)) in got.iter().zip(frames.iter().enumerate()) {
            let EventData::Text(text) = &event.data else {
                panic!("{event:?}")
            };
            assert_eq!((text[0], text.len()), (b'0' + i as u8, *len));
        }
        assert!(registry.budget().used() <= 100);
    }

    /// Counts its wake-ups: stands in for a reader's task.
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_is_woken_once_for_the_frames_the_socket_already_had() {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(10, 0, 1 << 20);
        let (session, handle) = session(
            &registry,
            limits(1 << 20, Overflow::Backpressure),
            Arc::clone(&metrics),
        );
        let mut reader = session.attach(Transport::Sse, 0).unwrap();
        let counter = Arc::new(CountingWaker(std::sync::atomic::AtomicUsize::new(0)));
        let waker = std::task::Waker::from(Arc::clone(&counter));
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(reader.poll_next(&mut cx, 100, 1 << 20).is_pending());
        // A socket holding three frames, then nothing for now: the stream
        // notes, as it hands out each frame, how often the reader was woken.
        let mut held: std::collections::VecDeque<Incoming> = (1..=3)
            .map(|i| Ok(Message::text(format!("f{i}"))))
            .collect();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, s) = (Arc::clone(&counter), Arc::clone(&seen));
        let stream = futures_util::stream::poll_fn(move |_cx| match held.pop_front() {
            Some(frame) => {
                s.lock().unwrap().push(c.0.load(Ordering::SeqCst));
                std::task::Poll::Ready(Some(frame))
            }
            None => std::task::Poll::Pending,
        });
        let (outgoing, _got) = mpsc::channel::<Message>(16);
        let (s, m) = (Arc::clone(&session), Arc::clone(&metrics));
        let timers = timers(HOUR, HOUR, HOUR);
        let pump = tokio::spawn(async move {
            pump(&s, stream, PollSender::new(outgoing), handle, timers, &m).await
        });
        // Until the socket runs dry, no wake-up; then exactly one, for all three.
        sleep(Duration::from_secs(1)).await;
        assert_eq!(*seen.lock().unwrap(), [0, 0, 0]);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);
        let std::task::Poll::Ready(Batch::Events(events)) = reader.poll_next(&mut cx, 100, 1 << 20)
        else {
            panic!("no events after the wake-up")
        };
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
        pump.abort();
    }
}

/// The upstream task lives as long as its session: its size is memory per
/// held session, which a socket kept by value or an inlined close path
/// would triple (it was 5.5 KiB before [`run`] took the split halves and
/// boxed the close path).
#[cfg(test)]
mod task_size {
    use super::*;

    fn future_size<A, B, C, D, E, G, H, F>(_: fn(A, B, C, D, E, G, H) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_upstream_task_of_a_session_stays_small() {
        let size = future_size(run);
        assert!(size <= 2048, "upstream::run's future is {size} bytes");
    }
}
