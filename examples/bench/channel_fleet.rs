//! A fleet on multiplexed channels: the sessions of a [`Load`] spread over
//! a few channels, each channel read by one reader in one task, each
//! session checked as a [`crate::fleet::Fleet`]'s are: frames 1, 2, 3, …
//! with nothing missing, doubled or out of order, and (bounded loads) the
//! backend's close after the last.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};

use crate::Result;
use crate::clients::channel::{Channel, Form};
use crate::clients::http::HttpConn;
use crate::fleet::{Load, Outcome, Shared};

/// Connections each channel opens its sessions over, at once (a browser
/// has at most six per host; the reader takes one).
const OPENERS: usize = 4;
/// Failures listed in full per run; the rest are counted.
const LISTED_FAILURES: usize = 5;

/// How one channel ended.
struct End {
    sessions: usize,
    received: u64,
    /// Sessions that delivered their clean close.
    closed: usize,
    failure: Option<String>,
}

pub struct ChannelFleet {
    form: Form,
    load: Load,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<End>>,
}

impl ChannelFleet {
    /// `load.sessions` sessions over `channels` channels (as even as they
    /// divide), each channel read as `form`.
    pub fn spawn(form: Form, proxy: std::net::SocketAddr, load: Load, channels: usize) -> Self {
        let channels = channels.clamp(1, load.sessions.max(1));
        let shared = Shared::new(channels, load.open_concurrency);
        let path: Arc<str> = load.path().into();
        let tasks = (0..channels)
            .map(|k| {
                let n = load.sessions / channels + usize::from(k < load.sessions % channels);
                let shared = Arc::clone(&shared);
                let path = Arc::clone(&path);
                tokio::spawn(async move {
                    let end = run_channel(k, n, form, proxy, &path, load.count, &shared).await;
                    shared.progress.send_modify(|p| p.ended += n);
                    end
                })
            })
            .collect();
        ChannelFleet {
            form,
            load,
            shared,
            tasks,
        }
    }

    /// Waits until every channel's sessions are open and its reader attached.
    pub async fn attached(&self, within: Duration) -> Result<(), String> {
        self.shared
            .attached(self.load.sessions, within, "channel sessions")
            .await
    }

    /// Frames delivered so far, all channels.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered()
    }

    /// Waits for every session to close (bounded loads); channels still
    /// reading after `within` are stopped and their open sessions stalled.
    pub async fn finish(mut self, within: Duration) -> Outcome {
        self.shared.ended(self.load.sessions, within).await;
        self.collect(Some(within)).await
    }

    /// Stops every channel now (unbounded loads).
    pub async fn stop(mut self) -> Outcome {
        self.collect(None).await
    }

    async fn collect(&mut self, waited: Option<Duration>) -> Outcome {
        self.shared.stop.cancel();
        let mut outcome = Outcome {
            received: 0,
            hist: None,
            failures: Vec::new(),
            failed: 0,
        };
        let bounded = self.load.count > 0;
        let form = match self.form {
            Form::Sse => "sse channel",
            Form::Stream => "stream channel",
        };
        for (k, task) in std::mem::take(&mut self.tasks).into_iter().enumerate() {
            let mut end = task.await.unwrap_or_else(|e| End {
                sessions: 0,
                received: 0,
                closed: 0,
                failure: Some(format!("channel task failed: {e}")),
            });
            if end.failure.is_none()
                && bounded
                && end.closed < end.sessions
                && let Some(waited) = waited
            {
                end.failure = Some(format!(
                    "stalled: {} of {} sessions closed within {}s",
                    end.closed,
                    end.sessions,
                    waited.as_secs()
                ));
            }
            outcome.received += end.received;
            if let Some(f) = end.failure {
                // The sessions not seen through to their close are unchecked.
                outcome.failed += (end.sessions - end.closed).max(1);
                if outcome.failures.len() < LISTED_FAILURES {
                    outcome.failures.push(format!("{form} {k}: {f}"));
                }
            }
        }
        outcome
    }
}

impl Drop for ChannelFleet {
    fn drop(&mut self) {
        // A fleet dropped on an error path must not leave readers running.
        self.shared.stop.cancel();
    }
}

/// Opens a channel and `n` sessions on it, attaches its reader and reads
/// until stopped or (bounded) until every session closed.
async fn run_channel(
    k: usize,
    n: usize,
    form: Form,
    proxy: std::net::SocketAddr,
    path: &Arc<str>,
    count: u64,
    shared: &Arc<Shared>,
) -> End {
    let mut end = End {
        sessions: n,
        received: 0,
        closed: 0,
        failure: None,
    };
    let opened = tokio::select! {
        r = open_all(n, form, proxy, path, shared) => r,
        _ = shared.stop.cancelled() => Err("stopped while opening".into()),
    };
    let mut reader = match opened {
        Ok(reader) => reader,
        Err(e) => {
            end.failure = Some(format!("open: {e}"));
            shared.progress.send_modify(|p| p.failed_to_open += n);
            return end;
        }
    };
    shared.progress.send_modify(|p| p.attached += n);
    let counter = &shared.counters[k].0;
    let mut received = vec![0u64; n];
    let mut closed = vec![false; n];
    let read = async {
        loop {
            match reader.next().await {
                Ok((i, Some(msg))) => {
                    let expected = received[i] + 1;
                    if closed[i] || msg.seq != expected {
                        end.failure = Some(if closed[i] {
                            format!("session {i}: frame {} after its close", msg.seq)
                        } else if msg.seq > expected {
                            format!(
                                "session {i}: LOSS: frames {expected}..{} missing (got {} after {})",
                                msg.seq - 1,
                                msg.seq,
                                received[i]
                            )
                        } else {
                            format!(
                                "session {i}: DUPLICATE or REORDER: frame {} after {}",
                                msg.seq, received[i]
                            )
                        });
                        return;
                    }
                    received[i] = expected;
                    end.received += 1;
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok((i, None)) => {
                    if count > 0 && received[i] != count {
                        end.failure = Some(format!(
                            "session {i}: LOSS: closed after {} of {count} frames",
                            received[i]
                        ));
                        return;
                    }
                    closed[i] = true;
                    end.closed += 1;
                    if end.closed == n {
                        return;
                    }
                }
                Err(e) => {
                    end.failure = Some(format!("after {} frames: {e}", end.received));
                    return;
                }
            }
        }
    };
    tokio::select! {
        _ = shared.stop.cancelled() => {}
        () = read => {}
    }
    end
}

/// A channel with `n` sessions opened over [`OPENERS`] connections (which
/// close once done: the reader stays), and its reader.
async fn open_all(
    n: usize,
    form: Form,
    proxy: std::net::SocketAddr,
    path: &Arc<str>,
    shared: &Arc<Shared>,
) -> Result<crate::clients::channel::Reader> {
    let channel = Channel::create(proxy).await?;
    let mut openers = JoinSet::new();
    let per = n.div_ceil(OPENERS);
    for o in 0..OPENERS.min(n) {
        let (channel, path, shared) = (channel.clone(), Arc::clone(path), Arc::clone(shared));
        let mine = per.min(n - (o * per).min(n));
        openers.spawn(async move {
            let mut conn = HttpConn::connect(proxy).await?;
            let mut ids = Vec::with_capacity(mine);
            for _ in 0..mine {
                let _permit = shared.opening.acquire().await;
                ids.push(channel.open(&mut conn, &path).await?);
            }
            Ok::<_, crate::Error>(ids)
        });
    }
    let mut ids = Vec::with_capacity(n);
    while let Some(done) = openers.join_next().await {
        ids.extend(done??);
    }
    channel.reader(form, &ids).await
}
