//! A multiplexed channel: many sessions behind one downstream reader and one
//! batched send, so a browser needs one connection for all its sockets.
//!
//! The channel holds no events of its own. Each session on it keeps its own
//! replay queue, cursor, gap, close and supersede rules; the channel holds
//! each session's [`Reader`] (so a per-session reader is superseded by an
//! attach, and supersedes the channel's in turn) and the cursor the client
//! last gave for it. Its one live [`ChannelReader`] takes a bounded turn of
//! events from every session with events ready, round-robin, so a busy
//! session cannot starve the others, and a session whose events are not
//! taken pauses its own upstream as it would alone. Memory per channel is
//! one small entry per session and a bounded list of pending notices.
//!
//! Wake-ups: each member polls its session with a waker of its own, which
//! marks that member ready before it wakes the reader's task, so a pass
//! looks only at the sessions that have had news since their last look
//! (with 100 flooding sessions, looking at every one on every wake-up cost
//! more than the events it found).
//!
//! Locking: one `std::sync::Mutex` per channel, never held across an
//! `.await`. Under it the channel may take a session's lock (to read or
//! attach); a session never takes a channel's, so the order is fixed. The
//! reader task's waker has a small lock of its own, taken last and alone
//! (a session wakes a member after unlocking itself).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use super::registry::id_len_ok;
use super::replay::{Event, EventData, encoded_len};
use super::{Batch, Reader, Session};
use crate::config::{ChannelConfig, Transport};
use crate::error::BridgeError;
use crate::metrics::Metrics;

/// Events and bytes one session may give per turn of the round-robin: a
/// busy session waits for the others' turns after this much.
pub const TURN_EVENTS: usize = 64;
pub const TURN_BYTES: usize = 64 * 1024;
/// Detach notices waiting for a reader; the oldest go first beyond this
/// (they are a courtesy: a resuming reader learns again from its cursors).
const MAX_NOTICES: usize = 256;
/// What a client is told to wait when the channel limits are reached.
const RETRY_AFTER_FULL: Duration = Duration::from_secs(5);

/// Which channel each session is on: a session is on at most one.
type Owners = DashMap<Box<str>, Arc<str>>;

/// Every open channel, by id, and the channel limits.
pub struct ChannelRegistry {
    channels: DashMap<Box<str>, Arc<Channel>>,
    owners: Arc<Owners>,
    /// Open channels, against `channel.max_channels`.
    count: AtomicUsize,
    limits: ChannelConfig,
    metrics: Arc<Metrics>,
}

pub struct Channel {
    /// The bearer capability, in the session id format. Never logged whole.
    pub id: Arc<str>,
    state: Mutex<State>,
    /// The live reader's task, when it waits: woken by a member with news,
    /// a newer reader, an attach, a notice or the end.
    task: Arc<TaskWaker>,
    owners: Arc<Owners>,
    metrics: Arc<Metrics>,
    max_sessions: usize,
}

/// The reader task's waker, behind a lock of its own: members' wakers take
/// it from sessions, which must not take the channel's state lock.
#[derive(Default)]
struct TaskWaker(Mutex<Option<Waker>>);

impl TaskWaker {
    fn slot(&self) -> MutexGuard<'_, Option<Waker>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.slot();
        match &*slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }

    fn wake(&self) {
        let waker = self.slot().take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A member's waker: what its session wakes when it has events (or a newer
/// reader) for the channel.
struct MemberWake {
    /// Set by a wake-up, cleared by the pass that then looks: only members
    /// with this set are polled.
    ready: AtomicBool,
    task: Arc<TaskWaker>,
}

impl Wake for MemberWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One session on a channel.
struct Member {
    /// The session's one reader, held by the channel while it is on it.
    reader: Reader,
    /// The cursor the client last gave for this session (at attach or in a
    /// reader's `cursors`): where the next channel reader resumes it.
    cursor: u64,
    /// Its close event was handed to a reader: nothing more will come. It
    /// stays (so a reader that resumes before it has the close gets it
    /// again) until a reader no longer needs it or its place is needed.
    finished: bool,
    /// Whether the session may have something new (see [`MemberWake`]).
    wake: Arc<MemberWake>,
    /// `wake` as the waker the session keeps: made once, so the session's
    /// `will_wake` check spares a clone on every pass.
    waker: Waker,
}

impl Member {
    fn new(reader: Reader, cursor: u64, task: &Arc<TaskWaker>) -> Member {
        let wake = Arc::new(MemberWake {
            ready: AtomicBool::new(true),
            task: Arc::clone(task),
        });
        Member {
            reader,
            cursor,
            finished: false,
            waker: Waker::from(Arc::clone(&wake)),
            wake,
        }
    }

    /// Poll it on the next pass (a new reader, a turn that may have left
    /// events behind).
    fn mark_ready(&self) {
        self.wake.ready.store(true, Ordering::Release);
    }
}

struct State {
    members: Vec<Member>,
    /// Sessions taken off the channel by someone else (moved, read on
    /// their own, refused by the reader's transport), to tell the reader.
    notices: VecDeque<String>,
    /// Generation of the newest reader; older ones are superseded.
    generation: u64,
    /// The newest reader's transport: what attached sessions are read as.
    transport: Transport,
    /// Attached readers (an old one may linger for a moment when superseded).
    readers: u32,
    /// Last time a reader detached or a batch was sent: drives the idle end.
    last_activity: Instant,
    /// Where the next round-robin turn starts.
    next_turn: usize,
    /// Set once the channel ended (idle, DELETE): every call fails.
    ended: bool,
}

/// What a channel reader got.
#[derive(Debug)]
pub enum ChannelBatch {
    Items(Vec<Item>),
    /// A newer reader took over the channel.
    Superseded,
    /// The channel ended.
    Ended,
}

/// One entry of a channel batch.
#[derive(Debug)]
pub enum Item {
    /// Events of one session, in order.
    Events(Arc<str>, Vec<Event>),
    /// The session is no longer on this channel.
    Detached(String),
}

impl ChannelRegistry {
    pub fn new(limits: ChannelConfig, metrics: Arc<Metrics>) -> Self {
        ChannelRegistry {
            channels: DashMap::new(),
            owners: Arc::new(DashMap::new()),
            count: AtomicUsize::new(0),
            limits,
            metrics,
        }
    }

    /// Opens a channel with the fresh id `id` (a lone replica's
    /// `registry::new_id`, or in a cluster one naming this replica), or
    /// says why not.
    pub fn create(&self, id: String) -> Result<Arc<Channel>, BridgeError> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.limits.max_channels {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return Err(BridgeError::Unavailable {
                code: "channel_limit",
                retry_after: RETRY_AFTER_FULL,
            });
        }
        let channel = Arc::new(Channel {
            id: id.into(),
            state: Mutex::new(State {
                members: Vec::new(),
                notices: VecDeque::new(),
                generation: 0,
                transport: Transport::Poll,
                readers: 0,
                last_activity: Instant::now(),
                next_turn: 0,
                ended: false,
            }),
            task: Arc::default(),
            owners: Arc::clone(&self.owners),
            metrics: Arc::clone(&self.metrics),
            max_sessions: self.limits.max_sessions_per_channel,
        });
        self.channels
            .insert(channel.id.as_ref().into(), Arc::clone(&channel));
        self.metrics.channel.active.inc();
        Ok(channel)
    }

    /// Looks a channel up. Unknown, malformed and ended ids alike are `None`.
    pub fn get(&self, id: &str) -> Option<Arc<Channel>> {
        if !id_len_ok(id) {
            return None;
        }
        self.channels.get(id).map(|c| Arc::clone(c.value()))
    }

    /// Ends a channel: it is gone, its sessions detached (their own idle
    /// timers run from now), its reader told.
    pub fn end(&self, channel: &Channel) {
        if self.channels.remove(channel.id.as_ref()).is_some() {
            self.count.fetch_sub(1, Ordering::AcqRel);
            self.metrics.channel.active.dec();
        }
        channel.end();
    }

    /// Attaches `session` to `channel` at `cursor`, superseding the
    /// session's live reader (its own, or another channel's, which is told
    /// with a `detached` notice).
    pub fn attach(
        &self,
        channel: &Arc<Channel>,
        session: &Arc<Session>,
        cursor: u64,
    ) -> Result<(), BridgeError> {
        channel.add(session, cursor)?;
        let old = self
            .owners
            .insert(session.id.as_str().into(), Arc::clone(&channel.id));
        if let Some(old) = old.filter(|old| *old != channel.id)
            && let Some(old) = self.get(&old)
        {
            old.remove(&session.id, true);
        }
        Ok(())
    }

    /// Open channels.
    pub fn active(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Channel {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain data behind the lock: keep going after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first characters of the id, for logs.
    pub fn log_id(&self) -> &str {
        super::log_id(&self.id)
    }

    /// Wakes the live reader after the lock is released.
    fn wake(&self, st: MutexGuard<'_, State>) {
        drop(st);
        self.task.wake();
    }

    fn add(&self, session: &Arc<Session>, cursor: u64) -> Result<(), BridgeError> {
        let mut st = self.state();
        if st.ended {
            return Err(BridgeError::UnknownChannel);
        }
        let transport = st.transport;
        let existing = st
            .members
            .iter()
            .position(|m| m.reader.session().id == session.id);
        if existing.is_none() && st.members.len() >= self.max_sessions {
            // Sessions whose close was delivered give their place first.
            if let Some(i) = st.members.iter().position(|m| m.finished) {
                self.drop_member(&mut st, i);
            } else {
                return Err(BridgeError::Unavailable {
                    code: "channel_full",
                    retry_after: RETRY_AFTER_FULL,
                });
            }
        }
        let reader = session.attach(transport, cursor)?;
        match existing {
            Some(i) => {
                let m = &mut st.members[i];
                m.reader = reader;
                m.cursor = cursor;
                m.finished = false;
                m.mark_ready();
            }
            None => {
                st.members.push(Member::new(reader, cursor, &self.task));
                self.metrics.channel.sessions.inc();
            }
        }
        self.wake(st);
        Ok(())
    }

    /// Takes a session off the channel; `notice`: tell the reader. False
    /// when it was not on it.
    pub fn remove(&self, session_id: &str, notice: bool) -> bool {
        let mut st = self.state();
        let Some(i) = st
            .members
            .iter()
            .position(|m| m.reader.session().id == session_id)
        else {
            return false;
        };
        self.drop_member(&mut st, i);
        if notice {
            push_notice(&mut st, session_id.to_owned());
        }
        self.wake(st);
        true
    }

    /// Removes member `i`: its reader detaches from the session (whose idle
    /// timer then runs), and the session is no longer this channel's.
    fn drop_member(&self, st: &mut State, i: usize) {
        let member = st.members.swap_remove(i);
        self.metrics.channel.sessions.dec();
        self.owners
            .remove_if(member.reader.session().id.as_str(), |_, c| *c == self.id);
        drop(member);
    }

    fn end(&self) {
        let mut st = self.state();
        st.ended = true;
        while !st.members.is_empty() {
            let last = st.members.len() - 1;
            self.drop_member(&mut st, last);
        }
        st.notices.clear();
        self.wake(st);
    }

    /// The session `id` if it is on this channel. One whose reader was
    /// superseded (read on its own, or elsewhere) is taken off here, even
    /// before the channel's reader notices.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        let mut st = self.state();
        let i = st
            .members
            .iter()
            .position(|m| m.reader.session().id == id)?;
        if !st.members[i].reader.is_live() {
            self.drop_member(&mut st, i);
            push_notice(&mut st, id.to_owned());
            self.wake(st);
            return None;
        }
        Some(Arc::clone(st.members[i].reader.session()))
    }

    /// Sessions on the channel.
    pub fn len(&self) -> usize {
        self.state().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A batch was sent: the channel is in use.
    pub fn touch(&self) {
        self.state().last_activity = Instant::now();
    }

    /// When the channel goes idle, given no further activity (`None` once
    /// ended): never while a reader is attached.
    pub fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        let st = self.state();
        if st.ended {
            return None;
        }
        Some(if st.readers > 0 {
            Instant::now() + idle
        } else {
            st.last_activity + idle
        })
    }

    /// Attaches a new reader, superseding any older one. `cursors` are the
    /// client's cursors for some of the sessions: each listed session
    /// resumes from its cursor, the others from the cursor last given for
    /// them. The request is checked whole before anything changes.
    pub fn attach_reader(
        self: &Arc<Self>,
        transport: Transport,
        cursors: &[(String, u64)],
    ) -> Result<ChannelReader, BridgeError> {
        let mut st = self.state();
        if st.ended {
            return Err(BridgeError::UnknownChannel);
        }
        for (id, cursor) in cursors {
            if let Some(m) = st.members.iter().find(|m| m.reader.session().id == *id)
                && *cursor > m.reader.session().last_id()
            {
                return Err(BridgeError::BadCursor);
            }
        }
        for (id, cursor) in cursors {
            match st.members.iter_mut().find(|m| m.reader.session().id == *id) {
                Some(m) => m.cursor = *cursor,
                // Not (or no longer) here: the client must learn it.
                None => push_notice(&mut st, id.clone()),
            }
        }
        let mut i = 0;
        while i < st.members.len() {
            let m = &st.members[i];
            let session = Arc::clone(m.reader.session());
            if !session.target.allows(transport) {
                self.drop_member(&mut st, i);
                push_notice(&mut st, session.id.clone());
                continue;
            }
            match session.attach(transport, m.cursor) {
                Ok(reader) => {
                    let m = &mut st.members[i];
                    m.reader = reader;
                    m.finished = false;
                    m.mark_ready();
                    i += 1;
                }
                // The client has its close event: the session is done here.
                Err(_) => self.drop_member(&mut st, i),
            }
        }
        st.generation += 1;
        st.transport = transport;
        st.readers += 1;
        let generation = st.generation;
        // The superseded reader, if waiting, learns at once.
        self.wake(st);
        Ok(ChannelReader {
            channel: Arc::clone(self),
            generation,
        })
    }
}

fn push_notice(st: &mut State, id: String) {
    if st.notices.contains(&id) {
        return;
    }
    if st.notices.len() >= MAX_NOTICES {
        st.notices.pop_front();
    }
    st.notices.push_back(id);
}

/// The one live downstream reader of a channel. Dropping it detaches.
pub struct ChannelReader {
    channel: Arc<Channel>,
    generation: u64,
}

impl ChannelReader {
    /// Waits for events of any session, a notice, a supersede or the end.
    /// Cancel-safe: nothing is taken until it returns.
    pub async fn next(&mut self, max_events: usize, max_bytes: usize) -> ChannelBatch {
        std::future::poll_fn(|cx| self.poll_take(Some(cx), max_events, max_bytes)).await
    }

    /// Takes what is ready now (empty when nothing is).
    pub fn try_next(&mut self, max_events: usize, max_bytes: usize) -> ChannelBatch {
        match self.poll_take(None, max_events, max_bytes) {
            Poll::Ready(batch) => batch,
            Poll::Pending => ChannelBatch::Items(Vec::new()),
        }
    }

    /// One round-robin pass over the sessions, from where the last one
    /// stopped: each gives at most a turn's worth, until the batch is full.
    fn poll_take(
        &mut self,
        cx: Option<&mut Context<'_>>,
        max_events: usize,
        max_bytes: usize,
    ) -> Poll<ChannelBatch> {
        let channel = &self.channel;
        let mut st = channel.state();
        if st.ended {
            return Poll::Ready(ChannelBatch::Ended);
        }
        if st.generation != self.generation {
            return Poll::Ready(ChannelBatch::Superseded);
        }
        if let Some(cx) = cx.as_ref() {
            // Before looking, under the state lock (so a superseded reader
            // never takes a newer one's place): a member woken during the
            // pass then wakes this task again, and nothing is lost.
            channel.task.register(cx.waker());
        }
        let mut items: Vec<Item> = st.notices.drain(..).map(Item::Detached).collect();
        let (mut events, mut bytes) = (0usize, 0usize);
        let n = st.members.len();
        let start = if n == 0 { 0 } else { st.next_turn % n };
        let mut next_turn = start + 1;
        let mut superseded = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            if events >= max_events || bytes >= max_bytes {
                // This one has not had its turn: it starts the next pass.
                next_turn = i;
                break;
            }
            let m = &mut st.members[i];
            if m.finished {
                continue;
            }
            let turn_events = TURN_EVENTS.min(max_events - events);
            let turn_bytes = TURN_BYTES.min(max_bytes - bytes);
            let got = match cx {
                // Only members with news; a member's own waker stays with
                // its session when it has none.
                Some(_) if !m.wake.ready.swap(false, Ordering::AcqRel) => continue,
                Some(_) => {
                    let mut member_cx = Context::from_waker(&m.waker);
                    m.reader.poll_next(&mut member_cx, turn_events, turn_bytes)
                }
                None => match m.reader.try_next(turn_events, turn_bytes) {
                    Batch::Events(e) if e.is_empty() => Poll::Pending,
                    other => Poll::Ready(other),
                },
            };
            match got {
                Poll::Ready(Batch::Events(evs)) if !evs.is_empty() => {
                    // A turn may leave events behind: look again next pass.
                    m.mark_ready();
                    events += evs.len();
                    bytes += evs.iter().map(|e| encoded_len(&e.data)).sum::<usize>();
                    if matches!(evs.last().map(|e| &e.data), Some(EventData::Close { .. })) {
                        m.finished = true;
                    }
                    let id: Arc<str> = m.reader.session().id.as_str().into();
                    items.push(Item::Events(id, evs));
                }
                // A reader of its own (or another channel) took it over.
                Poll::Ready(Batch::Superseded) => superseded.push(i),
                Poll::Ready(Batch::Events(_)) | Poll::Pending => {}
            }
        }
        st.next_turn = next_turn;
        // Highest index first, so swap_remove leaves the others in place.
        superseded.sort_unstable_by(|a, b| b.cmp(a));
        for i in superseded {
            let id = st.members[i].reader.session().id.clone();
            channel.drop_member(&mut st, i);
            items.push(Item::Detached(id));
        }
        if items.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(ChannelBatch::Items(items))
    }

    /// Each session's cursor as of what this reader was handed.
    pub fn cursors(&self) -> Vec<(String, u64)> {
        let st = self.channel.state();
        st.members
            .iter()
            .map(|m| (m.reader.session().id.clone(), m.reader.cursor()))
            .collect()
    }

    /// True when no session on the channel has more to give (each has
    /// delivered its close, or there are none): a drain may end the reader.
    pub fn all_finished(&self) -> bool {
        self.channel.state().members.iter().all(|m| m.finished)
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        let mut st = self.channel.state();
        st.readers = st.readers.saturating_sub(1);
        st.last_activity = Instant::now();
        if st.generation == self.generation {
            // Under the state lock: a newer reader's waker is never cleared.
            *self.channel.task.slot() = None;
        }
    }
}

/// Ends `channel` once it has had no reader and no send for `idle`.
pub async fn watch_idle(channel: Arc<Channel>, registry: Arc<ChannelRegistry>, idle: Duration) {
    while let Some(deadline) = channel.idle_deadline(idle) {
        if deadline <= Instant::now() {
            tracing::debug!(channel = channel.log_id(), "channel idle: ended");
            registry.end(&channel);
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::session::registry::{Registry, new_id};
    use crate::session::testing::{limits, session};
    use bytes::Bytes;

    fn config() -> ChannelConfig {
        ChannelConfig {
            max_channels: 2,
            max_sessions_per_channel: 2,
            max_batch_frames: 8,
            max_batch_bytes: 1024,
        }
    }

    fn text() -> EventData {
        EventData::Text(Bytes::from_static(b"x"))
    }

    fn counts(batch: ChannelBatch) -> Vec<(String, usize)> {
        let ChannelBatch::Items(items) = batch else {
            panic!("not items: {batch:?}")
        };
        items
            .into_iter()
            .map(|i| match i {
                Item::Events(id, e) => (id.to_string(), e.len()),
                Item::Detached(id) => (format!("detached {id}"), 0),
            })
            .collect()
    }

    #[test]
    fn each_session_gets_a_bounded_turn_and_a_move_is_told() {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(10, 0, 1 << 20);
        let channels = ChannelRegistry::new(config(), Arc::clone(&metrics));
        let l = limits(1 << 20, Overflow::Backpressure);
        let (busy, _h1) = session(&registry, l, Arc::clone(&metrics));
        let (quiet, _h2) = session(&registry, l, Arc::clone(&metrics));
        for _ in 0..200 {
            busy.push(text());
        }
        quiet.push(text());
        let a = channels.create(new_id()).unwrap();
        channels.attach(&a, &busy, 0).unwrap();
        channels.attach(&a, &quiet, 0).unwrap();
        let mut reader = a.attach_reader(Transport::Stream, &[]).unwrap();
        // One pass: the busy one gives a turn, the quiet one its event.
        let got = counts(reader.try_next(1000, 1 << 20));
        assert_eq!(got, [(busy.id.clone(), TURN_EVENTS), (quiet.id.clone(), 1)]);
        // Then the busy one alone, a turn at a time.
        assert_eq!(
            counts(reader.try_next(1000, 1 << 20)),
            [(busy.id.clone(), TURN_EVENTS)]
        );
        // Full: a third session is refused; a cursor past the end too.
        let (third, _h3) = session(&registry, l, Arc::clone(&metrics));
        assert!(channels.attach(&a, &third, 0).is_err());
        assert!(matches!(
            a.attach_reader(Transport::Stream, &[(busy.id.clone(), 999)]),
            Err(BridgeError::BadCursor)
        ));
        // Moved to another channel: the first one's reader is told.
        let b = channels.create(new_id()).unwrap();
        channels.attach(&b, &quiet, 1).unwrap();
        assert!(a.session(&quiet.id).is_none());
        let got = counts(reader.try_next(1000, 1 << 20));
        assert_eq!(got[0], (format!("detached {}", quiet.id), 0));
        // A newer reader supersedes; ending the channel ends its reader.
        let mut newer = a.attach_reader(Transport::Poll, &[]).unwrap();
        assert!(matches!(reader.try_next(10, 10), ChannelBatch::Superseded));
        assert!(channels.create(new_id()).is_err(), "max_channels");
        channels.end(&a);
        assert!(matches!(newer.try_next(10, 10), ChannelBatch::Ended));
        assert!(channels.get(&a.id).is_none());
        assert_eq!(channels.active(), 1);
        assert!(
            metrics
                .render(&Default::default(), crate::metrics::Format::Prometheus)
                .contains("wsbridge_channel_sessions 1")
        );
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_reader_is_woken_by_whichever_session_has_news() {
        let metrics = Arc::new(Metrics::new());
        let registry = Registry::new(10, 0, 1 << 20);
        let mut cfg = config();
        cfg.max_sessions_per_channel = 3;
        let channels = ChannelRegistry::new(cfg, Arc::clone(&metrics));
        let l = limits(1 << 20, Overflow::Backpressure);
        let sessions: Vec<_> = (0..3)
            .map(|_| session(&registry, l, Arc::clone(&metrics)))
            .collect();
        let a = channels.create(new_id()).unwrap();
        for (s, _) in &sessions {
            channels.attach(&a, s, 0).unwrap();
        }
        let mut reader = a.attach_reader(Transport::Stream, &[]).unwrap();
        let count = Arc::new(Count::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(reader.poll_take(Some(&mut cx), 1000, 1 << 20).is_pending());
        // Each session in turn, the reader waiting each time: every push
        // wakes it and the next pass finds that session's event.
        for (k, (s, _)) in sessions.iter().enumerate().rev() {
            s.push(text());
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                3 - k,
                "woken by session {k}"
            );
            let Poll::Ready(batch) = reader.poll_take(Some(&mut cx), 1000, 1 << 20) else {
                panic!("session {k}'s event not found");
            };
            assert_eq!(counts(batch), [(s.id.clone(), 1)]);
            assert!(reader.poll_take(Some(&mut cx), 1000, 1 << 20).is_pending());
        }
        // A busy session that gave a full turn is looked at again on the
        // next pass without a wake-up: what it left behind is not lost.
        let (busy, quiet) = (&sessions[0].0, &sessions[1].0);
        for _ in 0..(TURN_EVENTS + 1) {
            busy.push(text());
        }
        quiet.push(text());
        let got = counts(reader.try_next(1000, 1 << 20));
        assert_eq!(got.len(), 2);
        let Poll::Ready(batch) = reader.poll_take(Some(&mut cx), 1000, 1 << 20) else {
            panic!("the busy session's last event was left behind");
        };
        assert_eq!(counts(batch), [(busy.id.clone(), 1)]);
        assert!(reader.poll_take(Some(&mut cx), 1000, 1 << 20).is_pending());
        // A newer reader wakes the waiting one, which learns at once.
        let woken = count.0.load(Ordering::SeqCst);
        let _newer = a.attach_reader(Transport::Sse, &[]).unwrap();
        assert!(count.0.load(Ordering::SeqCst) > woken);
        assert!(matches!(
            reader.poll_take(Some(&mut cx), 1000, 1 << 20),
            Poll::Ready(ChannelBatch::Superseded)
        ));
    }
}
