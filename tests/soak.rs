//! Bounded soak per transport: 5,000 upstream frames while the client's
//! connection is cut at random moments (mid-batch, mid-chunk). The client
//! resumes from the last id it really has; it must see every frame exactly
//! once and in order, with no gap (the replay queue is sized for the run).

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use reqwest::StatusCode;
use support::{Backend, Ev, NdjsonClient, Proxy, SseClient, assert_sequence};

const FRAMES: u64 = 5000;
const CONFIG: &str = "[replay]\nmax_events = 8192\n";

/// A small deterministic generator; the seed is printed so a failure replays.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
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

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Appends what a connection delivered, checking it continues the cursor.
fn accept(got: &mut Vec<Ev>, cursor: &mut u64, ev: Ev) {
    assert!(
        !matches!(ev, Ev::Gap(..)),
        "no gap expected: {ev:?} after {cursor}"
    );
    assert_eq!(ev.id(), *cursor + 1, "ids continue the cursor: {ev:?}");
    *cursor = ev.id();
    got.push(ev);
}

async fn pace_slowly(i: u64) {
    // Occasionally let the backend get ahead, so cuts also land on replays.
    if i.is_multiple_of(97) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn sse_survives_random_cuts() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, CONFIG).await;
    let s = proxy.open(&format!("/burst?n={FRAMES}&size=16")).await;
    let (mut rng, mut got, mut cursor) = (Rng::new(), Vec::new(), 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cursor < FRAMES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "soak took too long at {cursor}"
        );
        let resp = proxy
            .http
            .get(s.url("/sse"))
            .header("last-event-id", cursor.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut sse = SseClient::new(resp);
        let keep = 1 + rng.below(400);
        for _ in 0..keep {
            let Some(raw) = sse.next_raw().await else {
                break;
            };
            if let Some(ev) = Ev::from_sse(&raw) {
                accept(&mut got, &mut cursor, ev);
                pace_slowly(cursor).await;
            }
            if cursor == FRAMES {
                break;
            }
        }
        // Dropping the response cuts the connection wherever it was.
    }
    assert_sequence(&got, FRAMES);
}

#[tokio::test]
async fn stream_survives_random_cuts() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, CONFIG).await;
    let s = proxy.open(&format!("/burst?n={FRAMES}&size=16")).await;
    let (mut rng, mut got, mut cursor) = (Rng::new(), Vec::new(), 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cursor < FRAMES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "soak took too long at {cursor}"
        );
        let resp = proxy
            .http
            .get(s.url(&format!("/stream?cursor={cursor}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut lines = NdjsonClient::new(resp);
        let keep = 1 + rng.below(400);
        for _ in 0..keep {
            let Some(v) = lines.next().await else { break };
            if v["type"] == "heartbeat" {
                continue;
            }
            accept(&mut got, &mut cursor, Ev::from_json(&v));
            pace_slowly(cursor).await;
            if cursor == FRAMES {
                break;
            }
        }
    }
    assert_sequence(&got, FRAMES);
}

#[tokio::test]
async fn poll_survives_lost_responses() {
    let backend = Backend::start().await;
    let proxy = Proxy::start(&backend, &format!("{CONFIG}[poll]\nmax_events = 50\n")).await;
    let s = proxy.open(&format!("/burst?n={FRAMES}&size=16")).await;
    let (mut rng, mut got, mut cursor) = (Rng::new(), Vec::new(), 0u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while cursor < FRAMES {
        assert!(
            tokio::time::Instant::now() < deadline,
            "soak took too long at {cursor}"
        );
        let resp = proxy
            .http
            .get(s.url(&format!("/poll?cursor={cursor}&wait=5")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        if rng.below(4) == 0 {
            // The response is lost: read part of the body and cut.
            let mut body = resp.bytes_stream();
            let _ = body.next().await;
            continue;
        }
        let body: serde_json::Value = resp.json().await.unwrap();
        for e in body["events"].as_array().unwrap() {
            accept(&mut got, &mut cursor, Ev::from_json(e));
        }
        assert_eq!(body["cursor"].as_u64().unwrap(), cursor);
    }
    assert_sequence(&got, FRAMES);
}
