//! A fleet: many sessions of one transport, each in its own task, each
//! checking that frames arrive as 1, 2, 3, … with nothing missing, doubled
//! or out of order. The bench reads their progress through per-session
//! counters (no shared cache line on the message path) and merges their
//! latency histograms at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::clients::{Addrs, Session, Transport, unix_nanos};

/// Failures listed in full per run; the rest are counted.
const LISTED_FAILURES: usize = 5;

/// What every session of a fleet asks the backend for.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub sessions: usize,
    /// Frames per second per session; 0 = as fast as the backend can.
    pub rate: f64,
    pub size: usize,
    /// Frames per session, then the backend closes; 0 = until stopped.
    pub count: u64,
    /// Record each frame's latency (send timestamp to receipt).
    pub latency: bool,
    /// tungstenite's read buffer, allocated per WebSocket up front.
    pub ws_read_buffer: usize,
    /// Sessions opening at once.
    pub open_concurrency: usize,
}

impl Load {
    pub fn path(&self) -> String {
        format!(
            "/pub?rate={}&size={}&count={}",
            self.rate, self.size, self.count
        )
    }

    /// How long the publishing takes, for a bounded paced load.
    pub fn publish_time(&self) -> Duration {
        if self.rate > 0.0 {
            Duration::from_secs_f64((self.count + 1) as f64 / self.rate)
        } else {
            Duration::ZERO
        }
    }
}

/// A latency histogram in nanoseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A counter alone on its cache line.
#[repr(align(64))]
#[derive(Default)]
pub struct Counter(pub AtomicU64);

#[derive(Default)]
pub struct Progress {
    /// Sessions whose reader is attached.
    pub attached: usize,
    pub failed_to_open: usize,
    pub ended: usize,
}

/// What a fleet's tasks share with the bench: their frame counters, their
/// progress, the stop signal, and the bound on opens in flight. Also used
/// by `channel_fleet`, with a counter per channel.
pub struct Shared {
    pub counters: Vec<Counter>,
    pub progress: watch::Sender<Progress>,
    pub stop: CancellationToken,
    /// Bounds the opens in flight, so thousands of sessions do not all hit
    /// the accept queue at once.
    pub opening: Semaphore,
}

impl Shared {
    pub fn new(counters: usize, open_concurrency: usize) -> Arc<Shared> {
        Arc::new(Shared {
            counters: (0..counters).map(|_| Counter::default()).collect(),
            progress: watch::Sender::new(Progress::default()),
            stop: CancellationToken::new(),
            opening: Semaphore::new(open_concurrency.max(1)),
        })
    }

    /// Waits until all `n` sessions are open and attached; `what` names
    /// them in the error.
    pub async fn attached(&self, n: usize, within: Duration, what: &str) -> Result<(), String> {
        let mut rx = self.progress.subscribe();
        let waited = timeout(within, rx.wait_for(|p| p.attached + p.failed_to_open >= n)).await;
        let p = self.progress.borrow();
        match waited {
            Ok(_) if p.failed_to_open == 0 => Ok(()),
            Ok(_) => Err(format!("{} of {n} {what} failed to open", p.failed_to_open)),
            Err(_) => Err(format!(
                "only {} of {n} {what} attached after {}s",
                p.attached,
                within.as_secs()
            )),
        }
    }

    /// Frames delivered so far.
    pub fn delivered(&self) -> u64 {
        self.counters
            .iter()
            .map(|c| c.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits (at most `within`) until all `n` sessions have ended.
    pub async fn ended(&self, n: usize, within: Duration) {
        let mut rx = self.progress.subscribe();
        let _ = timeout(within, rx.wait_for(|p| p.ended >= n)).await;
    }
}

/// How one session ended.
struct End {
    received: u64,
    closed: bool,
    hist: Option<Histogram<u64>>,
    failure: Option<String>,
}

pub struct Fleet {
    transport: Transport,
    load: Load,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<End>>,
}

/// What a fleet did.
pub struct Outcome {
    pub received: u64,
    pub hist: Option<Histogram<u64>>,
    /// The first few failures in full.
    pub failures: Vec<String>,
    /// Sessions that failed (open errors, violations, stalls).
    pub failed: usize,
}

impl Fleet {
    pub fn spawn(transport: Transport, addrs: Addrs, load: Load) -> Fleet {
        let shared = Shared::new(load.sessions, load.open_concurrency);
        let path: Arc<str> = load.path().into();
        let tasks = (0..load.sessions)
            .map(|i| {
                let shared = Arc::clone(&shared);
                let path = Arc::clone(&path);
                tokio::spawn(async move {
                    let end = run_client(i, transport, addrs, &path, load, &shared).await;
                    shared.progress.send_modify(|p| p.ended += 1);
                    end
                })
            })
            .collect();
        Fleet {
            transport,
            load,
            shared,
            tasks,
        }
    }

    /// Waits until every session is open and attached.
    pub async fn attached(&self, within: Duration) -> Result<(), String> {
        self.shared
            .attached(self.load.sessions, within, "sessions")
            .await
    }

    /// Frames delivered so far, all sessions.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered()
    }

    /// Waits for every session to end (bounded loads end with the backend's
    /// close); those still running after `within` are stopped and count as
    /// stalled.
    pub async fn finish(mut self, within: Duration) -> Outcome {
        self.shared.ended(self.load.sessions, within).await;
        self.collect(Some(within)).await
    }

    /// Stops every session now (unbounded loads).
    pub async fn stop(mut self) -> Outcome {
        self.collect(None).await
    }

    async fn collect(&mut self, waited: Option<Duration>) -> Outcome {
        self.shared.stop.cancel();
        let mut outcome = Outcome {
            received: 0,
            hist: self.load.latency.then(histogram),
            failures: Vec::new(),
            failed: 0,
        };
        let bounded = self.load.count > 0;
        for (i, task) in std::mem::take(&mut self.tasks).into_iter().enumerate() {
            let mut end = match task.await {
                Ok(end) => end,
                Err(e) => End {
                    received: 0,
                    closed: false,
                    hist: None,
                    failure: Some(format!("client task failed: {e}")),
                },
            };
            if end.failure.is_none()
                && bounded
                && !end.closed
                && let Some(waited) = waited
            {
                end.failure = Some(format!(
                    "stalled: {} of {} frames and no close within {}s",
                    end.received,
                    self.load.count,
                    waited.as_secs()
                ));
            }
            outcome.received += end.received;
            if let (Some(all), Some(h)) = (&mut outcome.hist, &end.hist) {
                let _ = all.add(h);
            }
            if let Some(f) = end.failure {
                outcome.failed += 1;
                if outcome.failures.len() < LISTED_FAILURES {
                    outcome
                        .failures
                        .push(format!("{} session {i}: {f}", self.transport.name()));
                }
            }
        }
        outcome
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A fleet dropped on an error path must not leave clients running.
        self.shared.stop.cancel();
    }
}

async fn run_client(
    i: usize,
    transport: Transport,
    addrs: Addrs,
    path: &str,
    load: Load,
    shared: &Shared,
) -> End {
    let mut end = End {
        received: 0,
        closed: false,
        hist: load.latency.then(histogram),
        failure: None,
    };
    let opened = {
        let _permit = shared.opening.acquire().await;
        tokio::select! {
            s = Session::open(transport, addrs, path, load.ws_read_buffer) => s,
            _ = shared.stop.cancelled() => Err("stopped while opening".into()),
        }
    };
    let mut session = match opened {
        Ok(s) => s,
        Err(e) => {
            end.failure = Some(format!("open: {e}"));
            shared.progress.send_modify(|p| p.failed_to_open += 1);
            return end;
        }
    };
    shared.progress.send_modify(|p| p.attached += 1);
    let counter = &shared.counters[i].0;
    let read = async {
        loop {
            match session.next().await {
                Ok(Some(msg)) => {
                    let expected = end.received + 1;
                    if msg.seq != expected {
                        end.failure = Some(if msg.seq > expected {
                            format!(
                                "LOSS: frames {expected}..{} missing (got {} after {})",
                                msg.seq - 1,
                                msg.seq,
                                end.received
                            )
                        } else {
                            format!(
                                "DUPLICATE or REORDER: frame {} after {}",
                                msg.seq, end.received
                            )
                        });
                        return;
                    }
                    end.received = expected;
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Some(h) = &mut end.hist {
                        h.saturating_record(unix_nanos().saturating_sub(msg.sent_ns));
                    }
                }
                Ok(None) => {
                    end.closed = true;
                    return;
                }
                Err(e) => {
                    end.failure = Some(format!("after frame {}: {e}", end.received));
                    return;
                }
            }
        }
    };
    // The stop is polled once per wake-up, not once per frame: frames
    // already buffered are read in one go.
    tokio::select! {
        _ = shared.stop.cancelled() => {}
        () = read => {}
    }
    if end.closed && load.count > 0 && end.received != load.count && end.failure.is_none() {
        end.failure = Some(format!(
            "LOSS: closed after {} of {} frames",
            end.received, load.count
        ));
    }
    end
}
