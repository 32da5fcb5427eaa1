//! A bridged session: one upstream WebSocket re-exposed over HTTP. The
//! session is the meeting point of the upstream task (which pushes events and
//! writes frames) and the HTTP handlers (which read events and queue frames).
//!
//! Locking: one `std::sync::Mutex` per session guards its state; it is held
//! for a few field updates or one replay-queue call and never across an
//! `.await`. Wake-ups go through the live reader's waker, kept in the state
//! and woken by whoever changes what it waits for, and two `Notify`s (the
//! upstream task), so no one polls.
//!
//! Memory: the queue's held bytes are drawn from the process-wide
//! [`budget::ReplayBudget`] and kept in step with it after every queue call
//! (`Session::account`), under the same lock; the budget's own lock-free
//! counter is the only thing sessions share on the message path.
//!
//! Submodules: [`replay`] (the pure queue), [`budget`] (the process-wide
//! byte bound), [`registry`] (id → session, and the session limits).

pub mod budget;
pub mod channel;
pub mod registry;
pub mod replay;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use std::task::{Context, Poll, Waker};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::Overflow;
use crate::config::{Config, Transport};
use crate::error::BridgeError;
use crate::metrics::{CloseReason, Metrics};
use crate::routing::Target;
use crate::telemetry::SessionSpan;
use budget::ReplayBudget;
use registry::Slot;
use replay::{Event, EventData, ReplayLimits, ReplayQueue};

/// How many frames may wait in a session's outbound channel. Bytes are
/// bounded separately by `limits.max_outbound_bytes`; this bounds the count
/// (empty frames cost nothing in bytes).
pub const OUTBOUND_FRAMES: usize = 64;

/// A frame on its way to the upstream, with the sender's acknowledgement.
pub struct Outbound {
    pub frame: Frame,
    /// Answered once the frame is written to the upstream socket.
    pub written: oneshot::Sender<()>,
}

/// The upstream socket's write half as a send sees it: a send that finds
/// it free, with nothing queued ahead, writes its frame itself rather than
/// handing it to the writer task and waiting to be told (one task hop and
/// one wake-up less per send). Implemented by the upstream task
/// (`upstream::SharedSink`), which owns the half.
pub trait DirectWriter: Send + Sync {
    /// The write half, if no one (the writer task, another send) holds it.
    fn try_claim(self: Arc<Self>) -> Option<Box<dyn ClaimedWriter>>;
}

/// The write half, held: nobody else writes until it is dropped.
pub trait ClaimedWriter: Send {
    /// Hands `frame` to the socket without waiting. Once this returns
    /// `Ok`, the frame belongs to the socket: if the send is dropped before
    /// [`ClaimedWriter::finish`] ends, the writer task flushes it. `Err`
    /// gives it back: the half is busy or broken, and it goes the queued way.
    fn start(&mut self, frame: Frame) -> Result<(), Frame>;
    /// True when a frame was started and the socket took it.
    fn started(&self) -> bool;
    /// Flushes the started frame; false when the upstream is gone or stuck.
    fn finish(self: Box<Self>) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;
}

/// A data frame from the browser.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Bytes),
    Binary(Bytes),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The close a session ended with, as its `close` event carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

/// What pushing an upstream frame did.
#[derive(Debug)]
pub enum Pushed {
    /// Queued (or let go because the session is over); `pause` says the
    /// session's own `replay.max_pending_bytes` is reached.
    Queued { pause: bool },
    /// The process-wide budget has no room even after the session shed what
    /// it may: the frame comes back, to be pushed again once room frees.
    NoRoom(EventData),
}

/// What queueing a frame did.
#[derive(Debug)]
pub enum Queued {
    /// Queued: answered once the frame is written to the upstream socket.
    Waiting(oneshot::Receiver<()>),
    /// The `Bridge-Seq` was already forwarded: nothing was queued.
    Duplicate,
}

/// Asks the upstream writer to flush, when dropped still holding the ask.
struct FlushOnDrop<'a>(Option<&'a Notify>);

impl Drop for FlushOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(flush) = self.0 {
            flush.notify_one();
        }
    }
}

/// Where an admitted frame went.
enum Admitted {
    Queued(Queued),
    /// Started on the write half the send holds; `finish` it (the length is
    /// for the counters).
    Direct(Box<dyn ClaimedWriter>, usize),
}

/// What a send did.
#[derive(Debug, PartialEq, Eq)]
pub enum SendOutcome {
    Written,
    /// The `Bridge-Seq` was already forwarded: nothing was sent again.
    Duplicate,
}

pub struct Session {
    /// The bearer capability. Never logged whole: see [`Session::log_id`].
    pub id: String,
    /// The negotiated subprotocol, or empty.
    pub protocol: String,
    pub target: Target,
    pub client: IpAddr,
    /// Wakes the upstream reader when a client drained a paused queue.
    drained: Notify,
    /// Wakes the upstream writer when a close was requested.
    control: Notify,
    /// Wakes the upstream writer to flush a frame a send started writing
    /// itself and was dropped before finishing (its client left).
    flush: Notify,
    /// Frames for the upstream writer; bounded by count here and by bytes in
    /// `outbound_bytes`.
    /// Boxed: tokio allocates a channel's first block of slots up front,
    /// and a slot of a pointer keeps that small for the many sessions that
    /// never send.
    outbound: mpsc::Sender<Box<Outbound>>,
    /// Bytes accepted by `send` and not yet written upstream (for the 429).
    outbound_bytes: AtomicUsize,
    /// Frames handed to the writer task and not yet written: a send writes
    /// directly only when this is 0, so frames never overtake each other.
    /// Raised under the state lock; the writer lowers it after each write.
    outbound_queued: AtomicUsize,
    /// The upstream's write half, for sends that find it free; set once the
    /// upstream task runs.
    direct: std::sync::OnceLock<Arc<dyn DirectWriter>>,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    limits: SessionLimits,
    /// `replay.max_total_bytes`, shared with every session: the queue's held
    /// bytes are drawn from it until the session is dropped.
    budget: Arc<ReplayBudget>,
    /// When the upstream handshake finished, for the session-end log line.
    opened: Instant,
    /// Frames written upstream, for the session-end log line (the down
    /// count is the state's, kept under the lock it already takes).
    events_up: AtomicU64,
}

/// The per-session numbers taken from the config once.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    pub replay: ReplayLimits,
    pub max_outbound_bytes: usize,
    pub max_sends_per_second: u32,
}

impl SessionLimits {
    pub fn from_config(config: &Config) -> Self {
        SessionLimits {
            replay: ReplayLimits {
                max_events: config.replay.max_events,
                max_bytes: config.replay.max_bytes,
                max_pending_bytes: config.replay.max_pending_bytes,
                overflow: config.replay.overflow,
            },
            max_outbound_bytes: config.limits.max_outbound_bytes,
            max_sends_per_second: config.sessions.max_sends_per_second,
        }
    }
}

struct State {
    queue: ReplayQueue,
    /// Set when the close event is queued; the session lingers from then.
    closed: Option<CloseInfo>,
    /// When the close event was queued: the linger runs from here.
    closed_at: Option<Instant>,
    /// The close the upstream task is to send, once the proxy ends a session.
    close_request: Option<CloseInfo>,
    /// Generation of the newest reader; older readers are superseded.
    reader_generation: u64,
    /// The waker of a reader that found nothing to read: woken by the next
    /// event, the close, or a newer reader. One slot, since one reader is live.
    reader_waker: Option<Waker>,
    /// The live reader's transport, for the `sessions_active` gauge.
    reader_transport: Option<Transport>,
    /// Attached readers (an old one may linger for a moment when superseded).
    readers: u32,
    /// Last time a reader detached or a frame was sent; drives idle_timeout.
    last_activity: Instant,
    /// The highest `Bridge-Seq` forwarded.
    last_seq: u64,
    /// Upstream frames queued as events, for the session-end log line.
    events_down: u64,
    /// Token bucket for `sessions.max_sends_per_second`.
    send_tokens: f64,
    send_tokens_at: Instant,
    /// The session's place in the registry's limits, given back on close.
    slot: Option<Slot>,
    /// Bytes drawn from the budget: the queue's held bytes as of the last
    /// [`Session::account`].
    charged: usize,
    /// The queue's `dropped_undelivered()` as of the last account, for the metric.
    dropped_reported: u64,
    /// The upstream reader waits for budget room: a read (which makes events
    /// sent, so sheddable) wakes it to try again.
    starved: bool,
    /// The session's span (`[telemetry]`), ended with the session-end line.
    span: Option<SessionSpan>,
}

/// The upstream task's end of a session.
pub struct UpstreamHandle {
    pub outbound: mpsc::Receiver<Box<Outbound>>,
}

impl Session {
    pub fn new(
        id: String,
        protocol: String,
        target: Target,
        client: IpAddr,
        slot: Slot,
        limits: SessionLimits,
        metrics: Arc<Metrics>,
    ) -> (Arc<Session>, UpstreamHandle) {
        let (tx, rx) = mpsc::channel(OUTBOUND_FRAMES);
        let now = Instant::now();
        let budget = Arc::clone(slot.budget());
        let session = Session {
            id,
            protocol,
            target,
            client,
            drained: Notify::new(),
            control: Notify::new(),
            flush: Notify::new(),
            outbound: tx,
            outbound_bytes: AtomicUsize::new(0),
            outbound_queued: AtomicUsize::new(0),
            direct: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                queue: ReplayQueue::new(limits.replay),
                closed: None,
                closed_at: None,
                close_request: None,
                reader_generation: 0,
                reader_waker: None,
                reader_transport: None,
                readers: 0,
                last_activity: now,
                last_seq: 0,
                events_down: 0,
                send_tokens: f64::from(limits.max_sends_per_second),
                send_tokens_at: now,
                slot: Some(slot),
                charged: 0,
                dropped_reported: 0,
                starved: false,
                span: None,
            }),
            metrics,
            limits,
            budget,
            opened: now,
            events_up: AtomicU64::new(0),
        };
        (Arc::new(session), UpstreamHandle { outbound: rx })
    }

    /// Gives the session its span, ended when the session ends.
    pub fn set_span(&self, span: Option<SessionSpan>) {
        self.state().span = span;
    }

    /// The first characters of the id: enough to follow a session in the
    /// logs, far too few to use it.
    pub fn log_id(&self) -> &str {
        log_id(&self.id)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going
        // rather than poisoning every later request of the session.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the reader waiting in `st`, if any, after the lock is released
    /// (waking under the lock would make the reader contend for it).
    fn wake_reader(mut st: MutexGuard<'_, State>) {
        let waker = st.reader_waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
    }

    // ---- upstream side -----------------------------------------------------

    /// Brings the budget and the dropped-events metric in step with the
    /// queue after it changed; under the lock, so the two never disagree
    /// for long.
    fn account(&self, st: &mut State) {
        let held = st.queue.held_bytes();
        if held < st.charged {
            self.budget.release(st.charged - held);
        } else if held > st.charged {
            self.budget.charge(held - st.charged);
        }
        st.charged = held;
        let dropped = st.queue.dropped_undelivered();
        if dropped > st.dropped_reported {
            self.metrics.events_dropped(dropped - st.dropped_reported);
            st.dropped_reported = dropped;
        }
    }

    /// Reserves room for `len` bytes in the process-wide budget, shedding
    /// this session's own events to make it: sent ones first (held only for
    /// replay), then, under drop-oldest, undelivered ones (reported as a gap).
    fn reserve(&self, st: &mut State, len: usize) -> bool {
        if self.budget.try_reserve(len) {
            return true;
        }
        st.queue.shed_sent(self.budget.shortfall(len));
        self.account(st);
        if self.budget.try_reserve(len) {
            return true;
        }
        if self.limits.replay.overflow == Overflow::DropOldest {
            st.queue.shed_oldest(self.budget.shortfall(len));
            self.account(st);
            if self.budget.try_reserve(len) {
                return true;
            }
        }
        // A live reader that has taken everything must not wait on sessions
        // nobody reads: its session may go one frame over the budget. So the
        // budget is exceeded by at most one frame per session being read.
        if st.readers > 0 && st.queue.pending_bytes() == 0 {
            self.budget.charge(len);
            return true;
        }
        false
    }

    /// Queues an upstream frame as an event, once the process-wide budget
    /// has room for it; see [`Pushed`]. Wakes a waiting reader at once.
    pub fn push(&self, data: EventData) -> Pushed {
        let mut wake = WakeLater::default();
        let pushed = self.push_deferred(data, &mut wake);
        wake.wake();
        pushed
    }

    /// [`Session::push`], but a waiting reader's waker is handed to `wake`
    /// instead of woken: the upstream reader pushes every frame it already
    /// holds and wakes the reader once for all of them, so the reader takes
    /// (and writes) them as one batch rather than one at a time.
    pub fn push_deferred(&self, data: EventData, wake: &mut WakeLater) -> Pushed {
        let mut st = self.state();
        if st.closed.is_some() {
            return Pushed::Queued { pause: false };
        }
        let len = data.data_len();
        if !self.reserve(&mut st, len) {
            st.starved = true;
            return Pushed::NoRoom(data);
        }
        st.starved = false;
        st.charged += len;
        st.queue.push(data);
        self.account(&mut st);
        st.events_down += 1;
        let pause = st.queue.must_pause();
        let waker = st.reader_waker.take();
        drop(st);
        wake.owe(waker, 1, len);
        Pushed::Queued { pause }
    }

    /// [`Session::push_deferred`] for frames the upstream reader read
    /// together, `bytes` of data in all: one lock and, when the budget has
    /// room for them all, one reservation, where frame by frame both are
    /// contended with every other session's. Frames go in until the queue
    /// reaches `max_pending_bytes`; the rest stay in `burst` (their
    /// reservation given back) for the reader to push once it is drained,
    /// as it would hold one frame. Without room for them all, frame by frame
    /// as `push_deferred` would; a `NoRoom` then gives back the first frame
    /// that found none, and the rest stay in `burst`.
    pub fn push_burst(
        &self,
        burst: &mut VecDeque<EventData>,
        bytes: usize,
        wake: &mut WakeLater,
    ) -> Pushed {
        {
            let mut st = self.state();
            if st.closed.is_some() {
                burst.clear();
                return Pushed::Queued { pause: false };
            }
            if self.budget.try_reserve(bytes) {
                let (mut frames, mut pushed) = (0, 0);
                let mut pause = false;
                while !pause && let Some(data) = burst.pop_front() {
                    pushed += data.data_len();
                    frames += 1;
                    st.queue.push(data);
                    pause = st.queue.must_pause();
                }
                self.budget.release(bytes - pushed);
                st.starved = false;
                st.charged += pushed;
                st.events_down += frames as u64;
                self.account(&mut st);
                let waker = st.reader_waker.take();
                drop(st);
                wake.owe(waker, frames, pushed);
                return Pushed::Queued { pause };
            }
        }
        while let Some(data) = burst.pop_front() {
            match self.push_deferred(data, wake) {
                Pushed::Queued { pause: false } => {}
                pushed => return pushed,
            }
        }
        Pushed::Queued { pause: false }
    }

    /// The process-wide replay budget this session draws from.
    pub fn budget(&self) -> &ReplayBudget {
        &self.budget
    }

    /// True while the upstream reader must wait for a client to drain; never
    /// once the session is closed.
    pub fn must_pause(&self) -> bool {
        let st = self.state();
        st.closed.is_none() && st.queue.must_pause()
    }

    /// Resolves when a reader has drained the queue (maybe only partly).
    pub async fn drained(&self) {
        self.drained.notified().await
    }

    /// Ends the session: queues its close event (last), starts the linger,
    /// gives back its slot. Only the first call does anything; it returns
    /// whether this call was it.
    pub fn finish(&self, code: u16, reason: &str, why: CloseReason) -> bool {
        let (slot, events_down, span) = {
            let mut st = self.state();
            if st.closed.is_some() {
                return false;
            }
            st.queue.push(EventData::Close {
                code,
                reason: reason.to_owned(),
            });
            self.account(&mut st);
            st.closed = Some(CloseInfo {
                code,
                reason: reason.to_owned(),
            });
            st.closed_at = Some(Instant::now());
            let slot = st.slot.take();
            let events_down = st.events_down;
            let span = st.span.take();
            Self::wake_reader(st);
            (slot, events_down, span)
        };
        drop(slot);
        self.metrics.session_closed(why);
        // One line per session, at its end (fields in docs/operations.md).
        // Never the close reason's text: it comes from the upstream or the
        // page and may hold anything; the code and the class say enough.
        let events_up = self.events_up.load(Ordering::Relaxed);
        if let Some(span) = span {
            span.end(code, why.as_str(), events_down, events_up);
        }
        tracing::info!(
            target: "wsbridge::session",
            owner = "local",
            session = self.log_id(),
            duration_ms = self.opened.elapsed().as_secs_f64() * 1000.0,
            events_down,
            events_up,
            close_code = code,
            reason_class = why.as_str(),
            "session ended"
        );
        // A paused upstream reader must not wait for a drain that no longer matters.
        self.drained.notify_one();
        true
    }

    pub fn closed(&self) -> Option<CloseInfo> {
        self.state().closed.clone()
    }

    /// The id of the newest event: the highest cursor a reader may give.
    pub fn last_id(&self) -> u64 {
        self.state().queue.last_id()
    }

    /// When the close event was queued, once it was.
    pub fn closed_at(&self) -> Option<Instant> {
        self.state().closed_at
    }

    /// Ends the session from the proxy's side (DELETE, idle, drain, an
    /// oversized frame): the close event is queued at once, so readers learn
    /// the outcome without waiting on the upstream, and the upstream task is
    /// asked to send the close frame. Only the first close of a session counts.
    pub fn close(&self, code: u16, reason: &str, why: CloseReason) {
        if !self.finish(code, reason, why) {
            return;
        }
        self.state().close_request = Some(CloseInfo {
            code,
            reason: reason.to_owned(),
        });
        self.control.notify_one();
    }

    /// Resolves when a close was requested; returns it.
    pub async fn close_requested(&self) -> CloseInfo {
        loop {
            if let Some(req) = self.state().close_request.clone() {
                return req;
            }
            self.control.notified().await;
        }
    }

    /// When the session goes idle, given no further activity: `None` while a
    /// reader is attached.
    pub fn idle_since(&self) -> Option<Instant> {
        let st = self.state();
        (st.readers == 0).then_some(st.last_activity)
    }

    /// Called by the upstream writer for each frame it wrote.
    pub fn frame_written(&self, len: usize) {
        self.outbound_bytes.fetch_sub(len, Ordering::AcqRel);
        self.outbound_queued.fetch_sub(1, Ordering::AcqRel);
        self.events_up.fetch_add(1, Ordering::Relaxed);
    }

    /// Called by the upstream writer for a frame it let go unwritten.
    pub fn frame_dropped(&self, len: usize) {
        self.outbound_bytes.fetch_sub(len, Ordering::AcqRel);
        self.outbound_queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Resolves when a send dropped mid-write left a frame to flush.
    pub async fn flush_requested(&self) {
        self.flush.notified().await
    }

    /// Gives sends the upstream's write half (see [`DirectWriter`]).
    pub fn set_direct_writer(&self, writer: Arc<dyn DirectWriter>) {
        let _ = self.direct.set(writer);
    }

    // ---- browser side: send ------------------------------------------------

    /// Queues one frame for the upstream and waits until it is written.
    /// `seq` is the optional `Bridge-Seq`.
    /// When the upstream's write half is free and nothing is queued ahead,
    /// the frame is written here, by the send itself.
    pub async fn send(&self, frame: Frame, seq: Option<u64>) -> Result<SendOutcome, BridgeError> {
        let claim = self.direct.get().and_then(|d| Arc::clone(d).try_claim());
        match self.admit(frame, seq, claim)? {
            Admitted::Queued(Queued::Duplicate) => Ok(SendOutcome::Duplicate),
            Admitted::Queued(Queued::Waiting(written)) => self.written(written).await,
            Admitted::Direct(claim, len) => {
                // Cancel-safety: the frame is the socket's already; if this
                // send is dropped before the flush ends, the writer task is
                // asked to finish it.
                let mut unfinished = FlushOnDrop(claim.started().then_some(&self.flush));
                let written = claim.finish().await;
                unfinished.0 = None;
                if written {
                    self.events_up.fetch_add(1, Ordering::Relaxed);
                    self.metrics.up.count(len);
                    return Ok(SendOutcome::Written);
                }
                // As the writer task does when a write fails.
                self.finish(1006, "", CloseReason::Dead);
                Err(BridgeError::SessionClosed {
                    code: 1006,
                    reason: String::new(),
                })
            }
        }
    }

    /// Queues one frame for the upstream without waiting for its write: the
    /// checks and the queueing of [`Session::send`], so a batch can queue
    /// frames of many sessions in order and then wait for them together.
    pub fn enqueue(&self, frame: Frame, seq: Option<u64>) -> Result<Queued, BridgeError> {
        match self.admit(frame, seq, None)? {
            Admitted::Queued(queued) => Ok(queued),
            Admitted::Direct(..) => unreachable!("no write half was given"),
        }
    }

    /// The checks of a send, then the frame started on `claim` (the write
    /// half, when the send got it) if nothing is queued ahead of it, else
    /// queued for the writer task.
    fn admit(
        &self,
        frame: Frame,
        seq: Option<u64>,
        claim: Option<Box<dyn ClaimedWriter>>,
    ) -> Result<Admitted, BridgeError> {
        let len = frame.len();
        {
            // Checking the sequence and queueing happen under one lock, so two
            // concurrent sends can never both take the same `Bridge-Seq`.
            let mut st = self.state();
            if let Some(close) = &st.closed {
                return Err(BridgeError::SessionClosed {
                    code: close.code,
                    reason: close.reason.clone(),
                });
            }
            st.last_activity = Instant::now();
            if let Some(n) = seq {
                if n <= st.last_seq {
                    return Ok(Admitted::Queued(Queued::Duplicate));
                }
                if n != st.last_seq + 1 {
                    return Err(BridgeError::SeqAhead {
                        expected: st.last_seq + 1,
                    });
                }
            }
            self.take_send_token(&mut st)?;
            let queued = self.outbound_bytes.load(Ordering::Acquire);
            if queued > 0 && queued + len > self.limits.max_outbound_bytes {
                return Err(BridgeError::TooManyRequests {
                    code: "outbound_full",
                    retry_after: Duration::from_secs(1),
                });
            }
            // Holding the write half, with nothing queued (the writer task
            // lowers the count only after writing, so a frame it has taken
            // but not yet written counts): no frame can come before this one.
            let mut frame = frame;
            if let Some(mut claim) = claim
                && self.outbound_queued.load(Ordering::Acquire) == 0
            {
                match claim.start(frame) {
                    Ok(()) => {
                        if let Some(n) = seq {
                            st.last_seq = n;
                        }
                        return Ok(Admitted::Direct(claim, len));
                    }
                    Err(back) => frame = back,
                }
            }
            let (written_tx, written_rx) = oneshot::channel();
            match self.outbound.try_send(Box::new(Outbound {
                frame,
                written: written_tx,
            })) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(BridgeError::TooManyRequests {
                        code: "outbound_full",
                        retry_after: Duration::from_secs(1),
                    });
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    let close = st.closed.clone().unwrap_or(CloseInfo {
                        code: 1006,
                        reason: String::new(),
                    });
                    return Err(BridgeError::SessionClosed {
                        code: close.code,
                        reason: close.reason,
                    });
                }
            }
            self.outbound_bytes.fetch_add(len, Ordering::AcqRel);
            self.outbound_queued.fetch_add(1, Ordering::AcqRel);
            if let Some(n) = seq {
                st.last_seq = n;
            }
            Ok(Admitted::Queued(Queued::Waiting(written_rx)))
        }
    }

    /// Waits for a queued frame to reach the upstream socket.
    pub async fn written(
        &self,
        written: oneshot::Receiver<()>,
    ) -> Result<SendOutcome, BridgeError> {
        match written.await {
            Ok(()) => Ok(SendOutcome::Written),
            // The upstream task ended before writing it: the session closed.
            Err(_) => {
                let close = self.closed().unwrap_or(CloseInfo {
                    code: 1006,
                    reason: String::new(),
                });
                Err(BridgeError::SessionClosed {
                    code: close.code,
                    reason: close.reason,
                })
            }
        }
    }

    fn take_send_token(&self, st: &mut State) -> Result<(), BridgeError> {
        let rate = self.limits.max_sends_per_second;
        if rate == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let rate = f64::from(rate);
        let elapsed = now.duration_since(st.send_tokens_at).as_secs_f64();
        st.send_tokens = (st.send_tokens + elapsed * rate).min(rate);
        st.send_tokens_at = now;
        if st.send_tokens < 1.0 {
            let wait = (1.0 - st.send_tokens) / rate;
            return Err(BridgeError::TooManyRequests {
                code: "rate_limited",
                retry_after: Duration::from_secs_f64(wait),
            });
        }
        st.send_tokens -= 1.0;
        Ok(())
    }

    // ---- browser side: read --------------------------------------------------

    /// Attaches a new reader at `cursor`, superseding any older one.
    pub fn attach(
        self: &Arc<Self>,
        transport: Transport,
        cursor: u64,
    ) -> Result<Reader, BridgeError> {
        let generation = {
            let mut st = self.state();
            // The cursor is the client's word that it has everything up to
            // it: those events need not be kept for replay.
            st.queue.ack(cursor).map_err(|_| BridgeError::BadCursor)?;
            self.account(&mut st);
            if st.starved {
                // What the ack freed may be the room the upstream reader waits for.
                self.drained.notify_one();
            }
            if let Some(close) = &st.closed
                && cursor == st.queue.last_id()
            {
                // The reader already has the close event: nothing more will come.
                return Err(BridgeError::SessionClosed {
                    code: close.code,
                    reason: close.reason.clone(),
                });
            }
            st.reader_generation += 1;
            st.reader_transport = Some(transport);
            st.readers += 1;
            let generation = st.reader_generation;
            // The superseded reader, if waiting, learns at once.
            Self::wake_reader(st);
            generation
        };
        Ok(Reader {
            session: Arc::clone(self),
            generation,
            cursor,
        })
    }

    /// The live reader's transport, for the gauge; `None` when no reader.
    pub fn reader_transport(&self) -> Option<Transport> {
        let st = self.state();
        if st.readers == 0 {
            None
        } else {
            st.reader_transport
        }
    }

    /// (held events, held bytes) of the replay queue, for the metrics.
    pub fn replay_depth(&self) -> (usize, usize) {
        let st = self.state();
        (st.queue.held_events(), st.queue.held_bytes())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // A session's events count against the budget until it is gone.
        let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget.release(st.charged);
    }
}

pub fn log_id(id: &str) -> &str {
    id.get(..6).unwrap_or("?")
}

/// A reader's wake-up put off while the upstream reader pushes what it
/// already holds: woken when [`WakeLater::due`] says so, before the upstream
/// reader waits for anything, and when dropped, so no path can lose it.
#[derive(Default)]
pub struct WakeLater {
    waker: Option<Waker>,
    /// Frames and bytes pushed since the last wake: a backend that never
    /// lets the socket run dry still has its frames delivered in batches of
    /// at most [`WakeLater::FRAMES`] or [`WakeLater::BYTES`].
    frames: usize,
    bytes: usize,
}

impl WakeLater {
    pub const FRAMES: usize = 64;
    pub const BYTES: usize = 16 * 1024;

    fn owe(&mut self, waker: Option<Waker>, frames: usize, bytes: usize) {
        if let Some(new) = waker {
            // The reader waited again since the last take: both wakers are
            // owed, though they are nearly always the same task's.
            if let Some(old) = self.waker.replace(new)
                && !self.waker.as_ref().is_some_and(|w| w.will_wake(&old))
            {
                old.wake();
            }
        }
        self.frames += frames;
        self.bytes += bytes;
    }

    /// True once enough was pushed that the reader should have it now.
    pub fn due(&self) -> bool {
        self.frames >= Self::FRAMES || self.bytes >= Self::BYTES
    }

    /// Wakes the reader, if one was waiting.
    pub fn wake(&mut self) {
        self.frames = 0;
        self.bytes = 0;
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

impl Drop for WakeLater {
    fn drop(&mut self) {
        self.wake();
    }
}

/// What a reader got.
#[derive(Debug)]
pub enum Batch {
    Events(Vec<Event>),
    /// A newer reader took over this session.
    Superseded,
}

/// The one live downstream reader of a session. Dropping it detaches.
pub struct Reader {
    session: Arc<Session>,
    generation: u64,
    /// The id of the last event handed to this reader.
    cursor: u64,
}

impl Reader {
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Takes what is available now: events after the cursor (empty when
    /// none) or `Superseded`.
    pub fn try_next(&mut self, max_events: usize, max_bytes: usize) -> Batch {
        match self.poll_take(None, max_events, max_bytes) {
            Poll::Ready(batch) => batch,
            Poll::Pending => Batch::Events(Vec::new()),
        }
    }

    /// Waits for events after the cursor, or for this reader to be superseded.
    /// Cancel-safe: nothing is taken from the queue until it returns.
    pub async fn next(&mut self, max_events: usize, max_bytes: usize) -> Batch {
        std::future::poll_fn(|cx| self.poll_take(Some(cx), max_events, max_bytes)).await
    }

    /// [`Reader::next`] as a poll, for a reader that polls many sessions
    /// from one task (a channel): the task's waker is left with the
    /// session when it has nothing, as `next` does.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        max_events: usize,
        max_bytes: usize,
    ) -> Poll<Batch> {
        self.poll_take(Some(cx), max_events, max_bytes)
    }

    /// The session this reader reads.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// False once a newer reader has superseded this one.
    pub fn is_live(&self) -> bool {
        self.session.state().reader_generation == self.generation
    }

    /// Takes events after the cursor; with nothing to take, leaves the
    /// task's waker (when given) for whoever changes that, under the same
    /// lock, so no wake-up is lost between looking and waiting.
    fn poll_take(
        &mut self,
        cx: Option<&mut Context<'_>>,
        max_events: usize,
        max_bytes: usize,
    ) -> Poll<Batch> {
        let (batch, drained) = {
            let mut st = self.session.state();
            if st.reader_generation != self.generation {
                return Poll::Ready(Batch::Superseded);
            }
            let was_paused = st.queue.must_pause();
            // Not an acknowledgement: what this reader wrote may not have
            // arrived, and a reconnecting client must be able to replay it.
            let events = st.queue.read_after(self.cursor, max_events, max_bytes);
            self.session.account(&mut st);
            if events.is_empty() {
                if let Some(cx) = cx {
                    match &st.reader_waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => st.reader_waker = Some(cx.waker().clone()),
                    }
                }
                return Poll::Pending;
            }
            // A starved upstream reader may now shed what this read sent.
            (events, (was_paused && !st.queue.must_pause()) || st.starved)
        };
        if drained {
            self.session.drained.notify_one();
        }
        if let Some(last) = batch.last() {
            self.cursor = last.id;
        }
        Poll::Ready(Batch::Events(batch))
    }

    /// True once this reader has been handed the session's close event.
    pub fn finished(&self) -> bool {
        let st = self.session.state();
        st.closed.is_some() && self.cursor >= st.queue.last_id()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut st = self.session.state();
        st.readers = st.readers.saturating_sub(1);
        st.last_activity = Instant::now();
        if st.reader_generation == self.generation {
            // Its waker would only keep a finished task's memory alive.
            st.reader_waker = None;
        }
    }
}

/// Sessions without a network, for the unit tests of the session's users.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::session::registry::{Registry, new_id};

    /// Limits with roomy replay, `max_pending_bytes` and `overflow` as given.
    pub fn limits(max_pending_bytes: usize, overflow: Overflow) -> SessionLimits {
        SessionLimits {
            replay: ReplayLimits {
                max_events: 1024,
                max_bytes: 1 << 20,
                max_pending_bytes,
                overflow,
            },
            max_outbound_bytes: 1 << 20,
            max_sends_per_second: 0,
        }
    }

    /// A session in `registry`, with its own metrics.
    pub fn session(
        registry: &Registry,
        limits: SessionLimits,
        metrics: Arc<Metrics>,
    ) -> (Arc<Session>, UpstreamHandle) {
        let client: IpAddr = "127.0.0.1".parse().unwrap();
        let slot = registry.reserve(client).unwrap();
        let target = Target {
            upstream: "ws://127.0.0.1:9/ws".parse().unwrap(),
            transports: vec![Transport::Sse, Transport::Stream, Transport::Poll],
            sse_event_field: None,
        };
        let (session, handle) = Session::new(
            new_id(),
            String::new(),
            target,
            client,
            slot,
            limits,
            metrics,
        );
        registry.insert(Arc::clone(&session));
        (session, handle)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{limits, session};
    use super::*;
    use crate::session::registry::Registry;

    fn text(n: usize) -> EventData {
        EventData::Text(Bytes::from(vec![b'x'; n]))
    }

    #[test]
    fn a_burst_goes_in_up_to_max_pending_bytes_and_gives_back_the_rest_of_its_reservation() {
        let registry = Registry::new(10, 0, 10_000);
        let metrics = Arc::new(Metrics::new());
        // 100 bytes of data and 64 of overhead each: the third reaches 400.
        let (s, _h) = session(&registry, limits(400, Overflow::Backpressure), metrics);
        let mut burst: VecDeque<EventData> = (0..10).map(|_| text(100)).collect();
        let mut wake = WakeLater::default();
        let pushed = s.push_burst(&mut burst, 1000, &mut wake);
        assert!(
            matches!(pushed, Pushed::Queued { pause: true }),
            "{pushed:?}"
        );
        assert_eq!((burst.len(), s.replay_depth().0), (7, 3));
        assert_eq!(registry.budget().used(), 300);
        // Without room for the whole burst, frame by frame: a `NoRoom` gives
        // back the frame that found none, and the rest stay.
        let (t, _h) = session(
            &registry,
            limits(1 << 20, Overflow::Backpressure),
            Arc::new(Metrics::new()),
        );
        let mut burst: VecDeque<EventData> = (0..100).map(|_| text(100)).collect();
        let Pushed::NoRoom(_) = t.push_burst(&mut burst, 10_000, &mut wake) else {
            panic!("over the budget");
        };
        assert_eq!(registry.budget().used(), 10_000);
        assert_eq!((t.replay_depth().0, burst.len()), (97, 2));
    }

    #[test]
    fn sessions_share_the_budget_and_a_reader_frees_room() {
        let registry = Registry::new(10, 0, 100);
        let metrics = Arc::new(Metrics::new());
        let l = limits(1 << 20, Overflow::Backpressure);
        let (a, _ha) = session(&registry, l, Arc::clone(&metrics));
        let (b, _hb) = session(&registry, l, Arc::clone(&metrics));
        assert!(matches!(a.push(text(60)), Pushed::Queued { pause: false }));
        assert!(matches!(b.push(text(30)), Pushed::Queued { pause: false }));
        // 90 of 100 held: b's next frame has no room, and b has nothing it may shed.
        let Pushed::NoRoom(back) = b.push(text(30)) else {
            panic!("over the budget")
        };
        assert_eq!(registry.budget().used(), 90);
        // a's reader takes its event and acknowledges it: the room is back.
        let mut reader = a.attach(Transport::Poll, 0).unwrap();
        assert!(matches!(reader.try_next(10, 1 << 20), Batch::Events(e) if e.len() == 1));
        drop(reader);
        a.attach(Transport::Poll, 1).unwrap();
        assert_eq!(registry.budget().used(), 30);
        assert!(matches!(b.push(back), Pushed::Queued { .. }));
        assert_eq!(registry.budget().used(), 60);
        // Nothing undelivered was dropped on the way.
        assert!(
            !metrics
                .render(&Default::default(), crate::metrics::Format::Prometheus)
                .contains("wsbridge_events_dropped_total 1")
        );
        // A closed session's events count until it is gone.
        b.finish(1000, "", CloseReason::Client);
        registry.remove(&b.id);
        assert_eq!(registry.budget().used(), 60);
        drop(b);
        assert_eq!(registry.budget().used(), 0);
    }

    #[test]
    fn over_the_budget_a_session_sheds_its_sent_events_then_drop_oldest_its_own() {
        let registry = Registry::new(10, 0, 100);
        let metrics = Arc::new(Metrics::new());
        let (a, _ha) = session(
            &registry,
            limits(1 << 20, Overflow::Backpressure),
            Arc::clone(&metrics),
        );
        assert!(matches!(a.push(text(50)), Pushed::Queued { .. }));
        assert!(matches!(a.push(text(40)), Pushed::Queued { .. }));
        // Both sent (read, not acknowledged: they are held for replay).
        let mut reader = a.attach(Transport::Poll, 0).unwrap();
        assert!(matches!(reader.try_next(10, 1 << 20), Batch::Events(e) if e.len() == 2));
        // The next frame needs 30: the oldest sent event (50) goes.
        assert!(matches!(a.push(text(30)), Pushed::Queued { .. }));
        assert_eq!(registry.budget().used(), 70);
        // Sent events shed from replay are no loss to the live reader: only
        // undelivered ones count as dropped.
        let dropped = |m: &Metrics| {
            m.render(&Default::default(), crate::metrics::Format::Prometheus)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("wsbridge_events_dropped_total ")
                        .map(|v| v.parse::<u64>().unwrap())
                })
                .unwrap()
        };
        assert_eq!(dropped(&metrics), 0);
        // Backpressure never sheds an undelivered event: with only the
        // undelivered 30 and the sent 40 left, an 80 waits after shedding the 40.
        assert!(matches!(a.push(text(80)), Pushed::NoRoom(_)));
        assert_eq!(registry.budget().used(), 30);
        assert_eq!(dropped(&metrics), 0);

        // Under drop-oldest the session's own undelivered events make room, as a gap.
        let registry = Registry::new(10, 0, 100);
        let metrics = Arc::new(Metrics::new());
        let (d, _hd) = session(
            &registry,
            limits(1 << 20, Overflow::DropOldest),
            Arc::clone(&metrics),
        );
        for _ in 0..3 {
            assert!(matches!(d.push(text(30)), Pushed::Queued { .. }));
        }
        assert!(matches!(d.push(text(30)), Pushed::Queued { .. }));
        assert_eq!(registry.budget().used(), 90);
        assert_eq!(dropped(&metrics), 1);
        let mut reader = d.attach(Transport::Poll, 0).unwrap();
        let Batch::Events(events) = reader.try_next(10, 1 << 20) else {
            panic!("superseded")
        };
        assert_eq!(events[0].data, EventData::Gap { from: 1, to: 1 });
        assert_eq!(events.len(), 4);
    }

    #[test]
    fn a_reader_that_took_everything_gets_one_frame_past_the_budget() {
        let registry = Registry::new(10, 0, 100);
        let metrics = Arc::new(Metrics::new());
        let l = limits(1 << 20, Overflow::Backpressure);
        let (hog, _h) = session(&registry, l, Arc::clone(&metrics));
        let (live, _l) = session(&registry, l, Arc::clone(&metrics));
        assert!(matches!(hog.push(text(100)), Pushed::Queued { .. }));
        // Nobody reads the hog; without a reader, the live session waits.
        assert!(matches!(live.push(text(10)), Pushed::NoRoom(_)));
        let mut reader = live.attach(Transport::Poll, 0).unwrap();
        assert!(matches!(live.push(text(10)), Pushed::Queued { .. }));
        assert_eq!(registry.budget().used(), 110);
        // Until its reader takes that one, the next waits.
        assert!(matches!(live.push(text(10)), Pushed::NoRoom(_)));
        assert!(matches!(reader.try_next(10, 1 << 20), Batch::Events(e) if e.len() == 1));
        // The sent one is shed for the next: still one frame over, no more.
        assert!(matches!(live.push(text(10)), Pushed::Queued { .. }));
        assert_eq!(registry.budget().used(), 110);
    }
}
