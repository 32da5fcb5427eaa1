//! A bridged session: one upstream WebSocket re-exposed over HTTP. The
//! session is the meeting point of the upstream task (which pushes events and
//! writes frames) and the HTTP handlers (which read events and queue frames).
//!
//! Locking: one `std::sync::Mutex` per session guards its state; it is held
//! for a few field updates or one replay-queue call and never across an
//! `.await`. Wake-ups go through the live reader's waker, kept in the state
//! and woken by whoever changes what it waits for, and two `Notify`s (the
//! upstream task), so no one polls.

pub mod registry;
pub mod replay;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use std::task::{Context, Poll, Waker};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{Config, Transport};
use crate::error::BridgeError;
use crate::metrics::{CloseReason, Metrics};
use crate::routing::Target;
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
    /// Frames for the upstream writer; bounded by count here and by bytes in
    /// `outbound_bytes`.
    /// Boxed: tokio allocates a channel's first block of slots up front,
    /// and a slot of a pointer keeps that small for the many sessions that
    /// never send.
    outbound: mpsc::Sender<Box<Outbound>>,
    /// Bytes accepted by `send` and not yet written upstream (for the 429).
    outbound_bytes: AtomicUsize,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
    limits: SessionLimits,
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
        let session = Session {
            id,
            protocol,
            target,
            client,
            drained: Notify::new(),
            control: Notify::new(),
            outbound: tx,
            outbound_bytes: AtomicUsize::new(0),
            state: Mutex::new(State {
                queue: ReplayQueue::new(limits.replay),
                closed: None,
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
            }),
            metrics,
            limits,
            opened: now,
            events_up: AtomicU64::new(0),
        };
        (Arc::new(session), UpstreamHandle { outbound: rx })
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

    /// Queues an upstream frame as an event. Returns true when the upstream
    /// reader must pause (backpressure).
    pub fn push(&self, data: EventData) -> bool {
        let mut st = self.state();
        if st.closed.is_some() {
            return false;
        }
        st.queue.push(data);
        st.events_down += 1;
        let pause = st.queue.must_pause();
        Self::wake_reader(st);
        pause
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
        let (slot, events_down) = {
            let mut st = self.state();
            if st.closed.is_some() {
                return false;
            }
            st.queue.push(EventData::Close {
                code,
                reason: reason.to_owned(),
            });
            st.closed = Some(CloseInfo {
                code,
                reason: reason.to_owned(),
            });
            let slot = st.slot.take();
            let events_down = st.events_down;
            Self::wake_reader(st);
            (slot, events_down)
        };
        drop(slot);
        self.metrics.session_closed(why);
        // One line per session, at its end (fields in docs/operations.md).
        // Never the close reason's text: it comes from the upstream or the
        // page and may hold anything; the code and the class say enough.
        tracing::info!(
            target: "wsbridge::session",
            owner = "local",
            session = self.log_id(),
            duration_ms = self.opened.elapsed().as_secs_f64() * 1000.0,
            events_down,
            events_up = self.events_up.load(Ordering::Relaxed),
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
        self.events_up.fetch_add(1, Ordering::Relaxed);
    }

    // ---- browser side: send ------------------------------------------------

    /// Queues one frame for the upstream and waits until it is written.
    /// `seq` is the optional `Bridge-Seq`.
    pub async fn send(&self, frame: Frame, seq: Option<u64>) -> Result<SendOutcome, BridgeError> {
        let len = frame.len();
        let (written_tx, written_rx) = oneshot::channel();
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
                    return Ok(SendOutcome::Duplicate);
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
            if let Some(n) = seq {
                st.last_seq = n;
            }
        }
        match written_rx.await {
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

pub fn log_id(id: &str) -> &str {
    id.get(..6).unwrap_or("?")
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
            if events.is_empty() {
                if let Some(cx) = cx {
                    match &st.reader_waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => st.reader_waker = Some(cx.waker().clone()),
                    }
                }
                return Poll::Pending;
            }
            (events, was_paused && !st.queue.must_pause())
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
