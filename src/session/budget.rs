//! The process-wide replay budget, `replay.max_total_bytes`: every session's
//! replay queue, lingering ones included, draws its held data bytes from one
//! counter, so the proxy's replay memory stays bounded however many slow
//! sessions there are.
//!
//! A frame enters a queue only once its bytes are reserved here. When the
//! budget is spent, the session first sheds its own sent events (held only
//! for replay), then, under `replay.overflow = "drop-oldest"`, its oldest
//! undelivered ones (the reader sees a `gap`); failing that its upstream
//! reader waits for [`ReplayBudget::freed`] with the frame in hand, so TCP
//! backpressure reaches the backend. Nothing undelivered is dropped silently.
//!
//! Two exceptions keep every session able to make progress: a frame is
//! admitted when nothing at all is held, even if it alone exceeds the budget;
//! and a session whose live reader has taken every event may queue one frame
//! past it (see `Session::push`), so sessions nobody reads cannot starve one
//! that is read. The bound is thus `max_total_bytes` plus at most one frame
//! per session being read; with no reader attached it is exact.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

pub struct ReplayBudget {
    /// Data bytes held by all replay queues together.
    used: AtomicUsize,
    max: usize,
    /// Upstream readers waiting for room: only then is a release worth a
    /// wake-up (the message path releases on nearly every read).
    waiting: AtomicUsize,
    /// Woken when bytes are given back while someone waits.
    freed: Notify,
}

/// Whether `len` more bytes fit when `used` are held: within the budget, or
/// anything when nothing is held (so no frame waits forever).
pub fn admits(used: usize, len: usize, max: usize) -> bool {
    used == 0 || used.saturating_add(len) <= max
}

impl ReplayBudget {
    pub fn new(max: usize) -> Self {
        ReplayBudget {
            used: AtomicUsize::new(0),
            max,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Reserves `len` bytes if they fit; see [`admits`].
    pub fn try_reserve(&self, len: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                admits(used, len, self.max).then(|| used + len)
            })
            .is_ok()
    }

    /// Takes `len` bytes whether they fit or not: for a session's close
    /// event, which must always get in (its reason is at most 123 bytes).
    pub fn charge(&self, len: usize) {
        self.used.fetch_add(len, Ordering::AcqRel);
    }

    /// Gives `len` bytes back, waking the readers waiting for room.
    pub fn release(&self, len: usize) {
        if len == 0 {
            return;
        }
        self.used.fetch_sub(len, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }

    /// How far over the budget `len` more bytes would go now: what a
    /// session should try to shed before reserving again.
    pub fn shortfall(&self, len: usize) -> usize {
        self.used
            .load(Ordering::Acquire)
            .saturating_add(len)
            .saturating_sub(self.max)
    }

    /// Bytes held by all queues together.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts the caller as waiting for room until the guard drops, so
    /// releases wake it. Register before trying again, and create and
    /// `enable` [`ReplayBudget::freed`] before the try too, so a release
    /// between the try and the wait is not lost.
    pub fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting { budget: self }
    }

    /// Resolves on the next release made while someone is waiting.
    pub fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }
}

/// A reader waiting for room; see [`ReplayBudget::waiting`].
pub struct Waiting<'a> {
    budget: &'a ReplayBudget,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.budget.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admits_within_the_budget_or_when_empty() {
        assert!(admits(0, 10, 5), "an empty budget takes any frame");
        assert!(admits(3, 2, 5));
        assert!(!admits(3, 3, 5));
        assert!(!admits(usize::MAX, 1, 5));
    }

    #[tokio::test]
    async fn a_release_wakes_a_registered_waiter() {
        let budget = ReplayBudget::new(10);
        assert!(budget.try_reserve(8));
        assert!(!budget.try_reserve(5));
        assert_eq!(budget.shortfall(5), 3);
        let waiting = budget.waiting();
        let mut freed = std::pin::pin!(budget.freed());
        freed.as_mut().enable();
        budget.release(8);
        freed.await;
        drop(waiting);
        assert!(budget.try_reserve(5));
        assert_eq!(budget.used(), 5);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(usize, usize),
        Charge(usize, usize),
        Release(usize, usize),
    }

    proptest! {
        /// Sessions reserving, charging closes and releasing in any order:
        /// the counter is the sum of what each holds, it stays within the
        /// budget but for charges and a lone frame taken when empty, and it
        /// returns to zero when every session gives its bytes back.
        #[test]
        fn the_counter_is_the_sum_of_what_sessions_hold(
            max in 1..200usize,
            ops in prop::collection::vec(
                prop_oneof![
                    (0..4usize, 0..120usize).prop_map(|(s, n)| Op::Reserve(s, n)),
                    (0..4usize, 0..10usize).prop_map(|(s, n)| Op::Charge(s, n)),
                    (0..4usize, 0..150usize).prop_map(|(s, n)| Op::Release(s, n)),
                ],
                0..60,
            ),
        ) {
            let budget = ReplayBudget::new(max);
            let mut held = [0usize; 4];
            let mut charged = 0usize;
            for op in ops {
                match op {
                    Op::Reserve(s, n) => {
                        let before = budget.used();
                        let ok = budget.try_reserve(n);
                        prop_assert_eq!(ok, admits(before, n, max));
                        if ok {
                            held[s] += n;
                            prop_assert!(budget.used() <= max + charged || before == 0);
                        }
                    }
                    Op::Charge(s, n) => {
                        budget.charge(n);
                        held[s] += n;
                        charged += n;
                    }
                    Op::Release(s, n) => {
                        let n = n.min(held[s]);
                        budget.release(n);
                        held[s] -= n;
                    }
                }
                prop_assert_eq!(budget.used(), held.iter().sum::<usize>());
            }
            for n in held {
                budget.release(n);
            }
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
