//! The per-session replay queue: numbers upstream frames as events, holds them
//! for delivery and replay within fixed limits, and tells the upstream reader
//! when to stop. Pure logic with no I/O, so the rules of PROTOCOL.md ("Events,
//! ids, kinds, the replay queue") are tested here directly.
//!
//! Held events always have consecutive ids ending at the last id: events are
//! only ever freed from the front (acknowledged, retired by the replay limits,
//! or dropped by drop-oldest). So what a reader missed is always one range,
//! reported as a single exact `gap`.
//!
//! Memory stays bounded: sent events by the replay limits, undelivered ones
//! by `max_pending_bytes` (the upstream reader pauses, or the oldest are
//! dropped), so the held bytes stay within about
//! `max(max_bytes, max_pending_bytes)` plus one frame and a close.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::config::Overflow;

/// Cost added to each undelivered event when deciding to pause or drop: an
/// upstream sending empty frames would otherwise grow the queue without bound
/// while its byte count stayed at zero.
pub const EVENT_OVERHEAD: usize = 64;

/// What an event carries. Gap is never stored: it is made by `read` for a
/// reader whose cursor is older than what is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventData {
    /// A text frame, valid UTF-8.
    Text(Bytes),
    /// A binary frame.
    Binary(Bytes),
    Close {
        code: u16,
        reason: String,
    },
    Gap {
        from: u64,
        to: u64,
    },
}

impl EventData {
    /// The bytes this event holds in memory, as counted by the replay and
    /// pending limits: the frame, or the close reason.
    pub fn data_len(&self) -> usize {
        match self {
            EventData::Text(bytes) | EventData::Binary(bytes) => bytes.len(),
            EventData::Close { reason, .. } => reason.len(),
            EventData::Gap { .. } => 0,
        }
    }
}

/// One event. A `Gap` event's id is its `to`: it stands for the events it
/// replaces, so a reader that has it has accounted for everything up to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    pub data: EventData,
}

#[derive(Clone, Copy, Debug)]
pub struct ReplayLimits {
    /// Sent events stay replayable while within the last `max_events`...
    pub max_events: usize,
    /// ...and the last `max_bytes` data bytes (held events, sent or not).
    pub max_bytes: usize,
    /// Undelivered cost (data bytes plus `EVENT_OVERHEAD` each) at which the
    /// upstream reader pauses, or beyond which the oldest events are dropped.
    pub max_pending_bytes: usize,
    pub overflow: Overflow,
}

/// A cursor beyond the last id: the reader claims events that do not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadCursor;

/// The events of one session, with what has been delivered and what may still
/// be replayed.
#[derive(Debug)]
pub struct ReplayQueue {
    limits: ReplayLimits,
    /// Held events, oldest first; ids consecutive and ending at `last_id`, so
    /// the first held id follows from the length.
    events: VecDeque<Event>,
    /// Id of the newest event pushed; 0 before any.
    last_id: u64,
    /// Highest id any read returned (or a cursor acknowledged): later events
    /// are undelivered, and backpressure mode must never free them.
    sent_upto: u64,
    /// Data bytes of all held events, kept in step so limits cost O(1).
    held_bytes: usize,
    /// Data bytes of held events with id > `sent_upto`.
    pending_bytes: usize,
    /// Events freed before any read returned them (drop-oldest, here or
    /// for the process-wide budget): the only events a live reader can lose,
    /// and what `wsbridge_events_dropped_total` counts.
    dropped_undelivered: u64,
}

impl ReplayQueue {
    /// An empty queue. It allocates nothing up front: most sessions hold only
    /// a few events at a time, and there may be many sessions.
    pub fn new(limits: ReplayLimits) -> Self {
        ReplayQueue {
            limits,
            events: VecDeque::new(),
            last_id: 0,
            sent_upto: 0,
            held_bytes: 0,
            pending_bytes: 0,
            dropped_undelivered: 0,
        }
    }

    /// Appends an event with the next id and returns that id. Never refuses:
    /// the upstream reader is expected to stop while `must_pause()`, and a
    /// close event must always get through.
    pub fn push(&mut self, data: EventData) -> u64 {
        debug_assert!(
            !matches!(data, EventData::Gap { .. }),
            "a gap is made by read for one reader, never stored"
        );
        self.last_id += 1;
        let len = data.data_len();
        self.held_bytes += len;
        // A new id is always beyond `sent_upto`: no reader has seen it.
        self.pending_bytes += len;
        self.events.push_back(Event {
            id: self.last_id,
            data,
        });
        if self.limits.overflow == Overflow::DropOldest {
            self.drop_oldest();
        }
        self.retire_sent();
        self.last_id
    }

    /// Whether the upstream reader must stop reading until a client drains:
    /// in backpressure mode, when the undelivered cost reaches
    /// `max_pending_bytes`. Never with nothing undelivered, so even a zero
    /// limit lets one event through instead of stalling the session forever.
    /// Always false in drop-oldest mode, which drops instead.
    pub fn must_pause(&self) -> bool {
        self.limits.overflow == Overflow::Backpressure
            && self.pending_events() > 0
            && self.pending_cost() >= self.limits.max_pending_bytes
    }

    /// The events after `cursor`, for one response or write: a `gap` first if
    /// the reader missed events no longer held, then held events in order, at
    /// most `max_events` (the gap counts as one) and `max_bytes` of
    /// [`encoded_len`], but at least one when any is available.
    ///
    /// The cursor acknowledges every event up to it, freeing them; returned
    /// events count as sent, so they become subject to the replay limits.
    pub fn read(
        &mut self,
        cursor: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, BadCursor> {
        self.ack(cursor)?;
        Ok(self.read_after(cursor, max_events, max_bytes))
    }

    /// Acknowledges every event up to `cursor`: a client said it has them.
    pub fn ack(&mut self, cursor: u64) -> Result<(), BadCursor> {
        if cursor > self.last_id {
            return Err(BadCursor);
        }
        // The reader has everything up to its cursor, so those events are
        // delivered (even if this queue never returned them: the reader said
        // so) and need not be kept for replay.
        self.mark_sent(cursor);
        while self.events.front().is_some_and(|event| event.id <= cursor) {
            self.free_front();
        }
        Ok(())
    }

    /// Like [`ReplayQueue::read`] without acknowledging: for a reader that
    /// goes on from where it is, since events it wrote into a response are
    /// not known to have arrived. A cursor beyond the last id reads nothing.
    pub fn read_after(&mut self, cursor: u64, max_events: usize, max_bytes: usize) -> Vec<Event> {
        if cursor >= self.last_id {
            return Vec::new();
        }

        // A batch always makes progress, even with a zero limit.
        let max_events = max_events.max(1);
        let mut batch = Vec::with_capacity(max_events.min(self.events.len() + 1));
        let first_held = self.first_held_id();
        if cursor + 1 < first_held {
            let to = first_held - 1;
            batch.push(Event {
                id: to,
                data: EventData::Gap {
                    from: cursor + 1,
                    to,
                },
            });
        }
        let mut batch_bytes = 0usize;
        // Ids are consecutive, so the first event after the cursor is found
        // by position.
        let skip = usize::try_from((cursor + 1).saturating_sub(first_held)).unwrap_or(usize::MAX);
        for event in self.events.iter().skip(skip) {
            let len = encoded_len(&event.data);
            let over_bytes = batch_bytes.saturating_add(len) > max_bytes;
            // An event larger than the byte limit still goes, alone.
            if batch.len() >= max_events || (over_bytes && !batch.is_empty()) {
                break;
            }
            batch_bytes = batch_bytes.saturating_add(len);
            batch.push(event.clone());
        }

        if let Some(last) = batch.last() {
            // A gap past `sent_upto` stands for events drop-oldest dropped:
            // the reader has now accounted for them too.
            self.mark_sent(last.id);
            self.retire_sent();
        }
        batch
    }

    /// Id of the newest event; 0 before any push.
    pub fn last_id(&self) -> u64 {
        self.last_id
    }

    pub fn held_events(&self) -> usize {
        self.events.len()
    }

    /// Data bytes of the held events (see [`EventData::data_len`]).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Data bytes of held events no read has returned yet.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Events dropped by drop-oldest before any read returned them.
    pub fn dropped_undelivered(&self) -> u64 {
        self.dropped_undelivered
    }

    /// Frees sent events from the front until `want` data bytes are freed or
    /// the front event is undelivered; returns the bytes freed. For the
    /// process-wide budget (`replay.max_total_bytes`): a sent event is held
    /// only for replay, and a reader resuming before it gets an exact gap.
    /// Never frees an undelivered event.
    pub fn shed_sent(&mut self, want: usize) -> usize {
        let start = self.held_bytes;
        while start - self.held_bytes < want
            && self
                .events
                .front()
                .is_some_and(|event| event.id <= self.sent_upto)
        {
            self.free_front();
        }
        start - self.held_bytes
    }

    /// Drop-oldest for the process-wide budget: frees from the front, sent
    /// or not, until `want` data bytes are freed; returns the bytes freed.
    /// Like [`ReplayQueue::push`]'s own drop-oldest, it keeps the newest
    /// event and a close, and the reader sees what it lost as a gap.
    pub fn shed_oldest(&mut self, want: usize) -> usize {
        let start = self.held_bytes;
        while start - self.held_bytes < want && self.events.len() > 1 {
            if self
                .events
                .front()
                .is_some_and(|event| matches!(event.data, EventData::Close { .. }))
            {
                break;
            }
            self.free_front();
        }
        start - self.held_bytes
    }

    /// Id the front event has, or would have: `last_id + 1` when none is held.
    fn first_held_id(&self) -> u64 {
        self.last_id + 1 - self.events.len() as u64
    }

    /// Held events with id > `sent_upto`: they form the tail of the queue.
    fn pending_events(&self) -> usize {
        let held = self.events.len();
        usize::try_from(self.last_id - self.sent_upto).map_or(held, |unsent| unsent.min(held))
    }

    /// What undelivered events count for against `max_pending_bytes`.
    fn pending_cost(&self) -> usize {
        self.pending_bytes
            .saturating_add(self.pending_events().saturating_mul(EVENT_OVERHEAD))
    }

    /// Counts every event up to `upto` as delivered: no longer pending, so
    /// subject to the replay limits instead of the pending one.
    fn mark_sent(&mut self, upto: u64) {
        if upto <= self.sent_upto {
            return;
        }
        // Held events already sent sit at the front: skip them unscanned.
        let held = self.events.len();
        let first_unsent = usize::try_from(self.sent_upto.saturating_sub(self.first_held_id() - 1))
            .map_or(held, |sent| sent.min(held));
        let newly_sent: usize = self
            .events
            .range(first_unsent..)
            .take_while(|event| event.id <= upto)
            .map(|event| event.data.data_len())
            .sum();
        self.pending_bytes -= newly_sent;
        self.sent_upto = upto;
    }

    /// Frees the front event, keeping the counters in step. An event freed
    /// while still undelivered is a loss the reader will see as a gap: count
    /// it.
    fn free_front(&mut self) {
        if let Some(event) = self.events.pop_front() {
            let len = event.data.data_len();
            self.held_bytes -= len;
            if event.id > self.sent_upto {
                self.pending_bytes -= len;
                self.dropped_undelivered += 1;
            }
        }
    }

    /// Drop-oldest: bound the undelivered cost by dropping from the front.
    /// The newest event always stays (a frame larger than the limit is still
    /// delivered), and so does a close, which is always last anyway.
    fn drop_oldest(&mut self) {
        while self.events.len() > 1 && self.pending_cost() > self.limits.max_pending_bytes {
            if self
                .events
                .front()
                .is_some_and(|event| matches!(event.data, EventData::Close { .. }))
            {
                break;
            }
            self.free_front();
        }
    }

    /// Frees sent events from the front while the held events exceed the
    /// replay limits. Stops at the first undelivered event: those are bounded
    /// by `max_pending_bytes` instead, never freed to make room for replay.
    fn retire_sent(&mut self) {
        while self.events.front().is_some_and(|event| {
            event.id <= self.sent_upto
                && (self.events.len() > self.limits.max_events
                    || self.held_bytes > self.limits.max_bytes)
        }) {
            self.free_front();
        }
    }
}

/// The size an event counts for in poll/stream batch limits: text bytes, the
/// base64 length of binary (4 * ceil(n / 3)), close reason bytes, 0 for gap.
pub fn encoded_len(data: &EventData) -> usize {
    match data {
        EventData::Text(bytes) => bytes.len(),
        EventData::Binary(bytes) => bytes.len().div_ceil(3).saturating_mul(4),
        EventData::Close { reason, .. } => reason.len(),
        EventData::Gap { .. } => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_on_is_not_an_acknowledgement() {
        let mut q = ReplayQueue::new(ReplayLimits {
            max_events: 100,
            max_bytes: 1 << 20,
            max_pending_bytes: 1 << 20,
            overflow: Overflow::Backpressure,
        });
        for _ in 0..5 {
            q.push(EventData::Text(Bytes::from_static(b"x")));
        }
        assert_eq!(q.read_after(0, 10, 1 << 20).len(), 5);
        // A streaming reader goes on from 5: nothing is freed by that.
        assert!(q.read_after(5, 10, 1 << 20).is_empty());
        assert_eq!(q.held_events(), 5);
        assert_eq!(q.pending_bytes(), 0, "all five were sent");
        // The client lost 4 and 5 and resumes from 3: both are replayed.
        let again = q.read(3, 10, 1 << 20).unwrap();
        assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(q.held_events(), 2, "the resume acknowledged 1..=3");
    }

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use proptest::prelude::*;
    use proptest::sample::Index;

    fn limits(
        max_events: usize,
        max_bytes: usize,
        max_pending_bytes: usize,
        overflow: Overflow,
    ) -> ReplayLimits {
        ReplayLimits {
            max_events,
            max_bytes,
            max_pending_bytes,
            overflow,
        }
    }

    /// Generous limits, for tests about one rule only.
    fn roomy(overflow: Overflow) -> ReplayLimits {
        limits(1000, 1 << 20, 1 << 20, overflow)
    }

    fn text(s: &str) -> EventData {
        EventData::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn binary(len: usize) -> EventData {
        EventData::Binary(Bytes::from(vec![0xa5; len]))
    }

    fn close(reason: &str) -> EventData {
        EventData::Close {
            code: 1000,
            reason: reason.to_owned(),
        }
    }

    fn gap(from: u64, to: u64) -> Event {
        Event {
            id: to,
            data: EventData::Gap { from, to },
        }
    }

    fn ids(batch: &[Event]) -> Vec<u64> {
        batch.iter().map(|event| event.id).collect()
    }

    fn read(q: &mut ReplayQueue, cursor: u64) -> Vec<Event> {
        q.read(cursor, usize::MAX, usize::MAX)
            .expect("cursor within last id")
    }

    impl ReplayQueue {
        /// Recomputes every counter from the held events and checks the
        /// structure the queue relies on.
        fn check_invariants(&self) {
            for (i, event) in self.events.iter().enumerate() {
                assert_eq!(event.id, self.first_held_id() + i as u64, "ids consecutive");
                assert!(!matches!(event.data, EventData::Gap { .. }), "gap stored");
            }
            assert!(self.sent_upto <= self.last_id);
            let held: usize = self.events.iter().map(|e| e.data.data_len()).sum();
            assert_eq!(self.held_bytes, held);
            let pending: Vec<&Event> = self
                .events
                .iter()
                .filter(|e| e.id > self.sent_upto)
                .collect();
            assert_eq!(self.pending_events(), pending.len());
            assert_eq!(
                self.pending_bytes,
                pending.iter().map(|e| e.data.data_len()).sum::<usize>()
            );
        }

        /// Whether any held event was already sent (so retention applies).
        fn holds_sent(&self) -> bool {
            !self.events.is_empty() && self.first_held_id() <= self.sent_upto
        }
    }

    #[test]
    fn new_queue_is_empty_and_allocates_nothing() {
        let q = ReplayQueue::new(roomy(Overflow::Backpressure));
        assert_eq!(q.events.capacity(), 0);
        assert_eq!(q.last_id(), 0);
        assert_eq!(
            (q.held_events(), q.held_bytes(), q.pending_bytes()),
            (0, 0, 0)
        );
        assert!(!q.must_pause());
    }

    #[test]
    fn ids_are_consecutive_from_one() {
        let mut q = ReplayQueue::new(roomy(Overflow::Backpressure));
        assert_eq!(q.push(text("a")), 1);
        assert_eq!(q.push(binary(3)), 2);
        assert_eq!(q.push(close("bye")), 3);
        assert_eq!(q.last_id(), 3);
        assert_eq!(q.held_bytes(), 1 + 3 + 3);
        let batch = read(&mut q, 0);
        assert_eq!(
            batch,
            vec![
                Event {
                    id: 1,
                    data: text("a")
                },
                Event {
                    id: 2,
                    data: binary(3)
                },
                Event {
                    id: 3,
                    data: close("bye")
                },
            ]
        );
    }

    #[test]
    fn cursor_beyond_last_id_is_bad() {
        let mut q = ReplayQueue::new(roomy(Overflow::Backpressure));
        assert_eq!(q.read(0, 10, 10), Ok(Vec::new()));
        assert_eq!(q.read(1, 10, 10), Err(BadCursor));
        q.push(text("a"));
        assert_eq!(q.read(2, 10, 10), Err(BadCursor));
        assert_eq!(q.read(u64::MAX, 10, 10), Err(BadCursor));
        // A refused read changes nothing: the event is still undelivered.
        assert_eq!(q.pending_bytes(), 1);
        assert_eq!(q.read(1, 10, 10), Ok(Vec::new()));
    }

    #[test]
    fn cursor_acknowledges_and_frees() {
        let mut q = ReplayQueue::new(roomy(Overflow::Backpressure));
        for s in ["a", "bb", "ccc", "dddd"] {
            q.push(text(s));
        }
        assert_eq!(ids(&read(&mut q, 0)), [1, 2, 3, 4]);
        assert_eq!(q.held_events(), 4, "sent events stay for replay");
        assert_eq!(ids(&read(&mut q, 2)), [3, 4]);
        assert_eq!((q.held_events(), q.held_bytes()), (2, 7));
        // A reader resuming from before the acknowledgement gets an exact gap.
        assert_eq!(
            read(&mut q, 0),
            vec![
                gap(1, 2),
                Event {
                    id: 3,
                    data: text("ccc")
                },
                Event {
                    id: 4,
                    data: text("dddd")
                }
            ]
        );
        // Acknowledging everything frees everything; the gap then ends at the last id.
        assert_eq!(read(&mut q, 4), Vec::new());
        assert_eq!((q.held_events(), q.held_bytes()), (0, 0));
        assert_eq!(read(&mut q, 1), vec![gap(2, 4)]);
        q.check_invariants();
    }

    #[test]
    fn cursor_ahead_of_reads_counts_as_delivered() {
        // A reader may hold events from another transport's reads: its cursor
        // says it has them, so freeing them is no drop.
        let mut q = ReplayQueue::new(roomy(Overflow::DropOldest));
        q.push(text("a"));
        q.push(text("b"));
        q.push(text("c"));
        assert_eq!(ids(&read(&mut q, 2)), [3]);
        assert_eq!(q.dropped_undelivered(), 0);
        assert_eq!(q.pending_bytes(), 0);
        q.check_invariants();
    }

    #[test]
    fn gap_names_exactly_the_retired_ids() {
        let mut q = ReplayQueue::new(limits(2, 1 << 20, 1 << 20, Overflow::Backpressure));
        for i in 0..5 {
            q.push(text(&i.to_string()));
        }
        // Nothing sent yet: nothing may be retired, whatever max_events says.
        assert_eq!(q.held_events(), 5);
        assert_eq!(ids(&read(&mut q, 0)), [1, 2, 3, 4, 5]);
        assert_eq!(q.held_events(), 2);
        assert_eq!(
            read(&mut q, 0),
            vec![
                gap(1, 3),
                Event {
                    id: 4,
                    data: text("3")
                },
                Event {
                    id: 5,
                    data: text("4")
                }
            ]
        );
        assert_eq!(
            read(&mut q, 2),
            vec![
                gap(3, 3),
                Event {
                    id: 4,
                    data: text("3")
                },
                Event {
                    id: 5,
                    data: text("4")
                }
            ]
        );
        assert_eq!(ids(&read(&mut q, 3)), [4, 5]);
    }

    #[test]
    fn retention_by_bytes_frees_only_sent_events() {
        let mut q = ReplayQueue::new(limits(1000, 10, 1 << 20, Overflow::Backpressure));
        q.push(binary(6));
        q.push(binary(6));
        assert_eq!(q.held_bytes(), 12, "undelivered events are never retired");
        assert_eq!(q.read(0, 1, usize::MAX).map(|b| ids(&b)), Ok(vec![1]));
        // Event 1 is sent and the held bytes exceed max_bytes: it goes.
        assert_eq!((q.held_events(), q.held_bytes()), (1, 6));
        q.push(binary(4));
        assert_eq!(ids(&read(&mut q, 1)), [2, 3]);
        assert_eq!((q.held_events(), q.held_bytes()), (2, 10));
        q.check_invariants();
    }

    #[test]
    fn batch_respects_event_and_byte_limits() {
        let mut q = ReplayQueue::new(roomy(Overflow::Backpressure));
        for _ in 0..6 {
            q.push(text("abcd"));
        }
        assert_eq!(q.read(0, 2, usize::MAX).map(|b| ids(&b)), Ok(vec![1, 2]));
        assert_eq!(q.read(2, 10, 11).map(|b| ids(&b)), Ok(vec![3, 4]));
        assert_eq!(q.read(2, 10, 12).map(|b| ids(&b)), Ok(vec![3, 4, 5]));
        // A zero event limit still makes progress.
        assert_eq!(q.read(5, 0, usize::MAX).map(|b| ids(&b)), Ok(vec![6]));
    }

    #[test]
    fn gap_counts_as_one_event_of_no_bytes() {
        let mut q = ReplayQueue::new(roomy(Overflow::Backpressure));
        for _ in 0..4 {
            q.push(text("abcd"));
        }
        read(&mut q, 2);
        assert_eq!(q.read(0, 1, usize::MAX), Ok(vec![gap(1, 2)]));
        assert_eq!(q.read(0, 2, 4).map(|b| ids(&b)), Ok(vec![2, 3]));
        // After a gap, an event over the byte limit waits for the next batch.
        assert_eq!(q.read(0, 10, 3), Ok(vec![gap(1, 2)]));
    }

    #[test]
    fn single_oversize_event_is_sent_alone() {
        let mut q = ReplayQueue::new(roomy(Overflow::Backpressure));
        q.push(binary(30)); // 40 bytes of base64
        q.push(text("x"));
        assert_eq!(q.read(0, 10, 16).map(|b| ids(&b)), Ok(vec![1]));
        assert_eq!(
            q.read(0, 10, 0),
            Ok(vec![Event {
                id: 1,
                data: binary(30)
            }])
        );
        assert_eq!(q.read(1, 10, 16).map(|b| ids(&b)), Ok(vec![2]));
    }

    #[test]
    fn must_pause_toggles_as_clients_drain() {
        let mut q = ReplayQueue::new(limits(
            1000,
            1 << 20,
            2 * EVENT_OVERHEAD + 20,
            Overflow::Backpressure,
        ));
        q.push(binary(10));
        assert!(!q.must_pause());
        q.push(binary(9));
        assert!(!q.must_pause(), "cost is one byte under the limit");
        q.push(binary(0));
        assert!(q.must_pause());
        // A read of the first event brings the cost back under.
        assert_eq!(q.read(0, 1, usize::MAX).map(|b| ids(&b)), Ok(vec![1]));
        assert!(!q.must_pause());
        q.push(binary(20));
        assert!(q.must_pause());
        read(&mut q, 1);
        assert!(!q.must_pause());
        assert_eq!(q.pending_bytes(), 0);
        q.check_invariants();
    }

    #[test]
    fn empty_frames_still_count_toward_the_pause() {
        let mut q = ReplayQueue::new(limits(
            1000,
            1 << 20,
            3 * EVENT_OVERHEAD,
            Overflow::Backpressure,
        ));
        q.push(text(""));
        q.push(text(""));
        assert!(!q.must_pause());
        q.push(text(""));
        assert!(q.must_pause());
        assert_eq!(q.pending_bytes(), 0);
    }

    #[test]
    fn zero_pending_limit_lets_one_event_through() {
        let mut q = ReplayQueue::new(limits(1000, 1 << 20, 0, Overflow::Backpressure));
        assert!(!q.must_pause());
        q.push(text("a"));
        assert!(q.must_pause());
        read(&mut q, 0);
        assert!(!q.must_pause());
    }

    #[test]
    fn backpressure_never_drops_undelivered_events() {
        // Even a caller that ignores must_pause loses nothing.
        let mut q = ReplayQueue::new(limits(1, 1, 1, Overflow::Backpressure));
        for _ in 0..50 {
            q.push(binary(10));
        }
        assert!(q.must_pause());
        assert_eq!((q.held_events(), q.pending_bytes()), (50, 500));
        let batch = read(&mut q, 0);
        assert_eq!(ids(&batch), (1..=50).collect::<Vec<_>>());
        assert_eq!(q.dropped_undelivered(), 0);
        // Once sent, the replay limits apply again.
        assert_eq!(q.held_events(), 0);
        q.check_invariants();
    }

    #[test]
    fn drop_oldest_reports_an_exact_gap() {
        // Room for two undelivered 10-byte events.
        let mut q = ReplayQueue::new(limits(
            1000,
            1 << 20,
            2 * (EVENT_OVERHEAD + 10),
            Overflow::DropOldest,
        ));
        for _ in 0..5 {
            q.push(binary(10));
            assert!(!q.must_pause(), "drop-oldest never pauses");
        }
        assert_eq!(q.held_events(), 2);
        assert_eq!(q.dropped_undelivered(), 3);
        let batch = read(&mut q, 0);
        assert_eq!(batch[0], gap(1, 3));
        assert_eq!(ids(&batch), [3, 4, 5]);
        // The dropped events were accounted for by the gap: nothing is pending.
        assert_eq!(q.pending_bytes(), 0);
        q.check_invariants();
    }

    #[test]
    fn drop_oldest_drops_sent_events_first_and_counts_only_undelivered() {
        let mut q = ReplayQueue::new(limits(
            1000,
            1 << 20,
            EVENT_OVERHEAD + 10,
            Overflow::DropOldest,
        ));
        q.push(binary(10));
        read(&mut q, 0);
        q.push(binary(10));
        q.push(binary(10));
        // Event 1 (sent) and 2 (never sent) had to go to bound event 3.
        assert_eq!(q.dropped_undelivered(), 1);
        assert_eq!(
            read(&mut q, 1),
            vec![
                gap(2, 2),
                Event {
                    id: 3,
                    data: binary(10)
                }
            ]
        );
    }

    #[test]
    fn drop_oldest_keeps_the_newest_event_even_if_oversize() {
        let mut q = ReplayQueue::new(limits(1000, 1 << 20, 10, Overflow::DropOldest));
        q.push(binary(5));
        q.push(close(&"r".repeat(100)));
        assert_eq!(q.held_events(), 1);
        assert_eq!(
            read(&mut q, 0),
            vec![
                gap(1, 1),
                Event {
                    id: 2,
                    data: close(&"r".repeat(100))
                }
            ]
        );
    }

    #[test]
    fn encoded_len_counts_what_goes_on_the_wire() {
        for n in 0..20 {
            let data = vec![7u8; n];
            assert_eq!(
                encoded_len(&EventData::Binary(Bytes::from(data.clone()))),
                STANDARD.encode(&data).len()
            );
        }
        assert_eq!(encoded_len(&text("héllo")), 6);
        assert_eq!(encoded_len(&close("bye")), 3);
        assert_eq!(encoded_len(&EventData::Gap { from: 1, to: 9 }), 0);
    }

    // Model-based property test. A driver interleaves upstream pushes,
    // client reads (sometimes losing a suffix of the batch, as a dropped
    // connection would), client resumes from older cursors it holds, and bad
    // cursors, checking the queue against a model after every step.

    const MAX_FRAME: usize = 80;
    const MAX_REASON: usize = 20;

    #[derive(Clone, Copy, Debug)]
    enum Driver {
        /// Backpressure mode, pushing only while !must_pause(): the contract.
        Polite,
        /// Backpressure mode, pushing regardless: still no loss.
        Pushy,
        DropOldest,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push {
            binary: bool,
            len: usize,
        },
        /// `keep`: None keeps the whole batch; else the client kept only a
        /// prefix of it (its connection died mid-batch).
        Read {
            max_events: usize,
            max_bytes: usize,
            keep: Option<Index>,
        },
        /// The client resumes from an older cursor it holds, forgetting what
        /// came after it.
        Rollback(Index),
        BadCursor(u64),
        /// Another reader (say, one about to be superseded) reads from any
        /// valid cursor, acknowledging what the client may not have.
        Stranger {
            cursor: Index,
            max_events: usize,
            max_bytes: usize,
        },
        /// The process-wide budget asks the session for room: sent events
        /// only, or (drop-oldest) any.
        Shed {
            want: usize,
            oldest: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let push =
            (any::<bool>(), 0..=MAX_FRAME).prop_map(|(binary, len)| Op::Push { binary, len });
        // Mostly whole batches: a lost suffix is the exception.
        let keep = prop::option::weighted(0.3, any::<Index>());
        let read =
            (0..=4usize, 0..=120usize, keep).prop_map(|(max_events, max_bytes, keep)| Op::Read {
                max_events,
                max_bytes,
                keep,
            });
        let stranger = (any::<Index>(), 0..=4usize, 0..=120usize).prop_map(
            |(cursor, max_events, max_bytes)| Op::Stranger {
                cursor,
                max_events,
                max_bytes,
            },
        );
        let shed =
            (0..=150usize, any::<bool>()).prop_map(|(want, oldest)| Op::Shed { want, oldest });
        prop_oneof![
            6 => push,
            5 => read,
            1 => any::<Index>().prop_map(Op::Rollback),
            1 => (1..=3u64).prop_map(Op::BadCursor),
            1 => stranger,
            1 => shed,
        ]
    }

    fn scenario() -> impl Strategy<Value = (Driver, ReplayLimits, Vec<Op>, Option<(Index, usize)>)>
    {
        let driver = prop_oneof![
            Just(Driver::Polite),
            Just(Driver::Pushy),
            Just(Driver::DropOldest)
        ];
        (driver, 0..=6usize, 0..=200usize, 0..=300usize)
            .prop_map(|(driver, max_events, max_bytes, max_pending_bytes)| {
                let overflow = match driver {
                    Driver::Polite | Driver::Pushy => Overflow::Backpressure,
                    Driver::DropOldest => Overflow::DropOldest,
                };
                (
                    driver,
                    limits(max_events, max_bytes, max_pending_bytes, overflow),
                )
            })
            .prop_flat_map(|(driver, limits)| {
                (
                    Just(driver),
                    Just(limits),
                    prop::collection::vec(op(), 0..80),
                    // Where the upstream closes, if it does, and the reason's length.
                    prop::option::of((any::<Index>(), 0..=MAX_REASON)),
                )
            })
    }

    struct Harness {
        driver: Driver,
        limits: ReplayLimits,
        q: ReplayQueue,
        /// Every event pushed: `pushed[id - 1]`.
        pushed: Vec<EventData>,
        closed: bool,
        /// The model of `sent_upto`: highest id any read returned.
        max_sent: u64,
        /// The model of `dropped_undelivered`.
        dropped: u64,
        /// What the client kept: events and gaps, in order.
        view: Vec<Event>,
        cursor: u64,
    }

    impl Harness {
        fn new(driver: Driver, limits: ReplayLimits) -> Self {
            Harness {
                driver,
                limits,
                q: ReplayQueue::new(limits),
                pushed: Vec::new(),
                closed: false,
                max_sent: 0,
                dropped: 0,
                view: Vec::new(),
                cursor: 0,
            }
        }

        fn held_range(&self) -> (u64, u64) {
            (self.q.first_held_id(), self.q.last_id())
        }

        fn push(&mut self, data: EventData) -> Result<(), TestCaseError> {
            let is_close = matches!(data, EventData::Close { .. });
            if self.closed {
                return Ok(());
            }
            // A close always goes in; frames only when the reader may read.
            if matches!(self.driver, Driver::Polite) && self.q.must_pause() && !is_close {
                return Ok(());
            }
            let (first_before, last_before) = self.held_range();
            self.pushed.push(data.clone());
            let id = self.q.push(data);
            prop_assert_eq!(id, self.pushed.len() as u64, "ids are consecutive from 1");
            prop_assert_eq!(self.q.last_id(), id);
            let (first_after, _) = self.held_range();
            // Whatever a push freed that no read had returned is a drop.
            let freed_unsent = (first_before..first_after.min(last_before + 1))
                .filter(|&freed| freed > self.max_sent)
                .count() as u64;
            if !matches!(self.driver, Driver::DropOldest) {
                prop_assert_eq!(freed_unsent, 0, "backpressure freed an undelivered event");
            }
            self.dropped += freed_unsent;
            self.closed = is_close;
            Ok(())
        }

        /// A read from `cursor`, checked against the model.
        fn fetch(
            &mut self,
            cursor: u64,
            max_events: usize,
            max_bytes: usize,
        ) -> Result<Vec<Event>, TestCaseError> {
            let (first_held, last) = self.held_range();
            let batch = self.q.read(cursor, max_events, max_bytes);
            let batch = batch.map_err(|_| TestCaseError::fail("legitimate cursor refused"))?;
            prop_assert_eq!(
                batch.is_empty(),
                cursor == last,
                "progress exactly when events are available"
            );

            // After the acknowledgement, the server holds `start..=last`.
            let start = first_held.max(cursor + 1);
            let mut rest = batch.as_slice();
            if let Some((first, tail)) = rest.split_first()
                && let EventData::Gap { from, to } = first.data
            {
                prop_assert_eq!(
                    (from, to, first.id),
                    (cursor + 1, start - 1, start - 1),
                    "gap names exactly the ids missing"
                );
                if !matches!(self.driver, Driver::DropOldest) {
                    prop_assert!(
                        to <= self.max_sent,
                        "backpressure gapped an undelivered event"
                    );
                }
                rest = tail;
            } else {
                prop_assert_eq!(start, cursor + 1, "ids missing without a gap");
            }
            let mut bytes = 0;
            for (expect_id, event) in (start..).zip(rest) {
                prop_assert_eq!(event.id, expect_id);
                prop_assert_eq!(&event.data, &self.pushed[(event.id - 1) as usize]);
                bytes += encoded_len(&event.data);
            }
            prop_assert!(batch.len() <= max_events.max(1));
            if bytes > max_bytes {
                prop_assert!(
                    batch.len() == 1 && rest.len() == 1,
                    "only a lone event may exceed max_bytes"
                );
            }
            // The batch is as long as the limits allow.
            if let Some(last_returned) = batch.last()
                && last_returned.id < last
                && batch.len() < max_events.max(1)
            {
                let next = &self.pushed[last_returned.id as usize];
                prop_assert!(bytes + encoded_len(next) > max_bytes, "batch stopped short");
            }

            // The cursor and the batch both count as delivered.
            self.max_sent = self.max_sent.max(cursor);
            if let Some(last_returned) = batch.last() {
                self.max_sent = self.max_sent.max(last_returned.id);
            }
            prop_assert_eq!(self.q.sent_upto, self.max_sent);
            Ok(batch)
        }

        /// The client reads from its cursor and keeps all or a prefix of the
        /// batch.
        fn read(
            &mut self,
            max_events: usize,
            max_bytes: usize,
            keep: Option<Index>,
        ) -> Result<(), TestCaseError> {
            let batch = self.fetch(self.cursor, max_events, max_bytes)?;
            let kept = keep.map_or(batch.len(), |keep| keep.index(batch.len() + 1));
            self.view.extend(batch.into_iter().take(kept));
            self.cursor = self.view.last().map_or(0, |event| event.id);
            Ok(())
        }

        /// A shed for the budget, checked against the model: it frees from
        /// the front, reports what it freed, stops only when done or when
        /// what is left may not go, and drops undelivered events only when
        /// told it may.
        fn shed(&mut self, want: usize, oldest: bool) -> Result<(), TestCaseError> {
            // The session sheds the oldest only under drop-oldest.
            let oldest = oldest && matches!(self.driver, Driver::DropOldest);
            let (first_before, last) = self.held_range();
            let bytes_before = self.q.held_bytes();
            let freed = if oldest {
                self.q.shed_oldest(want)
            } else {
                self.q.shed_sent(want)
            };
            let (first_after, _) = self.held_range();
            prop_assert_eq!(
                freed,
                bytes_before - self.q.held_bytes(),
                "freed bytes reported"
            );
            let freed_unsent = (first_before..first_after)
                .filter(|&id| id > self.max_sent)
                .count() as u64;
            if !oldest {
                prop_assert_eq!(freed_unsent, 0, "shed_sent freed an undelivered event");
            }
            self.dropped += freed_unsent;
            if freed < want && first_after <= last {
                let front = &self.pushed[(first_after - 1) as usize];
                let may_go = if oldest {
                    first_after < last && !matches!(front, EventData::Close { .. })
                } else {
                    first_after <= self.max_sent
                };
                prop_assert!(!may_go, "shed stopped short");
            }
            Ok(())
        }

        fn rollback(&mut self, to: Index) {
            self.view.truncate(to.index(self.view.len() + 1));
            self.cursor = self.view.last().map_or(0, |event| event.id);
        }

        fn bad_cursor(&mut self, beyond: u64) -> Result<(), TestCaseError> {
            let before = (
                self.q.last_id(),
                self.q.held_events(),
                self.q.held_bytes(),
                self.q.pending_bytes(),
                self.q.sent_upto,
            );
            prop_assert_eq!(
                self.q.read(self.q.last_id() + beyond, 5, 100),
                Err(BadCursor)
            );
            let after = (
                self.q.last_id(),
                self.q.held_events(),
                self.q.held_bytes(),
                self.q.pending_bytes(),
                self.q.sent_upto,
            );
            prop_assert_eq!(before, after, "a refused read changed the queue");
            Ok(())
        }

        /// What must hold between any two steps.
        fn check(&self) -> Result<(), TestCaseError> {
            self.q.check_invariants();
            let l = self.limits;
            let q = &self.q;
            prop_assert_eq!(q.dropped_undelivered(), self.dropped);
            // Retention: while any sent event is held, the held events are
            // within both replay limits.
            if q.holds_sent() {
                prop_assert!(
                    q.held_events() <= l.max_events,
                    "held {} events",
                    q.held_events()
                );
                prop_assert!(
                    q.held_bytes() <= l.max_bytes,
                    "held {} bytes",
                    q.held_bytes()
                );
            }
            let bounded = match self.driver {
                Driver::Polite => {
                    // Each frame went in with the cost under the limit; only
                    // one frame, then the close, can take it over.
                    let cost = q.pending_cost();
                    let bound = l.max_pending_bytes
                        + (MAX_FRAME + EVENT_OVERHEAD)
                        + (MAX_REASON + EVENT_OVERHEAD);
                    prop_assert!(cost <= bound, "pending cost {} > {}", cost, bound);
                    true
                }
                Driver::DropOldest => {
                    let cost = q.pending_cost();
                    prop_assert!(
                        cost <= l.max_pending_bytes || q.held_events() == 1,
                        "pending cost {} over {} with {} events held",
                        cost,
                        l.max_pending_bytes,
                        q.held_events()
                    );
                    true
                }
                Driver::Pushy => false,
            };
            if bounded {
                // Memory: the larger of the two byte limits plus one frame and a close.
                let bytes_bound = l.max_bytes.max(l.max_pending_bytes) + MAX_FRAME + MAX_REASON;
                prop_assert!(
                    q.held_bytes() <= bytes_bound,
                    "held {} bytes > {}",
                    q.held_bytes(),
                    bytes_bound
                );
                let events_bound = l.max_events.max(l.max_pending_bytes / EVENT_OVERHEAD + 2);
                prop_assert!(
                    q.held_events() <= events_bound,
                    "held {} events > {}",
                    q.held_events(),
                    events_bound
                );
            }
            self.check_view()
        }

        /// The client's view covers ids 1..=cursor exactly once, in order,
        /// each event with the data pushed under its id.
        fn check_view(&self) -> Result<(), TestCaseError> {
            let mut next = 1;
            for item in &self.view {
                match item.data {
                    EventData::Gap { from, to } => {
                        prop_assert_eq!(from, next);
                        prop_assert!(from <= to && item.id == to);
                        next = to + 1;
                    }
                    ref data => {
                        prop_assert_eq!(item.id, next);
                        prop_assert_eq!(data, &self.pushed[(item.id - 1) as usize]);
                        next += 1;
                    }
                }
            }
            prop_assert_eq!(next, self.cursor + 1);
            Ok(())
        }
    }

    fn frame(binary: bool, len: usize, id: usize) -> EventData {
        // Content varies with the id, so a misplaced event shows.
        let byte = b'a' + (id % 26) as u8;
        let bytes = Bytes::from(vec![byte; len]);
        if binary {
            EventData::Binary(bytes)
        } else {
            EventData::Text(bytes)
        }
    }

    /// Runs one scenario step by step, then drains the queue.
    fn run_scenario(
        driver: Driver,
        limits: ReplayLimits,
        ops: Vec<Op>,
        close_at: Option<(Index, usize)>,
    ) -> Result<(), TestCaseError> {
        let mut h = Harness::new(driver, limits);
        // The close goes in before the step it names, or after the last.
        let close_step = close_at.map(|(at, reason_len)| (at.index(ops.len() + 1), reason_len));
        let steps = ops.into_iter().map(Some).chain(std::iter::once(None));
        for (step, op) in steps.enumerate() {
            if let Some((at, reason_len)) = close_step
                && at == step
            {
                h.push(EventData::Close {
                    code: 1000,
                    reason: "r".repeat(reason_len),
                })?;
                h.check()?;
            }
            let Some(op) = op else { break };
            match op {
                Op::Push { binary, len } => {
                    let data = frame(binary, len, h.pushed.len());
                    h.push(data)?;
                }
                Op::Read {
                    max_events,
                    max_bytes,
                    keep,
                } => h.read(max_events, max_bytes, keep)?,
                Op::Rollback(to) => h.rollback(to),
                Op::BadCursor(beyond) => h.bad_cursor(beyond)?,
                Op::Stranger {
                    cursor,
                    max_events,
                    max_bytes,
                } => {
                    // Any cursor from 0 to the last id is valid.
                    let last = usize::try_from(h.q.last_id()).unwrap_or(usize::MAX);
                    let cursor = cursor.index(last.saturating_add(1)) as u64;
                    h.fetch(cursor, max_events, max_bytes)?;
                }
                Op::Shed { want, oldest } => h.shed(want, oldest)?,
            }
            h.check()?;
        }

        // The client reads until it has everything: a queue always drains.
        let mut reads = 0;
        while h.cursor < h.q.last_id() {
            prop_assert!(reads <= h.q.last_id(), "reads made no progress");
            h.read(3, 50, None)?;
            h.check()?;
            reads += 1;
        }
        prop_assert_eq!(h.q.pending_bytes(), 0);
        prop_assert!(!h.q.must_pause(), "drained queue still pauses");
        h.check_view()?;
        Ok(())
    }

    proptest! {
        // Moderate: the whole module must run in a few seconds in debug.
        #![proptest_config(ProptestConfig::with_cases(384))]

        #[test]
        fn replay_queue_matches_model((driver, limits, ops, close_at) in scenario()) {
            run_scenario(driver, limits, ops, close_at)?;
        }
    }
}
