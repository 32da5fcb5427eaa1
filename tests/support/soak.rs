//! The bounded soak loops shared by tests/soak.rs (one proxy) and
//! tests/cluster.rs (replicas behind HAProxy): read a session's frames while
//! the connection is cut at random moments, resume from the last id really
//! received, and check every frame arrives exactly once and in order, with
//! no gap (the replay queue must be sized for the run).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

use super::{Ev, NdjsonClient, Session, SseClient, assert_sequence};

/// How one soak runs.
#[derive(Clone, Copy)]
pub struct Soak {
    /// Frames the session's upstream sends (`/burst?n=`).
    pub frames: u64,
    /// A connection keeps at most this many events before it is cut.
    pub keep_at_most: u64,
    /// The whole soak must end within this.
    pub deadline: Duration,
    /// Now and then pause, so the backend gets ahead and cuts also land on
    /// replays.
    pub pace: bool,
}

/// A small deterministic generator; the seed is printed so a failure
/// replays (`SOAK_SEED=...`).
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let seed = std::env::var("SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("soak seed: SOAK_SEED={seed}");
        Rng(seed)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What a soak has received so far.
struct Received {
    soak: Soak,
    rng: Rng,
    got: Vec<Ev>,
    cursor: u64,
    until: tokio::time::Instant,
}

impl Received {
    fn new(soak: Soak) -> Received {
        Received {
            soak,
            rng: Rng::new(),
            got: Vec::new(),
            cursor: 0,
            until: tokio::time::Instant::now() + soak.deadline,
        }
    }

    fn more(&self) -> bool {
        assert!(
            tokio::time::Instant::now() < self.until,
            "soak took too long at {}",
            self.cursor
        );
        self.cursor < self.soak.frames
    }

    fn keep(&mut self) -> u64 {
        1 + self.rng.below(self.soak.keep_at_most)
    }

    /// Appends one delivered event, checking it continues the cursor.
    async fn accept(&mut self, ev: Ev) {
        assert!(
            !matches!(ev, Ev::Gap(..)),
            "no gap expected: {ev:?} after {}",
            self.cursor
        );
        assert_eq!(ev.id(), self.cursor + 1, "ids continue the cursor: {ev:?}");
        self.cursor = ev.id();
        self.got.push(ev);
        if self.soak.pace && self.cursor.is_multiple_of(97) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn done(&self) -> bool {
        self.cursor == self.soak.frames
    }

    fn check(self) {
        assert_sequence(&self.got, self.soak.frames);
    }
}

/// SSE, resuming with `Last-Event-ID`.
pub async fn sse(s: &Session, soak: Soak) {
    let mut r = Received::new(soak);
    while r.more() {
        let resp = s
            .http
            .get(s.url("/sse"))
            .header("last-event-id", r.cursor.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut sse = SseClient::new(resp);
        for _ in 0..r.keep() {
            let Some(raw) = sse.next_raw().await else {
                break;
            };
            if let Some(ev) = Ev::from_sse(&raw) {
                r.accept(ev).await;
            }
            if r.done() {
                break;
            }
        }
        // Dropping the response cuts the connection wherever it was.
    }
    r.check();
}

/// The NDJSON stream, resuming with `?cursor=`.
pub async fn stream(s: &Session, soak: Soak) {
    let mut r = Received::new(soak);
    while r.more() {
        let resp = s
            .http
            .get(s.url(&format!("/stream?cursor={}", r.cursor)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut lines = NdjsonClient::new(resp);
        for _ in 0..r.keep() {
            let Some(v) = lines.next().await else { break };
            if v["type"] == "heartbeat" {
                continue;
            }
            r.accept(Ev::from_json(&v)).await;
            if r.done() {
                break;
            }
        }
    }
    r.check();
}

/// Long-poll, where one answer in four is lost: part of its body or none is
/// read, then the connection is cut.
pub async fn poll(s: &Session, soak: Soak) {
    let mut r = Received::new(soak);
    while r.more() {
        let resp = s
            .http
            .get(s.url(&format!("/poll?cursor={}&wait=5", r.cursor)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        if r.rng.below(4) == 0 {
            let mut body = resp.bytes_stream();
            if r.rng.below(2) == 0 {
                let _ = body.next().await;
            }
            continue;
        }
        let v: Value = resp.json().await.unwrap();
        for e in v["events"].as_array().unwrap() {
            r.accept(Ev::from_json(e)).await;
        }
        assert_eq!(v["cursor"].as_u64().unwrap(), r.cursor);
    }
    r.check();
}
